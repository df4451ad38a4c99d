"""Every registry entry keeps the shared invariants (priors, tasks, mask methods, trial kinds, recipes), and
a mask method registered from a plugin file runs in a chain and in a real Ray Tune sweep unchanged."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_run
from lipsweep.analysis.report import PARTS, RECIPES
from mlflow.tracking import MlflowClient

from lipsweep.core.errors import ConfigError
from lipsweep.core.registry import load_plugin
from lipsweep.fitting.config import default_fit
from lipsweep.kinds.base import KINDS, TrialConfig
from lipsweep.lottery.chain import ChainConfig
from lipsweep.lottery.store import TrunkStore
from lipsweep.lottery.tickets import Tickets
from lipsweep.priors import PRIORS, ModelConfig, build_model, counts, make_input
from lipsweep.problems.tasks import TASKS, make_problem
from lipsweep.pruning.masks import MaskSet
from lipsweep.pruning.methods import (
    METHODS,
    MaskRequest,
    keep_top,
    level_counts,
    prunable_total,
)

PLUGIN = Path(__file__).parent / "plugins" / "toy_methods.py"


@pytest.mark.parametrize("name", [n for n in PRIORS.names() if not PRIORS.get(n).pretrained])
@pytest.mark.parametrize("changes", [{}, {"width": 8}, {"width": 12, "out_channels": 1}, {"skip": 0, "input_depth": 5}])
def test_prior_parameter_count_matches_its_declared_formula(name, changes):
    cfg = ModelConfig(kind=name, **changes)
    model = build_model(cfg, seed=0)
    assert counts(model)["params"] == PRIORS.get(name).params(cfg)
    out = model(make_input(cfg, 64, 96, seed=0))
    assert out.shape == (1, cfg.out_channels, 64, 96)


def test_formulas_give_the_papers_counts():
    assert PRIORS.get("dip").params(ModelConfig()) == 2_217_831
    assert PRIORS.get("deep_decoder").params(ModelConfig(kind="deep_decoder", width=320)) == 619_200


@pytest.mark.parametrize("name", TASKS.names())
def test_operator_maps_shapes_as_declared_and_is_linear_where_declared(name):
    task = TASKS.get(name)
    rng = np.random.default_rng(0)
    clean = rng.random((64, 96, 3)).astype(np.float32)
    p = make_problem(name, clean, seed=0)
    h, w = 64 // task.scale, 96 // task.scale
    x, y = torch.rand(1, 3, 64, 96), torch.rand(1, 3, 64, 96)
    measured = (1, p.observation.shape[1]) if p.observation.dim() == 2 else (1, 3, h, w)  # cs: a vector of m
    assert tuple(p.operator(x).shape) == tuple(p.observation.shape) == measured
    assert tuple(p.baseline.shape) == tuple(p.clean.shape) == (1, 3, 64, 96)
    if task.linear:
        lhs = p.operator(2.5 * x - 0.5 * y)
        assert torch.allclose(lhs, 2.5 * p.operator(x) - 0.5 * p.operator(y), atol=1e-5)
    fit = default_fit(name)
    assert (fit.iters, fit.reg_noise_std, fit.ema, fit.backtrack) == (task.iters, task.reg_noise_std, task.ema,
                                                                      task.backtrack)


def _request(level: int = 2) -> tuple[MaskRequest, MaskSet]:
    cfg = ModelConfig(width=8)
    model = build_model(cfg, seed=0)
    dense = MaskSet.dense(model)
    keep = level_counts(prunable_total(dense), level)[level]
    clean = np.random.default_rng(1).random((64, 64, 3)).astype(np.float32)
    z = make_input(cfg, 64, 64, seed=0)
    profile = MaskSet(keep_top({n: torch.rand(m.shape) for n, m in dense.masks.items()}, dense, keep))
    req = MaskRequest(level=level, keep=keep, seed=3, dense=dense, frozen=(), model=lambda: build_model(cfg, 0),
                      problems=[make_problem("denoise", clean, 0)], inputs=[z], profile=lambda other: profile,
                      options={"synflow_rounds": 5})
    return req, dense


@pytest.mark.parametrize("name", METHODS.names())
def test_mask_method_keeps_the_requested_count_and_returns_a_new_mask(name):
    method = METHODS.get(name)
    req, dense = _request()
    if method.sequential:  # one step from a level-1 mask: remaining - round(0.2 * remaining), within it
        start = MaskSet(keep_top({n: torch.rand(m.shape) for n, m in dense.masks.items()}, dense,
                                 level_counts(prunable_total(dense), 1)[1]))
        bits = {n: m.clone() for n, m in start.masks.items()}
        made = MaskSet(method.successor(req.model(), start, start.kept - round(0.2 * start.kept), ()))
        assert made.kept == start.kept - round(0.2 * start.kept)
        assert all(not (made.masks[n] & ~start.masks[n]).any() for n in made.masks)  # pruned stay pruned
        assert all(torch.equal(bits[n], start.masks[n]) for n in bits)  # the input mask is untouched
        return
    made = method.make(req)
    made = made if isinstance(made, MaskSet) else MaskSet(made)
    assert set(made.masks) == set(dense.masks)
    if method.fixed:  # a control: the same mask whatever the count, strictly inside the dense net
        assert 0 < made.kept < dense.total
    else:
        assert abs(made.kept - req.keep) <= method.layer_slack * len(dense.masks)
    assert dense.kept == dense.total  # the dense mask it was given is unchanged
    assert made.masks is not dense.masks


def test_unknown_names_list_what_is_allowed():
    for registry, name, field in [(PRIORS, "gan", "model"), (TASKS, "deblur", "task"), (METHODS, "grasp", "method"),
                                  (KINDS, "sgld", "kind")]:
        with pytest.raises(ConfigError) as err:
            registry.get(name)
        assert err.value.field == field and ", ".join(registry.names()) in err.value.message


def test_a_deferred_entry_is_listed_at_once_and_imported_on_first_get(tmp_path, monkeypatch):
    """``defer``: the name is allowed (and listed in errors) before its module loads; ``get`` imports the
    module, whose own ``register`` call replaces the placeholder; a module that registers nothing is an error."""
    from lipsweep.problems.targets import TARGETS

    (tmp_path / "toy_target_plugin.py").write_text("from lipsweep.problems.targets import TARGETS\n"
                                                   "TARGETS.register('toy', lambda clean, g: clean[::-1])\n")
    (tmp_path / "toy_target_empty.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    TARGETS.defer("toy", "toy_target_plugin")
    TARGETS.defer("void", "toy_target_empty")
    try:
        assert {"toy", "void"} <= set(TARGETS.names()) and "toy_target_plugin" not in sys.modules
        with pytest.raises(ConfigError) as err:
            TARGETS.get("grey")
        assert "toy" in err.value.message and "toy_target_plugin" not in sys.modules
        assert TARGETS.get("toy")([1, 2], None) == [2, 1] and "toy_target_plugin" in sys.modules
        with pytest.raises(RuntimeError, match="did not register target 'void'"):
            TARGETS.get("void")
    finally:
        TARGETS.unregister("toy")
        TARGETS.unregister("void")
        sys.modules.pop("toy_target_plugin", None)
        sys.modules.pop("toy_target_empty", None)


def test_the_torch_kinds_load_on_first_use():
    """Kinds 'gan', 'classify' and 'classify_transfer' are named in ``kinds/__init__.py`` and loaded from their
    modules on first use."""
    assert KINDS.names()[:5] == ("chain", "evaluation", "gan", "classify", "classify_transfer")
    assert KINDS.get("gan").products == ("gan",) and KINDS.get("classify_transfer").estimate is not None
    assert "pggan" in PRIORS and PRIORS.get("pggan").pretrained


def test_every_recipe_part_has_a_writer_and_every_kind_names_its_chains():
    assert {p for _, r in RECIPES.items() for p in r.parts} <= set(PARTS.names())
    for name in KINDS.names():
        if KINDS.get(name).estimate is not None:  # no DIP chains (kind 'gan'): it prices its own work
            continue
        found, evaluated_on = KINDS.get(name).chains(TrialConfig(kind=name, size=64, width=8).typed)
        assert isinstance(found, ChainConfig) and (evaluated_on is None or isinstance(evaluated_on, ChainConfig))


@pytest.fixture
def toy_method():
    load_plugin(str(PLUGIN))
    yield "largest_gradient"
    METHODS.unregister("largest_gradient")
    sys.modules.pop("lipsweep_plugin_toy_methods", None)


def test_a_plugin_method_runs_a_chain_with_imps_counts(toy_method, tmp_path):
    tickets = Tickets(TrunkStore(tmp_path / "store"))
    cfg = ChainConfig(run=tiny_run(iters=20, width=8), method=toy_method)
    recs = tickets.chain(cfg, 2).records
    assert [r.kept for r in recs] == level_counts(recs[0].total, 2)
    assert [r.method for r in recs] == ["dense", toy_method, toy_method]
    snip = tickets.mask(replace(cfg, method="snip"), 2)
    assert tickets.mask(cfg, 2).kept == snip.kept and tickets.mask(cfg, 2).hash != snip.hash


def test_a_plugin_method_runs_in_a_smoke_sweep_without_touching_lipsweep(toy_method, tmp_path, ray_local):
    from lipsweep.experiments.spec import load
    from lipsweep.sweep.options import SweepOptions
    from lipsweep.sweep.tune import run_sweep

    spec = {"name": "toy", "description": "a plugin mask method", "paper": "none", "kind": "chain",
            "plugins": [str(PLUGIN)], "metric": "psnr_ema", "base": {"image": "Set5/baby", "task": "denoise",
                                                                    "method": toy_method, "levels": 2},
            "axes": {"seed": [0, 1]}, "profiles": {"paper": {}, "local": {},
                                                   "smoke": {"base": {"size": 64, "width": 8, "iters": 20}}}}
    (tmp_path / "toy.yaml").write_text(json.dumps(spec))
    exp = load(str(tmp_path / "toy.yaml"), "smoke")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    opts = SweepOptions(store=str(tmp_path / "store"), storage=str(tmp_path / "tune"), tracking_uri=uri, quiet=True)
    summary = run_sweep(exp, opts)
    assert len(summary.finished) == 2 and not summary.failed
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("lipsweep/toy").experiment_id],
                              filter_string="tags.`lipsweep.role` = 'trial'")
    assert len(runs) == 2
    for run in runs:
        kept = [m.value for m in sorted(client.get_metric_history(run.info.run_id, "kept"), key=lambda m: m.step)]
        assert kept == level_counts(int(kept[0]), 2) and run.data.params["method"] == toy_method
