import json

import numpy as np
import pytest
import torch

from lipsweep.core.errors import ConfigError
from lipsweep.priors import ModelConfig, build_model
from lipsweep.pruning.masks import MaskSet, load, save


def small_mask(seed=0, density=0.3):
    model = build_model(ModelConfig(width=8), seed=0)
    g = torch.Generator().manual_seed(seed)
    dense = MaskSet.dense(model)
    return model, MaskSet({n: torch.rand(m.shape, generator=g) < density for n, m in dense.masks.items()},
                          {"method": "test", "level": 2})


def test_roundtrip_keeps_bits_meta_and_hash(tmp_path):
    model, mask = small_mask()
    save(mask, tmp_path / "m")
    back = load(tmp_path / "m.npz", model)
    assert back.hash == mask.hash and dict(back.meta) == {"method": "test", "level": 2}
    assert all(torch.equal(back.masks[n], mask.masks[n]) for n in mask.masks)
    info = json.loads((tmp_path / "m.json").read_text())
    assert info["density"] == pytest.approx(mask.density)
    assert set(info["layer_densities"]) == set(mask.masks)


def test_density_and_layer_densities_are_counted_not_assumed():
    _, mask = small_mask()
    kept = sum(int(m.sum()) for m in mask.masks.values())
    assert mask.kept == kept and mask.density == kept / mask.total
    name = next(iter(mask.masks))
    assert mask.layer_densities()[name] == pytest.approx(mask.masks[name].float().mean().item())


def test_hash_changes_with_one_bit():
    _, mask = small_mask()
    name = next(iter(mask.masks))
    flipped = {n: m.clone() for n, m in mask.masks.items()}
    flipped[name].view(-1)[0] ^= True
    assert MaskSet(flipped).hash != mask.hash


def test_corrupted_file_is_refused_with_a_clear_error(tmp_path):
    _, mask = small_mask()
    save(mask, tmp_path / "m")
    data = dict(np.load(tmp_path / "m.npz"))
    name = next(k for k in data if not k.endswith("__shape__"))
    data[name] = data[name] ^ 1
    np.savez(tmp_path / "m.npz", **data)
    with pytest.raises(ConfigError, match="does not match its recorded hash"):
        load(tmp_path / "m")
    (tmp_path / "m.npz").write_bytes(b"garbage")
    with pytest.raises(ConfigError, match="corrupted or not a lipsweep mask"):
        load(tmp_path / "m")
    with pytest.raises(ConfigError, match="no mask at"):
        load(tmp_path / "missing")


def test_mask_for_another_model_is_refused(tmp_path):
    _, mask = small_mask()
    save(mask, tmp_path / "m")
    with pytest.raises(ConfigError, match=r"levels.0.down1.conv has shape \(8, 32, 3, 3\), the model.s weight \(16, 32, 3, 3\)"):
        load(tmp_path / "m", build_model(ModelConfig(width=16), seed=0))
    with pytest.raises(ConfigError, match="does not fit the model"):
        load(tmp_path / "m", build_model(ModelConfig(kind="deep_decoder", width=8), seed=0))
