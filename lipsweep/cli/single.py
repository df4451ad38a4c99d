"""One fit and one ticket from the command line (``lipsweep fit``, ``lipsweep ticket``): the run arguments they
share, the flat trial they make, and what each prints and writes."""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from lipsweep.cli import catalog
from lipsweep.cli.parsing import DEFAULT_STORE, int_arg, iterations_arg, out_dir_arg, positive_int_arg

if TYPE_CHECKING:
    from lipsweep.fitting.config import RunConfig
    from lipsweep.kinds.base import TrialConfig
    from lipsweep.sweep.progress import Progress


def add_single_parsers(sub: argparse._SubParsersAction) -> None:
    """``fit`` and ``ticket``: one degraded image, one fit or one chain of levels."""
    f = sub.add_parser("fit", help="fit one prior to one degraded image")
    add_run_args(f)
    f.add_argument("--mask", help="inpainting mask image (name or path; white = known), default Bernoulli 50%%")
    f.add_argument("--curve-every", type=int_arg, default=50, help="record the PSNR curve every N iterations")
    f.add_argument("--quiet", action="store_true", help="no progress bar")
    f.add_argument("--recompute", action="store_true", help="fit again even if --out holds this fit (same config, "
                   "same code); the old files move to OUT/previous-TIME/")
    f.add_argument("--out", required=True, type=out_dir_arg, help="output directory")

    t = sub.add_parser("ticket", help="find tickets: an IMP chain or another method's masks, level by level")
    add_run_args(t)
    t.add_argument("--method", default="imp", choices=catalog.METHODS, help="how each level's mask is made")
    t.add_argument("--levels", type=int_arg, required=True, help="pruning levels after the dense level 0")
    t.add_argument("--rewind", type=float, default=0.0, help="rewind to the dense run after this fraction (0 = theta_0)")
    t.add_argument("--imp-target", default="observation", choices=catalog.IMP_TARGETS,
                   help="what IMP fits to rank weights: the degraded observation, or the clean image (an oracle)")
    t.add_argument("--keep-input-convs", action="store_true", help="reference-code compat: never prune the input convs")
    t.add_argument("--multi-images", nargs="+", default=(), metavar="IMAGE", help="Algorithm 2: more images")
    t.add_argument("--per-image-z", action="store_true", help="multi-image: one z per image (default: shared z)")
    t.add_argument("--stop-k", type=int_arg, help="stop when the IMP loss rose k times in a row")
    t.add_argument("--stop-tolerance", type=float, default=0.0)
    t.add_argument("--keep-going", action="store_true", help="record where the stop rule fires but keep pruning")
    t.add_argument("--es-mask", action="store_true", help="with --early-stop: rank the weights at each fit's detected "
                   "iteration, not its last one, for the next level's mask (IMP under early stopping)")
    t.add_argument("--store", default=DEFAULT_STORE, help="trunk store directory")
    t.add_argument("--recompute", action="store_true", help="refit every level the store holds (its old entries are "
                   "kept aside as NAME.replaced-TIME)")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.add_argument("--out", required=True, type=out_dir_arg, help="output directory")


