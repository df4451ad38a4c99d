"""Running an experiment: Ray Tune schedules the trials, the driver logs each level to MLflow.

Ray is touched only here. Its reporting API moved between releases, so ``report`` is the one adapter;
checked against Ray 2.60 (``ray.tune.report``; ``ray.train.report`` raises inside Tune trainables).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from .errors import ConfigError
from .experiments import Experiment
from .registry import load_plugins
from .store import SCHEMA, TrunkStore, content_key
from .records import numbers_of
from .tracking import Outbox, Tracker, fail_fast
from .trial import KINDS, TrialConfig, run_trial

# Tune's own console noise, set where Ray starts (``init_ray``) unless the user set them.
RAY_ENV = {"TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0", "RAY_AIR_NEW_OUTPUT": "0"}


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

    load_plugins(config.get("plugins", ()))  # a fresh worker knows only what its plugins register
    spec = config["trial"]
    trial = TrialConfig(**spec["config"])
    torch.set_num_threads(trial.threads)  # the fits set it too: it is part of their config
    tickets = Tickets(TrunkStore(config["store"]))
    resumed_from = (last_checkpoint() or {}).get("level", -1)
    node_id = _node_id()
    for rec in run_trial(trial, tickets):
        rec = replace(rec, node_id=node_id)
        metrics = {**rec.numbers(), "level": rec.level, "fits": tickets.fits,
                   "resumed_from": resumed_from, "record": rec.to_json()}
        report(metrics, {"trial_key": trial.key, "chain_key": KINDS.get(trial.kind).found_key(trial), "level": rec.level,
                         "run_id": spec["run_id"], "store": config["store"]})


def _node_id() -> str:
    import ray

    return ray.get_runtime_context().get_node_id()


def replay_trainable(config: dict) -> None:
    """Online stop-rule search (``stop_threshold``): Optuna proposes a rule, the trial replays every chain
    (computing any missing one through the store first) and reports the rule's score."""
    import torch

    from .stop_search import score, trace_of
    from .stopping import StopRule
    from .tickets import Tickets

    load_plugins(config.get("plugins", ()))
    torch.set_num_threads(max(1, int(config.get("threads", 1))))
    tickets = Tickets(TrunkStore(config["store"]))
    traces = []
    for spec in config["chains"]:
        trial = TrialConfig(**spec)
        recs = tickets.chain(trial.chain(), trial.levels).records
        traces.append(trace_of(trial.key, trial.image, trial.task, trial.seed, recs, config["metric"]))
    rule = StopRule(**{k: config["rule"][k] for k in ("k", "tolerance", "offset", "smooth")})
    sc = score(rule, traces, config["delta"])
    rec = {"level": 0, "objective": sc.objective, "sparsity": sc.sparsity, "psnr_loss": sc.psnr_loss,
           "chains": len(traces), "fits": tickets.fits, **{f"rule_{k}": v for k, v in vars(rule).items()}}
    report({**numbers_of(rec), "level": 0, "record": json.dumps(rec)}, {"rule": vars(rule)})


def trial_key(config: dict) -> str:
    """A Tune trial's content key: the grid trial's own, or (online search) the rule and the chains it scores."""
    if "trial" in config:
        return config["trial"]["key"]
    return content_key({"rule": config["rule"], "chains": sorted(TrialConfig(**c).key for c in config["chains"]),
                        "delta": config["delta"], "metric": config["metric"]})


def _callback_base():
    from ray.tune import Callback

    return Callback


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


