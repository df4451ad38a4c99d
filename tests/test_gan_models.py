"""The PGGAN of the GAN experiments (Section 5): pytorch_GAN_zoo's checkpoint layout, refusal of other files,
what generator IMP prunes, masked fine-tuning, and the shipped small generator."""

from __future__ import annotations

import copy
import hashlib
import sys
import types
from pathlib import Path

import pytest
import torch
from PIL import Image

import lipsweep
from lipsweep.core.errors import ConfigError
from lipsweep.kinds.gan.train import fine_tune, load_faces, split, train
from lipsweep.priors import ModelConfig, build_model
from lipsweep.priors.pggan import (
    Discriminator,
    Generator,
    GeneratorSpec,
    load_checkpoint,
    masked_weights,
    pggan_256_spec,
    save_checkpoint,
)

SHIPPED = Path(lipsweep.__file__).parent / "data" / "generators" / "faces32.pt"
SHIPPED_SPEC = dict(latent=64, depths=(128, 64, 32, 16), out_channels=1, loss="Logistic", r1=0.1, lr=0.002)
TINY = GeneratorSpec(latent=8, depths=(8, 4, 2), out_channels=1)


def nets(spec: GeneratorSpec, seed: int = 0) -> tuple[Generator, Discriminator]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Generator(spec), Discriminator(spec)


def zoo_keys(depths: tuple[int, ...]) -> tuple[list[str], list[str]]:
    """The state-dict keys GNet / DNet (models/networks/progressive_conv_net.py) have after growing to
    len(depths) scales, in their registration order: scaleLayers, to/fromRGBLayers, then the scale-0 layers."""
    wb = lambda name: [f"{name}.module.weight", f"{name}.module.bias"]  # noqa: E731
    scales = [k for i in range(len(depths) - 1) for j in (0, 1) for k in wb(f"scaleLayers.{i}.{j}")]
    g = scales + [k for i in range(len(depths)) for k in wb(f"toRGBLayers.{i}")] + wb("formatLayer") \
        + wb("groupScale0.0")
    d = scales + [k for i in range(len(depths)) for k in wb(f"fromRGBLayers.{i}")] + wb("decisionLayer") \
        + wb("groupScaleZero.0") + wb("groupScaleZero.1")
    return g, d