def add_run_args(p: argparse.ArgumentParser) -> None:
    """What defines one fit: image, task, prior and optimiser settings (shared by fit and ticket)."""
    p.add_argument("--image", required=True, help="shipped name (see `lipsweep images`) or image file path")
    p.add_argument("--task", required=True, choices=catalog.TASKS)
    p.add_argument("--model", default="dip", choices=catalog.PRIORS, help="the prior fitted")
    p.add_argument("--size", type=int_arg, help="resize so the shorter side is N px (Lanczos) before cropping")
    p.add_argument("--iters", type=int_arg, help="iterations per fit (default: per task, docs/science.md section 2)")
    p.add_argument("--width", type=int_arg, help="DIP channels per level / deep decoder k (default: 128)")
    p.add_argument("--depth", type=int_arg, default=5, help="DIP hourglass levels")
    p.add_argument("--seed", type=int_arg, default=0)
    p.add_argument("--lr", type=float)
    p.add_argument("--reg-noise-std", type=float, help="std of the noise added to z each step")
    p.add_argument("--device", default="auto", choices=catalog.DEVICES, help="auto: CUDA when there is one")
    p.add_argument("--threads", type=positive_int_arg, default=1,
                   help="torch CPU threads (as sweep trials; results are keyed by it)")
    p.add_argument("--target", default="image", choices=catalog.TARGETS, help="what is fitted (Fig. 10): the image, its "
                   "pixels permuted, or white noise")
    p.add_argument("--channels", type=int_arg, default=3, choices=(1, 3), help="1: load the image grey, 1-channel net")
    p.add_argument("--snapshots", type=iterations_arg, default=[], metavar="IT,IT,...",
                   help="save the output at these iterations (Fig. 12), e.g. 100,500,1000,3000")
    p.add_argument("--param-noise", type=float, default=0.0, help="SGLD-DIP: weight noise std / lr (paper: 2)")
    p.add_argument("--burnin", type=int_arg, help="SGLD-DIP: average the outputs after this iteration (posterior mean)")
    p.add_argument("--early-stop", default="none", choices=catalog.DETECTORS, help="detect the fit's peak without the "
                   "clean image: wmv (ES-WMV, windowed variance of the outputs) or emv (ES-EMV, exponential)")
    p.add_argument("--es-window", type=int_arg, help="detector window in outputs (default: a tenth of the fit, 25..100)")
    p.add_argument("--es-patience", type=int_arg, help="outputs without a new variance minimum that confirm the "
                   "detection (default: a fifth of the fit)")
    p.add_argument("--es-alpha", type=float, default=0.1, help="emv: weight of the newest output")
    p.add_argument("--es-stop", action="store_true", help="end the fit once the detection is confirmed (the "
                   "iterations left are recorded as es_saved)")
    p.add_argument("--es-lag", type=int, default=0, help="return the output this many outputs after the variance "
                   "minimum, at most the patience (the EMA output lags the raw ones by about 1/(1 - ema) = 100)")


def trial_config(args: argparse.Namespace, **chain: object) -> TrialConfig:
    """The flat trial fields from the command line (the one mapping to nested configs is ``TrialConfig``)."""
    from lipsweep.experiments.plan import check_memory
    from lipsweep.kinds.base import TrialConfig
    from lipsweep.priors import PRIORS

    width = args.width if args.width is not None else PRIORS.get(args.model).default_width
    trial = TrialConfig(image=args.image, task=args.task, size=args.size, inpaint_mask=getattr(args, "mask", None),
                        model=args.model, width=width, depth=args.depth, iters=args.iters, lr=args.lr,
                        reg_noise_std=args.reg_noise_std, seed=args.seed, device=args.device, threads=args.threads,
                        target=args.target, channels=args.channels, snapshots=args.snapshots,
                        param_noise=args.param_noise, burnin=args.burnin, early_stop=args.early_stop,
                        es_window=args.es_window, es_patience=args.es_patience, es_alpha=args.es_alpha,
                        es_stop=args.es_stop, es_lag=args.es_lag, **chain)
    if not trial.device.startswith("cuda"):
        check_memory([trial])  # it runs here, on this machine's memory
    return trial


def run_config(args: argparse.Namespace) -> RunConfig:
    run = trial_config(args).chain().run
    return replace(run, fit=replace(run.fit, curve_every=args.curve_every))


def progress_bar(bar: Progress):
    """A fit's per-step callback: the bar at the iteration, with loss and PSNR (the clean image's: monitoring
    only) and the speed."""
    start = time.perf_counter()

    def show(step) -> None:
        ema = f" ema {step.psnr_ema:.2f}" if step.psnr_ema is not None else ""
        rate = step.iteration / max(time.perf_counter() - start, 1e-9)
        bar.update(step.iteration, f"loss {step.loss:.5f} psnr {step.psnr:.2f}{ema} {rate:.1f} it/s",
                   force=step.iteration == bar.total)

    return show


