"""The sweep subcommands of ``lipsweep``: list, show, run, analyze, stop-search, ui.

Ray, MLflow, Optuna and ``analysis`` are imported inside the commands, so ``lipsweep fit`` stays light.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
import textwrap
from pathlib import Path

from lipsweep.cli.parsing import (
    DEFAULT_STORE,
    PROFILES,
    count_arg,
    int_arg,
    iterations_arg,
    out_dir_arg,
    positive_int_arg,
)
from lipsweep.core.errors import ConfigError


def add_sweep_commands(sub: argparse._SubParsersAction) -> None:
    """Register the sweep subcommands on the main parser."""
    ls = sub.add_parser("list", help="the experiments in search_spaces/")
    ls.add_argument("--json", action="store_true", help="name, paper figure and full description of each, as JSON")

    sh = sub.add_parser("show", help="an experiment's trials, the fits still needed, and estimated hours")
    sh.add_argument("name")
    sh.add_argument("--profile", default="local", choices=PROFILES, help="the experiment's profile (scale)")
    sh.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                    help="override base trial fields (repeatable: every --set adds its pairs)")
    sh.add_argument("--generator", metavar="PATH", help="kind gan: the generator checkpoint (same as --set generator=PATH)")
    sh.add_argument("--store", default=DEFAULT_STORE, help="trunk store directory (what it holds is not counted)")
    sh.add_argument("--gpus", type=positive_int_arg, nargs="+", default=[1, 10, 64], metavar="N",
                    help="print the wall-clock on N GPUs")
    sh.add_argument("--json", action="store_true")

    _add_run(sub.add_parser("run", help="run an experiment through Ray Tune, logging to MLflow"))
    _add_analyze(sub.add_parser("analyze", help="figures, CSVs and index.md for a sweep, from any MLflow store"))

    ss = sub.add_parser("stop-search", help="search the IMP stopping rule with Optuna by replaying finished chains")
    ss.add_argument("--from", dest="source", required=True,
                    help="experiment name (its chains in MLflow) or a trunk store directory")
    ss.add_argument("--trials", type=positive_int_arg, default=200, help="rules to try (added to a resumed study)")
    ss.add_argument("--delta", type=float, default=0.5, help="allowed PSNR loss vs dense, dB")
    ss.add_argument("--penalty", type=float, default=1.0, help="objective penalty per dB beyond delta")
    ss.add_argument("--multi", action="store_true", help="NSGA-II over (sparsity, PSNR change): a Pareto front")
    ss.add_argument("--metric", default="psnr_ema", choices=("psnr_final", "psnr_ema", "psnr_peak", "psnr_ema_peak"),
                    help="the PSNR that scores a chosen level (vs the dense level's)")
    ss.add_argument("--study-storage", default="sqlite:///optuna.db", help="Optuna storage (resumable)")
    ss.add_argument("--study-name", help="default: stop-rule-SOURCE-METRIC-deltaD-penaltyP[-multi]")
    ss.add_argument("--seed", type=int_arg, default=0)
    ss.add_argument("--tracking-uri")
    ss.add_argument("--profile", choices=PROFILES, help="which sweep of the experiment (default: newest)")
    ss.add_argument("--out", type=out_dir_arg, help="output directory (default runs/stop_search/STUDY_NAME)")

    u = sub.add_parser("ui", help="start the MLflow UI on the tracking store")
    u.add_argument("--tracking-uri")
    u.add_argument("--port", type=int_arg, default=5000, help="port on 127.0.0.1")


def _add_run(r: argparse.ArgumentParser) -> None:
    r.add_argument("name", help="experiment name (see `lipsweep list`) or a .yaml path")
    r.add_argument("--profile", default="local", choices=PROFILES, help="the experiment's profile (scale)")
    r.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                    help="override base trial fields (repeatable: every --set adds its pairs)")
    r.add_argument("--generator", metavar="PATH", help="kind gan: the generator checkpoint (same as --set generator=PATH)")
    r.add_argument("--snapshots", type=iterations_arg, metavar="IT,IT,...",
                   help="save every level's output at these iterations (Fig. 12; same as --set snapshots=[...])")
    r.add_argument("--study-storage", metavar="URL", help="search optuna: keep the Optuna study in this storage "
                   "(e.g. sqlite:///optuna.db, for optuna-dashboard); default in memory")
    r.add_argument("--resume", action="store_true", help="restore the interrupted Tune experiment")
    r.add_argument("--recompute", action="store_true", help="fit again everything the store holds (its old entries "
                   "are kept aside as NAME.replaced-TIME); a new sweep run in MLflow")
    r.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    r.add_argument("--storage", default="runs/tune", help="Tune storage_path (shared path or s3:// on a cluster)")
    r.add_argument("--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else ./mlflow.db)")
    r.add_argument("--store", default=DEFAULT_STORE, help="trunk store directory")
    r.add_argument("--max-failures", type=count_arg, default=2, help="retries per trial before it is reported failed")
    r.add_argument("--gpus-per-trial", type=float, help="override the experiment's GPU share per trial (e.g. 0.25)")
    r.add_argument("--shared-path", action="append", default=[], metavar="DIR",
                   help="declare DIR reachable from every node (e.g. a mount the check cannot recognise)")
    r.add_argument("--quiet", action="store_true")
    r.add_argument("--no-analysis", action="store_true", help="skip `lipsweep analyze` at the end")


def _add_analyze(an: argparse.ArgumentParser) -> None:
    an.add_argument("name")
    an.add_argument("--tracking-uri")
    an.add_argument("--profile", choices=PROFILES, help="which sweep (default: the newest)")
    an.add_argument("--out", type=out_dir_arg, help="output directory (default runs/analysis/NAME/PROFILE-SWEEPKEY, one per sweep)")
    an.add_argument("--metric", choices=("psnr_final", "psnr_ema", "psnr_peak", "psnr_ema_peak", "ssim_final", "mse",
                                         "mse_oracle", "psnr", "ssim", "psnr_posterior", "ssim_posterior", "accuracy"),
                    help="default: the experiment's (psnr_ema for the DIP local profiles, mse for gan_lip)")
    an.add_argument("--sparsity", type=float, default=0.89, help="sparsity for transfer matrices and FFT")
    an.add_argument("--delta", type=float, default=0.5, help="PSNR loss (dB) a matching ticket may have (Fig. 2 grid)")


def cmd_list(args: argparse.Namespace) -> int:
    """Each experiment's name, figure and description, from the YAML headers alone (building the trials
    would import torch and every trial kind); descriptions wrapped to the terminal under their name."""
    from lipsweep.cli.catalog import experiment_headers

    exps = experiment_headers()
    if args.json:
        print(json.dumps(exps, indent=1))
        return 0
    width = max(shutil.get_terminal_size((100, 24)).columns, 60)
    for exp in exps:
        print(f"{exp['name']}  ({exp['paper']})")
        print(textwrap.fill(exp["description"], width=width, initial_indent="    ", subsequent_indent="    "))
    return 0


def overrides(args: argparse.Namespace) -> list[str]:
    """``--set`` items, with ``--generator PATH`` as ``generator=PATH`` and ``--snapshots`` as a list."""
    snaps = getattr(args, "snapshots", None)
    return [*args.set, *([f"generator={args.generator}"] if getattr(args, "generator", None) else []),
            *([f"snapshots=[{', '.join(map(str, snaps))}]"] if snaps else [])]


def cmd_show(args: argparse.Namespace) -> int:
    from lipsweep.experiments.plan import plan, stored_platforms, summary
    from lipsweep.experiments.spec import load, parse_set
    from lipsweep.lottery.store import TrunkStore

    exp = load(args.name, args.profile, parse_set(overrides(args)))
    store = TrunkStore(args.store)
    info = {**summary(exp, plan(exp, store), args.gpus), "platforms": stored_platforms(exp, store)}
    if args.json:
        info["trials_config"] = [t.as_dict() for t in exp.trials]
        print(json.dumps(info, indent=1, default=str))
        return 0
    print(f"{exp.name} [{exp.profile}] ({exp.paper}): {info['description']}")
    print(f"{'levels':>6} {'fits':>5} {'iters':>6} {'core-min':>9}  trial")
    for row in info["table"]:  # the label last and whole: cut labels of different trials can read the same
        print(f"{row['levels']:>6} {row['fits_needed']:>5} {row['iters']:>6} {row['seconds'] / 60:>9.1f}  {row['label']}")
    _print_costs(info)
    for line in early_stopping_lines(info["early_stopping"]):
        print(line)
    _print_platforms(info["platforms"])
    return 0


def early_stopping_lines(es: dict | None) -> list[str]:
    """What early stopping does to the cost (issue 29): with ``es_stop`` on, how many fits the store's measured
    detections priced; with a detector but ``es_stop`` off, what ``es_stop: true`` would cost. None: no detector."""
    if es is None:
        return []
    on, off = es["es_stop_on"], es["es_stop_off"]
    lines = []
    if on is not None:
        full = "at the full budget (no stored fit of their kind)"
        if not on["measured"]:
            priced = f"all {on['fits']} fits {full}"
        else:
            rest = f"; {on['full']} {full}" if on["full"] else ""
            priced = f"{on['measured']} of {on['fits']} fits priced at their measured detection ({_measured(on)}){rest}"
        lines.append(f"early stopping: es_stop on; {priced}")
    if off is not None:
        lines.append(_es_stop_off_line(off))
    return lines


def _es_stop_off_line(off: dict) -> str:
    """What switching ``es_stop`` on would cost, from the store's measured detections."""
    if not off["fits"]:
        return "early stopping: a detector with es_stop off; its fits with es_stop: true are in the store already"
    if not off["measured"]:
        return ("early stopping: a detector with es_stop off (every fit runs its full budget); no stored fit of their "
                "kind measures what es_stop: true would save")
    hours, full = off["cpu_core_hours"], off["cpu_core_hours_full_budget"]
    again = (f"; {off['run_again']} of them are stored without es_stop and would run again (es_stop is part of a "
             "fit's key)") if off["run_again"] else ""
    return (f"early stopping: with es_stop: true this sweep's {off['fits']} fits would take {hours:.3g} core-hours "
            f"instead of {full:.3g} at their full budget, {100 * (1 - hours / full) if full else 0:.0f}% less "
            f"(measured: {_measured(off)}"
            + (f"; {off['full']} of {off['fits']} fits at the full budget, no stored fit of their kind" if off["full"]
               else "") + f"){again}")