class LevelLogger(_callback_base()):
    """Driver-side Tune callback: each reported level goes to the trial's MLflow run once (through the
    tracking module's outbox, which buffers an MLflow outage); progress lines."""

    def __init__(self, tracker: Tracker, store_root: str, total_levels: int, n_trials: int, quiet: bool = False,
                 parent_id: str | None = None, retry_s: float = 300.0, early_stopping: bool = False):
        self.tracker, self.store_root, self.parent_id, self.retry_s = tracker, Path(store_root), parent_id, retry_s
        self.early_stopping = early_stopping
        self.total_levels, self.n_trials, self.quiet = total_levels, n_trials, quiet
        self.setup()

    def setup(self, **info) -> None:
        self.start, self.last_print, self.levels_seen = time.time(), 0.0, {}
        self.outcome: dict[str, bool] = {}
        self.outbox = Outbox(self.tracker, self.store_root, self.quiet, self.retry_s)

    def on_experiment_end(self, trials, **info) -> None:
        self.outbox.drain()

    def _run_id(self, trial) -> str:
        """Grid trials carry their pre-created run; proposed (Optuna) trials get theirs on first result."""
        if "trial" in trial.config:
            return trial.config["trial"]["run_id"]
        rule = trial.config["rule"]
        name = "rule " + ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in rule.items())
        return self.tracker.child(self.parent_id, trial_key(trial.config), name, rule)

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        rec = json.loads(result["record"])
        self.outbox.level(self._run_id(trial), rec)
        self.levels_seen[trial.trial_id] = max(self.levels_seen.get(trial.trial_id, 0), rec["level"] + 1)
        self._progress(trials)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        """Tune also "completes" a trial it stops at the time budget: only one that reached its end is
        FINISHED here; the driver marks the others KILLED when the sweep returns."""
        if trial_outcome(None, trial.last_result or {}, trial.config, self.early_stopping) == "finished":
            self.outbox.finish(self._run_id(trial))
        self.outcome[trial_key(trial.config)] = True
        self._progress(trials, force=True)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self.outbox.finish(self._run_id(trial), "FAILED")
        self.outcome[trial_key(trial.config)] = False
        self._progress(trials, force=True)

    def _progress(self, trials, force: bool = False) -> None:
        now = time.time()
        if self.quiet or (not force and now - self.last_print < 5):
            return
        self.last_print = now
        done, failed = sum(self.outcome.values()), sum(not ok for ok in self.outcome.values())
        running = sum(t.status == "RUNNING" and trial_key(t.config) not in self.outcome for t in trials)
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
    gpus_per_trial: float | None = None
    shared_paths: tuple[str, ...] = ()
    mlflow_retry_s: float = 300.0
    resources_timeout_s: float = 600.0  # how long a cluster may take to offer a node a trial fits on
    study_storage: str | None = None  # Optuna storage URL for an online search's study (None: in memory)


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


def last_level(config: dict) -> int:
    """The level a trial reports last when it runs to the end (a replayed stop rule reports one, level 0)."""
    return int(config["trial"]["config"]["levels"]) if "trial" in config else 0  # no re-validation: its files
                                                                                  # may be gone (a failed trial)


def trial_outcome(error: object, metrics: dict, config: dict, early_stopping: bool) -> str:
    """finished (its last level, the level its stop rule fired at, or stopped early by ASHA), failed, or
    incomplete (cut before its end: resumable)."""
    if error is not None:
        return "failed"
    level = metrics.get("level")
    if level is None:
        return "incomplete"
    keep_going = "trial" in config and config["trial"]["config"].get("stop_keep_going")
    fired = metrics.get("stop_fired_at")
    done = level >= last_level(config) or (fired is not None and not keep_going and level == fired)
    return "finished" if done or early_stopping else "incomplete"


def _missing(metrics: dict, config: dict) -> str:
    label = config["trial"]["label"] if "trial" in config else "rule"
    level = metrics.get("level")
    start = 0 if level is None else int(level) + 1
    return f"{label}: levels {start}..{last_level(config)} missing" + (" (no level reported)" if level is None else "")


def sweep_key(exp: Experiment) -> str:
    return content_key({"schema": SCHEMA, "experiment": exp.name, "profile": exp.profile,
                        "trials": sorted(t.key for t in exp.trials)})


