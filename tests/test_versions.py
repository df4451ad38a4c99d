"""The cache knows the code (issue 15): every result-affecting module declares an algorithm version that
enters the keys of what it produces, and a pinned output per module fails this test when it changes without
a version bump. Tiny scale: width 4, 64 px, a few iterations.

Pinned so that any x86 CPU passes (issue 24). Float32 kernels differ in their last bits between CPUs and
torch's kernel sets (``ATEN_CPU_CAPABILITY`` avx512 / avx2 / default); a 6-step DIP fit amplifies them to
0.6 dB in ``psnr_final`` at level 2 and IMP's ranking flips weights (measured at this scale, float32, default
vs AVX-512 kernels: 4 of 2,670 weights, psnr_final 0.59 dB, ssim 37%; the ``noisy`` target's draw changed
wholly, see targets.py). So the pinned outputs are computed in float64 (torch's default dtype; every tensor
the pipeline makes follows it), where the same three kernel sets agree to 2e-11 relative with no mask
flipped, and compared with tolerances that a platform cannot reach and a change cannot hide under:
- floats within ``RTOL`` of the pin (5 orders above the measured 2e-11; a 1% change of the denoising sigma
  moves the observation's spread by 1e-2 and the dense PSNR by ~1e-3);
- integers (weights kept, parameter counts, levels) exactly;
- masks by their bits, at most ``MASK_FLIPS`` weights apart (0 measured), where a changed pruning rule moves
  hundreds;
- observations by their mean, spread and a fixed random projection of every value (a changed draw moves the
  projection by O(1)).
``test_a_pin_still_catches_*`` prove that a real change still fails the guard.
Re-pin after a deliberate change: bump the changed module's ALGORITHM, then run
``LIPSWEEP_REPIN=1 pytest tests/test_versions.py -k pinned_output`` and commit ``tests/pins/``.
"""

from __future__ import annotations

import base64
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lipsweep.core import versions
from lipsweep.fitting.fit import prepare
from lipsweep.kinds.base import TrialConfig, run_trial
from lipsweep.lottery.chain import ChainConfig
from lipsweep.lottery.store import TrunkStore
from lipsweep.lottery.tickets import Tickets
from lipsweep.problems.targets import TARGETS
from lipsweep.pruning.masks import MaskSet

pytestmark = pytest.mark.platform
TINY = dict(image="Set5/baby", size=64, width=4, iters=6)
PINS = Path(__file__).parent / "pins"
RTOL = 1e-6  # relative: float64 outputs of the three kernel sets differ by <= 2e-11 (the module docstring)
ATOL = 1e-9  # absolute, for values near zero
MASK_FLIPS = 2  # weights a mask may differ by from its pin (0 measured in float64)
TIMINGS = ("seconds", "iters_per_second")  # wall-clock, not results


def mask_bits(mask: MaskSet) -> dict:
    bits = mask.bits()
    return {"kept": int(bits.sum()), "n": int(bits.size), "bits": base64.b64encode(np.packbits(bits)).decode()}


def _level(rec, store: TrunkStore) -> dict:
    """A level as numbers: counts exact, metrics within tolerance, its stored mask by overlap."""
    out = {"level": rec.level, "kept": rec.kept, "total": rec.total,
           "metrics": {k: v for k, v in sorted(rec.metrics.items()) if isinstance(v, (int, float)) and k not in TIMINGS}}
    mask = store.read_mask(store.root / rec.where) if rec.where else None
    if mask is not None:
        out["mask"] = mask_bits(mask)
    return out


def _spread(t: torch.Tensor) -> dict:
    """Mean, spread and a fixed random projection (scaled to unit variance per value) of a tensor's values."""
    y = t.detach().double().reshape(-1).numpy()
    r = np.random.default_rng(0).standard_normal(y.size)
    return {"mean": float(y.mean()), "std": float(y.std()), "projection": float(y @ r / math.sqrt(y.size))}


def _observations(tmp_path) -> list:
    out = []
    for task in ("denoise", "inpaint", "sr4", "inpaint_centre", "fit"):
        for target in TARGETS:
            prep = prepare(TrialConfig(**TINY, task=task, target=target).chain().run)
            out.append([task, target, _spread(prep.problem.observation)])
    return out


def _chain(tmp_path, **kw) -> list:
    store = TrunkStore(tmp_path / "store")
    return [_level(r, store) for r in run_trial(TrialConfig(**{**TINY, "levels": 1, **kw}), Tickets(store))]


def _masks(tmp_path) -> list:
    store = TrunkStore(tmp_path / "store")
    tk = Tickets(store)
    return [[m, [_level(r, store) for r in run_trial(TrialConfig(**TINY, method=m, levels=2, synflow_rounds=3), tk)]]
            for m in ("imp", "random", "random_profile", "snip", "synflow", "synflow_layerwise")]


