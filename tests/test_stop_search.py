import json

import optuna
import pytest
from conftest import tiny_run

from lipsweep.core.errors import ConfigError
from lipsweep.lottery.chain import ChainConfig
from lipsweep.lottery.store import TrunkStore
from lipsweep.lottery.tickets import Tickets
from lipsweep.stopping.rule import StopRule
from lipsweep.stopping.search import (
    GRID,
    ChainTrace,
    default_study_name,
    leave_one_out,
    score,
    search,
    traces_from_store,
    write_outputs,
)

SPARSITY = tuple(1 - 0.8**i for i in range(10))


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
    found = score(StopRule(**{k: study.best_params[k] for k in ("k", "tolerance", "offset", "smooth")}), traces)
    assert found.objective == pytest.approx(best_possible)
    assert study.best_params["offset"] == -1 and found.psnr_loss <= 0.5


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
    assert all(a["sparsity"] < b["sparsity"] and a["psnr_loss"] < b["psnr_loss"] for a, b in zip(front, front[1:]))
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
    from mlflow.tracking import MlflowClient

    from lipsweep.cli.main import main

    Tickets(TrunkStore(tmp_path / "store")).chain(ChainConfig(run=tiny_run("denoise", iters=30)), 4)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = ["stop-search", "--from", str(tmp_path / "store"), "--trials", "6", "--study-storage",
            f"sqlite:///{tmp_path / 'optuna.db'}", "--tracking-uri", uri, "--out", str(tmp_path / "out")]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "1 chains, 6 trials" in out and "best rule: stop after k=" in out and "paper's k=3" in out
    assert main(args) == 0  # resumed: the same study continues
    assert "1 chains, 12 trials" in capsys.readouterr().out
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["trials"] == 12 and 0 <= summary["best"]["sparsity"] <= 1 - 0.8**4 + 1e-9
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("lipsweep/stop_search")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1 and "rule_k" in runs[0].data.metrics
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
