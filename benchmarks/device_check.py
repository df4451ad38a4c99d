"""The Python half of ``benchmarks/device_check.sh`` (issue 24): the parts that need more than a shell line, and
the one JSON of results.

    python benchmarks/device_check.py probe --out FILE             # torch / CUDA facts (GPU present but no CUDA
                                                                   # in torch: said in the JSON)
    python benchmarks/device_check.py sweep --work DIR --out FILE  # a 4-trial smoke sweep through Ray at gpu 0.25
                                                                   # per trial, in temp stores, and what it logged
    python benchmarks/device_check.py platform --work DIR --out FILE
                                      # one chain on CPU, on CUDA (twice), on CUDA with deterministic kernels
                                      # (twice): per level dPSNR and mask Jaccard vs CPU, and whether the repeats
                                      # are bit-equal
    python benchmarks/device_check.py assemble --work DIR --out FILE   # the parts' results into one JSON

``--cpu-only`` (sweep, platform) runs every "cuda" variant on the CPU at a tiny size: a check of this code on a
machine without a GPU, not a measurement (its repeats are bit-equal by construction: one thread on one CPU).

Only the standard library is imported at module level: ``assemble`` runs even when the venv is broken.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
METRIC = "psnr_ema"  # the local profiles' metric
PARTS = ("venv", "probe", "sweep", "platform", "calibrate", "gpu_seeds")  # the order the shell script runs them
TAIL_LINES = 40


# --------------------------------------------------------------------------------------------------- helpers
def write_json(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str) + "\n")
    tmp.replace(path)


def read_json(path: Path) -> object | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def tail(path: Path, lines: int = TAIL_LINES) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return []


def lipsweep_argv() -> list[str]:
    """``lipsweep`` as this interpreter runs it (the console script's shebang may name another machine's venv)."""
    return [sys.executable, "-c", "import sys; from lipsweep.cli.main import main; sys.exit(main())"]


def kill_group_and_strays(proc: subprocess.Popen, marker: str | None) -> None:
    """End a timed-out child: its process group (it was started in its own session), then any process whose
    command line names ``marker`` (the sweep's own Ray temp dir: raylet, GCS and workers it started)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if marker:
        kill_marked(marker)


def kill_marked(marker: str) -> list[int]:
    """Kill the processes of this user whose command line contains ``marker`` (a path unique to this run)."""
    killed = []
    for cmdline in glob.glob("/proc/[0-9]*/cmdline"):
        pid = int(cmdline.split("/")[2])
        if pid == os.getpid():
            continue
        try:
            if os.stat(cmdline).st_uid != os.getuid():
                continue
            with open(cmdline, "rb") as f:
                if marker.encode() not in f.read():
                    continue
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        except (OSError, ValueError):
            continue
    return killed


def part_timeout(asked: float) -> float:
    """The part's own timeout: what it was asked, but 10 s inside the shell's (``DEVICE_CHECK_PART_TIMEOUT``,
    capped by the deadline), so the part ends its children and writes its JSON before the shell kills it."""
    shell = os.environ.get("DEVICE_CHECK_PART_TIMEOUT")
    return max(5.0, min(asked, float(shell) - 10)) if shell else asked


def run_logged(argv: list[str], log: Path, timeout: float, env: dict | None = None,
               marker: str | None = None) -> dict:
    """Run ``argv`` with its output in ``log``, in its own session, killed (group and strays) after ``timeout``."""
    start = time.perf_counter()
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, cwd=ROOT, start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
            timed_out = False
        except subprocess.TimeoutExpired:
            kill_group_and_strays(proc, marker)
            rc, timed_out = proc.wait(), True
    return {"rc": rc, "timed_out": timed_out, "wall_s": round(time.perf_counter() - start, 2),
            "timeout_s": timeout, "log": str(log), "argv": argv}


# --------------------------------------------------------------------------------------------------- probe
def probe(args: argparse.Namespace) -> int:
    """What torch sees: version, CUDA build, availability, the device; a GPU torch cannot use is said so."""
    facts: dict = {"python": sys.version.split()[0], "executable": sys.executable}
    facts["dev_nvidia0"] = Path("/dev/nvidia0").exists()
    facts["nvidia_smi_on_path"] = shutil.which("nvidia-smi") is not None
    try:
        import torch
    except Exception as exc:  # a broken venv: said, not raised
        facts.update(torch=None, error=f"import torch failed: {exc!r}", cuda_available=False)
        write_json(Path(args.out), facts)
        print(json.dumps(facts))
        return 1
    facts.update(torch=torch.__version__, torch_cuda_build=torch.version.cuda, cuda_available=False)
    try:
        facts["cuda_available"] = bool(torch.cuda.is_available())
        if facts["cuda_available"]:
            props = torch.cuda.get_device_properties(0)
            facts.update(device_count=torch.cuda.device_count(), device_name=torch.cuda.get_device_name(0),
                         capability=list(torch.cuda.get_device_capability(0)),
                         memory_gib=round(props.total_memory / 2**30, 1), cudnn=torch.backends.cudnn.version(),
                         bf16_supported=bool(torch.cuda.is_bf16_supported()))
    except Exception as exc:
        facts["error"] = f"torch.cuda query failed: {exc!r}"
    gpu_seen = Path("/dev/nvidia0").exists() or shutil.which("nvidia-smi") is not None
    if not facts["cuda_available"] and gpu_seen:
        why = ("torch is a CPU build (torch.version.cuda is None)" if facts["torch_cuda_build"] is None
               else "torch has CUDA but cannot use the device (driver / visibility)")
        facts["note"] = f"a GPU is present but torch.cuda.is_available() is False: {why}; the CUDA parts are skipped"
    try:
        from lipsweep.core.platforms import current

        facts["platform_cpu"] = current(1, "cpu").as_dict()
        if facts["cuda_available"]:
            facts["platform_cuda"] = current(1, "cuda").as_dict()
    except Exception as exc:  # platforms.py is new: its absence is a finding, not a failure of the probe
        facts["platform_error"] = repr(exc)
    write_json(Path(args.out), facts)
    print(json.dumps(facts, indent=1))
    return 0


# --------------------------------------------------------------------------------------------------- (a) sweep
SWEEP_NAME = "device_check"


def sweep_spec(args: argparse.Namespace) -> dict:
    """A copy of rewind_ablation's smoke shape with 4 trials (2 rewinds x 2 seeds), each asking for a quarter
    GPU: 4 trials share the one GPU. JSON is YAML, so no yaml import is needed to write it."""
    if args.cpu_only:
        base = {"size": 64, "width": 8, "iters": 20, "levels": 1}
    else:
        base = {"size": args.size, "width": args.width, "iters": args.iters, "levels": args.levels}
    return {"name": SWEEP_NAME, "description": "device_check.sh: 4 chains at a quarter GPU each (rewind x seed)",
            "paper": "issue 24 device check", "kind": "chain", "metric": METRIC, "mode": "max",
            "base": {"image": "Set5/baby", "task": "denoise", "method": "imp", **base},
            "axes": {"rewind": [0.0, 0.1], "seed": [0, 1]},
            "resources": {"cpu": 1, "gpu": 0 if args.cpu_only else args.gpu},
            "profiles": {"paper": {}, "local": {}, "smoke": {}}}


SUMMARY = re.compile(r"(\d+) trials finished, (\d+) failed, (\d+) incomplete in (\d+) s")


def mlflow_summary(db: Path) -> dict:
    """Runs of the sweep's MLflow experiment by status, and the platform tags its runs carry (sqlite, read-only)."""
    if not db.is_file():
        return {"error": f"{db} missing"}
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        exp = con.execute("SELECT experiment_id FROM experiments WHERE name = ?", (f"lipsweep/{SWEEP_NAME}",)).fetchone()
        if exp is None:
            return {"error": f"no experiment lipsweep/{SWEEP_NAME} in {db}"}
        status = dict(con.execute("SELECT status, COUNT(*) FROM runs WHERE experiment_id = ? GROUP BY status",
                                  (exp[0],)).fetchall())
        tags = con.execute("SELECT DISTINCT t.key, t.value FROM tags t JOIN runs r ON t.run_uuid = r.run_uuid "
                           "WHERE r.experiment_id = ? AND t.key LIKE '%platform%' LIMIT 20", (exp[0],)).fetchall()
        devices = con.execute("SELECT DISTINCT p.value FROM params p JOIN runs r ON p.run_uuid = r.run_uuid "
                              "WHERE r.experiment_id = ? AND p.key = 'device'", (exp[0],)).fetchall()
        metrics = con.execute("SELECT COUNT(*) FROM metrics m JOIN runs r ON m.run_uuid = r.run_uuid "
                              "WHERE r.experiment_id = ?", (exp[0],)).fetchone()[0]
        con.close()
        return {"runs_by_status": status, "platform_tags": [list(t) for t in tags],
                "device_params": [d[0] for d in devices], "metric_rows": metrics}
    except sqlite3.Error as exc:
        return {"error": repr(exc)}


def overlap(tune_path: Path) -> dict:
    """How many trials ran at once: each trial's span from Tune's result.json (its last report's timestamp, whole
    seconds, less its time_total_s), so an estimate good to about a second."""
    spans = []
    for res in tune_path.glob("*/result.json"):
        rows = []
        for line in res.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue
        rows = [r for r in rows if "timestamp" in r]
        if rows:
            last = rows[-1]
            spans.append((last["timestamp"] - last.get("time_total_s", 0.0), float(last["timestamp"])))
    if not spans:
        return {"trials_with_results": 0}
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans], key=lambda x: (x[0], x[1]))
    now = peak = 0
    for _, d in events:
        now += d
        peak = max(peak, now)
    t0 = min(s for s, _ in spans)
    return {"trials_with_results": len(spans), "max_concurrent_trials": peak,
            "spans_s": sorted([round(s - t0, 1), round(e - t0, 1)] for s, e in spans),
            "note": "from Tune's result.json (timestamps in whole seconds): an estimate, meaningful for trials "
                    "that run several seconds"}


