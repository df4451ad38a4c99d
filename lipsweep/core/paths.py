"""Where every file of the trunk store lives, and what each level's MLflow artifacts are called: the one
place that spells file names (open_lth's ``paths.py``). Pure path arithmetic, no I/O, no torch.

Layout under ``root``::

    SCHEMA                          the key schema the store was last written with
    fits.log                        one JSON line per fit ever run (the audit trail)
    locks/<name>.lock               cross-process locks (flock)
    dense/<dense_key>/config.json   level.json   theta0.pt   final.pt   rewind_<iter>.pt   *.png   curve.json
    chains/<chain_key>/config.json  level_<L>/{mask.npz, mask.json, level.json, *.png, curve.json}
    evals/<eval_key>/config.json    level.json   *.png   curve.json
    gan/tickets/<ticket_key>/config.json  level_<L>/{mask.npz, mask.json}   (generator IMP, paper Section 5)
    gan/evals/<eval_key>/config.json  level.json  mask.*  *.png  curve.json (a generator mask, latent-fitted)
    classify/tickets/<ticket_key>/config.json  level_<L>/{mask.npz, mask.json}  (classification IMP, Fig. 6)
    classify/evals/<eval_key>/config.json  level.json  mask.*  curve.json  final.pt (a mask trained to classify)

A level directory (dense, chain level or evaluation) holds the same files; its ``level.json`` is written
last, so its presence marks a finished level. MLflow holds the same files under ``level_<LL>/``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent  # the installed lipsweep package
DATA = PACKAGE / "data"  # shipped images, generators, the calibration table


def search_spaces() -> Path:
    """The shipped experiments: inside the installed package, or the source tree's ``search_spaces/``."""
    packaged = PACKAGE / "search_spaces"
    return packaged if packaged.is_dir() else PACKAGE.parent / "search_spaces"

RECORD = "level.json"
CONFIG = "config.json"
CURVE = "curve.json"
ES_TRACE = "es_trace.json"  # per image, per accepted iteration: what a detector reads (fitting/early_stop.py)
MASK = "mask"  # mask.npz + mask.json
# clean and observation: level 0 and generator evaluations (the truth and what was observed, for Figs. 2 and 8);
# posterior_*: SGLD-DIP levels (Fig. 16; the std image is scaled so its maximum, metric posterior_std_max, is white)
IMAGES = {"restored": "restored.png", "final": "final.png", "peak": "peak.png", "clean": "clean.png",
          "observation": "observation.png", "posterior_mean": "posterior_mean.png", "posterior_std": "posterior_std.png",
          "ema_peak": "ema_peak.png", "early_stop": "es.png"}  # es: what the early-stopping detector returns  # ema_peak: the EMA output psnr_ema_peak scores (the paper's image, Figs. 18-19)
LEVEL_FILES = (RECORD, CONFIG, CURVE, ES_TRACE, f"{MASK}.npz", f"{MASK}.json", *IMAGES.values())  # what MLflow gets
SNAPSHOTS = "snapshot_*.png"  # outputs at chosen iterations (Fig. 12); MLflow gets them too


def snapshot(iteration: int) -> str:
    """The output at ``iteration`` (five digits, so the files sort by iteration)."""
    return f"snapshot_{iteration:05d}.png"


def snapshot_iteration(name: str) -> int | None:
    """The iteration a ``snapshot`` file (or artifact path) holds; None for any other file."""
    found = re.search(r"snapshot_(\d+)\.png$", name)
    return int(found.group(1)) if found else None


def artifact_dir(level: int) -> str:
    """A level's folder among a trial's MLflow artifacts."""
    return f"level_{level:02d}"


def artifact(level: int, name: str) -> str:
    return f"{artifact_dir(level)}/{name}"


class StorePaths:
    """Every path in a trunk store, by what it holds."""

    def __init__(self, root: Path | str):
        self.root = Path(root)

    @property
    def fits_log(self) -> Path:
        return self.root / "fits.log"

    @property
    def schema(self) -> Path:
        """The key schema the store was last written with (``store.SCHEMA``)."""
        return self.root / "SCHEMA"

    def lock(self, name: str) -> Path:
        return self.root / "locks" / f"{name}.lock"

    def dense(self, key: str) -> Path:
        return self.root / "dense" / key

    def theta0(self, key: str) -> Path:
        return self.dense(key) / "theta0.pt"

    def final_state(self, key: str) -> Path:
        return self.dense(key) / "final.pt"

    def detected_state(self, key: str) -> Path:
        """The dense fit's weights at its early-stopping detection (a detector on; ``es_mask`` prunes them)."""
        return self.dense(key) / "detected.pt"

    def rewind_state(self, key: str, iteration: int) -> Path:
        return self.dense(key) / f"rewind_{iteration}.pt"

    def chain(self, key: str) -> Path:
        return self.root / "chains" / key

    def level(self, chain_key: str, level: int) -> Path:
        """Level 0 lives in the shared dense directory, not here."""
        return self.chain(chain_key) / f"level_{level}"

    def evaluation(self, key: str) -> Path:
        return self.root / "evals" / key

    def gan_ticket(self, key: str, level: int) -> Path:
        return self.root / "gan" / "tickets" / key / f"level_{level}"

    def gan_eval(self, key: str) -> Path:
        return self.root / "gan" / "evals" / key

    def classify_ticket(self, key: str, level: int) -> Path:
        return self.root / "classify" / "tickets" / key / f"level_{level}"

    def classify_eval(self, key: str) -> Path:
        return self.root / "classify" / "evals" / key

    def classify_weights(self, key: str) -> Path:
        """A classification evaluation's trained weights (the classification IMP prunes them)."""
        return self.classify_eval(key) / "final.pt"

    def chain_configs(self) -> list[Path]:
        return sorted(self.root.glob(f"chains/*/{CONFIG}"))

    def finished_levels(self, chain_key: str) -> Iterator[Path]:
        """Record files of levels 1, 2, ... of a chain, in order, up to the first missing one."""
        level = 1
        while (record := record_of(self.level(chain_key, level))).is_file():
            yield record
            level += 1


def record_of(directory: Path) -> Path:
    return directory / RECORD


def config_of(directory: Path) -> Path:
    return directory / CONFIG


def curve_of(directory: Path) -> Path:
    return directory / CURVE


def mask_of(directory: Path) -> Path:
    return directory / MASK
