import argparse
import json
import math

import optuna
import pytest
from conftest import tiny_run
from mlflow.tracking import MlflowClient

from lipsweep.cli.stop_search import OUTCOME_TAG, log_study, report_lines
from lipsweep.core.errors import ConfigError
from lipsweep.lottery.chain import ChainConfig
from lipsweep.lottery.store import TrunkStore
from lipsweep.lottery.tickets import Tickets
from lipsweep.stopping.replay import (
    GRID,
    ChainTrace,
    chosen_level,
    leave_one_out,
    score,
    traces_from_store,
)
from lipsweep.stopping.rule import StopRule
from lipsweep.stopping.search import (
    METRIC_NAMES,
    SEEDS,
    default_study_name,
    first_points,
    search,
    seed_points,
    stored_study,
    write_outputs,
)

SPARSITY = tuple(1 - 0.8**i for i in range(10))


def strict(text: str) -> dict:
    """json.loads that refuses NaN and Infinity (Python's json writes them; no other parser reads them)."""
    def refuse(name):
        raise ValueError(f"non-standard JSON constant {name}")
    return json.loads(text, parse_constant=refuse)


def falling(name, image, task="denoise"):
    """A chain whose IMP loss falls to its last level: no rule can fire (8 levels too short, issue 28)."""
    return ChainTrace(name, image, task, 0, SPARSITY, tuple(1.0 - 0.05 * i for i in range(10)),
                      tuple(30.0 + 0.1 * i for i in range(10)))


def trace(name, image, task, best, rises_after=0, loss_noise=0.0):
    """A synthetic chain: the IMP loss falls until level ``best`` (+ rises_after), then rises for good;
    PSNR holds near dense up to ``best`` and collapses after it."""
    turn = best + rises_after
    loss = tuple(1.0 - 0.05 * i if i <= turn else 1.0 - 0.05 * turn + 0.1 * (i - turn) + loss_noise * (i % 2)
                 for i in range(10))
    psnr = tuple(30.0 - 0.05 * i if i <= best else 30.0 - 3.0 * (i - best) for i in range(10))
    return ChainTrace(name, image, task, 0, SPARSITY, loss, psnr)


def test_score_replays_the_rule_and_measures_sparsity_and_psnr_loss():
    t = trace("a", "img", "denoise", best=5)
    assert StopRule(k=2).chosen(t.imp_loss) == 5  # rises at 6, 7: fired at 7, began after level 5
    s = score(StopRule(k=2), [t], delta=0.5)
    assert s.sparsity == pytest.approx(SPARSITY[5]) and s.psnr_loss == pytest.approx(0.25)
    assert s.objective == pytest.approx(SPARSITY[5])
    late = score(StopRule(k=2, offset=1), [t], delta=0.5)  # level 6: 3 dB lost, penalised
    assert late.objective == pytest.approx(SPARSITY[6] - (3.0 - 0.5))
    never = score(StopRule(k=9), [t])  # never fires: IMP runs to the last level
    assert never.sparsity == pytest.approx(SPARSITY[9])


def test_search_finds_the_known_best_rule_on_synthetic_chains():
    # the loss keeps falling for 1 level past the best ticket, then rises: the best rule returns offset -1
    traces = [trace(f"c{i}", f"img{i}", "denoise", best=b, rises_after=1) for i, b in enumerate((4, 5, 6, 5))]
    best_possible = max(score(r, traces).objective for r in GRID)
    study = search(traces, n_trials=120, seed=0)
    rule = StopRule(**{k: study.best_params[k] for k in ("k", "tolerance", "offset", "smooth")})
    found = score(rule, traces)
    assert found.objective == pytest.approx(best_possible)
    # every chain's best ticket, one level before the loss stops falling (offset -1 from where the rises begin)
    assert [chosen_level(rule, t) for t in traces] == [4, 5, 6, 5] and found.psnr_loss <= 0.5


