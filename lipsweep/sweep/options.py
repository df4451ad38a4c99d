"""What a sweep is asked to do and what it did: the options of ``run_sweep``, its summary, and the sweep's
content key. Plain values, no Ray: the driver, preflight and the CLI share them."""

from __future__ import annotations

from dataclasses import dataclass, field

from lipsweep.core.keys import SCHEMA, content_key
from lipsweep.experiments.spec import Experiment


def is_local_path(uri: str) -> bool:
    """A filesystem path (or ``file://`` URI), not an object store or server URL."""
    return "://" not in uri or uri.startswith("file://")


@dataclass
class SweepOptions:
    store: str = ".lipsweep/store"
    storage: str = "runs/tune"
    tracking_uri: str = "sqlite:///mlflow.db"
    address: str | None = None
    resume: bool = False
    max_failures: int = 2
    quiet: bool = False
    gpus_per_trial: float | None = None
    shared_paths: tuple[str, ...] = ()
    mlflow_retry_s: float = 300.0
    resources_timeout_s: float = 600.0  # how long a cluster may take to offer a node a trial fits on
    study_storage: str | None = None  # Optuna storage URL for an online search's study (None: in memory)
    recompute: bool = False  # refit everything the store holds (its old entries are kept aside)
    progress_every_s: float = 30.0  # a progress line this often when stderr is not a terminal (a log)


@dataclass
class SweepSummary:
    """What a sweep did: finished / failed trial keys, and for each trial that did not reach its last level
    (time budget, Ctrl-C, a stopped driver) the levels it lacks; ``cut`` says why, None if nothing is."""

    experiment: str
    sweep_key: str
    parent_run_id: str
    tune_path: str
    finished: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    incomplete: dict[str, str] = field(default_factory=dict)
    failed_levels: dict[str, str] = field(default_factory=dict)  # a failed trial's missing levels
    cut: str | None = None
    seconds: float = 0.0

    @property
    def status(self) -> str:
        return "FAILED" if self.failed else "KILLED" if self.incomplete else "FINISHED"


def sweep_key(exp: Experiment) -> str:
    return content_key({"schema": SCHEMA, "experiment": exp.name, "profile": exp.profile,
                        "trials": sorted(t.key for t in exp.trials)})