def _measured(part: dict) -> str:
    return (f"mean {100 * part['mean_fraction']:.0f}% of the budget, {part['stored_fits']} stored fits, "
            f"{part['stored_confirmed']} confirmed")


def _print_platforms(platforms: dict[str, list[str]]) -> None:
    """Where the stored levels were computed; a warning when they come from several platforms."""
    if len(platforms) == 1:
        label, names = next(iter(platforms.items()))
        print(f"stored levels: {len(names)}, computed on {label}")
    elif platforms:
        print(f"warning: the stored levels come from {len(platforms)} platforms (their last bits differ, and IMP's "
              "masks with them; `platform_key: true` keeps platforms apart):")
        for label, names in platforms.items():
            print(f"  {len(names):>5} levels on {label}")


def _print_costs(info: dict) -> None:
    """The totals, the cost model each figure comes from, and the wall-clock per GPU count (from the GPU one)."""
    print(f"{info['trials']} trials, {info['fits_needed']} fits still needed (the rest is in the store); "
          f"resources per trial {info['resources']}")
    print(f"~{info['cpu_core_hours']:.2f} CPU core-hours (cost model: {info['cpu_basis'] or 'no CPU calibration'})")
    print(f"~{info['gpu_hours']:.2f} GPU hours (cost model: {info['gpu_basis']['note']})")
    if not info["wall_clock"]:
        print("wall-clock: the trials ask for no GPU (resources gpu 0)")
        return
    per = info["wall_clock"][0]["trials_per_gpu"]
    print(f"wall-clock from the GPU hours, at {per:g} trials per GPU: " + "; ".join(
        f"{w['gpus']} GPU{'s' if w['gpus'] > 1 else ''} ~{w['hours']:.1f} hours ({w['limit']})"
        for w in info["wall_clock"]))


