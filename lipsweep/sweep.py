"""Running an experiment: Ray Tune schedules the trials, the driver logs each level to MLflow.

Ray is touched only here. Its reporting API moved between releases, so ``report`` is the one adapter;
checked against Ray 2.60 (``ray.tune.report``; ``ray.train.report`` raises inside Tune trainables).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from .experiments import Experiment
from .store import TrunkStore, content_key
from .tracking import Tracker, level_metrics
from .trial import TrialConfig, run_trial

os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")


def report(metrics: dict, state: dict) -> None:
    """The one place that calls Ray's reporting API: metrics plus a tiny checkpoint (store key, run id)."""
    from ray import tune

    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "trial.json").write_text(json.dumps(state))
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))


def last_checkpoint() -> dict | None:
    from ray import tune

    ckpt = tune.get_checkpoint()
    if ckpt is None:
        return None
    with ckpt.as_directory() as d:
        return json.loads((Path(d) / "trial.json").read_text())


def trainable(config: dict) -> None:
    """A Tune function trainable: one trial, one report per level, resumable through the store."""
    import torch

    from .tickets import Tickets

    spec = config["trial"]
    torch.set_num_threads(max(1, int(config.get("threads", 1))))
    trial = TrialConfig(**spec["config"])
    tickets = Tickets(TrunkStore(config["store"]))
    resumed_from = (last_checkpoint() or {}).get("level", -1)
    for rec in run_trial(trial, tickets):
        metrics = {**level_metrics(rec), "level": rec["level"], "fits": tickets.fits,
                   "resumed_from": resumed_from, "record": json.dumps(rec, default=float)}
        report(metrics, {"trial_key": trial.key, "chain_key": trial.chain().chain_key, "level": rec["level"],
                         "run_id": spec["run_id"], "store": config["store"]})


def _callback_base():
    from ray.tune import Callback

    return Callback


class LevelLogger(_callback_base()):
    """Driver-side Tune callback: each reported level goes to the trial's MLflow run once; progress lines."""

    def __init__(self, tracker: Tracker, store_root: str, total_levels: int, n_trials: int, quiet: bool = False):
        self.tracker, self.store_root = tracker, Path(store_root)
        self.total_levels, self.n_trials, self.quiet = total_levels, n_trials, quiet
        self.setup()

    def setup(self, **info) -> None:
        self.start, self.last_print, self.levels_seen = time.time(), 0.0, {}
        self.outcome: dict[str, bool] = {}

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        rec = json.loads(result["record"])
        run_id = trial.config["trial"]["run_id"]
        self.tracker.log_level(run_id, rec, self.store_root)
        self.levels_seen[trial.trial_id] = max(self.levels_seen.get(trial.trial_id, 0), rec["level"] + 1)
        self._progress(trials)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self.tracker.finish(trial.config["trial"]["run_id"], ok=True)
        self.outcome[trial.config["trial"]["key"]] = True
        self._progress(trials, force=True)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self.tracker.finish(trial.config["trial"]["run_id"], ok=False)
        self.outcome[trial.config["trial"]["key"]] = False
        self._progress(trials, force=True)

    def _progress(self, trials, force: bool = False) -> None:
        now = time.time()
        if self.quiet or (not force and now - self.last_print < 5):
            return
        self.last_print = now
        done, failed = sum(self.outcome.values()), sum(not ok for ok in self.outcome.values())
        running = sum(t.status == "RUNNING" and t.config["trial"]["key"] not in self.outcome for t in trials)
        levels = sum(self.levels_seen.values())
        elapsed = now - self.start
        eta = elapsed / levels * max(self.total_levels - levels, 0) if levels else float("nan")
        print(f"[{elapsed:6.0f}s] trials {done}/{self.n_trials} done, {running} running, {failed} failed; "
              f"levels {levels}/{self.total_levels}; ETA {_minutes(eta)}", file=sys.stderr, flush=True)


def _minutes(seconds: float) -> str:
    return "?" if seconds != seconds else f"{seconds / 60:.1f} min"


