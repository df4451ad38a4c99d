"""``lipsweep stop-search``: replay finished IMP chains under candidate stop rules (paper Appendix B, Fig. 13),
print what was found in signed words, and log the study to MLflow.

It says "no rule found" (with the reason and the chain length a rule needs) rather than name a best rule
that never stops a chain; PSNR is a signed change vs dense (positive = better); nothing non-finite is
written or logged.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

from lipsweep.core.errors import ConfigError
from lipsweep.stopping.rule import StopRule

OUTCOME_TAG = "lipsweep.stop_search.outcome"


def load_traces(args: argparse.Namespace, uri: str) -> tuple[list, str]:
    """The chains to replay (a trunk store directory, or an experiment's newest sweep in MLflow) and a label."""
    from lipsweep.stopping import replay

    if Path(args.source).is_dir():
        return replay.traces_from_store(args.source, args.metric), Path(args.source).name
    from lipsweep.analysis.runs import Runs

    try:
        runs = Runs(uri, args.source)
        return replay.traces_from_frame(runs.table(runs.parent(args.profile)), args.metric), args.source
    except LookupError as exc:
        raise ConfigError("from", str(exc)) from None


def cmd_stop_search(args: argparse.Namespace) -> int:
    from lipsweep.stopping import search as ss
    from lipsweep.tracking.tracker import check_reachable, tracking_uri

    uri = tracking_uri(args.tracking_uri)
    check_reachable(uri)  # it reads chains from, and logs the study to, MLflow
    traces, label = load_traces(args, uri)
    if len(traces) < 1:
        raise ConfigError("from", f"no complete IMP chains with {args.metric} in {args.source!r}")
    name = args.study_name or ss.default_study_name(label, args.metric, args.delta, args.penalty, args.multi)
    start = time.perf_counter()
    study = ss.search(traces, args.trials, args.delta, args.penalty, args.study_storage, name, args.seed, args.multi,
                      args.metric)
    out = Path(args.out) if args.out else Path("runs") / "stop_search" / name
    summary = ss.write_outputs(study, traces, out, args.delta, args.penalty, args.multi)
    print("\n".join(report_lines(summary, time.perf_counter() - start)))
    log_study(uri, name, args, summary, out)
    print(f"-> {out} (plots, summary.json); MLflow experiment 'lipsweep/stop_search'")
    return 0


def outcome_words(sc: dict, chains: int) -> str:
    """A score in signed words: sparsity, PSNR change vs dense (positive = better), objective (per chain,
    sparsity minus the penalty beyond delta, averaged), chains it fires on."""
    fires = f", fires on {sc['fires_on']} of {chains} chains" if "fires_on" in sc else ""
    return (f"sparsity {100 * sc['sparsity']:.1f}%, PSNR change {sc['psnr_change_db']:+.2f} dB vs dense, objective "
            f"{sc['objective']:.4f}{fires}")


def report_lines(summary: dict, seconds: float) -> list[str]:
    """What the search found, as printed: the rule in words or "no rule found" with why, never both."""
    short, long_ = summary["levels"]
    levels = f"{short}" if short == long_ else f"{short}-{long_}"
    n = summary["chains"]
    lines = [f"{n} chains ({levels} IMP levels each), {summary['trials']} trials in study {summary['study']!r} "
             f"({seconds:.1f} s)"]
    if summary["outcome"] == "rule_found":
        lines += [f"best rule: {StopRule(**summary['best_rule']).describe()}",
                  f"  {outcome_words(summary['best'], n)}; stops {summary['stops_chains']} of {n} chains before "
                  f"their last level (delta {summary['delta_db']:g} dB)"]
    else:
        lines += [f"warning: no rule found: {summary['reason']}",
                  *([f"  {summary['needs']}"] if summary["needs"] else []),
                  "outcome: no rule found (summary.json: \"outcome\": \"no_rule_found\")"]
    lines.append(f"no rule (IMP to the last level): {outcome_words(summary['no_stop'], n)}")
    lines += [f"paper's {rule}: {outcome_words(sc, n)}" for rule, sc in summary["paper_rules"].items()]
    imp = summary["importances"]
    lines.append("importances: " + (", ".join(f"{k} {v:.2f}" for k, v in imp["values"].items())
                                    if "values" in imp else imp["note"]))
    lines += [f"{key.replace('_', '-')}: {summary[key]['note']}"
              for key in ("leave_one_image_out", "leave_one_task_out")]
    if summary["pareto_front"] is not None:
        lines.append("Pareto front (sparsity, PSNR change): " + ", ".join(
            f"({100 * f['sparsity']:.1f}%, {f['psnr_change_db']:+.2f} dB)" for f in summary["pareto_front"][:8]))
    return lines


def study_metrics(summary: dict) -> dict[str, float]:
    """The numbers MLflow gets: finite ones only (a NaN metric would read as a result)."""
    found = {"trials": summary["trials"], "chains": summary["chains"],
             **{f"no_stop_{k}": v for k, v in summary["no_stop"].items()}}
    if summary["best"]:
        found.update(summary["best"])
        found.update({f"rule_{k}": v for k, v in summary["best_rule"].items()})
    for key, short in (("leave_one_image_out", "loo_image_gap"), ("leave_one_task_out", "loo_task_gap")):
        found[short] = summary[key]["mean_gap"]
    return {k: float(v) for k, v in found.items() if v is not None and math.isfinite(float(v))}


def log_study(uri: str, name: str, args: argparse.Namespace, summary: dict, out: Path) -> None:
    """One MLflow run per study (found again by name and storage): params, finite metrics, the outcome tag
    (and its reason), the output folder."""
    from lipsweep.tracking.tracker import Tracker

    tracker = Tracker(uri, "lipsweep/stop_search")
    run_id = tracker.parent(f"{name}|{args.study_storage}", name, {
        "source": args.source, "delta": args.delta, "penalty": args.penalty, "multi": args.multi,
        "metric": args.metric, "study_storage": args.study_storage})
    tracker.log_metrics(run_id, study_metrics(summary))
    tracker.client.set_tag(run_id, OUTCOME_TAG, summary["outcome"])
    tracker.client.set_tag(run_id, f"{OUTCOME_TAG}.reason", (summary["reason"] or "")[:5000])
    tracker.log_artifacts(run_id, out, "stop_search")
    tracker.finish(run_id)
