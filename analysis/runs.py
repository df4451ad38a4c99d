"""Data access: a sweep's MLflow runs as one tidy table (one row per trial x level, config axes as columns)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from types import UnionType
from typing import Union, get_args, get_origin, get_type_hints

import numpy as np
import pandas as pd
import yaml
from mlflow.tracking import MlflowClient
from PIL import Image

from lipsweep.core.paths import artifact_dir
from lipsweep.core.records import (
    CLASSIFY_METRIC_KEYS,
    COUNT_KEYS,
    GAN_METRIC_KEYS,
    METRIC_KEYS,
)
from lipsweep.kinds.base import FIELD_DEFAULTS, TrialConfig
from lipsweep.tracking.tracker import PLATFORM_TAG

ROLE, SWEEP, TRIAL = "lipsweep.role", "lipsweep.sweep_key", "lipsweep.trial_key"
LEVEL_METRICS = ("sparsity", "density", "kept", "total", "imp_loss", *METRIC_KEYS, *COUNT_KEYS, *GAN_METRIC_KEYS,
                 *CLASSIFY_METRIC_KEYS,
                 "stop_fired_at", "stop_chosen",
                 "objective", "psnr_change_db", "psnr_loss")  # psnr_loss: stop-rule runs logged before issue 28


def _param(value: str) -> object:
    """A param no trial field declares, read back as YAML (lists logged as JSON), with Python's None; a word
    YAML 1.1 would take for a bool (off, on, yes, no) stays the word."""
    if value == "None":
        return None
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError:
        return value
    if isinstance(parsed, bool) and value.lower() not in ("true", "false"):
        return value
    return tuple(parsed) if isinstance(parsed, list) else parsed


def _as(value: str, kind: object) -> object:
    """``value`` as one declared type; ValueError where it is not one (e.g. 'off' for a float)."""
    if kind is str:
        return value
    if kind is bool:
        if value.lower() not in ("true", "false"):
            raise ValueError(value)
        return value.lower() == "true"
    if kind in (int, float):
        return kind(value)
    if get_origin(kind) is tuple:
        parsed = yaml.safe_load(value)
        if isinstance(parsed, list):
            return tuple(parsed)
    raise ValueError(value)


def typed_param(name: str, value: str) -> object:
    """A logged param read back by its ``TrialConfig`` field's declared type (``str | None``: the text, 'None'
    as None); a word that names a None default ('off', 'native', 'all': kinds/base.py NONE_WORDS) stays the
    word. Params no field declares (a kind's resolved values, a sweep's) are read as YAML."""
    if name not in HINTS:
        return _param(value)
    if value == "None":
        return None
    hint = HINTS[name]
    options = [a for a in get_args(hint) if a is not type(None)] if get_origin(hint) in (Union, UnionType) else [hint]
    for kind in options:
        try:
            return _as(value, kind)
        except (ValueError, TypeError, yaml.YAMLError):
            continue
    return value


def with_defaults(params: dict[str, object]) -> dict[str, object]:
    """A trial's params with every declared field it did not log at its declared default: a store whose runs
    log only the fields their kind reads reads like one that logged them all."""
    if not params.keys() & FIELD_DEFAULTS.keys():
        return params  # not a trial (e.g. a stop-rule search's proposal)
    return {**{n: params.get(n, d) for n, d in FIELD_DEFAULTS.items()}, **params}  # in field order


HINTS = get_type_hints(TrialConfig)


def platform_of(tags: dict[str, str], level: int) -> str | None:
    """Where a logged level was computed: its own tag, which a tracker writes only where the level ran elsewhere
    than the run's first level (older stores tag every level), else the run's platform (of "mixed: A | B", A:
    the first level's); None for runs logged before platforms were recorded."""
    own = tags.get(f"{PLATFORM_TAG}.{artifact_dir(level)}")
    run = tags.get(PLATFORM_TAG)
    if own or not run:
        return own
    return run.removeprefix("mixed: ").split(" | ")[0]


class Runs:
    """The runs of one experiment (``lipsweep/NAME``) in one tracking store."""

    def __init__(self, uri: str, name: str):
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no bars in a report run
        self.uri, self.name = uri, name
        self.client = MlflowClient(tracking_uri=uri)
        exp = self.client.get_experiment_by_name(f"lipsweep/{name}")
        if exp is None:
            raise LookupError(f"no MLflow experiment 'lipsweep/{name}' in {uri}; run `lipsweep run {name}` first")
        self.experiment_id = exp.experiment_id

    def sweeps(self) -> pd.DataFrame:
        """Parent runs, newest first, with their profile."""
        runs = self.client.search_runs([self.experiment_id], filter_string=f"tags.`{ROLE}` = 'sweep'",
                                       order_by=["attributes.start_time DESC"])
        return pd.DataFrame([{"run_id": r.info.run_id, "profile": r.data.params.get("profile"),
                              "sweep_key": r.data.tags.get(SWEEP), "start_time": r.info.start_time,
                              "name": r.info.run_name} for r in runs])

    def parent(self, profile: str | None = None) -> str:
        sweeps = self.sweeps()
        if profile is not None:
            sweeps = sweeps[sweeps["profile"] == profile]
        if sweeps.empty:
            raise LookupError(f"no sweep of lipsweep/{self.name}" + (f" with profile {profile!r}" if profile else ""))
        return str(sweeps.iloc[0]["run_id"])

    def table(self, parent_id: str) -> pd.DataFrame:
        """One row per trial x logged level; params parsed back to numbers/lists; missing metrics are NaN."""
        children = self.client.search_runs([self.experiment_id],
                                           filter_string=f"tags.`mlflow.parentRunId` = '{parent_id}'")
        rows = []
        for run in children:
            params = with_defaults({k: typed_param(k, v) for k, v in run.data.params.items()})
            base = {"run_id": run.info.run_id, "trial_key": run.data.tags.get(TRIAL), "label": run.info.run_name,
                    "status": run.info.status, **params}
            per_level: dict[int, dict] = {}
            for key in [k for k in run.data.metrics if k in LEVEL_METRICS or "." in k]:
                for m in self.client.get_metric_history(run.info.run_id, key):
                    per_level.setdefault(m.step, {})[key] = m.value
            if not per_level:
                rows.append({**base, "level": np.nan})
            for level, values in sorted(per_level.items()):
                rows.append({**base, "level": level, **values, "platform": platform_of(run.data.tags, level)})
        frame = pd.DataFrame(rows)
        for col in LEVEL_METRICS:
            if col not in frame:
                frame[col] = np.nan
        return frame

    def artifact_json(self, run_id: str, path: str) -> dict | None:
        with tempfile.TemporaryDirectory() as tmp:
            try:
                local = self.client.download_artifacts(run_id, path, tmp)
            except Exception:  # noqa: BLE001 - a partial sweep may lack it; the caller shows it as missing
                return None
            return json.loads(Path(local).read_text())

    def artifact_image(self, run_id: str, path: str) -> np.ndarray | None:
        with tempfile.TemporaryDirectory() as tmp:
            try:
                local = self.client.download_artifacts(run_id, path, tmp)
            except Exception:  # noqa: BLE001
                return None
            return np.asarray(Image.open(local).convert("RGB"), dtype=np.float64) / 255.0