def cmd_run(args: argparse.Namespace) -> int:
    from lipsweep.experiments.spec import load, parse_set
    from lipsweep.sweep.options import SweepOptions
    from lipsweep.sweep.tune import run_sweep
    from lipsweep.tracking.tracker import check_reachable, tracking_uri

    exp = load(args.name, args.profile, parse_set(overrides(args)))  # every spec error surfaces before Ray starts
    uri = tracking_uri(args.tracking_uri)
    check_reachable(uri)
    if args.gpus_per_trial is not None and args.gpus_per_trial < 0:
        raise ConfigError("gpus_per_trial", f"must be >= 0 (fractions allowed), got {args.gpus_per_trial}")
    opts = SweepOptions(store=args.store, storage=args.storage, tracking_uri=uri, address=args.address,
                        resume=args.resume, max_failures=args.max_failures, quiet=args.quiet,
                        gpus_per_trial=args.gpus_per_trial, shared_paths=tuple(args.shared_path),
                        study_storage=args.study_storage, recompute=args.recompute)
    result = run_sweep(exp, opts, lambda: print(f"lipsweep run: {exp.name} [{exp.profile}] {len(exp.trials)} trials "
                                                f"({exp.paper}); MLflow {uri}", file=sys.stderr, flush=True))
    print(f"{exp.name} [{exp.profile}]: {len(result.finished)} trials finished, {len(result.failed)} failed, "
          f"{len(result.incomplete)} incomplete in {result.seconds:.0f} s" + (f" ({result.cut})" if result.cut else ""))
    _print_unfinished(result, args, exp.profile)
    print(f"  MLflow:  {uri}  experiment 'lipsweep/{exp.name}', sweep run {result.parent_run_id}")
    print(f"  open it: lipsweep ui{'' if args.tracking_uri is None else ' --tracking-uri ' + uri}")
    print(f"  store:   {args.store}   Tune: {result.tune_path}")
    if not args.no_analysis:
        report = run_analysis(exp.name, uri, None, exp.profile, _report_metric(exp.metric), parent=result.parent_run_id,
                              delta=exp.delta)
        print(f"  report:  {report}")
    return 1 if result.failed else 3 if result.incomplete else 0