def test_pggan_256_saves_in_the_zoo_layout_and_loads_back_identically(tmp_path):
    spec = pggan_256_spec()
    assert (spec.size, spec.latent, spec.out_channels, spec.minibatch_std) == (256, 512, 3, True)
    g, d = nets(spec)
    path = tmp_path / "pgan.pt"
    save_checkpoint(str(path), spec, g, d, {"data": "random"})
    raw = torch.load(path, weights_only=True)
    assert {"config", "netG", "netD"} <= set(raw)
    assert raw["config"]["depthScale0"] == 512 and raw["config"]["depthOtherScales"] == [512, 512, 512, 256, 128, 64]
    assert raw["config"]["latentVectorDim"] == 512 and raw["config"]["miniBatchStdDev"] is True
    assert (list(raw["netG"]), list(raw["netD"])) == zoo_keys(spec.depths)
    shapes = {k: tuple(v.shape) for k, v in {**raw["netG"], **{"D." + k: v for k, v in raw["netD"].items()}}.items()}
    assert shapes["formatLayer.module.weight"] == (16 * 512, 512)
    assert shapes["groupScale0.0.module.weight"] == (512, 512, 3, 3)
    assert shapes["scaleLayers.5.0.module.weight"] == (64, 128, 3, 3)
    assert shapes["toRGBLayers.6.module.weight"] == (3, 64, 1, 1)
    assert shapes["D.fromRGBLayers.6.module.weight"] == (64, 3, 1, 1)
    assert shapes["D.scaleLayers.5.1.module.weight"] == (128, 64, 3, 3)
    assert shapes["D.groupScaleZero.0.module.weight"] == (512, 513, 3, 3)  # + the mini-batch std dev channel
    assert shapes["D.groupScaleZero.1.module.weight"] == (512, 16 * 512)
    assert shapes["D.decisionLayer.module.weight"] == (1, 512)
    ck = load_checkpoint(str(path))
    assert ck.spec == spec and ck.meta["data"] == "random" and not ck.generator.training
    assert ck.content_hash == hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    z = torch.randn(1, 512, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = g(z)
        assert out.shape == (1, 3, 256, 256) and torch.equal(ck.generator(z), out)


def test_the_content_hash_changes_with_any_byte(tmp_path):
    g, d = nets(TINY)
    path = tmp_path / "a.pt"
    save_checkpoint(str(path), TINY, g, d, {})
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 1  # inside the tensor data: still loads
    (tmp_path / "b.pt").write_bytes(raw)
    assert load_checkpoint(str(path)).content_hash != load_checkpoint(str(tmp_path / "b.pt")).content_hash


def test_a_checkpoint_as_the_zoo_pickles_it_loads_with_its_averaged_generator(tmp_path, monkeypatch):
    """BaseGAN.save pickles a models.utils.config.BaseConfig object and the avgG state dict."""
    module = types.ModuleType("models.utils.config")
    base = type("BaseConfig", (), {"__module__": "models.utils.config"})
    module.BaseConfig = base
    for name in ("models", "models.utils", "models.utils.config"):
        monkeypatch.setitem(sys.modules, name, module if name.endswith("config") else types.ModuleType(name))
    config = base()
    vars(config).update(TINY.to_config())
    g, d = nets(TINY)
    avg, _ = nets(TINY, seed=1)
    torch.save({"config": config, "netG": g.state_dict(), "netD": d.state_dict(), "avgG": avg.state_dict()},
               tmp_path / "zoo.pt")
    monkeypatch.undo()
    ck = load_checkpoint(str(tmp_path / "zoo.pt"))
    z = torch.randn(2, TINY.latent)
    assert ck.spec == TINY and ck.meta["generator_weights"] == "avgG"
    with torch.no_grad():
        assert torch.equal(ck.generator(z), avg(z))


def test_legacy_key_names_load_as_the_zoos_loader_maps_them(tmp_path):
    g, d = nets(TINY)
    legacy = {k.replace(".module.", "."): v for k, v in g.state_dict().items()}
    torch.save({"config": TINY.to_config(), "netG": legacy, "netD": d.state_dict()}, tmp_path / "old.pt")
    z = torch.randn(2, TINY.latent)
    with torch.no_grad():
        assert torch.equal(load_checkpoint(str(tmp_path / "old.pt")).generator(z), g(z))


def _other_files(tmp_path: Path) -> dict[str, Path]:
    g, d = nets(TINY)
    files = {"plain state dict": g.state_dict(), "dip state dict": build_model(
        ModelConfig(kind="dip", width=4, levels=2, skip=2, input_depth=4), seed=0).state_dict()}
    shapes = TINY.to_config() | {"depthOtherScales": [4, 4]}
    files["shapes not the config's"] = {"config": shapes, "netG": g.state_dict(), "netD": d.state_dict()}
    out = {}
    for name, obj in files.items():
        out[name] = tmp_path / f"{name}.pt"
        torch.save(obj, out[name])
    out["text file"] = tmp_path / "notes.txt"
    out["text file"].write_text("not a checkpoint\n")
    out["missing file"] = tmp_path / "absent.pt"
    return out


def test_other_files_are_refused_on_one_line_naming_the_field(tmp_path):
    for name, path in _other_files(tmp_path).items():
        with pytest.raises(ConfigError) as err:
            load_checkpoint(str(path))
        assert err.value.field == "generator", name
        assert "\n" not in str(err.value) and "allowed: a file with config, netG and netD" in str(err.value), name
        if name != "missing file":
            assert "is not a pytorch_GAN_zoo PGAN checkpoint" in str(err.value), name
    with pytest.raises(ConfigError) as err:
        load_checkpoint(str(tmp_path / "notes.txt"), field="gan")
    assert err.value.field == "gan"


def test_masked_weights_are_the_convs_the_final_scale_uses():
    g, _ = nets(TINY)
    w = masked_weights(g)
    assert list(w) == ["scaleLayers.0.0.module", "scaleLayers.0.1.module", "scaleLayers.1.0.module",
                       "scaleLayers.1.1.module", "toRGBLayers.2.module", "groupScale0.0.module"]
    # 8->8 at 4 px, 8->4 and 4->4 at 8 px, 4->2 and 2->2 at 16 px (3x3), toRGB 2->1 (1x1)
    assert sum(t.numel() for t in w.values()) == 8 * 8 * 9 + 8 * 4 * 9 + 4 * 4 * 9 + 4 * 2 * 9 + 2 * 2 * 9 + 2
    assert all(t is dict(g.named_modules())[name].weight for name, t in w.items())


def _fine_tuned(g: Generator, d: Discriminator, data: torch.Tensor, mask: dict, seed: int) -> Generator:
    g, d = copy.deepcopy(g), copy.deepcopy(d)
    losses = fine_tune(g, d, data, epochs=2, fraction=0.5, mask=mask, seed=seed, batch=4)
    assert losses["steps"] == 4 and all(torch.isfinite(torch.tensor(v)) for v in losses.values())
    return g


def test_fine_tune_keeps_pruned_weights_exactly_zero_and_is_deterministic():
    spec = GeneratorSpec(latent=8, depths=(8, 4, 4), out_channels=1)
    g, d = nets(spec)
    data = load_faces(None, 16)[:16]
    gen = torch.Generator().manual_seed(0)
    mask = {name: torch.rand(w.shape, generator=gen) < 0.5 for name, w in masked_weights(g).items()}
    tuned = _fine_tuned(g, d, data, mask, seed=3)
    before, after = masked_weights(g), masked_weights(tuned)
    for name, m in mask.items():
        assert torch.count_nonzero(after[name][~m]) == 0
        assert not torch.equal(after[name][m], before[name][m])
    assert not torch.equal(tuned.formatLayer.module.weight, g.formatLayer.module.weight)
    again = _fine_tuned(g, d, data, mask, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(tuned.state_dict().values(), again.state_dict().values()))


def test_faces_and_the_held_out_split(tmp_path):
    faces = load_faces(None, 32)
    assert faces.shape == (100, 1, 32, 32) and -1 <= faces.min() < faces.max() <= 1
    assert split(100, 20) == (list(range(80)), list(range(80, 100)))
    with pytest.raises(ConfigError, match="holdout"):
        split(10, 10)
    (tmp_path / "sub").mkdir()
    Image.new("RGB", (40, 30), (255, 0, 0)).save(tmp_path / "sub" / "b.png")
    Image.new("RGB", (20, 20), (0, 0, 255)).save(tmp_path / "a.jpg")
    x = load_faces(str(tmp_path), 8)
    assert x.shape == (2, 3, 8, 8) and x[0, 2].mean() > 0.9 and x[1, 0].mean() > 0.9  # sorted: a.jpg, sub/b.png
    (tmp_path / "c.png").write_text("not an image")
    with pytest.raises(ConfigError, match="cannot read image"):
        load_faces(str(tmp_path), 8)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no images"):
        load_faces(str(tmp_path / "empty"), 8)


def test_the_shipped_generator_loads_with_its_documented_spec():
    assert SHIPPED.stat().st_size < 5 * 2**20
    ck = load_checkpoint(str(SHIPPED))
    assert {k: getattr(ck.spec, k) for k in SHIPPED_SPEC} == SHIPPED_SPEC and ck.spec.size == 32
    assert ck.meta["data"] == "lfw" and ck.meta["holdout"] == 20 and ck.meta["train_images"] == 80
    with torch.no_grad():
        x = ck.generator(torch.randn(4, ck.spec.latent))
    assert x.shape == (4, 1, 32, 32) and x.abs().max() < 3


def test_train_writes_a_loadable_checkpoint(tmp_path):
    out = tmp_path / "g.pt"
    ck = train(None, 32, str(out), steps=3, seed=0, latent=8, depths=(8, 4, 4, 2), holdout=20, batch=4, log=None)
    assert out.is_file() and ck.meta["steps"] == 3 and ck.meta["train_images"] == 80
    assert load_checkpoint(str(out)).content_hash == ck.content_hash and ck.spec.depths == (8, 4, 4, 2)
    with pytest.raises(ConfigError, match="depths"):
        train(None, 32, str(out), steps=1, seed=0, latent=8, depths=(8, 4), holdout=20, batch=4, log=None)
