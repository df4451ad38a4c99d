"""The ``lipsweep`` command. Bad input exits 2 with one line naming the field and the allowed values."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from lipsweep.cli import es_search
from lipsweep.cli.parsing import DEFAULT_STORE, Parser, VersionAction
from lipsweep.cli.single import add_single_parsers, cmd_fit, cmd_ticket
from lipsweep.cli.sweep import SWEEP_COMMANDS, add_sweep_commands
from lipsweep.core.errors import ConfigError


def build_parser() -> Parser:
    """Every subcommand; registry choices come from ``catalog``, so that building it imports no torch."""
    parser = Parser(prog="lipsweep", description=__doc__)
    parser.add_argument("--version", action=VersionAction, help="the package, its commit and the libraries' versions")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    add_single_parsers(sub)

    mk = sub.add_parser("mask", help="inspect masks")
    mk_sub = mk.add_subparsers(dest="mask_command", required=True, parser_class=Parser)
    show = mk_sub.add_parser("show", help="density and per-layer densities of a mask")
    show.add_argument("ref", help="mask file (.npz/.json), or CHAIN_KEY/LEVEL in the store")
    show.add_argument("--store", default=DEFAULT_STORE, help="trunk store directory")
    show.add_argument("--json", action="store_true")

    add_sweep_commands(sub)
    es_search.add_parser(sub)
    add_gan_parser(sub)

    i = sub.add_parser("images", help="list the shipped images")
    i.add_argument("--json", action="store_true")

    m = sub.add_parser("models", help="parameter counts of each model at its default settings")
    m.add_argument("--json", action="store_true")
    return parser


def add_gan_parser(sub: argparse._SubParsersAction) -> None:
    """``lipsweep gan train``: make a small zoo-format PGAN checkpoint from a folder of images or LFW (here,
    not in ``gan_train``, so that building the parser imports no torch)."""
    gan = sub.add_parser("gan", help="train a small PGGAN for the GAN experiments (Section 5)")
    gan_sub = gan.add_subparsers(dest="gan_command", required=True)
    p = gan_sub.add_parser("train", help="train a PGGAN from scratch and save a pytorch_GAN_zoo checkpoint")
    p.add_argument("--data", default="lfw", help="lfw (scikit-image's LFW face subset) or a folder of images")
    p.add_argument("--size", type=int, choices=(32, 64), default=32, help="output resolution (px)")
    p.add_argument("--out", required=True, help="checkpoint path to write")
    p.add_argument("--steps", type=int, default=5000, help="generator steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--holdout", type=int, default=20, help="last N images never trained on")
    p.add_argument("--threads", type=int, default=2, help="CPU threads (results depend on it; saved in meta)")


def cmd_gan(args: argparse.Namespace) -> int:
    check_checkpoint_out(args.out)  # before the training run, not after it
    from lipsweep.kinds.gan.train import cmd_gan as train_gan

    return train_gan(args)


def check_checkpoint_out(out: str) -> None:
    """``--out`` names the checkpoint file: refuse a directory, or a path under a file, before training
    (writing it would fail only after the whole run)."""
    path = Path(out)
    if path.is_dir():
        raise ConfigError("out", f"{out!r} is a directory; give the checkpoint file to write, e.g. "
                                 f"{(path / 'pggan.pt').as_posix()}")
    folder = next(p for p in path.absolute().parents if p.exists())
    if not folder.is_dir():
        raise ConfigError("out", f"{out!r} lies under {str(folder)!r}, which is a file; give a path in a directory")


def cmd_images(args: argparse.Namespace) -> int:
    from PIL import Image

    from lipsweep.problems.images import catalog as image_paths
    from lipsweep.problems.images import image_names

    names = image_paths()
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


MODEL_VARIANTS = {  # the paper's sizes: DIP 2.2M, DD-128 0.1M, DD-320 0.6M (ModelConfig fields)
    "dip": {"kind": "dip"},
    "deep_decoder": {"kind": "deep_decoder", "width": 128},
    "deep_decoder_k320": {"kind": "deep_decoder", "width": 320},
}


def cmd_models(args: argparse.Namespace) -> int:
    from lipsweep.priors import ModelConfig, build_model, counts

    rows = []
    for name, fields in MODEL_VARIANTS.items():
        cfg = ModelConfig(**fields)
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


def cmd_mask(args: argparse.Namespace) -> int:
    from lipsweep.lottery.store import TrunkStore
    from lipsweep.pruning.masks import load

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


COMMANDS = {"fit": cmd_fit, **SWEEP_COMMANDS, "es-search": es_search.cmd_es_search, "ticket": cmd_ticket, "mask": cmd_mask, "images": cmd_images, "models": cmd_models,
            "gan": cmd_gan}


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
