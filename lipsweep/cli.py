"""The ``lipsweep`` command. Bad input exits 2 with one line naming the field and the allowed values."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from .config import DEVICES, ProblemConfig, RunConfig, default_fit
from .errors import ConfigError
from .images import catalog, image_names, save_image, warn
from .models import DEFAULT_WIDTH, MODEL_KINDS, ModelConfig, build_model, counts
from .pruning import METHODS
from .tasks import TASKS, to_pixels

DEFAULT_STORE = ".lipsweep/store"
PROFILES = ("paper", "local", "smoke")
IMP_TARGETS = ("observation", "clean")


class Parser(argparse.ArgumentParser):
    """argparse, but its errors are one line (no usage dump) and exit 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def build_parser() -> Parser:
    parser = Parser(prog="lipsweep", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    f = sub.add_parser("fit", help="fit one prior to one degraded image")
    add_run_args(f)
    f.add_argument("--mask", help="inpainting mask image (name or path; white = known), default Bernoulli 50%%")
    f.add_argument("--curve-every", type=_int, default=50)
    f.add_argument("--quiet", action="store_true", help="no progress lines")
    f.add_argument("--out", required=True, help="output directory")

    t = sub.add_parser("ticket", help="find tickets: an IMP chain or another method's masks, level by level")
    add_run_args(t)
    t.add_argument("--method", default="imp", choices=METHODS)
    t.add_argument("--levels", type=_int, required=True, help="pruning levels after the dense level 0")
    t.add_argument("--rewind", type=float, default=0.0, help="rewind to the dense run after this fraction (0 = theta_0)")
    t.add_argument("--imp-target", default="observation", choices=IMP_TARGETS)
    t.add_argument("--keep-input-convs", action="store_true", help="reference-code compat: never prune the input convs")
    t.add_argument("--multi-images", nargs="+", default=(), metavar="IMAGE", help="Algorithm 2: more images")
    t.add_argument("--per-image-z", action="store_true", help="multi-image: one z per image (default: shared z)")
    t.add_argument("--stop-k", type=_int, help="stop when the IMP loss rose k times in a row")
    t.add_argument("--stop-tolerance", type=float, default=0.0)
    t.add_argument("--keep-going", action="store_true", help="record where the stop rule fires but keep pruning")
    t.add_argument("--store", default=DEFAULT_STORE, help=f"trunk store directory (default {DEFAULT_STORE})")
    t.add_argument("--out", required=True, help="output directory")

    mk = sub.add_parser("mask", help="inspect masks")
    mk_sub = mk.add_subparsers(dest="mask_command", required=True, parser_class=Parser)
    show = mk_sub.add_parser("show", help="density and per-layer densities of a mask")
    show.add_argument("ref", help="mask file (.npz/.json), or CHAIN_KEY/LEVEL in the store")
    show.add_argument("--store", default=DEFAULT_STORE)
    show.add_argument("--json", action="store_true")

    sub.add_parser("list", help="the experiments in search_spaces/")

    sh = sub.add_parser("show", help="an experiment's trials, the fits still needed, and estimated hours")
    sh.add_argument("name")
    sh.add_argument("--profile", default="local", choices=PROFILES)
    sh.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="override base trial fields")
    sh.add_argument("--store", default=DEFAULT_STORE)
    sh.add_argument("--json", action="store_true")

    r = sub.add_parser("run", help="run an experiment through Ray Tune, logging to MLflow")
    r.add_argument("name", help="experiment name (see `lipsweep list`) or a .yaml path")
    r.add_argument("--profile", default="local", choices=PROFILES)
    r.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="override base trial fields")
    r.add_argument("--resume", action="store_true", help="restore the interrupted Tune experiment")
    r.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    r.add_argument("--storage", default="runs/tune", help="Tune storage_path (shared path or s3:// on a cluster)")
    r.add_argument("--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else ./mlflow.db)")
    r.add_argument("--store", default=DEFAULT_STORE, help="trunk store directory")
    r.add_argument("--max-failures", type=_int, default=2, help="retries per trial before it is reported failed")
    r.add_argument("--gpus-per-trial", type=float, help="override the experiment's GPU share per trial (e.g. 0.25)")
    r.add_argument("--shared-path", action="append", default=[], metavar="DIR",
                   help="declare DIR reachable from every node (e.g. a mount the check cannot recognise)")
    r.add_argument("--quiet", action="store_true")
    r.add_argument("--no-analysis", action="store_true", help="skip `lipsweep analyze` at the end")

    an = sub.add_parser("analyze", help="figures, CSVs and index.md for a sweep, from any MLflow store")
    an.add_argument("name")
    an.add_argument("--tracking-uri")
    an.add_argument("--profile", choices=PROFILES, help="which sweep (default: the newest)")
    an.add_argument("--out", help="output directory (default runs/analysis/NAME)")
    an.add_argument("--metric", default="psnr_ema", choices=("psnr_final", "psnr_ema", "psnr_peak", "ssim_final"))
    an.add_argument("--sparsity", type=float, default=0.89, help="sparsity for transfer matrices and FFT")

    ss = sub.add_parser("stop-search", help="search the IMP stopping rule with Optuna by replaying finished chains")
    ss.add_argument("--from", dest="source", required=True,
                    help="experiment name (its chains in MLflow) or a trunk store directory")
    ss.add_argument("--trials", type=_int, default=200)
    ss.add_argument("--delta", type=float, default=0.5, help="allowed PSNR loss vs dense, dB")
    ss.add_argument("--penalty", type=float, default=1.0, help="objective penalty per dB beyond delta")
    ss.add_argument("--multi", action="store_true", help="NSGA-II over (sparsity, PSNR loss): a Pareto front")
    ss.add_argument("--metric", default="psnr_ema", choices=("psnr_final", "psnr_ema", "psnr_peak"))
    ss.add_argument("--study-storage", default="sqlite:///optuna.db", help="Optuna storage (resumable)")
    ss.add_argument("--study-name", help="default: stop-rule-SOURCE[-multi]")
    ss.add_argument("--seed", type=_int, default=0)
    ss.add_argument("--tracking-uri")
    ss.add_argument("--profile", choices=PROFILES, help="which sweep of the experiment (default: newest)")
    ss.add_argument("--out", help="output directory (default runs/stop_search/SOURCE)")

    u = sub.add_parser("ui", help="start the MLflow UI on the tracking store")
    u.add_argument("--tracking-uri")
    u.add_argument("--port", type=_int, default=5000)

    i = sub.add_parser("images", help="list the shipped images")
    i.add_argument("--json", action="store_true")

    m = sub.add_parser("models", help="parameter counts of each model at its default settings")
    m.add_argument("--json", action="store_true")
    return parser