def _print_unfinished(result, args: argparse.Namespace, profile: str) -> None:
    """Which trials lack which levels, and the command that finishes them (the store keeps every level)."""
    if not (result.failed or result.incomplete):
        return
    for line in result.incomplete.values():
        print(f"  incomplete: {line}")
    for line in result.failed_levels.values():
        print(f"  failed: {line} (its error is in {result.tune_path})")
    argv = ["lipsweep", "run", args.name, "--profile", profile, *(["--set", *overrides(args)] if overrides(args) else []),
            "--store", args.store, "--storage", args.storage, *(["--tracking-uri", args.tracking_uri] if args.tracking_uri else []),
            *(["--address", args.address] if args.address else [])]
    if result.cut and result.cut.startswith("time_budget_s"):  # Tune ends budget-cut trials: a rerun continues
        print(f"  not finished: continue with  {shlex.join(argv)}  (a new run of the same sweep: the store keeps "
              "every finished level and MLflow every logged one; raise time_budget_s in the YAML if it was short)")
    else:
        print(f"  not finished: resume with  {shlex.join([*argv, '--resume'])}")


def analysis_out(name: str, profile: str, sweep_key: str, out: str | None) -> Path:
    """One folder per sweep (two sweeps of one experiment never overwrite each other's report)."""
    return Path(out) if out else Path("runs") / "analysis" / name / f"{profile}-{sweep_key[:8]}"


def run_analysis(name: str, uri: str, out: str | None, profile: str | None, metric: str = "psnr_ema",
                 sparsity: float = 0.89, parent: str | None = None, delta: float = 0.5) -> Path:
    from lipsweep.analysis.report import analyze
    from lipsweep.analysis.runs import Runs

    runs = Runs(uri, name)
    parent = parent or runs.parent(profile)
    sweep = runs.sweeps().set_index("run_id").loc[parent]
    where = analysis_out(name, str(sweep["profile"]), str(sweep["sweep_key"]), out)
    analyze(name, uri, where, metric=metric, sparsity=sparsity, parent=parent, delta=delta)
    return where / "index.md"


def _report_metric(metric: str) -> str:
    """The report's main table: the experiment's metric, except that a DIP report leads with the obtainable
    final-EMA PSNR (the paper's oracle peak gets its own table beside it)."""
    return "psnr_ema" if metric.startswith("psnr_ema") else metric


def cmd_analyze(args: argparse.Namespace) -> int:
    from lipsweep.experiments.spec import metric_of
    from lipsweep.tracking.tracker import check_reachable, tracking_uri

    uri = tracking_uri(args.tracking_uri)
    check_reachable(uri, must_exist=True)
    name = Path(args.name).stem if args.name.endswith((".yaml", ".yml")) else args.name  # a YAML names itself
    metric = args.metric
    if metric is None:
        try:
            metric = _report_metric(metric_of(args.name, args.profile or "local"))
        except ConfigError:  # an experiment known only to the MLflow store: the DIP default
            metric = "psnr_ema"
    try:
        index = run_analysis(name, uri, args.out, args.profile, metric, args.sparsity, delta=args.delta)
    except LookupError as exc:
        raise ConfigError("name", str(exc)) from None
    print(f"report: {index} (also logged to the sweep's MLflow run under analysis/)")
    return 0


def cmd_stop_search(args: argparse.Namespace) -> int:
    from lipsweep.cli.stop_search import cmd_stop_search as run

    return run(args)


def cmd_ui(args: argparse.Namespace) -> int:
    import subprocess

    from lipsweep.tracking.tracker import tracking_uri

    uri = tracking_uri(args.tracking_uri)
    print(f"MLflow UI on http://127.0.0.1:{args.port} for {uri} (Ctrl-C to stop); MLflow 3 opens an experiment "
          "on its GenAI view: choose 'Model training' at the top of the sidebar once (docs/mlflow_ui.md walks "
          "through Fig. 9)", flush=True)
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", "127.0.0.1",
           "--port", str(args.port)]
    return subprocess.call(cmd)


SWEEP_COMMANDS = {"list": cmd_list, "show": cmd_show, "run": cmd_run, "analyze": cmd_analyze,
                  "stop-search": cmd_stop_search, "ui": cmd_ui}
