"""Searching the IMP stopping rule with Optuna, by replaying finished chains (paper Appendix B, Fig. 13).

The rule reads only the per-level IMP loss, so a chain computed once can be replayed under any candidate
rule in microseconds. The clean image enters only through the score: the chosen level's sparsity and
its PSNR change against the dense level (signed: positive = better than dense). When no rule scores better
than letting IMP run to the chains' last level (chains too short for the loss to rise, or for a stop to pay)
or the objective is flat, the outcome is "no rule found", with the reason and what the chains lack, never a
"best" rule. Optuna is imported only here (an online search's Ray Tune ``OptunaSearch`` in ``sweep/tune.py``
gets this module's ``SPACE``, ``seed_points`` and study storage).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lipsweep.core.errors import ConfigError
from lipsweep.stopping.replay import (
    NEVER,
    ChainTrace,
    Score,
    chain_levels,
    chosen_level,
    fires_on,
    leave_one_out,
    levels_needed,
    score,
    scored,
)
from lipsweep.stopping.rule import StopRule

# Uniform tolerance from exactly 0 (a log scale cannot reach 0, the paper's value); SEEDS are every new
# study's first trials, so the rules that fire soonest (tolerance 0, k = 1) and the paper's are always scored.
SPACE = {"k": (1, 5), "tolerance": (0.0, 0.2), "offset": (-2, 1), "smooth": (1, 3)}
SEEDS = (StopRule(k=1), StopRule(k=2), StopRule(k=3))
METRIC_NAMES = {False: ["objective"], True: ["sparsity", "psnr_change_db"]}


def suggest(trial) -> StopRule:
    return StopRule(k=trial.suggest_int("k", *SPACE["k"]),
                    tolerance=trial.suggest_float("tolerance", *SPACE["tolerance"]),
                    offset=trial.suggest_int("offset", *SPACE["offset"]),
                    smooth=trial.suggest_int("smooth", *SPACE["smooth"]))


def seed_points(prefix: str = "") -> list[dict]:
    """``SEEDS`` as Tune's ``OptunaSearch(points_to_evaluate=...)`` takes them (``prefix`` "rule/": the
    flattened names of the rule's params in the trial config)."""
    return [{f"{prefix}{k}": v for k, v in vars(rule).items()} for rule in SEEDS]


def rule_of(params: dict) -> StopRule:
    return StopRule(k=int(params["k"]), tolerance=float(params["tolerance"]), offset=int(params["offset"]),
                    smooth=int(params["smooth"]))


def search(traces: Sequence[ChainTrace], n_trials: int = 200, delta: float = 0.5, penalty: float = 1.0,
           storage: str | None = None, study_name: str = "stop_rule", seed: int = 0, multi: bool = False,
           metric: str = "psnr_ema"):
    """An Optuna study over the rule, resumable on ``storage`` (same name: continues the earlier trials).

    The study records its objective (delta, penalty, metric, single or multi); reopening it with another
    is refused, so one study never mixes trials scored differently. Its metric names are set for
    optuna-dashboard; a new study starts with ``SEEDS``."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = optuna.samplers.NSGAIISampler(seed=seed) if multi else optuna.samplers.TPESampler(seed=seed)
    study = optuna.create_study(study_name=study_name, storage=storage, load_if_exists=True, sampler=sampler,
                                directions=["maximize", "maximize"] if multi else ["maximize"])
    check_objective(study, study_objective(delta, penalty, metric, multi))
    name_metrics(study, multi)
    if not study.trials:
        for rule in SEEDS:
            study.enqueue_trial(vars(rule))

    def objective(trial):
        sc = score(suggest(trial), traces, delta, penalty)
        trial.set_user_attr("sparsity", sc.sparsity)
        trial.set_user_attr("psnr_change_db", 0.0 - sc.psnr_loss)
        return (sc.sparsity, 0.0 - sc.psnr_loss) if multi else sc.objective

    study.optimize(objective, n_trials=n_trials)
    return study


def study_objective(delta: float, penalty: float, metric: str, multi: bool) -> dict:
    """What a study's values mean (its stamp); the multi-objective one names its targets, so a study from
    before the signed PSNR change (minimised loss) is never continued with the opposite sign."""
    found = {"delta": float(delta), "penalty": float(penalty), "metric": metric, "multi": bool(multi)}
    return {**found, "targets": METRIC_NAMES[True]} if multi else found


def name_metrics(study, multi: bool) -> None:
    """The objectives' names, which optuna-dashboard shows instead of "Objective 0"."""
    import warnings

    import optuna

    if study.metric_names != METRIC_NAMES[bool(multi)]:
        with warnings.catch_warnings():  # experimental since Optuna 3.2, still in 5.x
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(METRIC_NAMES[bool(multi)])


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
    name_metrics(study, False)
    return storage