def add_run_args(p: argparse.ArgumentParser) -> None:
    """What defines one fit: image, task, prior and optimiser settings (shared by fit and ticket)."""
    p.add_argument("--image", required=True, help="shipped name (see `lipsweep images`) or image file path")
    p.add_argument("--task", required=True, choices=TASKS)
    p.add_argument("--model", default="dip", choices=MODEL_KINDS)
    p.add_argument("--size", type=_int, help="resize so the shorter side is N px (Lanczos) before cropping")
    p.add_argument("--iters", type=_int, help="iterations per fit (default: per task, SPEC.md)")
    p.add_argument("--width", type=_int, help="DIP channels per level / deep decoder k (default 128)")
    p.add_argument("--depth", type=_int, default=5, help="DIP hourglass levels (default 5)")
    p.add_argument("--seed", type=_int, default=0)
    p.add_argument("--lr", type=float)
    p.add_argument("--reg-noise-std", type=float, help="std of the noise added to z each step")
    p.add_argument("--device", default="auto", choices=DEVICES)


def run_config(args: argparse.Namespace) -> RunConfig:
    width = args.width if args.width is not None else DEFAULT_WIDTH[args.model]
    return RunConfig(
        problem=ProblemConfig(image=args.image, task=args.task, size=args.size,
                              inpaint_mask=getattr(args, "mask", None)),
        model=ModelConfig(kind=args.model, width=width, levels=args.depth),
        fit=default_fit(args.task, args.model, iters=args.iters, lr=args.lr, reg_noise_std=args.reg_noise_std,
                        curve_every=getattr(args, "curve_every", None)),
        seed=args.seed,
        device=args.device,
    )