def test_a_resumed_study_continues_with_the_previous_trials(tmp_path):
    traces = [trace("a", "i", "denoise", best=5)]
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    search(traces, n_trials=7, storage=storage, study_name="s")
    study = search(traces, n_trials=5, storage=storage, study_name="s")
    assert len(study.trials) == 12
    assert len(optuna.load_study(study_name="s", storage=storage).trials) == 12


def test_multi_objective_front_and_outputs(tmp_path):
    traces = [trace("a", "i1", "denoise", best=5), trace("b", "i2", "denoise", best=3)]
    study = search(traces, n_trials=30, seed=1, multi=True)
    summary = write_outputs(study, traces, tmp_path, delta=0.5, penalty=1.0, multi=True)
    front = summary["pareto_front"]
    assert len(front) >= 2 and all(a["sparsity"] < b["sparsity"] and a["psnr_change_db"] > b["psnr_change_db"]
                                   for a, b in zip(front, front[1:]))
    assert (tmp_path / "pareto.png").is_file() and (tmp_path / "history.png").is_file()
    assert json.loads((tmp_path / "summary.json").read_text())["chains"] == 2


def test_leave_one_out_equals_a_hand_computation():
    # image A's chains want offset 0 (best ticket right before the rises); image B's loss plateaus one level
    # past its best ticket. Fitted on B alone the grid's first best rule is (k=1, offset=-1)...
    a = trace("a", "A", "denoise", best=4)
    b = trace("b", "B", "denoise", best=4, rises_after=1)
    result = leave_one_out([a, b], by="image")
    folds = {f["held_out"]: f for f in result["folds"]}
    # held out A: rule fitted on B (offset -1 finds B's level 4 exactly) applied to A picks level 3
    rule_b = StopRule(**folds["A"]["rule"])
    assert score(rule_b, [b]).sparsity == pytest.approx(SPARSITY[4])
    assert score(rule_b, [a]).sparsity == pytest.approx(SPARSITY[3])
    gap_a = SPARSITY[4] - SPARSITY[3]  # in-sample objective minus held-out objective, no penalties
    # held out B: the rule fitted on A (offset 0) applied to B picks level 5, 3 dB below its level 4
    rule_a = StopRule(**folds["B"]["rule"])
    assert rule_a.offset == 0 and score(rule_a, [b]).psnr_loss == pytest.approx(30 - 27.0)
    gap_b = SPARSITY[4] - (SPARSITY[5] - (3.0 - 0.5))
    assert folds["A"]["gap"] == pytest.approx(gap_a) and folds["B"]["gap"] == pytest.approx(gap_b)
    assert result["mean_gap"] == pytest.approx((gap_a + gap_b) / 2)


def test_replay_matches_the_rule_running_live_inside_a_chain(tmp_path):
    tickets = Tickets(TrunkStore(tmp_path / "store"))
    cfg = ChainConfig(run=tiny_run("denoise", iters=40))
    full = tickets.chain(cfg, 5)
    traces = traces_from_store(tmp_path / "store")
    assert len(traces) == 1 and traces[0].imp_loss == tuple(r["imp_loss"] for r in full.records)
    for rule in (StopRule(k=1), StopRule(k=2), StopRule(k=1, tolerance=0.05), StopRule(k=1, smooth=2)):
        live = Tickets(TrunkStore(tmp_path / "store")).chain(cfg, 5, stop=rule)
        assert live.stop_fired_at == rule.fired_at(traces[0].imp_loss)
        assert live.stop_chosen == rule.chosen(traces[0].imp_loss)


