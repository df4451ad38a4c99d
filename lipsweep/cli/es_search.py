"""``lipsweep es-search``: search early-stopping thresholds with Optuna by replaying the traces a trunk store
holds (issue 29, item 3), print the best as the ``--set`` fields an experiment takes, and log the study to
MLflow. Nothing is refitted; nothing non-finite is written or logged.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

from lipsweep.cli.parsing import DEFAULT_STORE, PROFILES, int_arg, out_dir_arg, positive_int_arg
from lipsweep.core.errors import ConfigError

MLFLOW_EXPERIMENT = "lipsweep/es_search"
NO_TRACES = "run a sweep with early_stop set, e.g. lipsweep run fit_early_stop --profile smoke"


def add_parser(sub: argparse._SubParsersAction) -> None:
    es = sub.add_parser("es-search", help="search early-stopping thresholds with Optuna by replaying stored traces")
    es.add_argument("--store", default=DEFAULT_STORE, help="trunk store directory whose fits hold es_trace.json")
    es.add_argument("--experiment", metavar="NAME", help="only this experiment's fits (default: every traced fit)")
    es.add_argument("--profile", default="local", choices=PROFILES, help="with --experiment: its profile")
    es.add_argument("--trials", type=positive_int_arg, default=200, help="settings to try (added to a resumed study)")
    es.add_argument("--cost", type=float, default=1.0, help="dB the objective charges per whole budget run")
    es.add_argument("--multi", action="store_true", help="NSGA-II over (mean gap, fraction run): a Pareto front")
    es.add_argument("--storage", metavar="URL", help="Optuna RDB storage (default: sqlite optuna.db in --out)")
    es.add_argument("--study-name", help="default: es-thresholds-LABEL-gap-costC[-multi]")
    es.add_argument("--seed", type=int_arg, default=0)
    es.add_argument("--out", type=out_dir_arg, help="output directory (default runs/es_search/STUDY_NAME)")
    es.add_argument("--tracking-uri")


def experiment_keys(name: str, profile: str) -> set[str]:
    """The dense and chain keys of an experiment's trials: the store directories its fits lie in."""
    from lipsweep.experiments.spec import load
    from lipsweep.kinds import KINDS

    keys: set[str] = set()
    for trial in load(name, profile).trials:
        for chain in KINDS.get(trial.kind).chains(trial.typed):
            if chain is not None:
                keys |= {chain.dense_key, chain.chain_key}
    return keys


def load_fits(args: argparse.Namespace) -> tuple[list, int]:
    """The fits to replay and how many were left out (``es_stop`` fits that stopped: truncated traces)."""
    from lipsweep.stopping.es_replay import discover

    if args.cost < 0 or not math.isfinite(args.cost):
        raise ConfigError("cost", f"must be a finite number of dB >= 0, got {args.cost!r}")
    if not Path(args.store).is_dir():
        raise ConfigError("store", f"{args.store!r} is not a directory; {NO_TRACES}")
    keys = experiment_keys(args.experiment, args.profile) if args.experiment else None
    found = discover(args.store, keys)
    fits = [f for f in found if not f.truncated]
    if not fits:
        what = f"{len(found)} traced fits, all stopped by es_stop (truncated traces)" if found else "no traced fits"
        scope = f" of experiment {args.experiment!r} ({args.profile})" if args.experiment else ""
        raise ConfigError("store", f"{args.store!r} holds {what}{scope}; {NO_TRACES} (es_stop false)")
    return fits, len(found) - len(fits)


def cmd_es_search(args: argparse.Namespace) -> int:
    from lipsweep.stopping import es_search as es
    from lipsweep.tracking.tracker import check_reachable, tracking_uri

    uri = tracking_uri(args.tracking_uri)
    check_reachable(uri)
    fits, left_out = load_fits(args)
    label = args.experiment or Path(args.store).resolve().name
    name = args.study_name or es.default_study_name(label, args.cost, args.multi)
    out = Path(args.out) if args.out else Path("runs") / "es_search" / name
    out.mkdir(parents=True, exist_ok=True)
    storage = args.storage or f"sqlite:///{(out / 'optuna.db').resolve()}"
    start = time.perf_counter()
    study = es.search(fits, args.trials, args.cost, storage, name, args.seed, args.multi)
    summary = es.write_outputs(study, fits, out, args.cost, args.multi, left_out)
    print("\n".join(report_lines(summary, time.perf_counter() - start)))
    log_study(uri, name, args, storage, summary, out)
    print(f"-> {out} (summary.json, optuna.db, plots); MLflow experiment {MLFLOW_EXPERIMENT!r}")
    return 0