def _gan(tmp_path) -> list:
    from lipsweep.priors.pggan import (
        Discriminator,
        Generator,
        GeneratorSpec,
        save_checkpoint,
    )

    spec = GeneratorSpec(latent=8, depths=(16, 8, 8), out_channels=1)
    torch.manual_seed(0)
    save_checkpoint(str(tmp_path / "g.pt"), spec, Generator(spec), Discriminator(spec), {"note": "golden"})
    (tmp_path / "faces").mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (20, 20), dtype=np.uint8), "L").save(tmp_path / "faces" / f"f{i}.png")
    trial = TrialConfig(kind="gan", model="pggan", generator=str(tmp_path / "g.pt"), data=str(tmp_path / "faces"),
                        image=str(tmp_path / "faces" / "f0.png"), task="cs", measurements=64, outliers=2, iters=10,
                        tune_epochs=1, tune_fraction=0.5, levels=1)
    store = TrunkStore(tmp_path / "store")
    return [_level(r, store) for r in run_trial(trial, Tickets(store))]


GOLDEN = {  # name: (the modules whose results it pins, what it computes)
    "observations": (("images", "targets", "tasks"), _observations),
    "dense_dip": (("fit", "outputs", "metrics", "priors.base", "priors.dip", "trunk"), lambda p: _chain(p, levels=0)),
    "dense_deep_decoder": (("priors.deep_decoder",), lambda p: _chain(p, model="deep_decoder", levels=0)),
    "masks": (("pruning", "masks", "chains"), _masks),
    "transfer": (("transfer",), lambda p: _chain(p, kind="evaluation", source_image="Set5/bird")),
    "gan": (("generators", "priors.pggan", "gan_train", "gan", "latent"), _gan),
    "classify": (("classify_data", "classifier", "classify"),
                 lambda p: _chain(p, kind="classify", data="lfw_faces", epochs=1, examples=8)),
}


def differences(got: object, pinned: object, where: str = "") -> list[str]:
    """Where ``got`` departs from ``pinned`` beyond what a platform explains (empty: it matches)."""
    if isinstance(pinned, dict) and "bits" in pinned:
        return _mask_difference(got, pinned, where)
    if isinstance(pinned, dict):
        if not isinstance(got, dict) or set(got) != set(pinned):
            return [f"{where}: keys {sorted(got) if isinstance(got, dict) else got!r} != {sorted(pinned)}"]
        return [d for k in pinned for d in differences(got[k], pinned[k], f"{where}.{k}")]
    if isinstance(pinned, list):
        if not isinstance(got, list) or len(got) != len(pinned):
            return [f"{where}: {got!r} is not a list of {len(pinned)}"]
        return [d for i, (g, p) in enumerate(zip(got, pinned)) for d in differences(g, p, f"{where}[{i}]")]
    if isinstance(pinned, float) and isinstance(got, (int, float)):
        ok = math.isclose(got, pinned, rel_tol=RTOL, abs_tol=ATOL) or (math.isnan(got) and math.isnan(pinned))
        return [] if ok else [f"{where}: {got!r} != {pinned!r} (beyond rtol {RTOL})"]
    return [] if got == pinned else [f"{where}: {got!r} != {pinned!r}"]


def _mask_difference(got: object, pinned: dict, where: str) -> list[str]:
    if not isinstance(got, dict) or got.get("n") != pinned["n"] or got.get("kept") != pinned["kept"]:
        return [f"{where}: mask of {got.get('kept') if isinstance(got, dict) else got!r} weights kept, pinned "
                f"{pinned['kept']} of {pinned['n']}"]
    a, b = (np.unpackbits(np.frombuffer(base64.b64decode(m["bits"]), np.uint8))[:pinned["n"]] for m in (got, pinned))
    flipped = int((a != b).sum())
    return [] if flipped <= MASK_FLIPS else [f"{where}: mask differs in {flipped} weights (a platform: <= {MASK_FLIPS})"]