def test_stop_search_cli_reads_a_store_and_logs_to_mlflow(tmp_path, capsys):
    from lipsweep.cli.main import main

    Tickets(TrunkStore(tmp_path / "store")).chain(ChainConfig(run=tiny_run("denoise", iters=30)), 4)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = ["stop-search", "--from", str(tmp_path / "store"), "--trials", "6", "--study-storage",
            f"sqlite:///{tmp_path / 'optuna.db'}", "--tracking-uri", uri, "--out", str(tmp_path / "out")]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "1 chains (4 IMP levels each), 6 trials" in out and "paper's k=3, tolerance=0: sparsity" in out
    assert main(args) == 0  # resumed: the same study continues
    out = capsys.readouterr().out
    assert "1 chains (4 IMP levels each), 12 trials" in out
    assert "leave-one-image-out: n/a (1 image)" in out and "leave-one-task-out: n/a (1 task)" in out
    assert "nan" not in out.lower() and "Pareto" not in out and "PSNR loss" not in out
    summary = strict((tmp_path / "out" / "summary.json").read_text())
    assert summary["trials"] == 12 and summary["outcome"] in ("rule_found", "no_rule_found")
    assert ("best rule: stop after k=" in out) == (summary["outcome"] == "rule_found") != ("warning: no rule found" in out)
    assert 0 <= summary["no_stop"]["sparsity"] == pytest.approx(1 - 0.8**4, abs=0.02)
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("lipsweep/stop_search")
    runs = client.search_runs([exp.experiment_id])
    metrics = runs[0].data.metrics
    assert len(runs) == 1 and runs[0].data.tags[OUTCOME_TAG] == summary["outcome"]
    assert ("rule_k" in metrics) == (summary["outcome"] == "rule_found") and metrics["trials"] == 12
    assert all(math.isfinite(v) for v in metrics.values()) and "loo_image_gap" not in metrics
    assert main(["stop-search", "--from", "no_such_sweep", "--tracking-uri", uri]) == 2


def test_a_study_refuses_trials_scored_by_another_objective(tmp_path):
    """Reopening a stored study with another delta / penalty / metric would mix incomparable objective values."""
    traces = [trace("a", "i", "denoise", best=5)]
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    search(traces, n_trials=3, storage=storage, study_name="s", delta=0.5)
    with pytest.raises(ConfigError, match=r"^study_name: study 's' was scored with delta 0\.5 \(asked: 1\.0\); allowed"):
        search(traces, n_trials=3, storage=storage, study_name="s", delta=1.0)
    with pytest.raises(ConfigError, match=r"metric 'psnr_ema' \(asked: 'psnr_peak'\)"):
        search(traces, n_trials=3, storage=storage, study_name="s", metric="psnr_peak")
    assert len(optuna.load_study(study_name="s", storage=storage).trials) == 3  # nothing added by the refusals
    assert search(traces, n_trials=2, storage=storage, study_name="s").trials[-1].number == 4  # same objective: resumes
    assert default_study_name("f16", "psnr_ema", 0.5, 1.0, False) != default_study_name("f16", "psnr_ema", 1.0, 1.0, False)


def test_a_flat_objective_warns_says_no_rule_found_and_writes_strict_json(tmp_path):
    """Issue 28: chains whose IMP loss falls to the end scored every trial alike, and the search still printed a
    "best rule", equal importances, a bare NaN in summary.json and MLflow."""
    traces = [falling("a", "i1"), falling("b", "i2")]
    study = search(traces, n_trials=12, storage=f"sqlite:///{tmp_path / 'optuna.db'}", study_name="s")
    summary = write_outputs(study, traces, tmp_path / "out", delta=0.5, penalty=1.0, multi=False)
    on_disk = strict((tmp_path / "out" / "summary.json").read_text())
    assert on_disk["outcome"] == summary["outcome"] == "no_rule_found" and on_disk["flat"] is True
    assert on_disk["best_rule"] is None and on_disk["best"] is None and on_disk["stops_chains"] == 0
    assert on_disk["reason"].startswith("the IMP loss never rises in any of the 2 chains")
    assert "all 12 trials scored 0.86578" in on_disk["reason"]  # both chains' last level: 1 - 0.8**9
    assert "chains have 9 IMP levels" in on_disk["needs"] and "10 for k = 1, 12 for the paper's k = 3" in on_disk["needs"]
    assert on_disk["importances"] == {"note": "n/a (flat objective)"} and not (tmp_path / "out" / "importances.png").exists()
    assert on_disk["no_stop"]["psnr_change_db"] == pytest.approx(0.9)  # signed: the last level is 0.9 dB better
    lines = report_lines(summary, 0.1)
    assert lines[1].startswith("warning: no rule found: the IMP loss never rises") and lines[2].strip().startswith(
        "chains have 9 IMP levels")
    assert not any(line.startswith("best rule") for line in lines)
    assert "importances: n/a (flat objective)" in lines and "leave-one-task-out: n/a (1 task)" in lines
    assert any("PSNR change +0.90 dB" in line for line in lines) and not any("PSNR loss" in line for line in lines)
    assert "leave-one-image-out: mean gap 0.000 over 2 folds" in lines