def first_points(name: str, storage) -> list[dict]:
    """What Tune's searcher scores first: ``seed_points`` for a new study (in memory, or stored without
    trials); none for a continued one, which scored them already (a rule proposed twice would be two runs)."""
    if storage is None:
        return seed_points("rule/")
    import optuna

    return [] if optuna.load_study(study_name=name, storage=storage).trials else seed_points("rule/")


def default_study_name(label: str, metric: str, delta: float, penalty: float, multi: bool) -> str:
    """A name that says what the study optimises, so two objectives never share one by default."""
    return f"stop-rule-{label}-{metric}-delta{delta:g}-penalty{penalty:g}{'-multi' if multi else ''}"


def pareto_front(points: list[dict]) -> list[dict]:
    """Non-dominated (max sparsity, max PSNR change) points, one per distinct pair, by rising sparsity."""
    unique = {(p["sparsity"], p["psnr_change_db"]): p for p in points}
    front = [p for (s, d), p in unique.items()
             if not any(s2 >= s and d2 >= d and (s2, d2) != (s, d) for s2, d2 in unique)]
    return sorted(front, key=lambda p: p["sparsity"])


def outcome(values: Sequence, rule: StopRule, traces: Sequence[ChainTrace], delta: float, penalty: float,
            multi: bool) -> dict:
    """"rule_found", or "no_rule_found" with the reason: the best rule scores no better than letting IMP run
    to the chains' last level (no rule fires, or stopping only loses sparsity), or the objective is flat."""
    flat = len({tuple(np.round(np.atleast_1d(v), 12)) for v in values}) <= 1
    best, end = score(rule, traces, delta, penalty), score(NEVER, traces, delta, penalty)
    beats = (not (end.sparsity >= best.sparsity and end.psnr_loss <= best.psnr_loss) if multi
             else best.objective > end.objective + 1e-12)
    stops = sum(chosen_level(rule, t) < len(t.imp_loss) - 1 for t in traces)
    found = {"outcome": "rule_found", "flat": flat, "stops_chains": stops, "chains": len(traces), "reason": None,
             "levels": list(chain_levels(traces)), "needs": None}
    if beats and not flat:
        return found
    rises = fires_on(StopRule(k=1), traces)
    if not rises:
        why, needs = (f"the IMP loss never rises in any of the {len(traces)} chains: no rule can fire before the "
                      "chains end"), levels_needed(traces)
    elif not beats:
        within = sum(t.psnr[0] - t.psnr[-1] <= delta for t in traces)
        why = (f"the IMP loss rises in {rises} of {len(traces)} chains, but no rule tried scores better than letting "
               f"IMP run to the last level ({_scored(best, multi)} vs {_scored(end, multi)})")
        needs = (f"the last level is within {delta:g} dB of dense (or better) on {within} of {len(traces)} chains, so "
                 f"stopping earlier only loses sparsity; for a stop to pay, chains must be pruned until their last "
                 f"levels fall more than {delta:g} dB below dense")
    else:
        why, needs = "the search cannot tell the rules apart", None
    if flat:
        why += f"; the objective is flat: all {len(values)} trials scored {np.atleast_1d(values[0])[0]:.5f}"
    return {**found, "outcome": "no_rule_found", "reason": why, "needs": needs}


def _scored(sc: Score, multi: bool) -> str:
    return (f"sparsity {sc.sparsity:.4f}, PSNR change {0.0 - sc.psnr_loss:+.2f} dB" if multi
            else f"objective {sc.objective:.5f}")


def best_of(study, delta: float, multi: bool) -> tuple[StopRule, list[dict]]:
    """The best rule and, for the multi-objective search, the Pareto front (the sparsest point within
    ``delta`` dB of dense, else the one losing least)."""
    if not multi:
        return rule_of(study.best_params), []
    front = pareto_front([{"rule": vars(rule_of(t.params)), "sparsity": t.values[0], "psnr_change_db": t.values[1]}
                          for t in study.trials if t.values])
    feasible = [f for f in front if f["psnr_change_db"] >= -delta]
    best = max(feasible, key=lambda f: f["sparsity"]) if feasible else max(front, key=lambda f: f["psnr_change_db"])
    return StopRule(**best["rule"]), front


