"""The driver's side of a sweep: the Tune callback that gives each trial its MLflow run when it starts and
logs each reported level once (through the tracking module's outbox), the progress board that lets the bar
move within a level, how a trial ended, and the sweep run's summary metrics."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from lipsweep.core.keys import content_key
from lipsweep.core.records import axis_summary
from lipsweep.experiments.labels import varying
from lipsweep.experiments.spec import Experiment
from lipsweep.kinds.base import FIELD_DEFAULTS, KINDS, TrialConfig
from lipsweep.sweep.progress import Progress
from lipsweep.tracking.outbox import Outbox, log_workers
from lipsweep.tracking.tracker import NOTE_TAG, Tracker

LEVELS_DEFAULT = FIELD_DEFAULTS["levels"]
# Read by a kind and named by the run's description: a param even at its default and the same in every trial.
DESCRIBED = ("kind", "image", "task", "model", "width", "depth", "method", "levels", "prune_fraction", "seed")
LABEL_TAG = "lipsweep.label"  # the full label (the run name is the short one)

if TYPE_CHECKING:
    from lipsweep.sweep.options import SweepSummary


def trial_key(config: dict) -> str:
    """A Tune trial's content key: the grid trial's own, or (online search) the rule and the chains it scores."""
    if "trial" in config:
        return config["trial"]
    return content_key({"rule": config["rule"], "chains": sorted(TrialConfig(**c).key for c in config["chains"]),
                        "delta": config["delta"], "metric": config["metric"]})


def run_params(trials: tuple[TrialConfig, ...]) -> dict[str, dict]:
    """Each trial's MLflow params: of the fields its kind reads (``TrialConfig.params``), those that vary in
    this sweep, are set away from their default, or say what the run is (``DESCRIBED``, and the values the fit
    resolved); a field left out is at its declared default (a chain's SGLD, SynFlow, multi-image and stop-rule
    switches, off). The runs table then shows ~20 columns, not ~40 of which a third never apply."""
    moving = set(varying(trials, {}))
    out = {}
    for t in trials:
        resolved, changed = KINDS.get(t.kind).resolved(t.typed), t.compact()  # compact: set away from default
        out[t.key] = {k: v for k, v in t.params().items() if k in moving or k in resolved or k in DESCRIBED
                      or k in changed}
    return out


def target_sparsity(t: TrialConfig) -> float:
    """The sparsity a trial's last level aims at: its prescribed grid's last, else (1 - p)^levels pruned."""
    return t.sparsities[t.levels - 1] if t.sparsities else 1 - (1 - t.prune_fraction) ** t.levels


def trial_note(t: TrialConfig, params: dict, label: str) -> str:
    """The run's description (the UI's run page and tooltip): what the chain is in one line, then its label."""
    reads = KINDS.get(t.kind).reads
    p = {**params, **{k: getattr(t, k) for k in ("image", "task", "method", "seed", "levels") if k in reads}}
    on = ", ".join(str(p[k]) for k in ("image", "task") if k in p)
    size = f" at {p['size']} px" if p.get("size") not in (None, "native") else ""
    rewind = (f", rewinding to {t.rewind:.0%} of the dense fit ({t.rewind_budget} budget)" if t.rewind
              else ", rewinding to the initial weights") if "rewind" in params else ""
    fits = f"{p['iters']} iterations a level, " if p.get("iters") else ""
    target = " (IMP on the clean image)" if params.get("imp_target") == "clean" else ""
    return (f"{p.get('method', '')} {t.kind}{' on ' + on if on else ''}{size}{target}: {t.levels} levels to "
            f"{target_sparsity(t):.0%} sparsity{rewind}; {fits}seed {t.seed}.\n\n{label}").lstrip()


def sweep_note(exp: Experiment) -> str:
    """The sweep run's description: the figure, the profile, how many trials over which axes, the metric."""
    axes = ", ".join(varying(exp.trials, {})) or "no axis"
    return (f"{exp.paper}, {exp.name} [{exp.profile}]: {len(exp.trials)} trials over {axes}; compared by "
            f"{exp.metric}.\n\n{exp.description}")


def trial_tags(exp: Experiment, params: dict[str, dict]) -> dict[str, dict[str, str]]:
    """Each grid trial's run tags besides its keys: the full label and the description."""
    return {t.key: {LABEL_TAG: long, NOTE_TAG: trial_note(t, params[t.key], long)}
            for t, long in zip(exp.trials, exp.long_labels or exp.labels)}


def _callback_base():
    from ray.tune import Callback

    return Callback


