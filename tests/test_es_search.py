import json
import math

import optuna
import pytest
from conftest import tiny_run
from mlflow.tracking import MlflowClient

from lipsweep.cli.es_search import MLFLOW_EXPERIMENT, NO_TRACES, add_parser, cmd_es_search, experiment_keys
from lipsweep.cli.parsing import Parser
from lipsweep.core.errors import ConfigError
from lipsweep.fitting.early_stop import TRACE_ALPHAS, TRACE_WINDOWS
from lipsweep.lottery.chain import ChainConfig
from lipsweep.lottery.store import TrunkStore
from lipsweep.lottery.tickets import Tickets
from lipsweep.stopping.es_replay import FitTrace, Thresholds, default_of, discover, evaluate, score
from lipsweep.stopping.es_search import (
    METRIC_NAMES,
    best_of,
    default_study_name,
    grid,
    leave_one_out,
    search,
    seeds,
    write_outputs,
)

ITERS = 400
STORED = ("es_iter", "psnr_es", "es_gap", "es_confirmed", "es_iters_run", "es_saved", "es_peak_width")


def strict(text: str) -> dict:
    """json.loads that refuses NaN and Infinity."""
    def refuse(name):
        raise ValueError(f"non-standard JSON constant {name}")
    return json.loads(text, parse_constant=refuse)


