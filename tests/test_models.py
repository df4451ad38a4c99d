import pytest
import torch
from torch import nn

from lipsweep.core.errors import ConfigError
from lipsweep.priors import (
    ModelConfig,
    build_model,
    conv_weights,
    counts,
    input_shape,
    make_input,
)


def test_default_dip_has_exactly_the_papers_parameter_count():
    model = build_model(ModelConfig(), seed=0)
    c = counts(model)
    assert c["params"] == 2_217_831
    assert c["conv_layers"] == 26
    assert c["conv_weights"] == 2_208_768
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert sum(m.bias.numel() for m in convs) == 2_583
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == 30
    assert sum(p.numel() for m in bns for p in m.parameters()) == 6_480


def test_input_convs_match_the_reference_codes_exclusion_count():
    w = conv_weights(build_model(ModelConfig(), seed=0))
    assert w["levels.0.skip.conv"].numel() + w["levels.0.down1.conv"].numel() == 36_992


@pytest.mark.parametrize("k,expected", [(128, 100_224), (320, 619_200)])
def test_deep_decoder_parameter_counts(k, expected):
    c = counts(build_model(ModelConfig(kind="deep_decoder", width=k), seed=0))
    assert c["params"] == expected == 6 * k * k + 15 * k
    assert c["conv_layers"] == 7


@pytest.mark.parametrize("h,w", [(64, 96), (96, 64), (128, 64)])
def test_dip_output_matches_non_square_input(h, w):
    cfg = ModelConfig(width=8)
    model = build_model(cfg, seed=0)
    out = model(make_input(cfg, h, w, seed=0))
    assert out.shape == (1, 3, h, w)
    assert 0 < out.min() and out.max() < 1


def test_deep_decoder_input_is_1_32_of_the_image_and_output_full_size():
    cfg = ModelConfig(kind="deep_decoder", width=16)
    assert input_shape(cfg, 64, 96) == (1, 16, 2, 3)
    out = build_model(cfg, seed=0)(make_input(cfg, 64, 96, seed=0))
    assert out.shape == (1, 3, 64, 96)


def test_theta0_and_z_depend_only_on_seed_and_leave_global_rng_alone():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = build_model(ModelConfig(width=8), seed=5)
    assert torch.equal(torch.rand(1), before)
    b = build_model(ModelConfig(width=8), seed=5)
    c = build_model(ModelConfig(width=8), seed=6)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["head.weight"], sc["head.weight"])
    z = make_input(ModelConfig(), 64, 64, seed=1)
    assert torch.equal(z, make_input(ModelConfig(), 64, 64, seed=1))
    assert 0 <= z.min() and z.max() < 0.1


@pytest.mark.parametrize("field,kwargs", [("model", {"kind": "unet"}), ("width", {"width": 0}),
                                          ("levels", {"levels": -1}), ("skip", {"skip": -2})])
def test_bad_model_config_names_the_field(field, kwargs):
    with pytest.raises(ConfigError) as err:
        ModelConfig(**kwargs)
    assert err.value.field == field
