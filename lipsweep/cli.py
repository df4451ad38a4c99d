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
from .tasks import TASKS, to_pixels


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
    f.add_argument("--image", required=True, help="shipped name (see `lipsweep images`) or image file path")
    f.add_argument("--task", required=True, choices=TASKS)
    f.add_argument("--model", default="dip", choices=MODEL_KINDS)
    f.add_argument("--size", type=_int, help="resize so the shorter side is N px (Lanczos) before cropping")
    f.add_argument("--iters", type=_int, help="iterations (default: per task, SPEC.md)")
    f.add_argument("--width", type=_int, help="DIP channels per level / deep decoder k (default 128)")
    f.add_argument("--levels", type=_int, default=5, help="DIP hourglass levels (default 5)")
    f.add_argument("--seed", type=_int, default=0)
    f.add_argument("--lr", type=float)
    f.add_argument("--reg-noise-std", type=float, help="std of the noise added to z each step")
    f.add_argument("--mask", help="inpainting mask image (name or path; white = known), default Bernoulli 50%%")
    f.add_argument("--device", default="auto", choices=DEVICES)
    f.add_argument("--curve-every", type=_int, default=50)
    f.add_argument("--quiet", action="store_true", help="no progress lines")
    f.add_argument("--out", required=True, help="output directory")

    i = sub.add_parser("images", help="list the shipped images")
    i.add_argument("--json", action="store_true")

    m = sub.add_parser("models", help="parameter counts of each model at its default settings")
    m.add_argument("--json", action="store_true")
    return parser


def run_config(args: argparse.Namespace) -> RunConfig:
    width = args.width if args.width is not None else DEFAULT_WIDTH[args.model]
    levels = args.levels
    return RunConfig(
        problem=ProblemConfig(image=args.image, task=args.task, size=args.size, inpaint_mask=args.mask),
        model=ModelConfig(kind=args.model, width=width, levels=levels),
        fit=default_fit(args.task, args.model, iters=args.iters, lr=args.lr, reg_noise_std=args.reg_noise_std,
                        curve_every=args.curve_every),
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


COMMANDS = {"fit": cmd_fit, "images": cmd_images, "models": cmd_models}


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
