"""Searching early-stopping thresholds with Optuna by replaying stored traces (issue 29, item 3).

The objective is what a user without the clean image pays: the mean ``es_gap`` (oracle peak minus what the
detector returns, dB) plus ``cost`` dB per whole budget run until the detection is confirmed (an unconfirmed
detection runs the whole budget). The study follows ``stopping.search``'s conventions: named by its
objective, stamped with it (a resumed study refuses another), RDB storage, metric names for
optuna-dashboard, a seeded TPE, the reference settings as a new study's first trials, leave-one-out folds
on a fixed grid. It reuses ``stopping.search``'s stamp, strict JSON, importances and plots, so it sits one
layer above it. Optuna is imported only here and in ``stopping.search``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

from lipsweep.fitting.early_stop import TRACE_ALPHAS, TRACE_WINDOWS, default_patience, default_window
from lipsweep.stopping.es_replay import (
    FitTrace,
    Replayed,
    Score,
    Thresholds,
    default_of,
    evaluate,
    evaluate_each,
    nearest_window,
    per_group,
    reference_of,
    score,
)
from lipsweep.stopping.search import check_objective, finite, importances

DETECTOR_NAMES = ("wmv", "emv")
MIN_PATIENCE = 10
LAGS = (0, 25, 50, 100, 150)  # es_lag: 0 is the notebooks'; 100 = 1/(1 - 0.99), the denoising EMA's time constant
METRIC_NAMES = {False: ["objective"], True: ["es_gap_db", "fraction_run"]}
DEFAULTS_WORDS = "lipsweep's defaults: wmv, window and patience scaled to each fit's budget (early_stop.py)"
REFERENCE_WORDS = "ES-WMV's notebook: wmv, window 100, patience 1000/5000 of each fit's budget"


def patience_range(fits: Sequence[FitTrace]) -> tuple[int, int]:
    """[10, half the longest budget]: log-uniform, since what matters is the patience relative to the
    fit's length (ES-WMV's P is a fifth of it) and one more output matters at 20, not at 600."""
    return MIN_PATIENCE, max(MIN_PATIENCE, max(f.iters for f in fits) // 2)


def suggest(trial, hi: int) -> Thresholds:
    """The window is EMV's first check; the weight is EMV's alone (a conditional parameter); the lag (the EMA
    output trails the raw outputs the statistic watches) is cut to the patience when replayed
    (``Thresholds.returned_lag``), as a fit refuses more."""
    early_stop = trial.suggest_categorical("early_stop", DETECTOR_NAMES)
    window = trial.suggest_categorical("es_window", TRACE_WINDOWS)
    patience = trial.suggest_int("es_patience", MIN_PATIENCE, hi, log=True)
    alpha = trial.suggest_categorical("es_alpha", TRACE_ALPHAS) if early_stop == "emv" else 0.1
    return Thresholds(early_stop, window, patience, alpha, trial.suggest_categorical("es_lag", LAGS))


def thresholds_of(params: dict) -> Thresholds:
    return Thresholds(str(params["early_stop"]), int(params["es_window"]), int(params["es_patience"]),
                      float(params.get("es_alpha", 0.1)), int(params.get("es_lag", 0)))


def seeds(fits: Sequence[FitTrace]) -> list[Thresholds]:
    """A new study's first trials, scaled to the longest budget B: lipsweep's defaults (wmv, window
    ``default_window(B)`` as the nearest trace window, patience ``default_patience(B)``), ES-WMV's notebook
    (W = 100, P = 1000/5000 of B), ES-EMV's (weight 0.1, P the same, first check after 100 outputs), and
    ES-WMV's returning the output 100 after the minimum (the time constant of the denoising EMA, which trails the
    raw outputs the variance watches)."""
    lo, hi = patience_range(fits)
    budget = max(f.iters for f in fits)
    default, reference = (min(max(int(p), lo), hi) for p in (default_patience(budget), round(budget * 1000 / 5000)))
    found = [Thresholds("wmv", nearest_window(default_window(budget)), default),
             Thresholds("wmv", 100, reference), Thresholds("emv", 100, reference, 0.1),
             Thresholds("wmv", 100, reference, 0.1, 100)]  # the denoising EMA's lag (cut to the patience)
    return list(dict.fromkeys(found))


def fits_hash(fits: Sequence[FitTrace]) -> str:
    """Which fits a study scored (a study resumed on other fits would compare unlike values)."""
    names = sorted(f"{f.where}|{f.image}" for f in fits)
    return hashlib.sha256("\n".join(names).encode()).hexdigest()[:12]


def study_objective(cost: float, multi: bool, fits: Sequence[FitTrace]) -> dict:
    return {"cost": float(cost), "multi": bool(multi), "targets": METRIC_NAMES[bool(multi)], "fits": fits_hash(fits)}


def default_study_name(label: str, cost: float, multi: bool) -> str:
    return f"es-thresholds-{label}-gap-cost{cost:g}{'-multi' if multi else ''}"


def name_metrics(study, multi: bool) -> None:
    """The objectives' names, which optuna-dashboard shows instead of "Objective 0"."""
    import warnings

    import optuna

    if study.metric_names != METRIC_NAMES[bool(multi)]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(METRIC_NAMES[bool(multi)])