def sweep(args: argparse.Namespace) -> int:
    """Write the 4-trial experiment, run ``lipsweep run`` on it in temp stores, and record what happened."""
    work = Path(args.work).resolve()
    (work / "sweep").mkdir(parents=True, exist_ok=True)
    yaml_path = work / "sweep" / f"{SWEEP_NAME}.yaml"
    spec = sweep_spec(args)
    write_json(yaml_path, spec)
    device = "cpu" if args.cpu_only else "cuda"
    db, store, storage = work / "sweep" / "mlflow.db", work / "sweep" / "store", work / "sweep" / "tune"
    uri = f"sqlite:///{db}"
    ray_tmp = tempfile.mkdtemp(prefix="dcray", dir="/tmp")  # short: Ray's socket paths have a length limit
    argv = [*lipsweep_argv(), "run", str(yaml_path), "--profile", "smoke", "--set", f"device={device}",
            "--gpus-per-trial", str(spec["resources"]["gpu"]), "--store", str(store), "--storage", str(storage),
            "--tracking-uri", uri, "--max-failures", "0", "--no-analysis"]
    env = {**os.environ, "RAY_TMPDIR": ray_tmp, "MLFLOW_TRACKING_URI": uri}
    print("sweep:", " ".join(argv[3:]), flush=True)
    args.timeout = part_timeout(args.timeout)
    res = run_logged(argv, work / "sweep" / "lipsweep_run.log", args.timeout, env=env, marker=ray_tmp)
    strays = kill_marked(ray_tmp)  # a Ray the driver left behind (it normally shuts its own down)
    shutil.rmtree(ray_tmp, ignore_errors=True)
    text = "\n".join(tail(Path(res["log"]), 400))
    found = SUMMARY.findall(text)
    finished, failed, incomplete, seconds = map(int, found[-1]) if found else (None, None, None, None)
    tune_dirs = sorted(storage.glob(f"{SWEEP_NAME}-smoke-*"))
    out = {"command": "lipsweep " + " ".join(argv[3:]), "device": device, "trials": 4,
           "trials_per_gpu": None if args.cpu_only else round(1 / spec["resources"]["gpu"], 2),
           "resources": spec["resources"], "base": spec["base"], "axes": spec["axes"],
           "rc": res["rc"], "timed_out": res["timed_out"], "wall_s": res["wall_s"], "timeout_s": args.timeout,
           "trials_finished": finished, "trials_failed": failed, "trials_incomplete": incomplete,
           "sweep_seconds_reported": seconds, "tracking_uri": uri, "store": str(store), "tune_storage": str(storage),
           "ray_tmpdir": ray_tmp, "stray_ray_processes_killed": len(strays),
           "mlflow": mlflow_summary(db), "concurrency": overlap(tune_dirs[-1]) if tune_dirs else None,
           "log_tail": tail(Path(res["log"]), 25)}
    out["ok"] = bool(res["rc"] == 0 and finished == 4)
    write_json(Path(args.out), out)
    print("\n".join(out["log_tail"]))
    print(f"sweep: rc {res['rc']}{' (timed out)' if res['timed_out'] else ''} in {res['wall_s']} s; trials finished "
          f"{finished} of 4; MLflow {out['mlflow'].get('runs_by_status', out['mlflow'])}; "
          f"concurrency {(out['concurrency'] or {}).get('max_concurrent_trials')}")
    return 0 if out["ok"] else 1


