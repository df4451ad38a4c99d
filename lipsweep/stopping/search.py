"""Searching the IMP stopping rule with Optuna, by replaying finished chains (paper Appendix B, Fig. 13).

The rule reads only the per-level IMP loss, so a chain computed once can be replayed under any candidate
rule in microseconds. The clean image enters only through the score: the chosen level's sparsity and
its PSNR loss against the dense level. Optuna is imported only here (an online search's Ray Tune
``OptunaSearch`` in ``sweep/tune.py`` gets this module's ``SPACE`` and study storage).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lipsweep.core.errors import ConfigError
from lipsweep.stopping.rule import StopRule

SPACE = {"k": (1, 5), "tolerance": (0.0, 0.2), "offset": (-2, 1), "smooth": (1, 3)}
GRID = tuple(StopRule(k=k, tolerance=t, offset=o, smooth=s)
             for s, o, k, t in itertools.product((1, 2, 3), (0, -1, 1, -2), range(1, 6), (0.0, 0.01, 0.02, 0.05, 0.1, 0.2)))


@dataclass(frozen=True)
class ChainTrace:
    """One finished chain as the rule and the score see it (PSNR is for scoring only)."""

    name: str
    image: str
    task: str
    seed: int
    sparsity: tuple[float, ...]
    imp_loss: tuple[float, ...]
    psnr: tuple[float, ...]


def trace_of(name: str, image: str, task: str, seed: int, records: Sequence[dict], metric: str) -> ChainTrace:
    """A chain's level records (as the store holds them) as a trace."""
    return ChainTrace(name, image, task, seed, tuple(r["sparsity"] for r in records),
                      tuple(r["imp_loss"] for r in records), tuple(r[metric] for r in records))


@dataclass(frozen=True)
class Score:
    sparsity: float
    psnr_loss: float
    objective: float


def chosen_level(rule: StopRule, trace: ChainTrace) -> int:
    """The level the rule returns; a rule that never fires lets IMP run to the chain's last level."""
    chosen = rule.chosen(trace.imp_loss)
    return len(trace.imp_loss) - 1 if chosen is None else chosen


def score(rule: StopRule, traces: Sequence[ChainTrace], delta: float = 0.5, penalty: float = 1.0) -> Score:
    """Mean chosen sparsity, mean PSNR loss vs dense, and the single objective: per chain, sparsity minus
    ``penalty`` per dB of loss beyond ``delta`` (max sparsity subject to loss <= delta, as a penalty)."""
    s, loss, obj = [], [], []
    for t in traces:
        level = chosen_level(rule, t)
        s.append(t.sparsity[level])
        loss.append(t.psnr[0] - t.psnr[level])
        obj.append(s[-1] - penalty * max(0.0, loss[-1] - delta))
    return Score(float(np.mean(s)), float(np.mean(loss)), float(np.mean(obj)))


def suggest(trial) -> StopRule:
    return StopRule(k=trial.suggest_int("k", *SPACE["k"]),
                    tolerance=trial.suggest_float("tolerance", *SPACE["tolerance"]),
                    offset=trial.suggest_int("offset", *SPACE["offset"]),
                    smooth=trial.suggest_int("smooth", *SPACE["smooth"]))


def rule_of(params: dict) -> StopRule:
    return StopRule(k=int(params["k"]), tolerance=float(params["tolerance"]), offset=int(params["offset"]),
                    smooth=int(params["smooth"]))