def already_fitted(out: Path, key: str, recompute: bool) -> dict | None:
    """The metrics of this very fit (same config, same code: the dense key) if ``out`` holds it; otherwise
    what ``out`` holds is moved to ``out/previous-TIME/`` (kept, never overwritten) and None."""
    found = out / "metrics.json"
    if not found.is_file():
        return None
    try:
        old = json.loads(found.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        old = {}
    if old.get("key") == key and not recompute:
        return old
    aside = out / f"previous-{time.strftime('%Y%m%dT%H%M%S')}"
    aside.mkdir()
    for path in out.iterdir():
        if path.is_file():
            path.rename(aside / path.name)
    return None


def cmd_fit(args: argparse.Namespace) -> int:
    from lipsweep.core.paths import ES_TRACE, IMAGES, snapshot
    from lipsweep.core.versions import code_part
    from lipsweep.fitting.fit import prepare, run
    from lipsweep.lottery.chain import ChainConfig
    from lipsweep.problems.images import save_image, warn
    from lipsweep.problems.tasks import to_pixels
    from lipsweep.sweep.progress import Progress

    cfg = run_config(args)
    prep = prepare(cfg)  # every input error surfaces here, before any output
    warn(prep.notes, cfg.problem.image)
    chain = ChainConfig(run=cfg)
    out, key = Path(args.out), chain.dense_key
    out.mkdir(parents=True, exist_ok=True)
    if (done := already_fitted(out, key, args.recompute)) is not None:
        print(f"lipsweep fit: {out} already holds this fit (key {key}: same config, same code); psnr ema "
              f"{done.get('psnr_ema', float('nan')):.2f}; --recompute fits it again")
        return 0
    bar = Progress(cfg.fit.iters, f"fit {cfg.problem.image} {cfg.problem.task}", "it", quiet=args.quiet, every_s=10)
    result, prep = run(cfg, callback=progress_bar(bar), prep=prep)
    bar.close()
    record = {**result.metrics, "key": key, "code": code_part(*chain.products).get("code", {}),
              "config": cfg.as_dict(), "platform": result.extra["platform"], "curve": result.curve,
              "restored": "ema" if result.ema is not None else "final",
              "note": "psnr_peak/peak_iter are oracle values (chosen with the clean image)"}
    (out / "metrics.json").write_text(json.dumps(record, indent=2))
    save_image(result.restored, out / "restored.png")
    save_image(result.best, out / "peak.png")
    save_image(to_pixels(prep.problem.observation), out / "observation.png")
    for it, pixels in result.extra["outputs_at"].items():
        save_image(pixels, out / snapshot(it))
    if "posterior_std" in (posterior := result.posterior_images()):
        save_image(posterior["posterior_std"], out / IMAGES["posterior_std"])
    if "es_image" in result.extra:
        save_image(result.extra["es_image"], out / IMAGES["early_stop"])
        (out / ES_TRACE).write_text(json.dumps([result.extra["es_trace"]]))
    m = result.metrics
    print(f"psnr final {m['psnr_final']:.2f}  ema {m['psnr_ema']:.2f}  peak {m['psnr_peak']:.2f} "
          f"@{m['peak_iter']} (oracle)  observation {m.get('psnr_observation', float('nan')):.2f}  "
          f"ssim {m['ssim_final']:.3f}  "
          f"{m['iters_per_second']:.1f} it/s -> {out}")
    if "es_iter" in m:
        print(early_stop_line(m, cfg.fit))
    return 0


def early_stop_line(m: dict, fit) -> str:
    """What the detector returned, next to the oracle (issue 29): without the clean image, psnr_es is what a
    user gets; es_gap is what choosing with the clean image would add."""
    confirmed = (f"confirmed at {m['es_iters_run']:.0f}" if m["es_confirmed"] else
                 f"not confirmed within {fit.iters} (patience {fit.es_patience})")
    saved = (f", {m['es_saved']:.0f} iterations {'not run' if fit.es_stop else 'that --es-stop would not run'}"
             if m["es_saved"] else "")
    lag = f", lag {fit.es_lag}" if fit.es_lag else ""
    return (f"early stop ({fit.early_stop}, window {fit.es_window}, patience {fit.es_patience}{lag}): psnr_es "
            f"{m['psnr_es']:.2f} at es_iter {m['es_iter']:.0f} ({confirmed}{saved}); ema peak "
            f"{m['psnr_ema_peak']:.2f} at {m['ema_peak_iter']:.0f} (oracle); es_gap {m['es_gap']:.2f} dB")


def cmd_ticket(args: argparse.Namespace) -> int:
    from lipsweep.lottery.chains import stored
    from lipsweep.lottery.store import TrunkStore
    from lipsweep.lottery.tickets import Tickets
    from lipsweep.pruning.masks import save
    from lipsweep.sweep.progress import Progress

    trial = trial_config(args, method=args.method, rewind=args.rewind, imp_target=args.imp_target,
                         keep_input_convs=args.keep_input_convs, multi_images=tuple(args.multi_images),
                         shared_z=not args.per_image_z, levels=args.levels, stop_k=args.stop_k,
                         stop_tolerance=args.stop_tolerance, es_mask=args.es_mask)
    cfg, stop = trial.chain(), trial.stop_rule()
    store = TrunkStore(args.store, fresh_since=time.time() if args.recompute else None)
    if not stored(store, cfg, args.levels):
        store.require_writable("--recompute fits the chain again" if args.recompute else
                               f"levels 0-{args.levels} of chain {cfg.chain_key} are not all stored yet")
    tickets = Tickets(store)
    tickets.context(cfg)  # validates images before anything is written
    out = Path(args.out)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    print(f"lipsweep ticket: {cfg.method} on {cfg.run.problem.image} {cfg.run.problem.task}, {args.levels} levels, "
          f"rewind {cfg.rewind}; chain {cfg.chain_key} in {store.root}", file=sys.stderr)
    bar = Progress(args.levels + 1, "ticket", "levels", quiet=args.quiet, every_s=10)
    result = tickets.chain(cfg, args.levels, stop=stop, keep_going=args.keep_going,
                           on_level=level_lines(tickets, bar, args.quiet))
    bar.close()
    for rec in result.records:
        save(tickets.mask(cfg, rec.level), out / "masks" / f"level_{rec.level}")
    payload = {"chain_key": cfg.chain_key, "dense_key": cfg.dense_key, "config": cfg.chain_payload(),
               "dense_config": cfg.dense_payload(), "levels": [r.to_dict() for r in result.records],
               "fits": result.fits,
               "stop": {"rule": vars(stop) if stop else None, "fired_at": result.stop_fired_at,
                        "chosen": result.stop_chosen}}
    (out / "levels.json").write_text(json.dumps(payload, indent=1, default=float))
    print(f"{len(result.records)} levels ({result.fits} fits run, the rest loaded) -> {out / 'levels.json'}")
    return 0


def level_lines(tickets, bar: Progress, quiet: bool):
    """The ticket's progress: a bar over levels that moves within a level (every fit's iteration), and one
    line per finished level."""
    done = [0]
    tickets.on_step = lambda it, iters: bar.update(done[0] + min(it / iters, 0.99))

    def show(rec) -> None:
        done[0] = rec.level + 1
        m = rec.metrics
        line = (f"  level {rec.level:>2}  sparsity {100 * rec.sparsity:6.2f}%  imp loss {rec.imp_loss:.5f}  "
                f"psnr final {m['psnr_final']:6.2f}  peak {m['psnr_peak']:6.2f}  ssim {m['ssim_final']:.3f}")
        if "es_iter" in m:  # what the detector returned, next to the oracle peak of the same output
            line += f"  psnr_es {m['psnr_es']:6.2f} @{m['es_iter']:.0f} (gap {m['es_gap']:.2f})"
        if quiet:
            return
        if bar.bar is not None:
            bar.bar.write(line, file=sys.stderr)
            bar.update(done[0])
        else:
            print(line, file=sys.stderr, flush=True)

    return show