@pytest.fixture(autouse=True)
def float64():
    """Every output here is computed in float64 (see the module docstring)."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(before)


def pin_of(name: str) -> dict:
    return json.loads((PINS / f"{name}.json").read_text())


def test_every_versioned_module_is_pinned_by_an_output():
    pinned = {m for mods, _ in GOLDEN.values() for m in mods}
    assert pinned == set(versions.MODULES) and {p.stem for p in PINS.glob("*.json")} == set(GOLDEN)


@pytest.mark.parametrize("name", list(GOLDEN))
def test_a_pinned_output_changes_only_with_a_version_bump(name, tmp_path):
    modules, compute = GOLDEN[name]
    now = {m: versions.version(m) for m in modules}
    got = json.loads(json.dumps(compute(tmp_path)))
    if os.environ.get("LIPSWEEP_REPIN"):
        (PINS / f"{name}.json").write_text(json.dumps({"versions": now, "output": got}, indent=1) + "\n")
    pin = pin_of(name)
    assert now == pin["versions"], (f"{name}: versions {pin['versions']} -> {now}; re-pin in the commit that "
                                    "bumped them (LIPSWEEP_REPIN=1, see the module docstring)")
    found = differences(got, pin["output"], name)
    assert not found, (f"{name}: the output of {', '.join(modules)} changed but no ALGORITHM was raised: bump the "
                       f"changed module's, then re-pin. First differences: {found[:5]}")


def test_a_pin_still_catches_a_one_percent_change_of_the_denoising_sigma(tmp_path, monkeypatch):
    import lipsweep.problems.tasks

    monkeypatch.setattr(lipsweep.problems.tasks, "DENOISE_SIGMA", lipsweep.problems.tasks.DENOISE_SIGMA * 1.01)
    got, pinned = json.loads(json.dumps(_observations(tmp_path))), pin_of("observations")["output"]
    for row, pin in zip(got, pinned):  # every denoising observation is caught, and only those changed
        assert bool(differences(row, pin)) == (row[0] == "denoise"), row
    dense = differences(json.loads(json.dumps(_chain(tmp_path, levels=0))), pin_of("dense_dip")["output"])
    assert any("psnr" in d for d in dense)  # the fits see it too, not only the observation


def test_a_pin_still_catches_a_changed_pruning_rule(tmp_path, monkeypatch):
    """IMP's successor by layer-wise instead of global magnitude: the masks golden must fail on the masks."""
    from lipsweep.priors import conv_weights
    from lipsweep.pruning import methods as pruning

    def layerwise(model, mask, keep, frozen=()):
        weights = conv_weights(model)
        return pruning.keep_top_per_layer({n: weights[n].detach().abs() for n in mask.masks}, mask, keep, frozen)

    monkeypatch.setitem(pruning.METHODS._entries, "imp", pruning.MaskMethod(successor=layerwise))
    store = TrunkStore(tmp_path / "store")
    got = [_level(r, store) for r in run_trial(TrialConfig(**TINY, method="imp", levels=2), Tickets(store))]
    pinned = dict(pin_of("masks")["output"])["imp"]
    found = differences(json.loads(json.dumps(got)), pinned)
    assert any(d.startswith(("[1].mask", "[2].mask")) for d in found), found


def test_an_edited_module_gives_new_keys_only_to_what_it_produces(monkeypatch):
    import lipsweep.fitting.fit
    import lipsweep.kinds.gan.kind
    import lipsweep.pruning.methods

    trial, gan = TrialConfig(), TrialConfig(kind="gan", model="pggan", task="cs", levels=1)
    keys = (ChainConfig().dense_key, ChainConfig().chain_key, trial.key)  # a config's keys are computed once:
    assert keys == ("6a14fe25cafbd808", "30bc3d8932da2278", "8d6f5300cfbaf7b3")  # new configs see the bump
    monkeypatch.setattr(lipsweep.pruning.methods, "ALGORITHM", 2)
    assert ChainConfig().dense_key == keys[0] and ChainConfig().chain_key != keys[1] and TrialConfig().key != keys[2]
    monkeypatch.setattr(lipsweep.pruning.methods, "ALGORITHM", 1)
    monkeypatch.setattr(lipsweep.fitting.fit, "ALGORITHM", 2)
    assert ChainConfig().dense_key != keys[0] and ChainConfig().chain_key != keys[1] and TrialConfig().key != keys[2]
    assert versions.code_part("dense") == {"code": {"fit": 2}} and versions.code_part("gan") == {}
    monkeypatch.setattr(lipsweep.fitting.fit, "ALGORITHM", 1)
    monkeypatch.setattr(lipsweep.kinds.gan.kind, "ALGORITHM", 3)
    assert TrialConfig().key == keys[2] and TrialConfig(**gan.as_dict()).key != gan.key


def test_the_targets_code_enters_only_the_keys_of_trials_that_fit_another_target(monkeypatch):
    """targets.py decides nothing when the image itself is fitted: its version 2 (the noisy target drawn in
    float64, issue 24) left every image-target key as it was."""
    import lipsweep.problems.targets

    noisy = TrialConfig(target="noisy")
    keys = (TrialConfig().key, TrialConfig().chain().dense_key, noisy.key, noisy.chain().dense_key)
    assert keys[:2] == ("8d6f5300cfbaf7b3", "6a14fe25cafbd808")  # as pinned before the bump
    monkeypatch.setattr(lipsweep.problems.targets, "ALGORITHM", 3)
    again = (TrialConfig().key, TrialConfig().chain().dense_key, TrialConfig(target="noisy").key,
             TrialConfig(target="noisy").chain().dense_key)
    assert again[:2] == keys[:2] and again[2] != keys[2] and again[3] != keys[3]


def test_an_edited_module_refits_and_keeps_the_old_entry(tmp_path, monkeypatch):
    import lipsweep.fitting.fit

    tk = Tickets(TrunkStore(tmp_path))
    trial = TrialConfig(**TINY, levels=0)
    first = list(run_trial(trial, tk))[0]
    assert tk.fits == 1 and list(run_trial(TrialConfig(**TINY, levels=0), tk))[0].to_dict() == first.to_dict()
    assert tk.fits == 1  # the same code: loaded
    monkeypatch.setattr(lipsweep.fitting.fit, "ALGORITHM", 2)
    second = list(run_trial(TrialConfig(**TINY, levels=0), tk))[0]
    assert tk.fits == 2 and second.where != first.where
    assert (tmp_path / first.where).is_dir() and (tmp_path / second.where).is_dir()