def search(fits: Sequence[FitTrace], n_trials: int = 200, cost: float = 1.0, storage: str | None = None,
           study_name: str = "es_thresholds", seed: int = 0, multi: bool = False):
    """An Optuna study over the thresholds, resumable on ``storage``; a new one starts with ``seeds``."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = optuna.samplers.NSGAIISampler(seed=seed) if multi else optuna.samplers.TPESampler(seed=seed)
    study = optuna.create_study(study_name=study_name, storage=storage, load_if_exists=True, sampler=sampler,
                                directions=["minimize", "minimize"] if multi else ["minimize"])
    check_objective(study, study_objective(cost, multi, fits))
    name_metrics(study, multi)
    if not study.trials:
        for th in seeds(fits):
            study.enqueue_trial(th.trial_params())
    hi, memo = patience_range(fits)[1], {}

    def objective(trial):
        th = suggest(trial, hi)
        if th not in memo:  # TPE proposes a categorical setting again and again
            memo[th] = score(evaluate(fits, th.early_stop, th.window, th.patience, th.alpha, th.lag), cost)
        sc = memo[th]
        trial.set_user_attr("mean_gap_db", sc.gap)
        trial.set_user_attr("mean_fraction_run", sc.fraction)
        trial.set_user_attr("fires_on", sc.fires)
        return (sc.gap, sc.fraction) if multi else sc.objective

    study.optimize(objective, n_trials=n_trials)
    return study


def pareto_front(points: list[dict]) -> list[dict]:
    """Non-dominated (min gap, min fraction run) points, one per distinct pair, by rising fraction."""
    unique = {(p["mean_gap_db"], p["mean_fraction_run"]): p for p in points}
    front = [p for (g, f), p in unique.items()
             if not any(g2 <= g and f2 <= f and (g2, f2) != (g, f) for g2, f2 in unique)]
    return sorted(front, key=lambda p: p["mean_fraction_run"])


def best_of(study, cost: float, multi: bool) -> tuple[Thresholds, list[dict]]:
    """The best thresholds and, for ``multi``, the Pareto front (its best: the lowest gap + cost x fraction)."""
    if not multi:
        return thresholds_of(study.best_params), []
    front = pareto_front([{"thresholds": thresholds_of(t.params).as_dict(), "mean_gap_db": t.values[0],
                           "mean_fraction_run": t.values[1]} for t in study.trials if t.values])
    best = min(front, key=lambda p: p["mean_gap_db"] + cost * p["mean_fraction_run"])
    return thresholds_of(best["thresholds"]), front


def grid(hi: int) -> list[Thresholds]:
    """A fixed grid (12 log-spaced patiences, every trace window and weight, lag 0 and 100 cut to the patience)
    for exact, deterministic folds."""
    patiences = sorted({int(round(MIN_PATIENCE * (hi / MIN_PATIENCE) ** (i / 11))) for i in range(12)})
    lags = (0, 100)
    wmv = [Thresholds("wmv", w, p, 0.1, g) for w in TRACE_WINDOWS for p in patiences for g in lags]
    emv = [Thresholds("emv", w, p, a, g) for w in TRACE_WINDOWS for a in TRACE_ALPHAS for p in patiences for g in lags]
    return list(dict.fromkeys(wmv + emv))


def grid_table(fits: Sequence[FitTrace], points: Sequence[Thresholds]) -> tuple[np.ndarray, np.ndarray]:
    """Per grid point x fit: es_gap and the fraction of the budget run (every fit replays: none truncated)."""
    gaps, runs = np.zeros((len(points), len(fits))), np.zeros((len(points), len(fits)))
    for i, th in enumerate(points):
        done = evaluate(fits, th.early_stop, th.window, th.patience, th.alpha, th.lag)
        gaps[i] = [s["es_gap"] for s in done.scores]
        runs[i] = [s["es_iters_run"] / f.iters for f, s in zip(done.fits, done.scores)]
    return gaps, runs


def leave_one_out(fits: Sequence[FitTrace], by: str, cost: float) -> dict:
    """Per held-out image (or task): the grid's best thresholds on the other fits (first on ties) and their
    mean gap on the held-out fits. With one group there is nothing to hold out: "n/a (1 image)"."""
    groups = sorted({getattr(f, by) for f in fits})
    if len(groups) < 2:
        return {"by": by, "folds": [], "mean_test_gap_db": None, "note": f"n/a ({len(groups)} {by})"}
    points = grid(patience_range(fits)[1])
    gaps, runs = grid_table(fits, points)
    folds = []
    for g in groups:
        test = np.array([getattr(f, by) == g for f in fits])
        objective = gaps[:, ~test].mean(axis=1) + cost * runs[:, ~test].mean(axis=1)
        i = int(np.argmin(objective))
        folds.append({"held_out": g, "thresholds": points[i].as_dict(), "train_gap_db": float(gaps[i, ~test].mean()),
                      "test_gap_db": float(gaps[i, test].mean()), "test_fraction_run": float(runs[i, test].mean())})
    test_gap = float(np.mean([f["test_gap_db"] for f in folds]))
    train_gap = float(np.mean([f["train_gap_db"] for f in folds]))
    return {"by": by, "folds": folds, "mean_test_gap_db": test_gap,
            "note": f"held-out mean gap {test_gap:.2f} dB (in-sample {train_gap:.2f} dB) over {len(folds)} folds"}


def scored(done: Replayed, cost: float, th: Thresholds | None = None) -> dict:
    """A replay's score, per-task gaps and (for one setting) the thresholds in words and as ``--set``."""
    sc: Score = score(done, cost)
    found = {**sc.as_dict(), "per_task_gap_db": per_group(done, "task")}
    if th is not None:
        found.update(thresholds=th.as_dict(), words=th.describe(), set=th.flags())
    return found