# --------------------------------------------------------------------------------------------------- (d) platform
def variants(cpu_only: bool) -> dict[str, dict]:
    """name -> device and deterministic kernels. ``cpu_only``: the "cuda" ones on the CPU (a code check)."""
    gpu = "cpu" if cpu_only else "cuda"
    return {"cpu": {"device": "cpu", "deterministic": False},
            "cuda": {"device": gpu, "deterministic": False},
            "cuda_repeat": {"device": gpu, "deterministic": False},
            "cuda_det": {"device": gpu, "deterministic": True},
            "cuda_det_repeat": {"device": gpu, "deterministic": True}}


def chain_fields(args: argparse.Namespace) -> dict:
    return {"image": args.image, "task": "denoise", "size": args.size, "width": args.width, "iters": args.iters,
            "levels": args.levels, "seed": 0, "threads": 1}


def chain_worker(args: argparse.Namespace) -> int:
    """One variant: the chain through its own store; per level the record (metrics, mask hash, platform) to
    ``VARIANT.json`` and the kept-weight masks (sorted layer names, flattened) to ``VARIANT.npz``."""
    import numpy as np
    import torch

    from lipsweep.kinds.base import TrialConfig
    from lipsweep.lottery.store import TrunkStore
    from lipsweep.lottery.tickets import Tickets

    out = Path(args.work)
    fields = {**json.loads(args.fields), "device": args.device, "deterministic": bool(args.deterministic)}
    result: dict = {"variant": args.variant, "device": args.device, "deterministic": bool(args.deterministic),
                    "torch": torch.__version__, "fields": fields, "levels": []}
    start = time.perf_counter()
    try:
        trial = TrialConfig(**fields)
        cfg = trial.chain()
        tk = Tickets(TrunkStore(out / "stores" / args.variant))
        masks = {}
        for rec in tk.iter_levels(cfg, trial.levels):
            result["levels"].append({"level": rec.level, "sparsity": rec.sparsity, "mask_hash": rec.mask_hash,
                                     "metrics": {k: v for k, v in rec.metrics.items() if isinstance(v, (int, float))},
                                     "seconds": rec.seconds, "platform": dict(rec.platform or {})})
            masks[str(rec.level)] = tk.mask(cfg, rec.level).bits()
        np.savez_compressed(out / f"{args.variant}.npz", **masks)
        result["ok"] = True
    except Exception as exc:  # e.g. an op without a deterministic CUDA kernel: the finding, recorded
        import traceback

        result["ok"] = False
        result["error"] = f"{type(exc).__name__}: {exc}"
        result["traceback"] = traceback.format_exc().splitlines()[-15:]
    result["seconds"] = round(time.perf_counter() - start, 2)
    write_json(out / f"{args.variant}.json", result)
    return 0 if result["ok"] else 1


