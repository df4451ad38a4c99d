"""Training and fine-tuning the PGGANs of the paper's GAN experiments (Section 5), on CPU.

Generator IMP fine-tunes the masked generator against its discriminator before each pruning round ("PGGAN is
first fine-tuned on 40% of images in CelebA-HQ for 30 epochs"): ``fine_tune``. ``train`` makes lipsweep's
small shipped generator from images a dependency ships (scikit-image's LFW subset), so the GAN experiments
run without downloading pretrained weights.
"""

from __future__ import annotations

import argparse
import copy
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from lipsweep.core.errors import ConfigError, check_choice, check_int
from lipsweep.kinds.gan.generators import image_files
from lipsweep.priors.pggan import (
    Discriminator,
    GanCheckpoint,
    Generator,
    GeneratorSpec,
    load_checkpoint,
    masked_weights,
    save_checkpoint,
)

# The version of this module's results (lipsweep.core.versions): raise it in the commit that changes them.
ALGORITHM = 1

LFW_FACES = 100  # skimage.data.lfw_subset(): the first 100 of its 200 crops are faces, the rest background
DEPTHS = {32: (128, 64, 32, 16), 64: (128, 64, 32, 16, 16)}  # per scale from 4 px; the shipped one is 32 px
LATENT = 64
BETAS = (0.0, 0.99)  # the zoo's Adam betas for PGAN (models/progressive_gan.py)
EMA = 0.999  # the zoo's moving-average generator (BaseGAN.optimizeParameters)
TRAIN_LOSS = dict(loss="Logistic", r1=0.1, lr=0.002)  # the zoo's lossMode, logisticGradReal, learningRate
# The reference code's fine-tuning (Chasing-Better-DIPs PGAN_random_IMP.py l.67-148, 380-416, 477-480):
# WGAN-GP in mean form with GP weight 10 (phi 1) and drift 1e-3, Adam lr 2e-4 betas (0, 0.99), D batch 64, G batch 1
RECIPES = ("zoo", "reference")
REF_LR, REF_D_BATCH, REF_G_BATCH, REF_GP, REF_DRIFT = 2e-4, 64, 1, 10.0, 1e-3


def _to_tensor(images: list[Image.Image], size: int) -> torch.Tensor:
    arrays = [np.asarray(im.resize((size, size), Image.LANCZOS), dtype=np.float32) for im in images]
    x = torch.from_numpy(np.stack(arrays)).to(torch.get_default_dtype())
    x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
    return (x / 127.5 - 1.0).clamp(-1.0, 1.0)


def _square(im: Image.Image) -> Image.Image:
    w, h = im.size
    s = min(w, h)
    return im.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))


def _folder_images(folder: Path, mode: str) -> list[Image.Image]:
    images = []
    for path in image_files(str(folder)):  # the files the data's content key hashes, in the same order
        try:
            with Image.open(path) as im:
                images.append(_square(im.convert(mode)))
        except OSError as exc:
            raise ConfigError("data", f"cannot read image {path} ({exc}); allowed: readable image files") from None
    return images


def load_faces(data: str | None, size: int, channels: int | None = None) -> torch.Tensor:
    """N x C x size x size in [-1, 1] (the zoo's PGAN range). ``None`` / ``"lfw"``: the 100 face crops of
    scikit-image's ``lfw_subset`` (25 x 25 grey, Labeled Faces in the Wild), Lanczos-resized, 1 channel;
    a folder: every image in it (recursive, sorted), RGB, centre-cropped to a square and resized."""
    check_int("size", size, 4)
    if channels not in (None, 1, 3):
        raise ConfigError("channels", f"unknown value {channels!r}; allowed: 1, 3")
    if data in (None, "lfw"):
        from skimage.data import lfw_subset

        faces = (lfw_subset()[:LFW_FACES] * 255.0).round().astype(np.uint8)
        x = _to_tensor([Image.fromarray(f) for f in faces], size)
        return x.expand(-1, channels or 1, -1, -1).contiguous()
    return _to_tensor(_folder_images(Path(data), "L" if channels == 1 else "RGB"), size)


def split(n: int, holdout: int) -> tuple[list[int], list[int]]:
    """Train / held-out indices: the last ``holdout`` images are never trained on, so latent optimisation
    can be evaluated on faces the generator has not seen."""
    check_int("holdout", holdout, 0)
    if holdout >= n:
        raise ConfigError("holdout", f"must leave training images: {holdout} held out of {n}; allowed: 0..{n - 1}")
    return list(range(n - holdout)), list(range(n - holdout, n))