def importances(study, multi: bool, flat: bool) -> dict:
    """Optuna's parameter importances, or a note why they would mean nothing (a flat objective, all equal).
    Its evaluator ranks params by how they lower a custom target: the multi-objective one gets -sparsity."""
    import warnings

    import optuna

    if flat:
        return {"note": "n/a (flat objective)"}
    try:
        with warnings.catch_warnings():  # the evaluator's note that it ranks by low values: -sparsity is that
            warnings.filterwarnings("ignore", message="PedAnovaImportanceEvaluator computes", category=UserWarning)
            found = optuna.importance.get_param_importances(study, target=(lambda t: -t.values[0]) if multi else None)
    except (ValueError, RuntimeError) as exc:  # e.g. fewer than 2 completed trials
        return {"note": f"n/a ({exc})"}
    if len(set(np.round(list(found.values()), 6))) <= 1:
        return {"note": "n/a (all parameters equally important: the objective hardly varies)"}
    return {"values": {k: float(v) for k, v in found.items()}}


def summarize(study, traces: Sequence[ChainTrace], delta: float, penalty: float, multi: bool) -> dict:
    """Everything the search found, signed (PSNR change vs dense, positive = better), JSON-ready."""
    rule, front = best_of(study, delta, multi)
    values = [t.values if multi else t.value for t in study.trials if t.values]
    result = outcome(values, rule, traces, delta, penalty, multi)
    found = result["outcome"] == "rule_found"
    no_stop = score(NEVER, traces, delta, penalty)
    return {"chains": len(traces), "trials": len(study.trials), "study": study.study_name, "delta_db": delta,
            "penalty_per_db": penalty, "multi": multi, **result,
            "best_rule": vars(rule) if found else None,
            "best": scored(rule, traces, delta, penalty) if found else None,
            "no_stop": no_stop.signed(), "pareto_front": front if multi else None,
            "paper_rules": {f"k={k}, tolerance=0": scored(StopRule(k=k), traces, delta, penalty) for k in (2, 3)},
            "importances": importances(study, multi, result["flat"]),
            "leave_one_image_out": leave_one_out(traces, "image", delta, penalty),
            "leave_one_task_out": leave_one_out(traces, "task", delta, penalty)}


def finite(value):
    """``value`` with every NaN or infinity (nested) as None, for strict JSON (a bare NaN is not JSON)."""
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def write_outputs(study, traces: Sequence[ChainTrace], out, delta: float, penalty: float, multi: bool) -> dict:
    """summary.json (strict JSON: no NaN) and Optuna's plots; returns the summary."""
    import json
    from pathlib import Path

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summary = finite(summarize(study, traces, delta, penalty, multi))
    errors = draw_plots(study, out, multi, flat=summary["flat"])
    if errors:
        summary["plot_errors"] = errors
    (out / "summary.json").write_text(json.dumps(summary, indent=1, allow_nan=False))
    return summary


def draw_plots(study, out, multi: bool, flat: bool) -> dict:
    """history.png; importances.png unless the objective is flat; pareto.png only for ``multi``. Returns
    the plots that could not be drawn, with why."""
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    from optuna.visualization import matplotlib as ovm

    names = METRIC_NAMES[multi]
    first = (lambda t: t.values[0]) if multi else None
    plots = {"history.png": lambda: ovm.plot_optimization_history(study, target=first, target_name=names[0])}
    if not flat:  # importance evaluators rank params by how they lower the target: give them -sparsity
        plots["importances.png"] = lambda: ovm.plot_param_importances(
            study, target=(lambda t: -t.values[0]) if multi else None,
            target_name=f"-{names[0]}" if multi else names[0])
    if multi:
        plots["pareto.png"] = lambda: ovm.plot_pareto_front(study, target_names=names)
    errors = {}
    for name, draw in plots.items():
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
                warnings.filterwarnings("ignore", message="PedAnovaImportanceEvaluator computes", category=UserWarning)
                ax = draw()
        except (ValueError, RuntimeError) as exc:  # e.g. importances need >= 2 completed trials
            errors[name] = str(exc)
            continue
        fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
        fig.set_size_inches(7, 4.5)
        fig.tight_layout()
        fig.savefig(out / name, dpi=100)
        plt.close(fig)
    return errors
