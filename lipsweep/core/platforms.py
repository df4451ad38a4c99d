"""Where a result was computed: the platform facts that decide a fit's last bits, and the context every fit
runs in.

Float32 kernels differ between CPUs (torch's AVX-512, AVX2 and portable ``default`` kernel sets), GPUs, CUDA
and cuDNN versions, and thread counts; a global magnitude ranking then flips weights near its threshold and
later IMP levels drift apart (measured: ``benchmarks/platform_variance.py``). A result is a pure function
of its config, its inputs and the code *on one platform*, so every stored level, fit-log line and MLflow run
names the platform that computed it. By default the platform stays out of the keys (a shared store reuses
work across nodes); ``platform_key: true`` puts ``Platform.fingerprint`` into the dense key, so two kinds of
node never serve each other.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from functools import cache

from lipsweep.core.keys import content_key

# cuBLAS needs this before its first call to be deterministic (torch raises otherwise)
CUBLAS_WORKSPACE = ":4096:8"
# What a fingerprint leaves out: the thread count is keyed on its own (``threads``), the label is derived.
NOT_FINGERPRINTED = ("threads",)


@dataclass(frozen=True)
class Platform:
    """The facts that decide a fit's floating-point results (``torch.backends.cpu.get_cpu_capability()`` is
    what ``ATEN_CPU_CAPABILITY`` selects)."""

    torch: str
    device: str  # "cpu" or "cuda"
    device_name: str  # the CPU's model name, or the GPU's
    cpu_capability: str  # DEFAULT, AVX2, AVX512, ...
    cuda: str | None
    cudnn: int | None
    deterministic: bool  # torch.use_deterministic_algorithms in force
    cudnn_benchmark: bool
    threads: int

    def as_dict(self) -> dict:
        return asdict(self)

    @property
    def fingerprint(self) -> str:
        """What ``platform_key`` adds to a dense key: every fact but the thread count (keyed on its own)."""
        return content_key({k: v for k, v in self.as_dict().items() if k not in NOT_FINGERPRINTED})

    @property
    def label(self) -> str:
        return label_of(self.as_dict())


def label_of(facts: Mapping[str, object]) -> str:
    """One short line for tables and MLflow tags: 'cpu AVX512 (AMD EPYC), torch 2.13.0, 1 thread'."""
    if facts.get("device") == "cuda":
        what = f"cuda {facts.get('device_name')} (CUDA {facts.get('cuda')}, cuDNN {facts.get('cudnn')})"
    else:
        what = f"cpu {facts.get('cpu_capability')} ({facts.get('device_name')})"
    if facts.get("deterministic"):
        what += ", deterministic"
    threads = facts.get("threads")
    return f"{what}, torch {facts.get('torch')}, {threads} thread{'s' if threads != 1 else ''}"


@cache
def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``; the platform module's guess elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine() or "unknown"


def current(threads: int | None = None, device: str = "cpu") -> Platform:
    """This process's platform as it is now (``threads``: the count a fit runs with; default torch's)."""
    import torch

    cuda = device == "cuda"
    return Platform(
        torch=torch.__version__.split("+")[0], device="cuda" if cuda else "cpu",
        device_name=torch.cuda.get_device_name() if cuda else cpu_name(),
        cpu_capability=torch.backends.cpu.get_cpu_capability(),
        cuda=torch.version.cuda if cuda else None,
        cudnn=torch.backends.cudnn.version() if cuda else None,
        deterministic=torch.are_deterministic_algorithms_enabled(),
        cudnn_benchmark=bool(torch.backends.cudnn.benchmark) if cuda else False,
        threads=int(threads if threads is not None else torch.get_num_threads()))


def planned(threads: int, device: str = "cpu", deterministic: bool = False) -> Platform:
    """The platform a fit with these settings will run on in this process (``computing`` sets the flags)."""
    now = current(threads, device)
    return replace(now, deterministic=deterministic, cudnn_benchmark=False) if deterministic else now


@contextmanager
def computing(threads: int, device: str = "cpu", deterministic: bool = False) -> Iterator[Platform]:
    """Run a fit with ``threads`` torch CPU threads and (``deterministic``) torch's deterministic kernels with
    cuDNN's autotuner off; yields the platform in force, and restores the process's settings after. The
    thread count changes the sums (1 vs 2 threads: 19.884 vs 19.899 dB after 60 steps), so it is part of the
    config, never left to the process."""
    import torch

    before = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark,
              torch.backends.cudnn.deterministic, torch.is_deterministic_algorithms_warn_only_enabled())
    torch.set_num_threads(threads)
    if deterministic:
        if device == "cuda":
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
        # warn_only: the DIP's reflection padding and bilinear upsampling have no deterministic CUDA backward
        # (torch raises for them otherwise); every other op runs its deterministic kernel
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    try:
        yield current(threads, device)
    finally:
        torch.set_num_threads(before[0])
        torch.use_deterministic_algorithms(before[1], warn_only=before[4])
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = before[2], before[3]


def summarize(platforms: Mapping[str, Mapping[str, object] | None]) -> dict[str, list[str]]:
    """{platform label: the names (levels, trials) computed there}; records without one under 'unrecorded'."""
    out: dict[str, list[str]] = {}
    for name, facts in platforms.items():
        out.setdefault(label_of(facts) if facts else "unrecorded", []).append(name)
    return out