def summarize(study, fits: Sequence[FitTrace], cost: float, multi: bool, left_out: int = 0) -> dict:
    """Everything the search found, JSON-ready: the best thresholds next to each fit's own (as run), the
    defaults scaled to each fit's budget and ES-WMV's reference, and the leave-one-out folds."""
    best, front = best_of(study, cost, multi)
    values = [tuple(np.atleast_1d(t.values if multi else t.value)) for t in study.trials if t.values]
    flat = len({tuple(np.round(v, 12)) for v in values}) <= 1
    return {"fits": len(fits), "images": sorted({f.image for f in fits}), "tasks": sorted({f.task for f in fits}),
            "budgets": sorted({f.iters for f in fits}), "trials": len(study.trials), "study": study.study_name,
            "cost_db_per_budget": cost, "multi": multi, "flat": flat,
            "left_out": left_out, "patience_range": list(patience_range(fits)),
            "best": scored(evaluate(fits, best.early_stop, best.window, best.patience, best.alpha, best.lag), cost,
                           best),
            "as_run": scored(evaluate_each(fits, lambda f: f.ran), cost),
            "defaults": {**scored(evaluate_each(fits, default_of), cost), "words": DEFAULTS_WORDS},
            "reference": {**scored(evaluate_each(fits, reference_of), cost), "words": REFERENCE_WORDS},
            "pareto_front": front if multi else None,
            "importances": importances(study, False, flat) if not multi else {"note": "n/a (--multi: see the front)"},
            "leave_one_image_out": leave_one_out(fits, "image", cost),
            "leave_one_task_out": leave_one_out(fits, "task", cost)}


def write_outputs(study, fits: Sequence[FitTrace], out, cost: float, multi: bool, left_out: int = 0) -> dict:
    """summary.json (strict JSON: no NaN) and, for one objective, Optuna's plots; returns the summary."""
    import json
    from pathlib import Path

    from lipsweep.stopping.search import draw_plots

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summary = finite(summarize(study, fits, cost, multi, left_out))
    if not multi:
        errors = draw_plots(study, out, False, flat=summary["flat"])
        if errors:
            summary["plot_errors"] = errors
    (out / "summary.json").write_text(json.dumps(summary, indent=1, allow_nan=False))
    return summary