class LevelLogger(_callback_base()):
    """Driver-side Tune callback: a trial's MLflow run is created when the trial starts (so its duration is
    the trial's), each reported level goes to it once (through the tracking module's outbox, which buffers an
    MLflow outage), and a progress bar counts levels, fractions of levels included (``ProgressBoard``)."""

    TRANSIENT = ("outbox", "bar", "runs", "started", "board", "keys")

    def __init__(self, tracker: Tracker, store_root: str, total_levels: int, n_trials: int, quiet: bool = False,
                 parent_id: str | None = None, retry_s: float = 300.0, early_stopping: bool = False,
                 specs: Mapping[str, dict] | None = None, board: str | None = None, title: str = "",
                 every_s: float = 30.0, params: Mapping[str, dict] | None = None,
                 tags: Mapping[str, dict] | None = None):
        self.tracker, self.store_root, self.parent_id, self.retry_s = tracker, Path(store_root), parent_id, retry_s
        self.early_stopping, self.specs, self.board_name, self.title = early_stopping, specs or {}, board, title
        self.params = params or {}  # each trial's MLflow params, from when the sweep started (plain values)
        self.tags = tags or {}  # each trial's label and description tags
        self.every_s = every_s
        self.total_levels, self.n_trials, self.quiet = total_levels, n_trials, quiet
        self.setup()

    def __getstate__(self) -> dict:  # Tune pickles its callbacks: only the configuration travels
        return {k: v for k, v in self.__dict__.items() if k not in self.TRANSIENT}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.setup()

    def setup(self, **info) -> None:
        self.start, self.last_poll, self.last_draw, self.levels_seen, self.fractions = time.time(), 0.0, 0.0, {}, {}
        self.keys: dict[str, str] = {}  # trial id -> content key (an online trial's key hashes all its chains)
        self.outcome: dict[str, bool] = {}
        self.runs: dict[str, str] = {}
        self.started: dict[str, tuple[str, dict, dict, int] | None] = {}  # until its run is made
        self.board = None
        self.outbox = Outbox(self.tracker, self.store_root, self.quiet, self.retry_s, run_of=self._run_of,
                             workers=log_workers(self.tracker.uri))
        self.bar = Progress(self.total_levels, self.title, "levels", quiet=self.quiet, every_s=self.every_s)

    def on_experiment_end(self, trials, **info) -> None:
        self._progress(trials, force=True)
        self.bar.close()
        self.outbox.drain()

    def _describe(self, config: dict) -> tuple[str, dict, dict]:
        """A trial's run name, params (resolved: the values it ran with) and tags; a proposed rule's own."""
        if "trial" in config:
            key = config["trial"]
            return self.specs[key]["label"], self.params[key], self.tags.get(key, {})
        rule = config["rule"]
        name = "rule " + ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in rule.items())
        note = (f"A proposed stop rule ({name.removeprefix('rule ')}), replayed on {len(config['chains'])} stored "
                f"chains: objective = mean sparsity where it stops, less 1 per dB of {config['metric']} lost beyond "
                f"{config['delta']} dB.")
        return name, rule, {NOTE_TAG: note}

    def _run_of(self, key: str) -> str:
        if key not in self.runs:
            name, params, tags, start_ms = self.started[key]
            self.runs[key] = self.tracker.child(self.parent_id, key, name, params, start_ms, tags)
            self.started[key] = None  # its params are in MLflow now: not kept for the rest of the sweep
        return self.runs[key]

    def _key(self, trial) -> str:
        if trial.trial_id not in self.keys:
            self.keys[trial.trial_id] = trial_key(trial.config)
        return self.keys[trial.trial_id]

    def _note(self, trial) -> str:
        key = self._key(trial)
        if key not in self.started:
            self.started[key] = (*self._describe(trial.config), int(time.time() * 1000))
        return key

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self.outbox.start(self._note(trial))

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        """The level goes to the outbox. The record leaves the result (Tune lets callbacks edit it in place):
        Tune holds every trial's results for the whole sweep, so the driver's memory would grow by a record
        (a few KB) per level reported."""
        rec = json.loads(result.pop("record"))
        self.outbox.level(self._note(trial), rec)
        self.levels_seen[trial.trial_id] = max(self.levels_seen.get(trial.trial_id, 0), rec["level"] + 1)
        self.fractions.pop(trial.trial_id, None)  # the finished level's fraction is no part of the next one
        self._progress(trials)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        """Tune also "completes" a trial it stops at the time budget: only one that reached its end is
        FINISHED here; the driver marks the others KILLED when the sweep returns."""
        key = self._note(trial)
        spec = grid_spec(trial.config, self.specs)
        if trial_outcome(None, trial.last_result or {}, spec, self.early_stopping) == "finished":
            self.outbox.finish(key)
        self.outcome[key] = True
        self._progress(trials, force=True)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        key = self._note(trial)
        self.outbox.finish(key, "FAILED")
        self.outcome[key] = False
        self._progress(trials, force=True)

    def on_step_end(self, iteration, trials, **info) -> None:
        self._progress(trials)

    def _poll(self, trials) -> None:
        """The running trials' fractions of their current level, from the board (at most once a second)."""
        if self.board_name is None or time.time() - self.last_poll < 1.0:
            return
        self.last_poll = time.time()
        import ray

        try:
            self.board = self.board or ray.get_actor(self.board_name)
            now = ray.get(self.board.get.remote(), timeout=2)
        except Exception:  # noqa: BLE001 - progress is cosmetic: a missing or slow board shows whole levels
            return
        by_key = {self._key(t): t.trial_id for t in trials if t.status == "RUNNING"}
        self.fractions = {tid: frac for key, (done, frac) in now.items() if (tid := by_key.get(key))
                          and done == self.levels_seen.get(tid, 0)}

    def _progress(self, trials, force: bool = False) -> None:
        """Redraw at most twice a second unless forced: Tune calls ``on_step_end`` on every loop step, and
        counting running trials is a pass over all of them."""
        if self.quiet or (not force and time.time() - self.last_draw < 0.5):
            return
        self.last_draw = time.time()
        self._poll(trials)
        self._count_restored(trials)
        done, failed = sum(self.outcome.values()), sum(not ok for ok in self.outcome.values())
        running = sum(t.status == "RUNNING" and self._key(t) not in self.outcome for t in trials)
        levels = sum(self.levels_seen.values()) + sum(self.fractions.values())
        # never backwards: a poll may miss a trial between two of its results
        self.bar.update(max(levels, self.bar.n), f"trials {done}/{self.n_trials} done, {running} running, "
                        f"{failed} failed", force)


    def _count_restored(self, trials) -> None:
        """Trials a resumed sweep restored as ended report nothing again: their levels and outcome come from
        their last result, so the bar ends where the summary does (issue 26: it stopped at 5/10 levels)."""
        for t in trials:
            if t.status in ("TERMINATED", "ERROR") and t.trial_id not in self.levels_seen and t.last_result:
                self.levels_seen[t.trial_id] = int(t.last_result.get("level", -1)) + 1
                self.outcome.setdefault(self._key(t), t.status == "TERMINATED")