def score_words(sc: dict) -> str:
    tasks = ", ".join(f"{t} {g:.2f}" for t, g in sc["per_task_gap_db"].items())
    return (f"mean gap {sc['mean_gap_db']:.2f} dB, mean fraction run {sc['mean_fraction_run']:.2f}, fires on "
            f"{sc['fires_on']} of {sc['fits']} fits, objective {sc['objective']:.3f}; per task gap (dB): {tasks}")


def report_lines(summary: dict, seconds: float) -> list[str]:
    """What the search found: the best thresholds in words and as ``--set``, beside the defaults and ES-WMV."""
    best = summary["best"]
    images = len(summary["images"])
    lines = [f"{summary['fits']} traced fits ({images} image{'s' if images != 1 else ''}, tasks {', '.join(summary['tasks'])}, "
             f"budgets {', '.join(map(str, summary['budgets']))} iterations), {summary['trials']} trials in study "
             f"{summary['study']!r} ({seconds:.1f} s); {objective_words(summary)}",
             f"best: {best['words']}",
             f"  --set {best['set']}",
             f"  {score_words(best)}"]
    if summary["flat"]:
        lines.append(f"warning: the objective is flat: all {summary['trials']} trials scored alike (fits too short "
                     "for the trace windows to fill, or no detector confirms): the thresholds are not told apart")
    lines += [f"{key.replace('_', ' ')} ({summary[key]['words'] if 'words' in summary[key] else 'each fit its own'}): "
              f"{score_words(summary[key])}" for key in ("as_run", "defaults", "reference")]
    if summary["left_out"]:
        lines.append(f"left out: {summary['left_out']} fits ran with es_stop and stopped (their traces end at "
                     "detection + patience: a replay cannot score other thresholds there)")
    imp = summary["importances"]
    lines.append("importances: " + (", ".join(f"{k} {v:.2f}" for k, v in imp["values"].items())
                                    if "values" in imp else imp["note"]))
    lines += [f"{key.replace('_', '-')}: {summary[key]['note']}" for key in ("leave_one_image_out", "leave_one_task_out")]
    if summary["pareto_front"] is not None:
        front = summary["pareto_front"]
        shown = [front[round(i * (len(front) - 1) / 11)] for i in range(12)] if len(front) > 12 else front
        lines.append(f"Pareto front ({len(front)} points; mean gap, fraction run): " + ", ".join(
            f"({p['mean_gap_db']:.2f} dB, {p['mean_fraction_run']:.2f})" for p in shown))
    return lines


def objective_words(summary: dict) -> str:
    cost = f"{summary['cost_db_per_budget']:g} dB x fraction of the budget run"
    if summary["multi"]:
        return f"objectives: mean gap, fraction run (best on the front: lowest mean gap + {cost})"
    return f"objective: mean gap + {cost}"


def study_metrics(summary: dict) -> dict[str, float]:
    """The numbers MLflow gets: finite ones only (a NaN metric would read as a result)."""
    found = {"trials": summary["trials"], "fits": summary["fits"], "left_out": summary["left_out"]}
    for key in ("best", "as_run", "defaults", "reference"):
        found.update({f"{key}_{k}": v for k, v in summary[key].items() if isinstance(v, (int, float))})
    found.update({f"best_{k}": v for k, v in summary["best"]["thresholds"].items() if k != "early_stop"})
    for key, short in (("leave_one_image_out", "loo_image_gap_db"), ("leave_one_task_out", "loo_task_gap_db")):
        found[short] = summary[key]["mean_test_gap_db"]
    return {k: float(v) for k, v in found.items() if v is not None and math.isfinite(float(v))}


def log_study(uri: str, name: str, args: argparse.Namespace, storage: str, summary: dict, out: Path) -> None:
    """One MLflow run per study (found again by name and storage), as ``stop-search`` logs its own: params,
    finite metrics, the best thresholds as a tag (the ``--set`` text), the output folder."""
    from lipsweep.tracking.tracker import Tracker

    tracker = Tracker(uri, MLFLOW_EXPERIMENT)
    run_id = tracker.parent(f"{name}|{storage}", name, {
        "store": str(args.store), "experiment": args.experiment, "profile": args.profile, "cost": args.cost,
        "multi": args.multi, "storage": storage})
    tracker.log_metrics(run_id, study_metrics(summary))
    tracker.client.set_tag(run_id, "lipsweep.es_search.best", summary["best"]["set"])
    tracker.log_artifacts(run_id, out, "es_search")
    tracker.finish(run_id)