def test_the_outcome_and_finite_numbers_reach_mlflow(tmp_path):
    traces = [falling("a", "i1")]
    study = search(traces, n_trials=4)
    summary = write_outputs(study, traces, tmp_path / "out", delta=0.5, penalty=1.0, multi=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = argparse.Namespace(source="store", delta=0.5, penalty=1.0, multi=False, metric="psnr_ema", study_storage="mem")
    log_study(uri, "s", args, summary, tmp_path / "out")
    client = MlflowClient(uri)
    run = client.search_runs([client.get_experiment_by_name("lipsweep/stop_search").experiment_id])[0]
    assert run.data.tags[OUTCOME_TAG] == "no_rule_found" and "never rises" in run.data.tags[f"{OUTCOME_TAG}.reason"]
    assert run.data.metrics["no_stop_sparsity"] == pytest.approx(SPARSITY[-1]) and "rule_k" not in run.data.metrics
    assert "loo_image_gap" not in run.data.metrics and all(math.isfinite(v) for v in run.data.metrics.values())


def test_a_rule_that_fires_is_found_and_spelled_out(tmp_path):
    # the loss bottoms out at level 5 (the best ticket), then rises; PSNR collapses after level 5
    traces = [trace(f"c{i}", f"img{i % 2}", ("denoise", "inpaint")[i // 2], best=5) for i in range(4)]
    study = search(traces, n_trials=40, seed=0)
    summary = write_outputs(study, traces, tmp_path, delta=0.5, penalty=1.0, multi=False)
    assert summary["outcome"] == "rule_found" and summary["reason"] is None and summary["stops_chains"] == 4
    assert summary["best"]["sparsity"] == pytest.approx(SPARSITY[5]) and summary["best"]["fires_on"] == 4
    assert summary["best"]["psnr_change_db"] == pytest.approx(-0.25)  # level 5 is 0.25 dB below dense
    assert summary["no_stop"]["objective"] < summary["best"]["objective"]
    lines = report_lines(summary, 0.1)
    assert lines[1] == "best rule: " + StopRule(**summary["best_rule"]).describe()
    assert "PSNR change -0.25 dB vs dense" in lines[2] and "stops 4 of 4 chains before their last level" in lines[2]
    assert not any("warning" in line or "Pareto" in line for line in lines)
    assert "leave-one-image-out: mean gap 0.000 over 2 folds" in lines
    assert not (tmp_path / "pareto.png").exists() and summary["pareto_front"] is None
    assert (tmp_path / "importances.png").is_file() and set(summary["importances"]["values"]) == {
        "k", "tolerance", "offset", "smooth"}


def test_rises_that_never_pay_are_no_rule_found(tmp_path):
    """The loss rises, but PSNR holds at every level: stopping only loses sparsity, so IMP to the end wins."""
    traces = [ChainTrace(n, n, "denoise", 0, SPARSITY, tuple(1.0 + 0.01 * (i % 3) for i in range(10)),
                         tuple(30.0 for _ in range(10))) for n in ("a", "b")]
    study = search(traces, n_trials=15, seed=0)
    summary = write_outputs(study, traces, tmp_path, delta=0.5, penalty=1.0, multi=False)
    assert summary["outcome"] == "no_rule_found" and summary["best_rule"] is None and not summary["flat"]
    assert summary["reason"] == ("the IMP loss rises in 2 of 2 chains, but no rule tried scores better than letting "
                                 "IMP run to the last level (objective 0.86578 vs objective 0.86578)")
    assert "within 0.5 dB of dense (or better) on 2 of 2 chains" in summary["needs"]


def test_leave_one_out_with_one_group_is_not_applicable():
    one = [trace("a", "A", "denoise", best=4), trace("b", "A", "inpaint", best=5)]
    assert leave_one_out(one, by="image") == {"by": "image", "folds": [], "mean_gap": None, "note": "n/a (1 image)"}
    tasks = leave_one_out(one, by="task")
    assert len(tasks["folds"]) == 2 and tasks["note"] == f"mean gap {tasks['mean_gap']:.3f} over 2 folds"


def test_the_study_names_its_metrics_and_starts_with_the_rules_that_fire_soonest(tmp_path):
    traces = [trace("a", "i", "denoise", best=5)]
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    search(traces, n_trials=5, storage=storage, study_name="single")
    search(traces, n_trials=4, storage=storage, study_name="multi", multi=True)
    single = optuna.load_study(study_name="single", storage=storage)
    assert single.metric_names == ["objective"] == METRIC_NAMES[False]
    assert optuna.load_study(study_name="multi", storage=storage).metric_names == ["sparsity", "psnr_change_db"]
    assert [t.params for t in single.trials[:3]] == [vars(r) for r in SEEDS]  # tolerance exactly 0: k = 1, 2, 3
    search(traces, n_trials=3, storage=storage, study_name="single")  # resumed: not seeded again
    assert sum(t.params["tolerance"] == 0.0 for t in optuna.load_study(study_name="single", storage=storage).trials) == 3
    stored = stored_study("tune", storage, {"delta": 0.5, "penalty": 1.0, "metric": "psnr_ema", "multi": False})
    assert optuna.load_study(study_name="tune", storage=storage).metric_names == ["objective"]
    assert first_points("tune", stored) == seed_points("rule/") == first_points("memory", None)  # a new study
    assert first_points("single", optuna.storages.get_storage(storage)) == []  # continued: its seeds were scored


def test_an_old_multi_objective_study_is_not_continued_with_the_opposite_sign(tmp_path):
    """Before issue 28 the multi study minimised the PSNR loss; now it maximises the signed change."""
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    old = optuna.create_study(study_name="m", storage=storage, directions=["maximize", "minimize"])
    old.set_user_attr("objective", {"delta": 0.5, "penalty": 1.0, "metric": "psnr_ema", "multi": True})
    old.optimize(lambda t: (t.suggest_int("k", 1, 5), 0.0), n_trials=1)
    with pytest.raises(ConfigError, match="targets None"):
        search([trace("a", "i", "denoise", best=5)], n_trials=2, storage=storage, study_name="m", multi=True)


def test_tunes_optuna_searcher_proposes_the_seed_rules_first():
    """The online search (``stop_threshold``) gets the same seeds through ``points_to_evaluate``."""
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    from lipsweep.stopping.search import SPACE, seed_points

    space = {k: tune.randint(lo, hi + 1) if isinstance(lo, int) else tune.uniform(lo, hi) for k, (lo, hi) in SPACE.items()}
    searcher = OptunaSearch(metric="objective", mode="max", seed=0, points_to_evaluate=seed_points("rule/"))
    assert searcher.set_search_properties("objective", "max", {"rule": space, "delta": 0.5})
    assert [searcher.suggest(f"t{i}")["rule"] for i in range(3)] == [vars(r) for r in SEEDS]