def _local_path(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file://")


NETWORK_FS = ("nfs", "nfs4", "cifs", "smb3", "smbfs", "lustre", "ceph", "glusterfs", "gpfs", "beegfs", "9p",
              "fuse.s3fs", "fuse.gcsfuse", "fuse.juicefs", "fuse.sshfs", "efs")


def _fs_type(path: str) -> str:
    """The filesystem type of the mount that holds ``path`` (longest mount-point prefix in /proc/mounts)."""
    target, best = str(Path(path).resolve()), ("", "")
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return ""
    for line in mounts:
        parts = line.split()
        if len(parts) >= 3 and (target == parts[1] or target.startswith(parts[1].rstrip("/") + "/")):
            if len(parts[1]) > len(best[0]):
                best = (parts[1], parts[2])
    return best[1]


def is_shared(path: str, declared: tuple[str, ...]) -> bool:
    """Every node can reach it: a cloud URI, a network filesystem, or a path the user declared shared."""
    if not _local_path(path):
        return True
    resolved = str(Path(path.removeprefix("file://")).resolve())
    if any(resolved == str(Path(d).resolve()) or resolved.startswith(str(Path(d).resolve()) + "/") for d in declared):
        return True
    return _fs_type(resolved) in NETWORK_FS


def check_cluster_paths(paths: dict[str, str], declared: tuple[str, ...]) -> None:
    """Refuse, before any trial starts, a multi-node sweep whose storage or store only one node can see."""
    import ray

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if len(nodes) < 2:
        return
    for field_name, path in paths.items():
        if not is_shared(path, declared):
            raise ConfigError(field_name, f"{path!r} is node-local ({_fs_type(path) or 'unknown'} filesystem) but "
                                          f"the cluster has {len(nodes)} nodes; allowed: s3:// or gs:// URIs, an NFS "
                                          "(or other network) filesystem, or a path declared with --shared-path")


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


def check_address(address: str) -> None:
    """A cluster address nothing answers at would make ``ray.init`` wait for minutes; ``ray://`` needs Ray's
    client (``ray[client]``, installed with lipsweep). One line, before anything starts."""
    if address in ("auto", "local"):
        return
    client = address.startswith("ray://")
    if client:
        try:
            import grpc  # noqa: F401 - Ray's client transport
        except ImportError:
            raise ConfigError("address", "ray:// addresses need Ray's client: pip install 'ray[client]'") from None
    host, _, port = address.removeprefix("ray://").rpartition(":")
    host, port = (host, port) if host else (port, "10001" if client else "6379")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except (OSError, ValueError) as exc:
        raise ConfigError("address", f"nothing answers at {host}:{port} ({type(exc).__name__}); start the cluster "
                                     "(`ray up cluster.yaml`) or leave --address out for a local Ray") from None


def check_local_resources(exp: Experiment, gpu: float) -> None:
    """A local Ray has exactly this machine: a trial that asks for more would never start (Tune waits forever)."""
    import torch

    cpus, gpus = os.cpu_count() or 1, torch.cuda.device_count()
    have = f"this machine (a local Ray) has cpu: {cpus}, gpu: {gpus}"
    if exp.resources["cpu"] > cpus:
        raise ConfigError("resources.cpu", f"{exp.resources['cpu']} per trial, but {have}")
    if gpu > gpus:
        raise ConfigError("resources.gpu", f"{gpu} per trial, but {have}; use --gpus-per-trial 0, or --address "
                                           "of a cluster with GPUs")
    if gpus == 0 and any(t.device.startswith("cuda") for t in exp.trials):
        raise ConfigError("device", f"cuda was requested but {have}; allowed here: auto, cpu")


def _fits_a_node(demand: dict) -> bool:
    import ray

    return any(n["Alive"] and n["Resources"].get("CPU", 0) >= demand["cpu"]
               and n["Resources"].get("GPU", 0) >= demand["gpu"] for n in ray.nodes())


def wait_for_resources(demand: dict, timeout_s: float, quiet: bool = False) -> None:
    """On a cluster, a trial no node can hold would wait forever: ask the autoscaler for one such node, say
    so, and give up after ``timeout_s`` with one line naming what the cluster has."""
    import ray

    if _fits_a_node(demand):
        return
    from ray.autoscaler.sdk import request_resources

    request_resources(bundles=[{"CPU": demand["cpu"], **({"GPU": demand["gpu"]} if demand["gpu"] else {})}])
    if not quiet:
        print(f"lipsweep: no node has cpu: {demand['cpu']}, gpu: {demand['gpu']} yet; asked the autoscaler, "
              f"waiting up to {timeout_s:.0f} s", file=sys.stderr, flush=True)
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if _fits_a_node(demand):
            return
        time.sleep(min(5.0, max(0.1, deadline - time.time())))
    have = ray.cluster_resources()
    raise ConfigError("resources", f"no node of the cluster offers cpu: {demand['cpu']}, gpu: {demand['gpu']} per "
                                   f"trial after {timeout_s:.0f} s (the cluster has cpu: {have.get('CPU', 0):g}, gpu: "
                                   f"{have.get('GPU', 0):g} in all); lower resources or --gpus-per-trial, or add nodes")


def preflight(exp: Experiment, opts: SweepOptions) -> None:
    """What Ray would only find out by waiting: an address nothing answers at, resources no node has."""
    for trial in exp.trials:
        KINDS.get(trial.kind).ready(trial)
    address = opts.address or os.environ.get("RAY_ADDRESS")
    if address:
        check_address(address)
    else:
        from .plan import check_memory

        check_local_resources(exp, exp.resources["gpu"] if opts.gpus_per_trial is None else opts.gpus_per_trial)
        check_memory([t for t in exp.trials if not t.device.startswith("cuda")])


def _grid_trials(exp: Experiment, tracker: Tracker, parent: str) -> list[dict]:
    """Each grid trial's Tune config: its fields, key, label and MLflow run (found by key, else created)."""
    return [{"config": t.as_dict(), "key": t.key, "label": label,
             "run_id": tracker.child(parent, t.key, label, t.as_dict())} for t, label in zip(exp.trials, exp.labels)]


def _asha(exp: Experiment):
    """ASHA over IMP levels (early stopping of trials, not weight pruning), if the experiment asks for it."""
    if not exp.scheduler:
        return None
    from ray.tune.schedulers import ASHAScheduler

    return ASHAScheduler(time_attr="training_iteration", metric=exp.metric, mode=exp.mode,
                         grace_period=exp.scheduler["grace_period"], reduction_factor=exp.scheduler["reduction_factor"],
                         max_t=max(t.levels for t in exp.trials) + 1)


def _search(exp: Experiment, tune, common: dict, tracker: Tracker, parent: str,
            study: tuple[str, str | None] = ("optuna", None)) -> tuple[dict, object]:
    """Tune's param space and search algorithm: a grid of trials, or (``stop_replay``) Optuna proposing stop
    rules over the one search space declared in ``stop_search.SPACE``, with the chains as data. ``study``:
    the Optuna study's name and storage URL (kept there, optuna-dashboard shows it; stamped with its objective
    so a study scored otherwise is never continued)."""
    if exp.search != "optuna":
        return {**common, "trial": tune.grid_search(_grid_trials(exp, tracker, parent))}, None
    from ray.tune.search.optuna import OptunaSearch

    from .stop_search import SPACE, stored_study

    space = {k: tune.randint(lo, hi + 1) if isinstance(lo, int) else tune.uniform(lo, hi) for k, (lo, hi) in SPACE.items()}
    chains = [t.as_dict() for t in exp.trials]
    name, url = study
    storage = stored_study(name, url, {"delta": exp.delta, "penalty": 1.0, "metric": "psnr_ema", "multi": False})
    return ({**common, "rule": space, "chains": chains, "delta": exp.delta, "metric": "psnr_ema"},
            OptunaSearch(metric="objective", mode="max", seed=0, study_name=name, storage=storage))


def _tuner(exp: Experiment, restoring: bool, opts: SweepOptions, fn, path: str, storage: str, name: str,
           common: dict, logger: LevelLogger, tracker: Tracker, parent: str):
    from ray import tune
    from ray.tune import CheckpointConfig, FailureConfig, RunConfig, TuneConfig, Tuner

    if restoring:
        return Tuner.restore(path, trainable=fn, resume_unfinished=True, resume_errored=True)
    param_space, search_alg = _search(exp, tune, common, tracker, parent, (name, opts.study_storage))
    return Tuner(
        fn,
        param_space=param_space,
        tune_config=TuneConfig(scheduler=_asha(exp), search_alg=search_alg,
                               num_samples=exp.num_samples if search_alg else 1,
                               reuse_actors=True,  # one worker process (torch imported once) serves many trials
                               trial_name_creator=lambda t: trial_key(t.config)[:12],
                               trial_dirname_creator=lambda t: t.trial_id),
        run_config=RunConfig(name=name, storage_path=storage, callbacks=[logger], verbose=0,
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
    """Whether this run restores Tune's experiment; refuses a restore that would log to another MLflow."""
    from ray.tune import Tuner

    if not (opts.resume and Tuner.can_restore(path)):
        return False
    before = (_sweep_meta(path) or {}).get("tracking_uri")
    if before is not None and before != opts.tracking_uri:
        raise ConfigError("tracking_uri", f"the sweep at {path} logs to {before}, not {opts.tracking_uri} (Tune "
                                          f"restores its MLflow logger as it started); resume with --tracking-uri "
                                          f"{before}, or run without --resume")
    return True


def run_sweep(exp: Experiment, opts: SweepOptions) -> SweepSummary:
    """Run (or ``resume``) every trial of ``exp``; nothing computed before is computed again. One driver
    per sweep: a second one on the same store is refused (two would log every level twice)."""
    key = sweep_key(exp)
    store_root = str(Path(opts.store).resolve()) if _local_path(opts.store) else opts.store
    storage = str(Path(opts.storage).resolve()) if _local_path(opts.storage) else opts.storage
    path = os.path.join(storage, f"{exp.name}-{exp.profile}-{key[:8]}")
    restoring = _check_resume(path, opts)  # before Ray starts or anything is recorded
    preflight(exp, opts)
    init_ray(opts.address)
    fail_fast()
    resources = {"cpu": exp.resources["cpu"],
                 "gpu": exp.resources["gpu"] if opts.gpus_per_trial is None else opts.gpus_per_trial}
    wait_for_resources(resources, opts.resources_timeout_s, opts.quiet)
    shared = (*opts.shared_paths, *filter(None, os.environ.get("LIPSWEEP_SHARED_PATHS", "").split(":")))
    check_cluster_paths({"storage": storage, "store": store_root}, shared)  # before anything is recorded
    lock = TrunkStore(store_root).paths.lock(f"driver-{key}")
    try:
        with TrunkStore(store_root).lock(f"driver-{key}", wait=False):
            return _drive(exp, opts, key, store_root, path, restoring, resources)
    except BlockingIOError:
        raise ConfigError("sweep", f"another driver is running this sweep (lock {lock}); wait for it to end, "
                                   "or stop it and run again with --resume") from None


def _drive(exp: Experiment, opts: SweepOptions, key: str, store_root: str, path: str, restoring: bool,
           resources: dict) -> SweepSummary:
    from ray import tune

    tracker = Tracker(opts.tracking_uri, f"lipsweep/{exp.name}")
    parent = tracker.parent(key, f"{exp.name} [{exp.profile}]", {
        "experiment": exp.name, "profile": exp.profile, "paper": exp.paper, "trials": len(exp.trials),
        "metric": exp.metric, "store": store_root, "resources": exp.resources})
    online = exp.search == "optuna"
    fn = tune.with_resources(replay_trainable if online else trainable, resources)
    total_levels = exp.num_samples if online else sum(t.levels + 1 for t in exp.trials)
    n_trials = exp.num_samples if online else len(exp.trials)
    logger = LevelLogger(tracker, store_root, total_levels, n_trials, opts.quiet, parent, opts.mlflow_retry_s,
                         early_stopping=exp.scheduler is not None)
    if not restoring:
        _sweep_meta(path, {"tracking_uri": opts.tracking_uri, "store": store_root, "sweep_key": key})
    common = {"store": store_root, "threads": max(1, int(resources["cpu"])), "plugins": list(exp.plugins)}
    start = time.time()
    results = _tuner(exp, restoring, opts, fn, path, os.path.dirname(path), os.path.basename(path), common,
                     logger, tracker, parent).fit()
    summary = _summarize(exp, results, SweepSummary(exp.name, key, parent, path, seconds=time.time() - start),
                         tracker)
    tracker.finish(parent, summary.status)
    return summary


def _summarize(exp: Experiment, results, summary: SweepSummary, tracker: Tracker) -> SweepSummary:
    """Sort the sweep's trials into finished / failed / incomplete; an incomplete trial's run is KILLED.
    A trial the budget or an interrupt stopped before it started has no Tune config: it is found by key."""
    hit_budget = exp.time_budget_s is not None and summary.seconds >= exp.time_budget_s - 1
    early = exp.scheduler is not None and not hit_budget  # ASHA stopped it on purpose
    seen = {trial_key(r.config): r for r in results if r.config}
    for r in seen.values():
        outcome = trial_outcome(r.error, r.metrics or {}, r.config, early)
        if outcome == "incomplete":
            summary.incomplete[trial_key(r.config)] = _missing(r.metrics or {}, r.config)
        else:
            (summary.failed if outcome == "failed" else summary.finished).append(trial_key(r.config))
        if outcome == "failed":
            summary.failed_levels[trial_key(r.config)] = _missing(r.metrics or {}, r.config)
    if exp.search == "grid":
        for t, label in zip(exp.trials, exp.labels):
            if t.key not in seen:
                summary.incomplete[t.key] = f"{label}: levels 0..{t.levels} missing (not started)"
    else:
        summary.incomplete.update({f"sample-{i}": "a proposed rule: not started"
                                   for i in range(exp.num_samples - len(seen))})
    for key in summary.incomplete:
        run_id = tracker.find_child(summary.parent_run_id, key)
        if run_id is not None:
            tracker.finish(run_id, "KILLED")
    if summary.incomplete:
        summary.cut = f"time_budget_s {exp.time_budget_s:.0f} s reached" if hit_budget else "interrupted"
    return summary