def _board_class():
    import ray

    @ray.remote(num_cpus=0)
    class ProgressBoard:
        """Where running trials post how far into their current level they are (a fit's iteration over its
        iterations), so the driver's bar moves within a level; nothing depends on it but the bar."""

        def __init__(self) -> None:
            self.now: dict[str, tuple[int, float]] = {}

        def set(self, key: str, levels_done: int, fraction: float) -> None:
            self.now[key] = (levels_done, fraction)

        def get(self) -> dict[str, tuple[int, float]]:
            return dict(self.now)

    return ProgressBoard


def start_board(key: str) -> tuple[str, object]:
    """The named progress board of this driver (trials find it by name; it lives while the returned handle
    does, i.e. while the sweep runs); one per sweep key."""
    name = f"lipsweep-progress-{key}"
    return name, _board_class().options(name=name, get_if_exists=True).remote()


def grid_spec(config: dict, specs: Mapping[str, dict]) -> dict | None:
    """A grid trial's fields and label (Tune's config names only its key); None for a proposed stop rule."""
    return specs[config["trial"]] if "trial" in config else None


def last_level(spec: dict | None) -> int:
    """The level a trial reports last when it runs to the end (a replayed stop rule reports one, level 0); read
    from its fields without re-validating them (a failed trial's files may be gone)."""
    return 0 if spec is None else int(spec["config"].get("levels", LEVELS_DEFAULT))


def trial_outcome(error: object, metrics: dict, spec: dict | None, early_stopping: bool) -> str:
    """finished (its last level, the level its stop rule fired at, or stopped early by ASHA), failed, or
    incomplete (cut before its end: resumable)."""
    if error is not None:
        return "failed"
    level = metrics.get("level")
    if level is None:
        return "incomplete"
    keep_going = spec is not None and spec["config"].get("stop_keep_going")
    fired = metrics.get("stop_fired_at")
    done = level >= last_level(spec) or (fired is not None and not keep_going and level == fired)
    return "finished" if done or early_stopping else "incomplete"


def missing_levels(metrics: dict, spec: dict | None) -> str:
    label = spec.get("long", spec["label"]) if spec is not None else "rule"
    level = metrics.get("level")
    start = 0 if level is None else int(level) + 1
    return f"{label}: levels {start}..{last_level(spec)} missing" + (" (no level reported)" if level is None else "")


def log_summary(exp: Experiment, results, summary: SweepSummary, tracker: Tracker) -> None:
    """The sweep run's summary metrics: trial counts and, per axis value, the sparsest level within delta."""
    counts = {"trials_finished": len(summary.finished), "trials_failed": len(summary.failed),
              "trials_incomplete": len(summary.incomplete)}
    trials, curves = {}, {}
    if exp.search == "grid":
        known = {t.key: t for t in exp.trials}
        for r in results:
            frame = r.metrics_dataframe if r.config else None
            key = trial_key(r.config) if r.config else None
            if key in known and frame is not None and {"level", "sparsity", exp.metric} <= set(frame.columns):
                rows = frame.dropna(subset=["level"]).drop_duplicates("level", keep="last").sort_values("level")
                trials[key] = known[key].as_dict()
                curves[key] = list(zip(rows["sparsity"].astype(float), rows[exp.metric].astype(float)))
    tracker.log_metrics(summary.parent_run_id, {**counts, **axis_summary(trials, curves, exp.metric, exp.delta,
                                                                           exp.mode == "max")})