def exact_metrics(metrics: dict) -> dict:
    """The metrics that are results (timings are not expected to repeat)."""
    return {k: v for k, v in metrics.items() if not ("second" in k or "time" in k or k.endswith("_s"))}


def compare(work: Path, names: list[str]) -> dict:
    """Per level vs the CPU chain: dPSNR and Jaccard of the kept weights; per repeat pair: bit-equal or not."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import numpy as np
    from platform_variance import (
        jaccard,  # the kernel-set comparison's overlap (numpy: imported here, not above)
    )

    runs = {n: read_json(work / f"{n}.json") for n in names}
    masks = {n: dict(np.load(work / f"{n}.npz")) for n, r in runs.items() if r and r.get("ok")}
    ok = [n for n in names if n in masks]
    out: dict = {"variants_ok": ok, "variants_failed": {n: (r or {}).get("error", "no result (killed or crashed)")
                                                        for n, r in runs.items() if n not in masks}}
    ref = "cpu"
    rows = []
    if ref in ok:
        for i, rec in enumerate(runs[ref]["levels"]):
            row = {"level": rec["level"], "sparsity": round(rec["sparsity"], 4), f"{METRIC}_cpu": rec["metrics"][METRIC]}
            for n in ok:
                if n == ref or i >= len(runs[n]["levels"]):
                    continue
                o = runs[n]["levels"][i]
                a, b = masks[ref][str(rec["level"])], masks[n][str(o["level"])]
                row[f"dpsnr_{n}"] = o["metrics"][METRIC] - rec["metrics"][METRIC]
                row[f"jaccard_{n}"] = jaccard(a, b) if a.shape == b.shape else None
                row[f"mask_differs_{n}"] = int((a != b).sum()) if a.shape == b.shape else None
            rows.append(row)
    out["vs_cpu"] = rows

    def pair(x: str, y: str) -> dict:
        if x not in ok or y not in ok:
            return {"compared": False, "why": "a run of the pair failed"}
        lx, ly = runs[x]["levels"], runs[y]["levels"]
        hashes = [a["mask_hash"] == b["mask_hash"] for a, b in zip(lx, ly)]
        metrics = [exact_metrics(a["metrics"]) == exact_metrics(b["metrics"]) for a, b in zip(lx, ly)]
        d = [b["metrics"][METRIC] - a["metrics"][METRIC] for a, b in zip(lx, ly)]
        jac = [jaccard(masks[x][str(a["level"])], masks[y][str(b["level"])]) for a, b in zip(lx, ly)]
        return {"compared": True, "levels": len(lx) == len(ly) and len(lx), "mask_hashes_equal": all(hashes),
                "metrics_equal": all(metrics), "bit_equal": len(lx) == len(ly) and all(hashes) and all(metrics),
                "first_differing_level": next((a["level"] for a, h, m in zip(lx, hashes, metrics) if not (h and m)),
                                              None),
                f"max_abs_d{METRIC}": max((abs(v) for v in d), default=None), "jaccard": jac}

    out["run_to_run"] = {"cuda (deterministic off) vs its repeat": pair("cuda", "cuda_repeat"),
                         "cuda (deterministic on) vs its repeat": pair("cuda_det", "cuda_det_repeat"),
                         "cuda deterministic off vs on": pair("cuda", "cuda_det")}
    out["platforms"] = {n: (runs[n]["levels"][0]["platform"] if runs[n]["levels"] else None) for n in ok}
    out["platform_same_on_every_level"] = {n: all(lv["platform"] == runs[n]["levels"][0]["platform"]
                                                  for lv in runs[n]["levels"]) for n in ok}
    out["per_variant"] = {n: {k: v for k, v in (r or {}).items() if k not in ("levels",)} for n, r in runs.items()}
    out["levels"] = {n: runs[n]["levels"] for n in ok}
    return out


def platform(args: argparse.Namespace) -> int:
    """The variants as subprocesses (each its own store and torch process: cuBLAS's workspace setting is read
    once, at its first call), ``--jobs`` at a time, then the comparison."""
    work = Path(args.work).resolve() / "platform"
    work.mkdir(parents=True, exist_ok=True)
    spec = variants(args.cpu_only)
    fields = chain_fields(args)
    args.timeout = part_timeout(args.timeout)
    deadline = time.monotonic() + args.timeout

    def one(item) -> dict:
        name, v = item
        env = dict(os.environ)
        if v["deterministic"] and v["device"] == "cuda":
            env.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        argv = [sys.executable, str(Path(__file__).resolve()), "chain-worker", "--work", str(work), "--variant", name,
                "--device", v["device"], "--deterministic", str(int(v["deterministic"])), "--fields", json.dumps(fields)]
        left = max(1.0, deadline - time.monotonic())
        res = run_logged(argv, work / f"{name}.log", left, env=env)
        print(f"platform: {name}: rc {res['rc']} in {res['wall_s']} s{' (timed out)' if res['timed_out'] else ''}",
              flush=True)
        return {name: res}

    order = list(spec.items())
    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        runs = {k: v for d in pool.map(one, order) for k, v in d.items()}
    result = {"chain": fields, "cpu_only": args.cpu_only, "jobs": args.jobs, "variants": spec,
              "subprocesses": {n: {k: r[k] for k in ("rc", "timed_out", "wall_s")} | {"log_tail": tail(Path(r["log"]), 8)}
                               for n, r in runs.items()}}
    result.update(compare(work, list(spec)))
    for n, why in result["variants_failed"].items():
        if runs[n]["timed_out"]:
            result["variants_failed"][n] = f"killed at the part's timeout ({runs[n]['wall_s']} s); {why}"
    rr = result["run_to_run"]
    result["summary"] = {
        "cuda_run_to_run_bit_equal": rr["cuda (deterministic off) vs its repeat"].get("bit_equal"),
        "cuda_deterministic_run_to_run_bit_equal": rr["cuda (deterministic on) vs its repeat"].get("bit_equal"),
        "max_abs_dpsnr_vs_cpu": {n: max((abs(r[f"dpsnr_{n}"]) for r in result["vs_cpu"] if f"dpsnr_{n}" in r),
                                        default=None) for n in result["variants_ok"] if n != "cpu"},
        "min_jaccard_vs_cpu": {n: min((r[f"jaccard_{n}"] for r in result["vs_cpu"]
                                       if r.get(f"jaccard_{n}") is not None), default=None)
                               for n in result["variants_ok"] if n != "cpu"}}
    result["ok"] = not result["variants_failed"]
    write_json(Path(args.out), result)
    print(json.dumps({"summary": result["summary"], "vs_cpu": result["vs_cpu"],
                      "variants_failed": result["variants_failed"]}, indent=1))
    return 0 if result["ok"] else 1


# --------------------------------------------------------------------------------------------------- assemble
def _status(work: Path, name: str) -> dict:
    st = read_json(work / "parts" / f"{name}.json")
    if not isinstance(st, dict):
        return {"status": "not run"}
    if st.get("start") is not None and st.get("end") is not None:
        st["wall_s"] = round(float(st["end"]) - float(st["start"]), 2)
    return {k: v for k, v in st.items() if v not in (None, "")}


def _part(work: Path, out_dir: Path, meta: dict, name: str) -> tuple[dict, object]:
    """A part's status (passed / failed / timed_out / skipped / not run) and its results."""
    st = _status(work, name)
    log = Path(st["log"]) if st.get("log") else None
    own = {"probe": work / "probe.json", "sweep": work / "sweep.json", "platform": work / "platform.json",
           "gpu_seeds": work / "gpu_seeds.json"}.get(name)
    data = read_json(own) if own else None
    if st.get("status") == "ran":
        ok = st.get("rc") == 0
        if name == "calibrate":  # rc 0 also when torch saw no CUDA: the table must have the device
            table = read_json(out_dir / "calibration.json") or {}
            dev = meta.get("calibrate_device", "cuda")
            data = {"table": str(out_dir / "calibration.json"), "device": dev,
                    "measured": (table.get("devices") or {}).get(dev)}
            ok = ok and bool(data["measured"])
        if name == "gpu_seeds":
            ok = ok and isinstance(data, dict) and bool(data.get("run"))
        st["status"] = "passed" if ok else ("timed_out" if st.get("rc") in (124, 137) else "failed")
    if st.get("status") in ("failed", "timed_out") and log is not None:
        st["log_tail"] = tail(log)
    return st, data


