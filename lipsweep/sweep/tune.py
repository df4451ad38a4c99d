"""Running an experiment: Ray Tune schedules the trials, the driver logs each level to MLflow.

Ray is touched here, in ``trainables.py`` (what a worker runs: the trainables and the one adapter to Ray's
reporting API), ``driver.py`` (the driver's Tune callback and progress board) and ``preflight.py`` (what is
refused before a sweep starts).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

from lipsweep.core.errors import ConfigError
from lipsweep.core.keys import content_key
from lipsweep.experiments.spec import Experiment
from lipsweep.lottery.store import TrunkStore
from lipsweep.sweep.driver import (
    LevelLogger,
    grid_spec,
    log_summary,
    missing_levels,
    run_params,
    start_board,
    sweep_note,
    trial_key,
    trial_outcome,
    trial_tags,
)
from lipsweep.sweep.options import SweepOptions, SweepSummary, is_local_path, sweep_key
from lipsweep.sweep.preflight import check_cluster_paths, input_paths, preflight, wait_for_resources
from lipsweep.sweep.trainables import replay_trainable, trainable
from lipsweep.tracking.tracker import Tracker, fail_fast, system_tags

# Set where Ray starts (``init_ray``) unless the user set them: Tune's console noise off, and its automatic
# loggers off (``_tuner`` adds back the CSV and JSON ones its results are read from; TensorBoard's cost a
# few ms per result and per trial, which a sweep of thousands of short trials pays on the driver).
RAY_ENV = {"TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0", "RAY_AIR_NEW_OUTPUT": "0",
           "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1"}


# The package layout Tune's pickled state (callbacks, stoppers, trainables) refers to: 2 since issue 25's
# subpackages. A sweep started under another layout cannot be restored, only rerun (which costs nothing).
LAYOUT = 2


def _stopper_base():
    from ray.tune import Stopper

    return Stopper


class SessionBudget(_stopper_base()):
    """``time_budget_s`` per driver session. Tune's own budget is cumulative across restores and counts the
    time the sweep stood still, so a sweep cut by it and then resumed was stopped again at once."""

    def __init__(self, seconds: float):
        self.seconds, self.start = seconds, None

    def __setstate__(self, state: dict) -> None:  # restored by --resume: a fresh budget from now
        self.__dict__.update(state)
        self.start = None

    def __call__(self, trial_id, result) -> bool:
        return False

    def stop_all(self) -> bool:
        now = time.time()
        self.start = now if self.start is None else self.start
        return now - self.start >= self.seconds


def init_ray(address: str | None) -> None:
    import ray

    for key, value in RAY_ENV.items():
        os.environ.setdefault(key, value)
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=False)
    else:  # "local" never attaches to a stale cluster left in the temp dir
        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False,
                 configure_logging=False)


def grid_specs(exp: Experiment) -> dict[str, dict]:
    """Each grid trial's fields and label by content key. Tune's grid holds only the keys: its variant generator
    copies the whole param space for every trial it makes, so a grid of 1,000 full configs spent 11 s before
    the first trial started. Workers get the specs once each (``tune.with_parameters``, Ray's object store)."""
    return {t.key: {"config": t.compact(), "label": label, "long": long}
            for t, label, long in zip(exp.trials, exp.labels, exp.long_labels or exp.labels)}


def _asha(exp: Experiment):
    """ASHA over IMP levels (early stopping of trials, not weight pruning), if the experiment asks for it."""
    if not exp.scheduler:
        return None
    from ray.tune.schedulers import ASHAScheduler

    return ASHAScheduler(time_attr="training_iteration", metric=exp.metric, mode=exp.mode,
                         grace_period=exp.scheduler["grace_period"], reduction_factor=exp.scheduler["reduction_factor"],
                         max_t=max(t.levels for t in exp.trials) + 1)


def _search(exp: Experiment, tune, common: dict, study: tuple[str, str | None] = ("optuna", None)) -> tuple[dict, object]:
    """Tune's param space and search algorithm: a grid of trials, or (``stop_replay``) Optuna proposing stop
    rules over the one search space declared in ``stop_search.SPACE``, with the chains as data. ``study``:
    the Optuna study's name and storage URL (kept there, optuna-dashboard shows it; stamped with its objective
    so a study scored otherwise is never continued)."""
    if exp.search != "optuna":
        return {**common, "trial": tune.grid_search(list(grid_specs(exp)))}, None
    from ray.tune.search.optuna import OptunaSearch

    from lipsweep.stopping.search import SPACE, first_points, stored_study

    space = {k: tune.randint(lo, hi + 1) if isinstance(lo, int) else tune.uniform(lo, hi) for k, (lo, hi) in SPACE.items()}
    chains = [t.as_dict() for t in exp.trials]
    name, url = study
    storage = stored_study(name, url, {"delta": exp.delta, "penalty": 1.0, "metric": "psnr_ema", "multi": False})
    return ({**common, "rule": space, "chains": chains, "delta": exp.delta, "metric": "psnr_ema"},
            OptunaSearch(metric="objective", mode="max", seed=0, study_name=name, storage=storage,
                         points_to_evaluate=first_points(name, storage)))


def _tuner(exp: Experiment, restoring: bool, opts: SweepOptions, fn, path: str, storage: str, name: str,
           common: dict, logger: LevelLogger):
    from ray import tune
    from ray.tune import CheckpointConfig, FailureConfig, RunConfig, TuneConfig, Tuner
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    if restoring:
        return Tuner.restore(path, trainable=fn, resume_unfinished=True, resume_errored=True)
    param_space, search_alg = _search(exp, tune, common, (name, opts.study_storage))
    return Tuner(
        fn,
        param_space=param_space,
        tune_config=TuneConfig(scheduler=_asha(exp), search_alg=search_alg,
                               num_samples=exp.num_samples if search_alg else 1,
                               reuse_actors=True,  # one worker process (torch imported once) serves many trials
                               trial_name_creator=lambda t: trial_key(t.config)[:12],
                               trial_dirname_creator=lambda t: t.trial_id),
        run_config=RunConfig(name=name, storage_path=storage, verbose=0,
                             callbacks=[logger, CSVLoggerCallback(), JsonLoggerCallback()],
                             stop=SessionBudget(exp.time_budget_s) if exp.time_budget_s else None,
                             failure_config=FailureConfig(max_failures=opts.max_failures),
                             # every checkpoint is kept (a few hundred bytes each): with num_to_keep=1 a
                             # driver killed between deleting the old one and snapshotting the experiment
                             # state left a state that names a deleted checkpoint, and --resume failed
                             checkpoint_config=CheckpointConfig(num_to_keep=None)),
    )


def _sweep_meta(path: str, write: dict | None = None) -> dict | None:
    """``lipsweep.json`` beside Tune's experiment state (any storage pyarrow reaches): what the sweep was
    started with that Tune's restore cannot change (its pickled MLflow logger keeps the first URI)."""
    import pyarrow.fs as pafs

    fs, root = pafs.FileSystem.from_uri(path)
    target = f"{root}/lipsweep.json"
    if write is not None:
        fs.create_dir(root, recursive=True)
        with fs.open_output_stream(target) as f:
            f.write(json.dumps(write).encode())
        return write
    if fs.get_file_info(target).type == pafs.FileType.NotFound:
        return None
    with fs.open_input_stream(target) as f:
        return json.loads(f.read().decode())


def _check_resume(path: str, opts: SweepOptions) -> bool:
    """Whether this run restores Tune's experiment; refuses a restore that would log to another MLflow, or
    whose pickled state names modules of another package layout (``LAYOUT``)."""
    from ray.tune import Tuner

    if not opts.resume:
        return False
    if not Tuner.can_restore(path):
        print(f"lipsweep run: note: --resume found no saved sweep at {path}; starting it (what the store holds is "
              "served, not refitted)", file=sys.stderr, flush=True)
        return False
    meta = _sweep_meta(path) or {}
    if meta.get("layout") != LAYOUT:
        raise ConfigError("--resume", f"the sweep at {path} was started by lipsweep before its modules moved into "
                                      "subpackages (issue 25); Tune cannot restore its saved state. Run the same "
                                      "command without --resume: every stored level is served from the store and "
                                      "nothing is fitted again")
    before = meta.get("tracking_uri")
    if before is not None and before != opts.tracking_uri:
        raise ConfigError("tracking_uri", f"the sweep at {path} logs to {before}, not {opts.tracking_uri} (Tune "
                                          f"restores its MLflow logger as it started); resume with --tracking-uri "
                                          f"{before}, or run without --resume")
    return True


def run_sweep(exp: Experiment, opts: SweepOptions, on_start: Callable[[], None] | None = None) -> SweepSummary:
    """Run (or ``resume``) every trial of ``exp``; nothing computed before is computed again. One driver
    per sweep: a second one on the same store is refused (two would log every level twice). ``on_start``
    is called once the sweep passed its checks, before Ray starts (the CLI's one-line header)."""
    if "://" in opts.store:
        raise ConfigError("store", f"{opts.store!r}: the trunk store needs a filesystem path (local, or an NFS mount "
                                   "on a cluster): object stores have no atomic rename or locks")
    key = sweep_key(exp)
    store_root = str(Path(opts.store).resolve())
    storage = str(Path(opts.storage).resolve()) if is_local_path(opts.storage) else opts.storage
    path = os.path.join(storage, f"{exp.name}-{exp.profile}-{key[:8]}")
    restoring = _check_resume(path, opts)  # before Ray starts or anything is recorded
    preflight(exp, opts)
    store = TrunkStore(store_root)
    store.require_writable("a sweep takes its driver lock there and writes every level it fits")
    lock = store.paths.lock(f"driver-{key}")
    busy = ConfigError("sweep", f"another driver is running this sweep (lock {lock}); wait for it to end, or stop "
                                "it and run again with --resume")
    if store.held(f"driver-{key}"):  # before Ray starts, creating nothing
        raise busy
    if on_start is not None:
        on_start()
    init_ray(opts.address)
    fail_fast()
    resources = {"cpu": exp.resources["cpu"],
                 "gpu": exp.resources["gpu"] if opts.gpus_per_trial is None else opts.gpus_per_trial}
    wait_for_resources(resources, opts.resources_timeout_s, opts.quiet)
    shared = (*opts.shared_paths, *filter(None, os.environ.get("LIPSWEEP_SHARED_PATHS", "").split(":")))
    check_cluster_paths([("storage", storage), ("store", store_root), *input_paths(exp)], shared,  # before any record
                        attached=bool(opts.address or os.environ.get("RAY_ADDRESS")))
    with ExitStack() as held:
        try:  # two drivers started at once on a new store: the second is refused here
            held.enter_context(store.lock(f"driver-{key}", wait=False))
        except BlockingIOError:
            raise busy from None
        return _drive(exp, opts, key, store_root, path, restoring, resources)


class _NoTuneRestoreHint(logging.Filter):
    """Tune's "Resume experiment with: Tuner.restore(...)" names an API a lipsweep user does not call; the run
    command prints its own (``--resume``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Tuner.restore(" not in record.getMessage()


def _quiet_tune_hints() -> None:
    tune_logger = logging.getLogger("ray.tune.tune")
    if not any(isinstance(f, _NoTuneRestoreHint) for f in tune_logger.filters):
        tune_logger.addFilter(_NoTuneRestoreHint())


def _drive(exp: Experiment, opts: SweepOptions, key: str, store_root: str, path: str, restoring: bool,
           resources: dict) -> SweepSummary:
    from ray import tune

    _quiet_tune_hints()

    tracker = Tracker(opts.tracking_uri, f"lipsweep/{exp.name}", f"{exp.paper}: {exp.description}",
                      system_tags(f"lipsweep run {exp.name} --profile {exp.profile}"))
    fresh = _fresh_since(path, opts, restoring)
    parent = tracker.parent(key if fresh is None else content_key({"sweep": key, "recompute": fresh}),
                            f"{exp.name} [{exp.profile}]" + (" recomputed" if fresh else ""), {
        "experiment": exp.name, "profile": exp.profile, "paper": exp.paper, "trials": len(exp.trials),
        "metric": exp.metric, "delta": exp.delta, "store": store_root, "resources": exp.resources,
        "recompute": "off" if fresh is None else time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(fresh))},
        sweep_note(exp))
    online = exp.search == "optuna"
    specs = {} if online else grid_specs(exp)
    fn = tune.with_resources(replay_trainable if online else tune.with_parameters(trainable, specs=specs), resources)
    board, _alive = start_board(key)  # the handle keeps the board alive while the sweep runs
    params = run_params(exp.trials)
    logger = LevelLogger(tracker, store_root, exp.num_samples if online else sum(t.levels + 1 for t in exp.trials),
                         exp.num_samples if online else len(specs), opts.quiet, parent, opts.mlflow_retry_s,
                         early_stopping=exp.scheduler is not None, specs=specs, params=params,
                         board=board, title=f"{exp.name} [{exp.profile}]", every_s=opts.progress_every_s,
                         tags=trial_tags(exp, params))
    if not restoring:
        _sweep_meta(path, {"tracking_uri": opts.tracking_uri, "store": store_root, "sweep_key": key,
                           "fresh_since": fresh, "layout": LAYOUT})
    common = {"store": store_root, "threads": max(1, int(resources["cpu"])), "plugins": list(exp.plugins),
              "fresh_since": fresh, "progress": board}
    start = time.time()
    results = _tuner(exp, restoring, opts, fn, path, os.path.dirname(path), os.path.basename(path), common,
                     logger).fit()
    summary = _summarize(exp, results, SweepSummary(exp.name, key, parent, path, seconds=time.time() - start),
                         tracker, specs)
    log_summary(exp, results, summary, tracker)
    tracker.finish(parent, summary.status)
    return summary


def _fresh_since(path: str, opts: SweepOptions, restoring: bool) -> float | None:
    """``--recompute``: store entries older than the sweep's first start read as missing (and are kept
    aside); a resumed sweep keeps that first start, so what it recomputed before is not recomputed again."""
    if restoring:
        return (_sweep_meta(path) or {}).get("fresh_since")
    return time.time() if opts.recompute else None


def _summarize(exp: Experiment, results, summary: SweepSummary, tracker: Tracker,
               specs: dict[str, dict]) -> SweepSummary:
    """Sort the sweep's trials into finished / failed / incomplete; an incomplete trial's run is KILLED.
    A trial the budget or an interrupt stopped before it started has no Tune config: it is found by key."""
    hit_budget = exp.time_budget_s is not None and summary.seconds >= exp.time_budget_s - 1
    early = exp.scheduler is not None and not hit_budget  # ASHA stopped it on purpose
    seen = {trial_key(r.config): r for r in results if r.config}
    for key, r in seen.items():
        spec = grid_spec(r.config, specs)
        outcome = trial_outcome(r.error, r.metrics or {}, spec, early)
        if outcome == "incomplete":
            summary.incomplete[key] = missing_levels(r.metrics or {}, spec)
        else:
            (summary.failed if outcome == "failed" else summary.finished).append(key)
        if outcome == "failed":
            summary.failed_levels[key] = missing_levels(r.metrics or {}, spec)
    if exp.search == "grid":
        for t, label in zip(exp.trials, exp.long_labels or exp.labels):
            if t.key not in seen:
                summary.incomplete[t.key] = f"{label}: levels 0..{t.levels} missing (not started)"
    else:
        summary.incomplete.update({f"sample-{i}": "a proposed rule: not started"
                                   for i in range(exp.num_samples - len(seen))})
    if summary.incomplete:
        runs = tracker.children(summary.parent_run_id)  # one paged search, not one per trial
        for key in summary.incomplete.keys() & runs.keys():
            tracker.finish(runs[key], "KILLED")
    if summary.incomplete:
        summary.cut = f"time_budget_s {exp.time_budget_s:.0f} s reached" if hit_budget else "interrupted"
    return summary