def synthetic(image: str, peak: int, task: str = "denoise") -> FitTrace:
    """A trace whose reported PSNR peaks at index ``peak`` and whose WMV at window W has its minimum at index
    150 + W (so W = 50 finds index 200 exactly, W = 100 index 250); every EMV falls to the end (never confirms)."""
    n = ITERS
    cols = {"it": list(range(1, n + 1)), "psnr": [30.0 - ((t - peak) / 60) ** 2 for t in range(n)]}
    for w in TRACE_WINDOWS:
        cols[f"wmv_{w}"] = [math.nan if t + 1 < w else 1.0 + ((t - 150 - w) / 100) ** 2 for t in range(n)]
    for a in TRACE_ALPHAS:
        cols[f"emv_{a:g}"] = [1.0 / (t + 1) for t in range(n)]
    return FitTrace(f"syn/{image}/{task}", image, task, 0, "dense", 0, 0.0, n, Thresholds("wmv", 50, 80), False,
                    False, cols)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Three real fits: an IMP chain's dense level and level 1 (WMV, full budget), and a dense EMV fit that
    ran with es_stop and stopped at its confirmation (a truncated trace)."""
    root = tmp_path_factory.mktemp("es") / "store"
    small = {"iters": 120, "width": 8, "size": 64}
    Tickets(TrunkStore(root)).chain(ChainConfig(run=tiny_run("denoise", early_stop="wmv", es_window=25,
                                                             es_patience=30, **small)), 1)
    Tickets(TrunkStore(root)).dense(ChainConfig(run=tiny_run("denoise", early_stop="emv", es_window=25,
                                                             es_patience=10, es_alpha=0.2, es_stop=True, **small)))
    return root


def test_discovery_finds_every_traced_fit_and_its_own_thresholds_give_back_its_record(store):
    fits = discover(store)
    assert len(fits) == 3 and sorted(f.method for f in fits) == ["dense", "dense", "imp"]
    assert {f.iters for f in fits} == {120} and {f.image for f in fits} == {"Set5/baby"}
    assert {(f.ran, f.es_stop) for f in fits if f.method == "dense"} == {
        (Thresholds("emv", 25, 10, 0.2), True), (Thresholds("wmv", 25, 30, 0.1), False)}
    assert [f.truncated for f in fits if f.es_stop] == [True]
    assert [len(f.trace["it"]) < 120 for f in fits if f.es_stop] == [True]
    for fit in fits:
        done = evaluate([fit], fit.ran.early_stop, fit.ran.window, fit.ran.patience, fit.ran.alpha)
        record = json.loads((store / fit.where / "level.json").read_text())
        assert {k: done.scores[0][k] for k in STORED} == {k: record[k] for k in STORED}  # exact, not approx
    stopped = next(f for f in fits if f.truncated)
    assert json.loads((store / stopped.where / "level.json").read_text())["es_saved"] > 0
    assert discover(store, keys={"no-such-key"}) == []


def test_a_truncated_trace_refuses_a_larger_patience_and_an_unconfirmed_replay(store):
    stopped = next(f for f in discover(store) if f.truncated)
    assert len(evaluate([stopped], "emv", 25, 11, 0.2).refused) == 1  # ran with patience 10
    assert len(evaluate([stopped], "emv", 25, 10, 0.2).scores) == 1
    assert evaluate([stopped], "emv", 25, 5, 0.2).scores[0]["es_confirmed"] == 1.0
    gone = evaluate([stopped], "wmv", 100, 10)  # its first check (100) lies past the trace's end: never scored
    assert gone.scores == () and gone.refused == (stopped,)
    assert score(gone, 1.0).fits == 0 and score(gone, 1.0).refused == 1


def test_replay_scores_the_known_variance_minimum():
    fit = synthetic("A", peak=200)
    done = evaluate([fit], "wmv", 50, 10)
    assert done.scores[0]["es_iter"] == 201 and done.scores[0]["es_gap"] == 0.0
    assert done.scores[0]["es_iters_run"] == 211 and done.scores[0]["es_saved"] == ITERS - 211
    late = evaluate([fit], "wmv", 100, 10).scores[0]  # minimum at index 250: 50 past the peak
    assert late["es_gap"] == pytest.approx((50 / 60) ** 2)
    never = evaluate([fit], "wmv", 50, 250).scores[0]  # 200 + 250 > 400: not confirmed, runs the whole budget
    assert never["es_confirmed"] == 0.0 and never["es_iters_run"] == ITERS and never["es_iter"] == 201
    sc = score(evaluate([fit, synthetic("B", peak=250)], "wmv", 50, 10), cost=2.0)
    assert sc.gap == pytest.approx((50 / 60) ** 2 / 2) and sc.fraction == pytest.approx(211 / 400)
    assert sc.objective == pytest.approx(sc.gap + 2.0 * 211 / 400) and sc.fires == 2
    assert default_of(fit) == Thresholds("wmv", 50, 80)  # default_window(400) = 40: the nearest trace window


def test_the_search_beats_the_defaults_and_tries_the_seeds_first_once(tmp_path):
    fits = [synthetic("A", peak=200), synthetic("B", peak=200, task="inpaint")]
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    first = seeds(fits)
    assert first == [Thresholds("wmv", 50, 80), Thresholds("wmv", 100, 80), Thresholds("emv", 100, 80, 0.1),
                     Thresholds("wmv", 100, 80, 0.1, 100)]  # the EMA's lag of 100 (a fit gets 80: the patience)
    study = search(fits, n_trials=30, storage=storage, study_name="s", seed=0)
    assert [Thresholds(**{"early_stop": t.params["early_stop"], "window": t.params["es_window"],
                          "patience": t.params["es_patience"], "alpha": t.params.get("es_alpha", 0.1),
                          "lag": t.params["es_lag"]})
            for t in study.trials[:4]] == first
    assert study.trials[0].value == pytest.approx((201 + 80) / 400)  # the defaults: gap 0, confirmed at 281
    summary = write_outputs(study, fits, tmp_path / "out", cost=1.0, multi=False)
    assert summary["defaults"]["mean_gap_db"] == 0.0 and summary["best"]["mean_gap_db"] < 0.01  # traded for compute
    assert summary["best"]["objective"] < summary["defaults"]["objective"] == pytest.approx(281 / 400)
    # a lag lets a smaller window (an earlier minimum) return the peak and stop sooner: the best uses one
    assert summary["best"]["set"].startswith("early_stop=wmv es_window=") and " es_lag=" in summary["best"]["set"]
    assert summary["reference"]["mean_gap_db"] == pytest.approx((50 / 60) ** 2)  # W = 100: 50 past the peak
    assert [f["held_out"] for f in summary["leave_one_task_out"]["folds"]] == ["denoise", "inpaint"]
    search(fits, n_trials=4, storage=storage, study_name="s", seed=0)  # resumed: no seeds again
    again = optuna.load_study(study_name="s", storage=storage)
    assert len(again.trials) == 34 and sum("fixed_params" in t.system_attrs for t in again.trials) == 4
    assert again.metric_names == METRIC_NAMES[False]
    with pytest.raises(ConfigError, match="^study_name: study 's' was scored with cost 1.0"):
        search(fits, n_trials=1, storage=storage, study_name="s", cost=2.0)
    assert default_study_name("fit_early_stop", 1.0, False) == "es-thresholds-fit_early_stop-gap-cost1"


def test_leave_one_image_out_equals_a_hand_computation(tmp_path):
    """A peaks at 200, B at 250; W = 25 finds index 175, and a lag of p (the grid's lag 100 cut to the patience
    p) returns 175 + p, confirmed at 175 + p: objective ((175 + p - peak)/60)^2 + (176 + p)/400. Training on A
    that is least at the grid's p = 23 (0.0011 + 0.4975; W = 50, lag 0 scores 0 + 0.525), on B at p = 67
    (0.0178 + 0.6075; W = 100, lag 0 scores 0.6525): each fold then misses the held-out peak, by 52 and 42."""
    fits = [synthetic("A", peak=200), synthetic("B", peak=250)]
    result = leave_one_out(fits, "image", cost=1.0)
    folds = {f["held_out"]: f for f in result["folds"]}
    assert folds["B"]["thresholds"] == {"early_stop": "wmv", "es_window": 25, "es_patience": 23, "es_lag": 23}
    assert folds["A"]["thresholds"] == {"early_stop": "wmv", "es_window": 25, "es_patience": 67, "es_lag": 67}
    assert folds["B"]["test_gap_db"] == pytest.approx((52 / 60) ** 2)
    assert result["mean_test_gap_db"] == pytest.approx(((52 / 60) ** 2 + (42 / 60) ** 2) / 2)
    assert folds["A"]["train_gap_db"] == pytest.approx((8 / 60) ** 2)  # B's own peak missed by 8 (p = 67, not 75)
    assert result["note"].startswith("held-out mean gap 0.62 dB (in-sample 0.01")
    assert leave_one_out(fits, "task", 1.0) == {"by": "task", "folds": [], "mean_test_gap_db": None,
                                                "note": "n/a (1 task)"}
    assert len(grid(200)) == 2 * 12 * len(TRACE_WINDOWS) * (1 + len(TRACE_ALPHAS))  # lag 0 and 100
    study = search(fits[:1], n_trials=5, seed=0)
    one = write_outputs(study, fits[:1], tmp_path, cost=1.0, multi=False)
    assert one["leave_one_image_out"]["note"] == "n/a (1 image)"
    assert strict((tmp_path / "summary.json").read_text())["fits"] == 1


def test_multi_objective_front_is_non_dominated():
    fits = [synthetic("A", peak=200)]
    study = search(fits, n_trials=25, seed=1, multi=True)
    best, front = best_of(study, cost=1.0, multi=True)
    assert study.metric_names == ["es_gap_db", "fraction_run"] and len(front) >= 1
    assert all(a["mean_fraction_run"] < b["mean_fraction_run"] and a["mean_gap_db"] > b["mean_gap_db"]
               for a, b in zip(front, front[1:]))
    chosen = score(evaluate(fits, best.early_stop, best.window, best.patience, best.alpha), 1.0)
    assert chosen.objective == pytest.approx(min(p["mean_gap_db"] + p["mean_fraction_run"] for p in front))


def run_cli(argv: list[str]) -> int:
    parser = Parser(prog="lipsweep")
    add_parser(parser.add_subparsers(dest="command", required=True, parser_class=Parser))
    return cmd_es_search(parser.parse_args(argv))


def test_es_search_cli_reads_a_store_prints_the_fields_and_logs_to_mlflow(store, tmp_path, capsys):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = ["es-search", "--store", str(store), "--trials", "6", "--out", str(tmp_path / "out"), "--tracking-uri", uri]
    assert run_cli(args) == 0 and run_cli(args) == 0  # the second continues the study in out/optuna.db
    out = capsys.readouterr().out
    assert "2 traced fits (1 image, tasks denoise, budgets 120 iterations), 12 trials in study " \
           "'es-thresholds-store-gap-cost1'" in out
    assert "  --set early_stop=" in out and "leave-one-image-out: n/a (1 image)" in out
    assert "left out: 1 fits ran with es_stop and stopped" in out and "nan" not in out.lower()
    summary = strict((tmp_path / "out" / "summary.json").read_text())
    assert summary["trials"] == 12 and summary["left_out"] == 1 and summary["fits"] == 2
    assert summary["best"]["objective"] <= summary["defaults"]["objective"]  # the defaults are the first seed
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name(MLFLOW_EXPERIMENT).experiment_id])
    assert len(runs) == 1 and runs[0].data.tags["lipsweep.es_search.best"] == summary["best"]["set"]
    assert runs[0].data.metrics["trials"] == 12 and all(math.isfinite(v) for v in runs[0].data.metrics.values())


def test_es_search_refuses_a_store_without_traces(tmp_path):
    (tmp_path / "empty").mkdir()
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with pytest.raises(ConfigError, match=f"^store: .* holds no traced fits; {NO_TRACES}"):
        run_cli(["es-search", "--store", str(tmp_path / "empty"), "--tracking-uri", uri])
    with pytest.raises(ConfigError, match="^cost: must be a finite number"):
        run_cli(["es-search", "--store", str(tmp_path / "empty"), "--cost", "-1", "--tracking-uri", uri])
    assert len(experiment_keys("fit_early_stop", "smoke")) == 6  # 2 tasks x (dense, IMP chain, random chain)