def assemble(args: argparse.Namespace) -> int:
    """Every part's status (rc, wall time, timeout; the last lines of a failed part's log) and result."""
    work, out_dir = Path(args.work), Path(args.out).parent
    meta = read_json(work / "meta.json")
    if not isinstance(meta, dict):
        meta = {"meta_error": f"{work / 'meta.json'} unreadable"}
    result: dict = {"check": "benchmarks/device_check.sh (issue 24)", **meta}
    parts = {}
    for name in PARTS:
        try:
            parts[name], data = _part(work, out_dir, meta, name)
        except Exception as exc:  # one unreadable part never costs the others' results
            parts[name], data = {"status": "failed", "reason": f"assemble: {exc!r}"}, None
        if data is not None:
            result[name] = data
    result["parts"] = parts
    result["passed"] = [n for n, s in parts.items() if s.get("status") == "passed"]
    result["failed"] = [n for n, s in parts.items() if s.get("status") in ("failed", "timed_out")]
    result["skipped"] = {n: s.get("reason", s.get("status")) for n, s in parts.items()
                         if s.get("status") in ("skipped", "not run")}
    checks = [n for n in PARTS if n != "venv"]
    result["all_passed"] = all(parts[n].get("status") == "passed" for n in checks)
    if "started_epoch" in meta:
        result["wall_s"] = round(time.time() - float(meta["started_epoch"]), 1)
    write_json(Path(args.out), result)
    print(f"device_check: passed {result['passed']}; failed {result['failed']}; skipped {list(result['skipped'])}; "
          f"-> {args.out}")
    return 0 if result["all_passed"] else 1