def search(traces: Sequence[ChainTrace], n_trials: int = 200, delta: float = 0.5, penalty: float = 1.0,
           storage: str | None = None, study_name: str = "stop_rule", seed: int = 0, multi: bool = False,
           metric: str = "psnr_ema"):
    """An Optuna study over the rule, resumable on ``storage`` (same name: continues the earlier trials).

    The study records its objective (delta, penalty, metric, single or multi); reopening it with another
    is refused, so one study never mixes trials scored differently."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = optuna.samplers.NSGAIISampler(seed=seed) if multi else optuna.samplers.TPESampler(seed=seed)
    study = optuna.create_study(study_name=study_name, storage=storage, load_if_exists=True, sampler=sampler,
                                directions=["maximize", "minimize"] if multi else ["maximize"])
    check_objective(study, {"delta": float(delta), "penalty": float(penalty), "metric": metric, "multi": bool(multi)})

    def objective(trial):
        sc = score(suggest(trial), traces, delta, penalty)
        trial.set_user_attr("sparsity", sc.sparsity)
        trial.set_user_attr("psnr_loss", sc.psnr_loss)
        return (sc.sparsity, sc.psnr_loss) if multi else sc.objective

    study.optimize(objective, n_trials=n_trials)
    return study


def check_objective(study, objective: dict) -> None:
    """Stamp a new study with its objective; refuse to add trials to one stamped with another."""
    found = study.user_attrs.get("objective")
    if found is None:
        if study.trials:  # an unstamped study with trials: scored by an unknown objective
            raise ConfigError("study_name", f"study {study.study_name!r} has {len(study.trials)} trials but no recorded "
                                            "objective; allowed: a new --study-name")
        study.set_user_attr("objective", objective)
    elif found != objective:
        diff = ", ".join(f"{k} {found.get(k)!r} (asked: {v!r})" for k, v in objective.items() if found.get(k) != v)
        raise ConfigError("study_name", f"study {study.study_name!r} was scored with {diff}; allowed: the same "
                                        "objective, or another --study-name")


def stored_study(name: str, url: str | None, objective: dict):
    """The storage of a study that Tune's searcher will create or continue: None (in memory), or ``url``'s,
    where the study is created now and stamped with ``objective`` (``check_objective``)."""
    if url is None:
        return None
    import optuna

    storage = optuna.storages.get_storage(url)
    study = optuna.create_study(study_name=name, storage=storage, load_if_exists=True, direction="maximize")
    check_objective(study, objective)
    return storage


def default_study_name(label: str, metric: str, delta: float, penalty: float, multi: bool) -> str:
    """A name that says what the study optimises, so two objectives never share one by default."""
    return f"stop-rule-{label}-{metric}-delta{delta:g}-penalty{penalty:g}{'-multi' if multi else ''}"


def fit_grid(traces: Sequence[ChainTrace], delta: float = 0.5, penalty: float = 1.0) -> StopRule:
    """The best rule of a fixed grid (first in grid order on ties): exact and deterministic, for cross-validation."""
    scores = [score(r, traces, delta, penalty).objective for r in GRID]
    return GRID[int(np.argmax(scores))]


def leave_one_out(traces: Sequence[ChainTrace], by: str = "image", delta: float = 0.5,
                  penalty: float = 1.0) -> dict:
    """Per held-out group (image or task): the rule fitted on the other chains, its objective there and on
    the held-out chains; gap = in-sample minus held-out objective, averaged over folds."""
    groups = sorted({getattr(t, by) for t in traces})
    folds = []
    for g in groups:
        train = [t for t in traces if getattr(t, by) != g]
        test = [t for t in traces if getattr(t, by) == g]
        if not train:
            continue
        rule = fit_grid(train, delta, penalty)
        inside, outside = score(rule, train, delta, penalty), score(rule, test, delta, penalty)
        folds.append({"held_out": g, "rule": vars(rule), "train_objective": inside.objective,
                      "test_objective": outside.objective, "test_sparsity": outside.sparsity,
                      "test_psnr_loss": outside.psnr_loss, "gap": inside.objective - outside.objective})
    return {"by": by, "folds": folds, "mean_gap": float(np.mean([f["gap"] for f in folds])) if folds else float("nan")}


def traces_from_frame(frame, metric: str = "psnr_ema") -> list[ChainTrace]:
    """Chains from a tidy table (one row per trial x level, as analysis.runs builds it from MLflow).
    Chains with gaps in their levels are skipped: the rule must see every level."""
    out = []
    for run_id, one in frame.dropna(subset=["level", "imp_loss", metric]).groupby("run_id"):
        one = one.sort_values("level")
        if list(one["level"].astype(int)) != list(range(len(one))) or len(one) < 2:
            continue
        out.append(ChainTrace(str(one.get("label", one["run_id"]).iloc[0]), str(one["image"].iloc[0]),
                              str(one["task"].iloc[0]), int(one["seed"].iloc[0]), tuple(one["sparsity"]),
                              tuple(one["imp_loss"]), tuple(one[metric])))
    return out


def traces_from_store(root, metric: str = "psnr_ema") -> list[ChainTrace]:
    """IMP chains straight from a trunk store directory (no MLflow needed)."""
    import json

    from lipsweep.core.paths import StorePaths, config_of, record_of

    paths = StorePaths(root)
    out = []
    for config in paths.chain_configs():
        chain = json.loads(config.read_text())
        if chain.get("method") != "imp":
            continue
        dense = json.loads(config_of(paths.dense(chain["dense"])).read_text())
        recs = [json.loads(record_of(paths.dense(chain["dense"])).read_text())]
        recs += [json.loads(p.read_text()) for p in paths.finished_levels(config.parent.name)]
        if len(recs) < 2:
            continue
        out.append(trace_of(config.parent.name, dense["problem"]["image"], dense["problem"]["task"], dense["seed"],
                            recs, metric))
    return out


def pareto_front(points: list[dict]) -> list[dict]:
    """Non-dominated (max sparsity, min PSNR loss) points, one per distinct pair, by rising sparsity."""
    unique = {(p["sparsity"], p["psnr_loss"]): p for p in points}
    front = [p for (s, loss), p in unique.items()
             if not any(s2 >= s and l2 <= loss and (s2, l2) != (s, loss) for s2, l2 in unique)]
    return sorted(front, key=lambda p: p["sparsity"])


def write_outputs(study, traces: Sequence[ChainTrace], out, delta: float, penalty: float, multi: bool) -> dict:
    """Best rule (or Pareto front), leave-one-image/task-out checks, Optuna's plots; returns the summary."""
    import json
    from pathlib import Path

    import matplotlib

    matplotlib.use("Agg")
    import warnings

    import matplotlib.pyplot as plt
    import optuna
    from optuna.visualization import matplotlib as ovm

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    front = pareto_front([{"rule": vars(rule_of(t.params)), "sparsity": t.user_attrs["sparsity"],
                           "psnr_loss": t.user_attrs["psnr_loss"]} for t in study.trials if t.values])
    if multi:
        feasible = [f for f in front if f["psnr_loss"] <= delta] or front[:1]
        best = max(feasible, key=lambda f: f["sparsity"])
        best_rule = StopRule(**best["rule"])
    else:
        best_rule = rule_of(study.best_params)
    best_score = score(best_rule, traces, delta, penalty)
    paper = {k: vars(score(StopRule(k=k), traces, delta, penalty)) for k in (2, 3)}
    summary = {"chains": len(traces), "trials": len(study.trials), "delta_db": delta, "penalty_per_db": penalty,
               "best_rule": vars(best_rule), "best": vars(best_score), "pareto_front": front,
               "paper_rules": {f"k={k}, tolerance=0": v for k, v in paper.items()},
               "leave_one_image_out": leave_one_out(traces, "image", delta, penalty),
               "leave_one_task_out": leave_one_out(traces, "task", delta, penalty)}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    sparsity = (lambda t: t.values[0]) if multi else None
    plots = {"history.png": lambda: ovm.plot_optimization_history(study, target=sparsity,
                                                                    target_name="sparsity" if multi else "objective"),
             # importance evaluators rank params by how they lower the target: give them -sparsity
             "importances.png": lambda: ovm.plot_param_importances(
                 study, target=(lambda t: -t.values[0]) if multi else None,
                 target_name="-sparsity" if multi else "objective")}
    if multi:
        plots["pareto.png"] = lambda: ovm.plot_pareto_front(study, target_names=["sparsity", "psnr_loss"])
    for name, draw in plots.items():
        try:
            ax = draw()
        except (ValueError, RuntimeError) as exc:  # e.g. importances need >= 2 completed trials
            summary.setdefault("plot_errors", {})[name] = str(exc)
            continue
        fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
        fig.set_size_inches(7, 4.5)
        fig.tight_layout()
        fig.savefig(out / name, dpi=100)
        plt.close(fig)
    return summary
