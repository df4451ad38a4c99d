"""The cache knows the code (issue 15): every result-affecting module declares an algorithm version that
enters the keys of what it produces, and a pinned output per module fails this test when it changes without
a version bump. Tiny scale: width 4, 64 px, a few iterations (the digests round metrics to 3 decimals)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from lipsweep import versions
from lipsweep.config import ChainConfig
from lipsweep.fit import prepare
from lipsweep.store import TrunkStore, content_key
from lipsweep.targets import TARGETS
from lipsweep.tasks import pixel_hash, to_pixels
from lipsweep.tickets import Tickets
from lipsweep.trial import TrialConfig, run_trial

TINY = dict(image="Set5/baby", size=64, width=4, iters=6)


def _rounded(rec) -> dict:
    return {"mask": rec.mask_hash, "sparsity": round(rec.sparsity, 6),
            **{k: round(v, 3) for k, v in sorted(rec.metrics.items()) if isinstance(v, float) and k != "seconds"}}


def _observations(tmp_path) -> list:
    out = []
    for task in ("denoise", "inpaint", "sr4", "inpaint_centre", "fit"):
        for target in TARGETS:
            prep = prepare(TrialConfig(**TINY, task=task, target=target).chain().run)
            out.append([task, target, pixel_hash(to_pixels(prep.problem.observation))])
    return out


def _chain(tmp_path, **kw) -> list:
    tk = Tickets(TrunkStore(tmp_path / "store"))
    return [_rounded(r) for r in run_trial(TrialConfig(**{**TINY, "levels": 1, **kw}), tk)]


def _masks(tmp_path) -> list:
    tk = Tickets(TrunkStore(tmp_path / "store"))
    return [[m, [r.mask_hash for r in run_trial(TrialConfig(**TINY, method=m, levels=2, synflow_rounds=3), tk)]]
            for m in ("imp", "random", "random_profile", "snip", "synflow", "synflow_layerwise")]


def _gan(tmp_path) -> list:
    from lipsweep.priors.pggan import Discriminator, Generator, GeneratorSpec, save_checkpoint

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
    return [_rounded(r) for r in run_trial(trial, Tickets(TrunkStore(tmp_path / "store")))]


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
# Re-pin after a deliberate change: bump the changed module's ALGORITHM, run this file, copy the digest it prints.
PINS = {
    "observations": ({"images": 1, "targets": 1, "tasks": 1}, "33e130f62489987c"),
    "dense_dip": ({"fit": 1, "outputs": 1, "metrics": 1, "priors.base": 1, "priors.dip": 1, "trunk": 1}, "c3c0cc9f1eaae487"),
    "dense_deep_decoder": ({"priors.deep_decoder": 1}, "d7038d6dc691516a"),
    "masks": ({"pruning": 1, "masks": 1, "chains": 1}, "ebc85abe89ba9f09"),
    "transfer": ({"transfer": 1}, "58929fada1aec76f"),
    "gan": ({"generators": 1, "priors.pggan": 1, "gan_train": 1, "gan": 1, "latent": 1}, "2c3722d8cd470701"),
    "classify": ({"classify_data": 1, "classifier": 1, "classify": 1}, "90b1127d94d4a0a2"),
}


def test_every_versioned_module_is_pinned_by_an_output():
    pinned = {m for mods, _ in GOLDEN.values() for m in mods}
    assert pinned == set(versions.MODULES) and set(PINS) == set(GOLDEN)


@pytest.mark.parametrize("name", list(GOLDEN))
def test_a_pinned_output_changes_only_with_a_version_bump(name, tmp_path):
    modules, compute = GOLDEN[name]
    now = {m: versions.version(m) for m in modules}
    digest = content_key(compute(tmp_path))
    was, pinned = PINS[name]
    assert now == was, (f"{name}: versions {was} -> {now}; re-pin PINS[{name!r}] = ({now}, {digest!r}) in the "
                        "commit that bumped them")
    assert digest == pinned, (f"{name}: the output of {', '.join(modules)} changed ({pinned} -> {digest}) but no "
                              f"ALGORITHM was raised: bump the changed module's, then re-pin ({now}, {digest!r})")


def test_an_edited_module_gives_new_keys_only_to_what_it_produces(monkeypatch):
    import lipsweep.fit
    import lipsweep.gan
    import lipsweep.pruning

    trial, gan = TrialConfig(), TrialConfig(kind="gan", model="pggan", task="cs", levels=1)
    keys = (ChainConfig().dense_key, ChainConfig().chain_key, trial.key)  # a config's keys are computed once:
    assert keys == ("6a14fe25cafbd808", "30bc3d8932da2278", "8d6f5300cfbaf7b3")  # new configs see the bump
    monkeypatch.setattr(lipsweep.pruning, "ALGORITHM", 2)
    assert ChainConfig().dense_key == keys[0] and ChainConfig().chain_key != keys[1] and TrialConfig().key != keys[2]
    monkeypatch.setattr(lipsweep.pruning, "ALGORITHM", 1)
    monkeypatch.setattr(lipsweep.fit, "ALGORITHM", 2)
    assert ChainConfig().dense_key != keys[0] and ChainConfig().chain_key != keys[1] and TrialConfig().key != keys[2]
    assert versions.code_part("dense") == {"code": {"fit": 2}} and versions.code_part("gan") == {}
    monkeypatch.setattr(lipsweep.fit, "ALGORITHM", 1)
    monkeypatch.setattr(lipsweep.gan, "ALGORITHM", 3)
    assert TrialConfig().key == keys[2] and TrialConfig(**gan.as_dict()).key != gan.key


def test_an_edited_module_refits_and_keeps_the_old_entry(tmp_path, monkeypatch):
    import lipsweep.fit

    tk = Tickets(TrunkStore(tmp_path))
    trial = TrialConfig(**TINY, levels=0)
    first = list(run_trial(trial, tk))[0]
    assert tk.fits == 1 and list(run_trial(TrialConfig(**TINY, levels=0), tk))[0].to_dict() == first.to_dict()
    assert tk.fits == 1  # the same code: loaded
    monkeypatch.setattr(lipsweep.fit, "ALGORITHM", 2)
    second = list(run_trial(TrialConfig(**TINY, levels=0), tk))[0]
    assert tk.fits == 2 and second.where != first.where
    assert (tmp_path / first.where).is_dir() and (tmp_path / second.where).is_dir()
