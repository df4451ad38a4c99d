"""Seconds per DIP iteration per device, from the table ``benchmarks/calibrate.py`` measures and the package ships
(``lipsweep/data/calibration.json``).

A step costs t = a + P (p + c w + b w^2) seconds at P pixels and (cost) width w: a the per-step overhead
(Python, the optimizer, kernel launches), P p the work per pixel whatever the width (input noise, the output
layer, the loss, the fit's PSNR and EMA), P c w the per-pixel work growing with the channels (batch norm,
activations, upsampling, skips), P b w^2 the convolutions. Per device, (a, p, c, b) are least squares in
relative error over the measured entries (an entry of 5 ms counts as much as one of 5 s), over the best subset
of the four terms whose coefficients are all >= 0. On the shipped CPU table that model alone misses entries by
up to 28% (``model_error``): at 512 px a step is slower than the model, at width 16 the width-free terms
dominate, and a conv-only a + b P w^2 misses by 78%. So the model is corrected by the entries' own residuals,
interpolated by inverse squared distance in (log2 side, log2 width) over entries within 1.5 grid steps: exact at
every measured size and width (the paper's 512 px at width 128 included), the model beyond. Predicting each
entry from the others (``leave_one_out``) errs by 16% rms, 35% at worst, against 19% / 37% for the model alone;
rounds of the same entry differ by up to 1.5x on this shared machine (the table's ``spread``). Pure Python:
``lipsweep show`` imports this without torch.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import lru_cache
from itertools import combinations
from pathlib import Path

from lipsweep.core.paths import DATA

TABLE = DATA / "calibration.json"
BENCHMARK = "benchmarks/calibrate.py"


@dataclass(frozen=True)
class DeviceModel:
    """t = a + pixels * (p + c * width + b * width^2) seconds per iteration on one device, times the measured
    entries' correction (``residuals``: log2 side, log2 width, log of measured over model)."""

    name: str
    a: float
    p: float
    c: float
    b: float
    model_error: float
    residuals: tuple[tuple[float, float, float], ...] = ()
    measured: str = ""

    def model(self, pixels: float, width: float) -> float:
        return self.a + pixels * (self.p + self.c * width + self.b * width**2)

    def seconds(self, pixels: float, width: float) -> float:
        return self.model(pixels, width) * math.exp(_correction(self.residuals, _coords(pixels, width)))


NEIGHBOURS = 1.5  # grid steps (a doubling of side or width) within which an entry corrects the model


def _coords(pixels: float, width: float) -> tuple[float, float]:
    return math.log2(pixels) / 2, math.log2(width)


def _correction(residuals: tuple[tuple[float, float, float], ...], at: tuple[float, float]) -> float:
    """The log correction at ``at``: an entry's own there, else the inverse-squared-distance mean of the
    entries within ``NEIGHBOURS``, else 0 (the model alone)."""
    num = den = 0.0
    for x, y, r in residuals:
        d2 = (at[0] - x) ** 2 + (at[1] - y) ** 2
        if d2 < 1e-12:
            return r
        if d2 <= NEIGHBOURS**2:
            num, den = num + r / d2, den + 1 / d2
    return num / den if den else 0.0


TERMS = 4


def _features(entry: dict) -> tuple[float, ...]:
    w, px = entry.get("cost_width", entry["width"]), entry["pixels"]
    return 1.0, px, px * w, px * w**2


def _solve(rows: list[list[float]], rhs: list[float]) -> list[float] | None:
    """Least squares by the normal equations, columns scaled to 1 (P w^2 reaches 1e9); None if singular."""
    n = len(rows[0])
    scale = [max(abs(r[j]) for r in rows) or 1.0 for j in range(n)]
    x = [[r[j] / scale[j] for j in range(n)] for r in rows]
    m = [[sum(r[i] * r[j] for r in x) for j in range(n)] + [sum(r[i] * y for r, y in zip(x, rhs))] for i in range(n)]
    for i in range(n):
        p = max(range(i, n), key=lambda k: abs(m[k][i]))
        if abs(m[p][i]) < 1e-12:
            return None
        m[i], m[p] = m[p], m[i]
        for k in range(n):
            if k != i:
                f = m[k][i] / m[i][i]
                m[k] = [u - f * v for u, v in zip(m[k], m[i])]
    return [m[i][n] / m[i][i] / scale[i] for i in range(n)]


def _best(feats: list[tuple[float, ...]], secs: list[float]) -> list[float]:
    """(a, p, c, b): of every subset of the four terms whose least-squares coefficients are all >= 0, the one
    with the least squared relative error."""
    best: tuple[float, list[float]] | None = None
    for k in range(1, TERMS + 1):
        for terms in combinations(range(TERMS), k):
            sol = _solve([[f[j] / t for j in terms] for f, t in zip(feats, secs)], [1.0] * len(secs))
            if sol is None or min(sol) < 0:
                continue
            coef = [0.0] * TERMS
            for j, v in zip(terms, sol):
                coef[j] = v
            err = sum((sum(c * x for c, x in zip(coef, f)) / t - 1) ** 2 for f, t in zip(feats, secs))
            if best is None or err < best[0]:
                best = (err, coef)
    if best is None:
        raise ValueError("no entries to fit")
    return best[1]


def fit_device(entries: list[dict], name: str = "", measured: str = "") -> DeviceModel:
    """The fitted, corrected model of one device's ``entries`` (each with pixels, width or cost_width, it_s)."""
    feats = [_features(e) for e in entries]
    coef = _best(feats, [1.0 / e["it_s"] for e in entries])
    bare = DeviceModel(name, *coef, 0.0)
    widths = [e.get("cost_width", e["width"]) for e in entries]
    ratios = [1 / e["it_s"] / bare.model(e["pixels"], w) for e, w in zip(entries, widths)]
    residuals = tuple((*_coords(e["pixels"], w), math.log(r)) for e, w, r in zip(entries, widths, ratios))
    return DeviceModel(name, *coef, max(abs(1 / r - 1) for r in ratios), residuals, measured)


def leave_one_out(entries: list[dict]) -> list[float]:
    """Each entry predicted from the others: relative errors of predicted seconds vs measured."""
    return [fit_device(entries[:i] + entries[i + 1:]).seconds(e["pixels"], e.get("cost_width", e["width"]))
            * e["it_s"] - 1 for i, e in enumerate(entries)]


def load(path: Path | None = None) -> dict[str, DeviceModel]:
    """Every device the table (default ``TABLE``) measured, fitted; {} without a table (a checkout that never
    ran the benchmark)."""
    return _load(path or TABLE)


@lru_cache(maxsize=4)
def _load(path: Path) -> dict[str, DeviceModel]:
    if not path.is_file():
        return {}
    devices = json.loads(path.read_text())["devices"]
    return {d: fit_device(t["entries"], t.get("name", d), t.get("measured", ""))
            for d, t in devices.items() if t.get("entries")}


def seconds_per_iter(device: str, pixels: float, width: float, path: Path | None = None) -> float | None:
    """Seconds one fit step takes on ``device`` ('cpu' on one thread, 'cuda' a whole GPU); None if unmeasured."""
    model = load(path).get(device)
    return None if model is None else model.seconds(pixels, width)