def progress_printer(total: int, quiet: bool):
    """Progress lines every ~5% of the run; PSNR here uses the clean image (monitoring only)."""
    every = max(1, total // 20)
    start = time.perf_counter()

    def show(step) -> None:
        if quiet or (step.iteration % every and step.iteration != total):
            return
        rate = step.iteration / max(time.perf_counter() - start, 1e-9)
        ema = f"  ema {step.psnr_ema:6.2f}" if step.psnr_ema is not None else ""
        print(f"  it {step.iteration:>6}/{total}  loss {step.loss:.5f}  psnr {step.psnr:6.2f}{ema}  "
              f"{rate:6.1f} it/s", file=sys.stderr, flush=True)

    return show


def cmd_fit(args: argparse.Namespace) -> int:
    from .fit import prepare, run  # torch-heavy import only where needed

    cfg = run_config(args)
    prep = prepare(cfg)  # every input error surfaces here, before any output
    warn(prep.notes, cfg.problem.image)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not args.quiet:
        print(f"lipsweep fit: {cfg.problem.image} {cfg.problem.task} {cfg.model.kind} width {cfg.model.width} "
              f"{cfg.fit.iters} iterations", file=sys.stderr)
    result, prep = run(cfg, callback=progress_printer(cfg.fit.iters, args.quiet), prep=prep)
    record = {**result.metrics, "config": cfg.as_dict(), "curve": result.curve,
              "restored": "ema" if result.ema is not None else "final",
              "note": "psnr_peak/peak_iter are oracle values (chosen with the clean image)"}
    (out / "metrics.json").write_text(json.dumps(record, indent=2))
    save_image(result.restored, out / "restored.png")
    save_image(result.best, out / "peak.png")
    save_image(to_pixels(prep.problem.observation), out / "observation.png")
    m = result.metrics
    print(f"psnr final {m['psnr_final']:.2f}  ema {m['psnr_ema']:.2f}  peak {m['psnr_peak']:.2f} "
          f"@{m['peak_iter']} (oracle)  observation {m['psnr_observation']:.2f}  ssim {m['ssim_final']:.3f}  "
          f"{m['iters_per_second']:.1f} it/s -> {out}")
    return 0


def cmd_images(args: argparse.Namespace) -> int:
    names = catalog()
    rows = []
    for name in image_names():
        with Image.open(names[name]) as img:
            rows.append({"name": name, "width": img.size[0], "height": img.size[1], "mode": img.mode})
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for r in rows:
            print(f"{r['name']:<40} {r['width']:>5} x {r['height']:<5} {r['mode']}")
    return 0


MODEL_VARIANTS = {
    "dip": ModelConfig(kind="dip"),
    "deep_decoder": ModelConfig(kind="deep_decoder", width=128),
    "deep_decoder_k320": ModelConfig(kind="deep_decoder", width=320),
}


def cmd_models(args: argparse.Namespace) -> int:
    rows = []
    for name, cfg in MODEL_VARIANTS.items():
        c = counts(build_model(cfg, seed=0))
        rows.append({"name": name, "config": cfg.as_dict(), "params": c["params"],
                     "conv_layers": c["conv_layers"], "conv_weights": c["conv_weights"]})
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for r in rows:
            print(f"{r['name']:<20} params {r['params']:>10,}  convs {r['conv_layers']:>3}  "
                  f"conv weights {r['conv_weights']:>10,}")
    return 0


def cmd_ticket(args: argparse.Namespace) -> int:
    from .masks import save
    from .stopping import StopRule
    from .store import TrunkStore
    from .tickets import ChainConfig, Tickets

    cfg = ChainConfig(run=run_config(args), method=args.method, rewind=args.rewind, imp_target=args.imp_target,
                      keep_input_convs=args.keep_input_convs, multi_images=tuple(args.multi_images),
                      shared_z=not args.per_image_z)
    stop = StopRule(k=args.stop_k, tolerance=args.stop_tolerance) if args.stop_k is not None else None
    if args.levels < 0:
        raise ConfigError("levels", f"must be an integer >= 0, got {args.levels}")
    store = TrunkStore(args.store)
    tickets = Tickets(store)
    tickets.context(cfg)  # validates images before anything is written
    out = Path(args.out)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    print(f"lipsweep ticket: {cfg.method} on {cfg.run.problem.image} {cfg.run.problem.task}, {args.levels} levels, "
          f"rewind {cfg.rewind}; chain {cfg.chain_key} in {store.root}", file=sys.stderr)

    def show(rec: dict) -> None:
        print(f"  level {rec['level']:>2}  sparsity {100 * rec['sparsity']:6.2f}%  imp loss {rec['imp_loss']:.5f}  "
              f"psnr final {rec['psnr_final']:6.2f}  peak {rec['psnr_peak']:6.2f}  ssim {rec['ssim_final']:.3f}",
              file=sys.stderr, flush=True)

    result = tickets.chain(cfg, args.levels, stop=stop, keep_going=args.keep_going, on_level=show)
    for rec in result.records:
        save(tickets.mask(cfg, rec["level"]), out / "masks" / f"level_{rec['level']}")
    payload = {"chain_key": cfg.chain_key, "dense_key": cfg.dense_key, "config": cfg.chain_payload(),
               "dense_config": cfg.dense_payload(), "levels": result.records, "fits": result.fits,
               "stop": {"rule": vars(stop) if stop else None, "fired_at": result.stop_fired_at,
                        "chosen": result.stop_chosen}}
    (out / "levels.json").write_text(json.dumps(payload, indent=1, default=float))
    print(f"{len(result.records)} levels ({result.fits} fits run, the rest loaded) -> {out / 'levels.json'}")
    return 0


def cmd_mask(args: argparse.Namespace) -> int:
    from .masks import load
    from .store import TrunkStore

    mask = load(TrunkStore(args.store).resolve_mask(args.ref))
    info = mask.summary()
    if args.json:
        print(json.dumps(info, indent=1))
        return 0
    print(f"mask {info['hash'][:16]}  density {100 * info['density']:.2f}%  sparsity {100 * info['sparsity']:.2f}%  "
          f"kept {info['kept']:,} of {info['total']:,}  meta {json.dumps(info['meta'])}")
    for name, d in info["layer_densities"].items():
        print(f"  {name:<28} {100 * d:6.2f}%")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from .experiments import experiment_names, load

    for name in experiment_names():
        exp = load(name, "smoke")
        print(f"{name:<18} {exp.paper:<10} {exp.description}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from .experiments import load, parse_set
    from .plan import plan, summary
    from .store import TrunkStore

    exp = load(args.name, args.profile, parse_set(args.set))
    info = summary(exp, plan(exp, TrunkStore(args.store)))
    if args.json:
        info["trials_config"] = [t.as_dict() for t in exp.trials]
        print(json.dumps(info, indent=1, default=str))
        return 0
    print(f"{exp.name} [{exp.profile}] ({exp.paper}): {info['description']}")
    print(f"{'trial':<60} {'levels':>6} {'fits':>5} {'iters':>6} {'core-min':>9}")
    for row in info["table"]:
        print(f"{row['label'][:60]:<60} {row['levels']:>6} {row['fits_needed']:>5} {row['iters']:>6} "
              f"{row['seconds'] / 60:>9.1f}")
    print(f"{info['trials']} trials, {info['fits_needed']} fits still needed (the rest is in the store); "
          f"~{info['cpu_core_hours']:.2f} CPU core-hours, ~{info['gpu_hours_assumed']:.2f} GPU hours "
          f"(assuming a GPU = {info['gpu_speedup_assumed']:.0f} cores); resources per trial {exp.resources}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from .experiments import load, parse_set
    from .sweep import SweepOptions, run_sweep
    from .tracking import tracking_uri

    exp = load(args.name, args.profile, parse_set(args.set))  # every spec error surfaces before Ray starts
    uri = tracking_uri(args.tracking_uri)
    if "://" in args.store:
        raise ConfigError("store", f"{args.store!r}: the trunk store needs a filesystem path (local, or an NFS mount "
                                   "on a cluster): object stores have no atomic rename or locks")
    if args.gpus_per_trial is not None and args.gpus_per_trial < 0:
        raise ConfigError("gpus_per_trial", f"must be >= 0 (fractions allowed), got {args.gpus_per_trial}")
    opts = SweepOptions(store=args.store, storage=args.storage, tracking_uri=uri, address=args.address,
                        resume=args.resume, max_failures=args.max_failures, quiet=args.quiet,
                        gpus_per_trial=args.gpus_per_trial, shared_paths=tuple(args.shared_path))
    print(f"lipsweep run: {exp.name} [{exp.profile}] {len(exp.trials)} trials ({exp.paper}); MLflow {uri}",
          file=sys.stderr, flush=True)
    result = run_sweep(exp, opts)
    print(f"{exp.name} [{exp.profile}]: {len(result.finished)} trials finished, {len(result.failed)} failed "
          f"in {result.seconds:.0f} s")
    print(f"  MLflow:  {uri}  experiment 'lipsweep/{exp.name}', sweep run {result.parent_run_id}")
    print(f"  open it: lipsweep ui{'' if args.tracking_uri is None else ' --tracking-uri ' + uri}")
    print(f"  store:   {args.store}   Tune: {result.tune_path}")
    if not args.no_analysis:
        out = analysis_out(exp.name, None)
        report = run_analysis(exp.name, uri, out, exp.profile)
        print(f"  report:  {report}")
    return 1 if result.failed else 0


def analysis_out(name: str, out: str | None) -> Path:
    return Path(out) if out else Path("runs") / "analysis" / name


def run_analysis(name: str, uri: str, out: Path, profile: str | None, metric: str = "psnr_ema",
                 sparsity: float = 0.89) -> Path:
    from analysis.report import analyze

    analyze(name, uri, out, profile=profile, metric=metric, sparsity=sparsity)
    return out / "index.md"


def cmd_analyze(args: argparse.Namespace) -> int:
    from .tracking import tracking_uri

    uri = tracking_uri(args.tracking_uri)
    try:
        index = run_analysis(args.name, uri, analysis_out(args.name, args.out), args.profile, args.metric,
                             args.sparsity)
    except LookupError as exc:
        raise ConfigError("name", str(exc)) from None
    print(f"report: {index} (also logged to the sweep's MLflow run under analysis/)")
    return 0


def cmd_stop_search(args: argparse.Namespace) -> int:
    from . import stop_search as ss
    from .tracking import Tracker, tracking_uri

    uri = tracking_uri(args.tracking_uri)
    if Path(args.source).is_dir():
        traces = ss.traces_from_store(args.source, args.metric)
        label = Path(args.source).name
    else:
        from analysis.runs import Runs

        try:
            runs = Runs(uri, args.source)
            traces = ss.traces_from_frame(runs.table(runs.parent(args.profile)), args.metric)
        except LookupError as exc:
            raise ConfigError("from", str(exc)) from None
        label = args.source
    if len(traces) < 1:
        raise ConfigError("from", f"no complete IMP chains with {args.metric} in {args.source!r}")
    name = args.study_name or f"stop-rule-{label}{'-multi' if args.multi else ''}"
    start = time.perf_counter()
    study = ss.search(traces, args.trials, args.delta, args.penalty, args.study_storage, name, args.seed, args.multi)
    out = Path(args.out) if args.out else Path("runs") / "stop_search" / name
    summary = ss.write_outputs(study, traces, out, args.delta, args.penalty, args.multi)
    seconds = time.perf_counter() - start
    b, r = summary["best"], summary["best_rule"]
    print(f"{len(traces)} chains, {summary['trials']} trials in study {name!r} ({seconds:.1f} s)")
    print(f"best rule: stop after k={r['k']} rises (tolerance {r['tolerance']:.3f}, smoothing {r['smooth']}), "
          f"return the level where they began {r['offset']:+d}: sparsity {100 * b['sparsity']:.1f}%, "
          f"PSNR loss {b['psnr_loss']:.2f} dB (delta {args.delta} dB)")
    for rule, sc in summary["paper_rules"].items():
        print(f"paper's {rule}: sparsity {100 * sc['sparsity']:.1f}%, PSNR loss {sc['psnr_loss']:.2f} dB")
    for key in ("leave_one_image_out", "leave_one_task_out"):
        print(f"{key.replace('_', '-')}: mean gap {summary[key]['mean_gap']:.3f} over {len(summary[key]['folds'])} folds")
    print("Pareto front (sparsity, PSNR loss): " + ", ".join(
        f"({100 * f['sparsity']:.1f}%, {f['psnr_loss']:.2f} dB)" for f in summary["pareto_front"][:8]))
    tracker = Tracker(uri, "lipsweep/stop_search")
    run_id = tracker.parent(f"{name}|{args.study_storage}", name, {
        "source": args.source, "delta": args.delta, "penalty": args.penalty, "multi": args.multi,
        "metric": args.metric, "study_storage": args.study_storage})
    tracker.log_level(run_id, {"level": summary["trials"], "sparsity": b["sparsity"], "psnr_loss": b["psnr_loss"],
                               "objective": b["objective"], "loo_image_gap": summary["leave_one_image_out"]["mean_gap"],
                               "loo_task_gap": summary["leave_one_task_out"]["mean_gap"], **{f"rule_{k}": v for k, v in r.items()}},
                      None)
    tracker.log_artifacts(run_id, out, "stop_search")
    tracker.finish(run_id, ok=True)
    print(f"-> {out} (plots, summary.json); MLflow experiment 'lipsweep/stop_search'")
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    import subprocess

    from .tracking import tracking_uri

    uri = tracking_uri(args.tracking_uri)
    print(f"MLflow UI on http://127.0.0.1:{args.port} for {uri} (Ctrl-C to stop)", flush=True)
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", "127.0.0.1",
           "--port", str(args.port)]
    return subprocess.call(cmd)


COMMANDS = {"fit": cmd_fit, "list": cmd_list, "show": cmd_show, "run": cmd_run, "analyze": cmd_analyze, "stop-search": cmd_stop_search,
            "ui": cmd_ui, "ticket": cmd_ticket, "mask": cmd_mask, "images": cmd_images, "models": cmd_models}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except ConfigError as exc:
        print(f"lipsweep {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `lipsweep images | head`
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