def _check_mask(g: Generator, mask: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    weights = masked_weights(g)
    for name, m in mask.items():
        if name not in weights or m.shape != weights[name].shape:
            raise ConfigError("mask", f"{name!r} is not a prunable generator weight of that shape; allowed: "
                                      f"{', '.join(weights)}")
    return weights


def _d_loss(g: Generator, d: Discriminator, real: torch.Tensor, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """The zoo's D step (``BaseGAN.optimizeParameters``): WGAN-GP with epsilon drift, as sums over the batch,
    or the logistic loss with the R1 penalty on reals (``logisticGradReal``), as means."""
    spec = g.spec
    with torch.no_grad():
        fake = g(torch.randn(real.shape[0], spec.latent, generator=gen))
    real = real.detach().requires_grad_(spec.loss == "Logistic" and spec.r1 > 0)
    pred_real, pred_fake = d(real), d(fake)
    if spec.loss == "WGANGP":
        eps = torch.rand(real.shape[0], 1, 1, 1, generator=gen)
        mix = (eps * real + (1 - eps) * fake).requires_grad_(True)
        grad, = torch.autograd.grad(d(mix).sum(), mix, create_graph=True)
        penalty = spec.lambda_gp * ((grad.flatten(1).norm(dim=1) - 1.0) ** 2).sum()
        drift = spec.epsilon_d * (pred_real**2).sum()
        return {"d_real": -pred_real.sum(), "d_fake": pred_fake.sum(), "d_penalty": penalty + drift}
    penalty = pred_real.new_zeros(())
    if spec.r1 > 0:
        grad, = torch.autograd.grad(pred_real.sum(), real, create_graph=True)
        penalty = spec.r1 * grad.flatten(1).pow(2).sum(1).mean()
    return {"d_real": F.softplus(-pred_real).mean(), "d_fake": F.softplus(pred_fake).mean(), "d_penalty": penalty}


def _reference_d_loss(g: Generator, d: Discriminator, real: torch.Tensor,
                      gen: torch.Generator) -> dict[str, torch.Tensor]:
    """The reference's D step (PGAN_random_IMP.py l.45-64, 86-105), whatever loss the checkpoint was trained
    with: -mean D(real) + mean D(fake) + 10 x the mean gradient penalty + 1e-3 x mean(D(real))^2 (the square of
    the mean, as written there, not the zoo's mean of squares)."""
    with torch.no_grad():
        fake = g(torch.randn(real.shape[0], g.spec.latent, generator=gen))
    pred_real, pred_fake = d(real), d(fake)
    eps = torch.rand(real.shape[0], 1, 1, 1, generator=gen)
    mix = (eps * real + (1 - eps) * fake).requires_grad_(True)
    grad, = torch.autograd.grad(d(mix).sum(), mix, create_graph=True)
    penalty = REF_GP * ((grad.flatten(1).norm(dim=1) - 1.0) ** 2).mean()
    return {"d_real": -pred_real.mean(), "d_fake": pred_fake.mean(),
            "d_penalty": penalty + REF_DRIFT * pred_real.mean() ** 2}


def _g_loss(g: Generator, d: Discriminator, n: int, gen: torch.Generator, reference: bool = False) -> torch.Tensor:
    """The generator's loss on ``n`` samples; the reference's is -mean D(G(z)) with n = 1 (l.126-137)."""
    pred = d(g(torch.randn(n, g.spec.latent, generator=gen)))
    if reference:
        return -pred.mean()
    return -pred.sum() if g.spec.loss == "WGANGP" else F.softplus(-pred).mean()


def train_step(g: Generator, d: Discriminator, opt_g: torch.optim.Optimizer, opt_d: torch.optim.Optimizer,
               real: torch.Tensor, generator: torch.Generator,
               mask: dict[str, torch.Tensor] | None = None, reference: bool = False) -> dict[str, float]:
    """One D step then one G step with the generator's configured zoo loss (``g.spec.loss``: WGANGP or
    Logistic), or (``reference``) the reference code's WGAN-GP with a G batch of 1. With ``mask`` (module
    name -> bool over ``masked_weights(g)``) pruned weights get no gradient and are re-zeroed after the step,
    so they stay exactly 0 whatever Adam's moments hold."""
    if not reference and g.spec.loss not in ("WGANGP", "Logistic"):
        raise ConfigError("loss", f"cannot train with {g.spec.loss!r}; allowed: WGANGP, Logistic")
    weights = _check_mask(g, mask) if mask else {}
    opt_d.zero_grad(set_to_none=True)
    parts = (_reference_d_loss if reference else _d_loss)(g, d, real, generator)
    sum(parts.values()).backward()
    opt_d.step()
    opt_g.zero_grad(set_to_none=True)
    loss_g = _g_loss(g, d, REF_G_BATCH if reference else real.shape[0], generator, reference)
    loss_g.backward()
    for name, m in (mask or {}).items():
        if weights[name].grad is not None:
            weights[name].grad.mul_(m)
    opt_g.step()
    with torch.no_grad():
        for name, m in (mask or {}).items():
            weights[name].mul_(m)
    return {**{k: float(v.detach()) for k, v in parts.items()}, "g": float(loss_g.detach())}


def _adam(net: torch.nn.Module, lr: float) -> torch.optim.Adam:
    return torch.optim.Adam(net.parameters(), lr=lr, betas=BETAS)


def reference_batch(n: int) -> int:
    """The reference recipe's D batch for ``n`` fine-tuning images: 64, or an eighth of a small set (CPU scale:
    the 32 faces of faces32's 40% give 8 steps an epoch rather than one; CelebA-HQ's 12,000 give 64)."""
    return max(1, min(REF_D_BATCH, math.ceil(n / 8)))


def tuning_subset(n: int, fraction: float) -> int:
    """How many images fine-tuning passes over: the first ``fraction`` of the train split (at least one)."""
    return max(1, round(fraction * n))


def fine_tune(g: Generator, d: Discriminator, data: torch.Tensor, *, epochs: int, fraction: float,
              mask: dict[str, torch.Tensor] | None, seed: int, batch: int = 16,
              lr: float | None = None, recipe: str = "zoo") -> dict[str, float]:
    """Generator IMP's fine-tuning (Section 5: 30 epochs on 40% of CelebA-HQ): ``epochs`` passes over the
    first ``fraction`` of a seeded permutation of ``data`` (the train split), fresh Adam optimisers with the
    zoo's betas (0, 0.99). ``zoo``: the checkpoint's loss and learning rate (``g.spec.lr``: 0.001 for the zoo's
    PGAN, 0.002 for the shipped faces32), ``batch`` for D and G; ``reference``: the reference code's WGAN-GP,
    lr 2e-4, D batch ``reference_batch``, G batch 1. Changes g and d in place (pass copies); deterministic given
    ``seed`` on CPU. Returns the mean of each loss over the steps."""
    check_int("epochs", epochs, 0)
    check_int("batch", batch, 1)
    check_choice("recipe", recipe, RECIPES)
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
        raise ConfigError("fraction", f"must be in (0, 1], got {fraction!r}")
    gen = torch.Generator().manual_seed(seed)
    subset = data[torch.randperm(len(data), generator=gen)[:tuning_subset(len(data), fraction)]]
    reference = recipe == "reference"
    if reference:
        batch, lr = reference_batch(len(subset)), REF_LR
    if mask:
        weights = _check_mask(g, mask)
        with torch.no_grad():
            for name, m in mask.items():
                weights[name].mul_(m)
    opt_g, opt_d = _adam(g, lr or g.spec.lr), _adam(d, lr or g.spec.lr)
    g.train()
    d.train()
    totals: dict[str, float] = {}
    steps = 0
    for _ in range(epochs):
        order = torch.randperm(len(subset), generator=gen)
        for start in range(0, len(subset), batch):
            losses = train_step(g, d, opt_g, opt_d, subset[order[start:start + batch]], gen, mask, reference)
            totals = {k: totals.get(k, 0.0) + v for k, v in losses.items()}
            steps += 1
    g.eval()
    d.eval()
    return {**{k: v / max(steps, 1) for k, v in totals.items()}, "steps": float(steps)}


def _flip(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    flip = torch.rand(x.shape[0], 1, 1, 1, generator=gen) < 0.5
    return torch.where(flip, x.flip(-1), x)


def _small_spec(size: int, channels: int, latent: int, depths: tuple[int, ...] | None) -> GeneratorSpec:
    if depths is None and size not in DEPTHS:
        raise ConfigError("size", f"no default depths for {size} px; allowed: {', '.join(map(str, DEPTHS))} or "
                                  "give depths")
    depths = tuple(depths) if depths is not None else DEPTHS[size]
    if 4 * 2 ** (len(depths) - 1) != size:
        raise ConfigError("depths", f"{len(depths)} scales make {4 * 2 ** (len(depths) - 1)} px, not {size}; "
                                    "allowed: one depth per scale from 4 px up to size")
    return GeneratorSpec(latent=latent, depths=depths, out_channels=channels, **TRAIN_LOSS)


def _ema(avg: Generator, g: Generator, step: int) -> None:
    """The zoo's average generator (beta 0.999), warmed up as TensorFlow's ExponentialMovingAverage does
    with ``num_updates`` (beta = (1 + t) / (10 + t) early on): a short run must not keep its random init."""
    beta = min(EMA, (1.0 + step) / (10.0 + step))
    with torch.no_grad():
        for a, p in zip(avg.parameters(), g.parameters()):
            a.lerp_(p, 1.0 - beta)


def _loop(g: Generator, d: Discriminator, real: torch.Tensor, *, steps: int, batch: int, seed: int,
          log: Callable[[str], None] | None) -> tuple[Generator, dict[str, float]]:
    """``steps`` train steps on random flipped batches; the moving-average generator and the mean losses
    of the last (up to) 100 steps."""
    avg, gen = copy.deepcopy(g), torch.Generator().manual_seed(seed)
    opt_g, opt_d = _adam(g, g.spec.lr), _adam(d, g.spec.lr)
    window: dict[str, float] = {}
    means: dict[str, float] = {}
    for step in range(1, steps + 1):
        batch_real = _flip(real[torch.randint(len(real), (batch,), generator=gen)], gen)
        losses = train_step(g, d, opt_g, opt_d, batch_real, gen)
        _ema(avg, g, step)
        window = {k: window.get(k, 0.0) + v for k, v in losses.items()}
        if step % 100 == 0 or step == steps:
            means = {k: round(v / ((step - 1) % 100 + 1), 4) for k, v in window.items()}
            window = {}
            if log:
                log(f"step {step}/{steps} " + " ".join(f"{k} {v:.3f}" for k, v in means.items()))
    return avg.eval(), means


def train(data: str | None, size: int, out: str, *, steps: int, seed: int, latent: int = LATENT,
          depths: tuple[int, ...] | None = None, holdout: int = 20, batch: int = 8,
          log: Callable[[str], None] | None = None) -> GanCheckpoint:
    """A small PGGAN trained from scratch at the final resolution (no progressive growing: at 32 px on a
    CPU it buys nothing for its complexity), on the train split with horizontal flips; the saved generator
    is the moving average (the zoo's ``avgG``). The loss is the zoo's ``Logistic`` (non-saturating) with
    its R1 penalty on reals rather than its WGAN-GP default: WGAN-GP's penalty needs an extra D pass on
    interpolates, and on 80 faces and 2 cores the logistic loss gave clearer faces per minute. lr 0.002,
    R1 0.1 and batch 8 gave the clearest faces in 3000-step trials (lr 0.001, R1 1 or batch 16: blurrier)."""
    check_int("steps", steps, 0)
    check_int("batch", batch, 1)
    check_int("latent", latent, 1)
    started = time.perf_counter()
    faces = load_faces(data, size)
    train_idx, _ = split(len(faces), holdout)
    spec = _small_spec(size, faces.shape[1], latent, depths)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        g, d = Generator(spec), Discriminator(spec)
    avg, losses = _loop(g, d, faces[train_idx], steps=steps, batch=batch, seed=seed, log=log)
    meta = {"data": _recorded(data), "size": size, "channels": spec.out_channels, "holdout": holdout,
            "train_images": len(train_idx), "steps": steps, "seed": seed, "batch": batch, "ema": EMA,
            "seconds": round(time.perf_counter() - started, 1), "threads": torch.get_num_threads(),
            "torch": str(torch.__version__), "final_losses": losses}
    save_checkpoint(out, spec, avg, d.eval(), meta)
    return load_checkpoint(out)


def _recorded(data: str | None) -> str:
    """The data as the checkpoint's meta records it: ``lfw``, or the folder's absolute path, since a GAN trial
    fine-tunes on it in a Ray worker whose directory is not the one ``lipsweep gan train`` ran in."""
    return "lfw" if data in (None, "lfw") else str(Path(data).expanduser().resolve())


def cmd_gan(args: argparse.Namespace) -> int:
    """``lipsweep gan train`` (its arguments are declared in ``cli.add_gan_parser``, which imports no torch)."""
    check_int("threads", args.threads, 1)
    torch.set_num_threads(args.threads)
    ck = train(args.data, args.size, args.out, steps=args.steps, seed=args.seed, holdout=args.holdout,
               log=print)
    print(f"trained in {ck.meta['seconds']:.0f} s -> {args.out} ({ck.content_hash})")
    return 0