@dataclass
class SweepOptions:
    store: str = ".lipsweep/store"
    storage: str = "runs/tune"
    tracking_uri: str = "sqlite:///mlflow.db"
    address: str | None = None
    resume: bool = False
    max_failures: int = 2
    quiet: bool = False


@dataclass
class SweepSummary:
    experiment: str
    sweep_key: str
    parent_run_id: str
    tune_path: str
    finished: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    seconds: float = 0.0


def sweep_key(exp: Experiment) -> str:
    return content_key({"experiment": exp.name, "profile": exp.profile, "trials": sorted(t.key for t in exp.trials)})


def _local_path(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file://")


def init_ray(address: str | None) -> None:
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=False)
    else:  # "local" never attaches to a stale cluster left in the temp dir
        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False,
                 configure_logging=False)


def run_sweep(exp: Experiment, opts: SweepOptions) -> SweepSummary:
    """Run (or ``resume``) every trial of ``exp``; nothing computed before is computed again."""
    from ray import tune
    from ray.tune import CheckpointConfig, FailureConfig, RunConfig, TuneConfig, Tuner

    key = sweep_key(exp)
    store_root = str(Path(opts.store).resolve()) if _local_path(opts.store) else opts.store
    storage = str(Path(opts.storage).resolve()) if _local_path(opts.storage) else opts.storage
    tracker = Tracker(opts.tracking_uri, f"lipsweep/{exp.name}")
    parent = tracker.parent(key, f"{exp.name} [{exp.profile}]", {
        "experiment": exp.name, "profile": exp.profile, "paper": exp.paper, "trials": len(exp.trials),
        "metric": exp.metric, "store": store_root, "resources": exp.resources})
    trials = []
    for t, label in zip(exp.trials, exp.labels):
        run_id = tracker.child(parent, t.key, label, t.as_dict())
        trials.append({"config": t.as_dict(), "key": t.key, "run_id": run_id, "label": label})
    name = f"{exp.name}-{exp.profile}-{key[:8]}"
    path = os.path.join(storage, name)

    init_ray(opts.address)
    resources = {"cpu": exp.resources["cpu"], "gpu": exp.resources["gpu"]}
    fn = tune.with_resources(trainable, resources)
    total_levels = sum(t.levels + 1 for t in exp.trials)
    logger = LevelLogger(tracker, store_root, total_levels, len(trials), opts.quiet)
    start = time.time()
    if opts.resume and Tuner.can_restore(path):
        tuner = Tuner.restore(path, trainable=fn, resume_unfinished=True, resume_errored=True)
    else:
        scheduler = None
        if exp.scheduler:
            from ray.tune.schedulers import ASHAScheduler

            scheduler = ASHAScheduler(time_attr="training_iteration", metric=exp.metric, mode=exp.mode,
                                      grace_period=exp.scheduler["grace_period"],
                                      reduction_factor=exp.scheduler["reduction_factor"],
                                      max_t=max(t.levels for t in exp.trials) + 1)
        tuner = Tuner(
            fn,
            param_space={"trial": tune.grid_search(trials), "store": store_root,
                         "threads": max(1, int(resources["cpu"]))},
            tune_config=TuneConfig(scheduler=scheduler, time_budget_s=exp.time_budget_s,
                                   trial_name_creator=lambda t: t.config["trial"]["key"][:12],
                                   trial_dirname_creator=lambda t: t.config["trial"]["key"]),
            run_config=RunConfig(name=name, storage_path=storage, callbacks=[logger], verbose=0,
                                 failure_config=FailureConfig(max_failures=opts.max_failures),
                                 checkpoint_config=CheckpointConfig(num_to_keep=1)),
        )
    results = tuner.fit()
    summary = SweepSummary(exp.name, key, parent, path, seconds=time.time() - start)
    for r in results:
        k = r.config["trial"]["key"]
        (summary.failed if r.error is not None else summary.finished).append(k)
    tracker.finish(parent, ok=not summary.failed)
    return summary