# --------------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("probe")
    p.add_argument("--out", required=True)
    for name in ("sweep", "platform"):
        s = sub.add_parser(name)
        s.add_argument("--work", required=True)
        s.add_argument("--out", required=True)
        s.add_argument("--timeout", type=float, default=80.0, help="seconds for the whole part (its children killed)")
        s.add_argument("--cpu-only", action="store_true", help="every cuda variant on the CPU: a code check")
        s.add_argument("--size", type=int, default=64)
        s.add_argument("--width", type=int, default=16)
        s.add_argument("--iters", type=int, default=300 if name == "platform" else 400)
        s.add_argument("--levels", type=int, default=4 if name == "platform" else 2)
        if name == "sweep":
            s.add_argument("--gpu", type=float, default=0.25, help="GPU share per trial (0.25: 4 trials per GPU)")
        else:
            s.add_argument("--image", default="Set5/baby")
            s.add_argument("--jobs", type=int, default=5, help="variants at once (the CPU one takes one core)")
    w = sub.add_parser("chain-worker")
    for flag in ("--work", "--variant", "--device", "--fields"):
        w.add_argument(flag, required=True)
    w.add_argument("--deterministic", type=int, default=0)
    a = sub.add_parser("assemble")
    a.add_argument("--work", required=True)
    a.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    return {"probe": probe, "sweep": sweep, "platform": platform, "chain-worker": chain_worker,
            "assemble": assemble}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
