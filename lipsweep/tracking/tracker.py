"""MLflow, from the driver only: one parent run per sweep, one child run per trial, each found by a tag.

Runs are looked up by content key before any is created (``lipsweep.sweep_key``,
``lipsweep.trial_key``), so a restarted driver, a restored sweep or a second ``run`` continues the
same runs instead of making new ones; a level already in a run's metric history is never logged again.
A single logging process is what keeps a SQLite store safe under many concurrent trials.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.tracking import MlflowClient

from lipsweep.core.paths import IMAGES, LEVEL_FILES, RECORD, SNAPSHOTS, artifact_dir
from lipsweep.core.platforms import label_of
from lipsweep.core.records import numbers_of

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
SWEEP_TAG, TRIAL_TAG, ROLE_TAG = "lipsweep.sweep_key", "lipsweep.trial_key", "lipsweep.role"
# Where a run's levels were computed: the run's one platform, or "mixed: A | B" when its levels came from
# several (PLATFORM_TAG), with their count (PLATFORM_TAG + "s"); the Ray node of its first level (NODE_TAG).
# A level computed elsewhere than the first level (not on A, or on another node) has its own tag
# (PLATFORM_TAG.level_03, NODE_TAG.level_03): a run of 9 levels on one node has 3 tags in all, not 2 per level.
PLATFORM_TAG, NODE_TAG = "lipsweep.platform", "lipsweep.node"
NOTE_TAG = "mlflow.note.content"  # an experiment's or run's description in the UI
# MLflow 3 releases that read this tag open an experiment without it in the GenAI view (traces, no runs);
# 3.17 takes the view from the browser instead (docs/mlflow_ui.md, step 1).
KIND_TAG, KIND = "mlflow.experimentKind", "custom_model_development"
# MLflow's HTTP client would retry a dead server for minutes inside Tune's event loop; fail fast instead
# and let the Outbox buffer the call and retry it later, so trials keep being scheduled meanwhile.
# Ending a run on a server also prints two "View run" lines and fetches the run again: thousands of trials
# would flood the log (and double the requests), so that is off too.
CLIENT_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
              "MLFLOW_HTTP_REQUEST_TIMEOUT": "15", "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}


def fail_fast() -> None:
    """Set MLflow's HTTP client to fail fast (unless the user set these); called where a sweep starts."""
    for key, value in CLIENT_ENV.items():
        os.environ.setdefault(key, value)


def check_reachable(uri: str, must_exist: bool = False) -> None:
    """Before any work starts: a tracking URI that cannot be reached is one line naming it (a server that
    goes away mid-sweep is the Outbox's job). ``must_exist``: a command that only reads (``analyze``) refuses
    a local store that is not there, rather than letting MLflow create an empty one."""
    from lipsweep.core.errors import ConfigError

    if uri.startswith(("sqlite:", "file:", "/")) or "://" not in uri:
        where = Path(uri.removeprefix("sqlite:///").removeprefix("file://"))
        if must_exist and not where.exists():
            raise ConfigError("tracking_uri", f"no MLflow store at {where}: nothing was logged there; allowed: the "
                                              "--tracking-uri the sweep logged to (`lipsweep run` prints it)")
        return  # a local store: MLflow creates it on first use
    fail_fast()
    try:
        MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
    except Exception as exc:  # noqa: BLE001 - any transport or store error means: not usable
        reason = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        raise ConfigError("tracking_uri", f"cannot reach {uri} ({reason}); start the MLflow server, or use "
                                          f"{DEFAULT_TRACKING_URI}") from None


def tracking_uri(uri: str | None) -> str:
    """``--tracking-uri``, else ``MLFLOW_TRACKING_URI``, else ``mlflow.db`` in the working directory
    (what ``mlflow ui`` opens by default), made absolute so trials and the UI agree on it."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = "sqlite:///" + str(Path(uri.removeprefix("sqlite:///")).resolve())
    return uri


# Metrics are logged once, at step = IMP level: the chart view's X axis = metric ``sparsity`` draws each
# against sparsity (the paper's x axis). A copy at step = sparsity in per-mille (``vs_sparsity_permille/``, until
# issue 28) drew a point per run there (no step in common with ``sparsity``) and a "Step" axis otherwise.
LEVEL_IMAGE = "restored"  # logged with log_image(step=level): the UI's image comparison across runs


def system_tags(source: str) -> dict[str, str]:
    """What MLflow's own fluent API would tag a run with (user, source, git commit), plus lipsweep's version
    and the algorithm versions of every module, so each number names the code that computed it."""
    import getpass

    from lipsweep.core.versions import git_commit, package_version, versions

    commit, dirty = git_commit()
    tags = {"mlflow.user": getpass.getuser(), "mlflow.source.name": source, "mlflow.source.type": "LOCAL",
            "lipsweep.version": package_version(), "lipsweep.code": json.dumps(versions(), sort_keys=True)}
    if commit:
        tags.update({"mlflow.source.git.commit": commit, "lipsweep.git.dirty": str(dirty).lower()})
    return tags


def flatten(prefix: str, value: object, out: dict) -> dict:
    if isinstance(value, Mapping):
        for k, v in value.items():
            flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    else:
        out[prefix] = value
    return out


class Tracker:
    """Find-or-create runs by tag and log level records; cheap to pickle (the client is rebuilt)."""

    def __init__(self, uri: str, experiment: str, description: str = "", tags: Mapping[str, str] | None = None):
        self.uri, self.experiment, self.description = uri, experiment, description
        self.tags = dict(tags or {})  # system tags set on every run this tracker creates
        self._client: MlflowClient | None = None
        self._experiment_id: str | None = None
        self._logged: dict[str, set[int]] = {}
        self._tried: set[tuple[str, int]] = set()  # levels whose logging failed part-way (retried)
        self._made: set[str] = set()  # parents this tracker created: their children need no lookup
        self._tried_children: set[tuple[str, str]] = set()
        self._platforms: dict[str, list[str]] = {}  # run -> platform labels of its levels, in order seen
        self._nodes: dict[str, str] = {}  # run -> the node of the first level seen

    def __getstate__(self) -> dict:
        return {"uri": self.uri, "experiment": self.experiment, "description": self.description, "tags": self.tags}

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state)

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = MlflowClient(tracking_uri=self.uri)
        return self._client

    @property
    def experiment_id(self) -> str:
        """Found or created by name, tagged as a training experiment (one made before the tag gets it too)."""
        if self._experiment_id is None:
            found = self.client.get_experiment_by_name(self.experiment)
            self._experiment_id = found.experiment_id if found else self.client.create_experiment(
                self.experiment, tags={KIND_TAG: KIND})
            if found and found.tags.get(KIND_TAG) != KIND:
                self.client.set_experiment_tag(self._experiment_id, KIND_TAG, KIND)
            if self.description:  # the experiment page's description in the UI
                self.client.set_experiment_tag(self._experiment_id, NOTE_TAG, self.description)
        return self._experiment_id

    def _find(self, tag: str, key: str, parent_id: str | None = None) -> str | None:
        where = f"tags.`{tag}` = '{key}'" + (f" and tags.`mlflow.parentRunId` = '{parent_id}'" if parent_id else "")
        runs = self.client.search_runs([self.experiment_id], filter_string=where, max_results=2)
        return runs[0].info.run_id if runs else None

    def parent(self, sweep_key: str, name: str, params: Mapping[str, object], note: str = "") -> str:
        """The sweep's run, found by key or created; ``note``: its description in the UI."""
        run_id = self._find(SWEEP_TAG, sweep_key)
        own = {NOTE_TAG: note} if note else {}
        if run_id is None:
            run_id = self.client.create_run(self.experiment_id, run_name=name, tags={
                **self.tags, SWEEP_TAG: sweep_key, ROLE_TAG: "sweep", **own}).info.run_id
            self._params(run_id, params)
            self._made.add(run_id)
        else:
            self._reopen(run_id, name, own)
        return run_id

    def child(self, parent_id: str, trial_key: str, name: str, params: Mapping[str, object],
              start_ms: int | None = None, tags: Mapping[str, str] | None = None) -> str:
        """The sweep's run of this trial: found by key under this parent (each sweep shows all its trials,
        a trial also run by another sweep gets its levels again from the store), else created when the trial
        starts (``start_ms``), so the run's duration is the trial's. Under a parent this tracker just created
        there is nothing to find, and a new run has no levels: two requests per trial saved (issue 16).
        ``tags``: its label and description, set again on a run found (a run logged by an older lipsweep)."""
        first_try = parent_id in self._made and (parent_id, trial_key) not in self._tried_children
        self._tried_children.add((parent_id, trial_key))  # a retry looks first: its create may have landed
        run_id = None if first_try else self._find(TRIAL_TAG, trial_key, parent_id)
        if run_id is None:
            run_id = self.client.create_run(self.experiment_id, run_name=name, start_time=start_ms, tags={
                **self.tags, **(tags or {}), TRIAL_TAG: trial_key, ROLE_TAG: "trial",
                "mlflow.parentRunId": parent_id}).info.run_id
            self._params(run_id, params)
            self._logged[run_id] = set()
        else:
            self._reopen(run_id, name, tags or {})
        return run_id

    def _reopen(self, run_id: str, name: str, tags: Mapping[str, str]) -> None:
        """A run found again: running, under this lipsweep's name and description (its params stay: MLflow
        never changes a logged param)."""
        self.client.update_run(run_id, status="RUNNING", name=name)
        if tags:
            self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])

    def children(self, parent_id: str) -> dict[str, str]:
        """Every trial run under this parent, by content key, in pages of 1,000 (a sweep cut short marks its
        unfinished trials' runs KILLED: one search per trial took 5 s for 950 trials on SQLite)."""
        out, token = {}, None
        while True:
            page = self.client.search_runs([self.experiment_id], f"tags.`mlflow.parentRunId` = '{parent_id}'",
                                           max_results=1000, page_token=token)
            out.update({r.data.tags[TRIAL_TAG]: r.info.run_id for r in page if TRIAL_TAG in r.data.tags})
            token = page.token
            if not token:
                return out

    def _params(self, run_id: str, params: Mapping[str, object]) -> None:
        flat = flatten("", dict(params), {})
        items = [Param(k, json.dumps(v) if isinstance(v, (list, tuple, dict)) else str(v)) for k, v in flat.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[i:i + 100])

    def logged_levels(self, run_id: str) -> set[int]:
        if run_id not in self._logged:
            self._logged[run_id] = {m.step for m in self.client.get_metric_history(run_id, "sparsity")}
        return self._logged[run_id]

    def log_level(self, run_id: str, rec: Mapping, store_root: Path | None) -> bool:
        """Artifacts, the node tag, then the metrics at step = level; False if the level was logged before.

        Metrics go last and mark the level done, so a call that fails half-way (server outage) can simply
        be repeated: artifacts overwrite themselves, metrics are written once."""
        level = int(rec["level"])
        run_tags = self._platform_run_tags(run_id, rec)
        if level in self.logged_levels(run_id):
            if rec.get("node_id"):  # the node a later level is compared with
                self._nodes.setdefault(run_id, rec["node_id"])
            for tag in run_tags:  # logged before, but this driver had not yet seen its platform
                self.client.set_tag(run_id, tag.key, tag.value)
            return False
        where = Path(store_root) / rec["where"] if store_root is not None and rec.get("where") else None
        if where is not None and where.is_dir():
            for path in [where / name for name in LEVEL_FILES] + sorted(where.glob(SNAPSHOTS)):
                if path.is_file():
                    self.client.log_artifact(run_id, str(path), artifact_dir(level))
            self._log_image(run_id, where / IMAGES[LEVEL_IMAGE], level)
        else:
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / RECORD
                path.write_text(json.dumps(dict(rec), indent=1, default=float))
                self.client.log_artifact(run_id, str(path), artifact_dir(level))
        tags = [*self._node_tags(run_id, rec), *self._level_platform(run_id, rec), *run_tags]
        now, numbers = int(time.time() * 1000), numbers_of(rec)
        metrics = [Metric(k, v, now, level) for k, v in numbers.items()]
        for i in range(0, len(metrics), 200):  # the tags ride with the first batch: one request fewer
            self.client.log_batch(run_id, metrics=metrics[i:i + 200], tags=tags if i == 0 else [])
        self._logged[run_id].add(level)
        return True

    def _node_tags(self, run_id: str, rec: Mapping) -> list[RunTag]:
        """The Ray node of the run's first level, once, as the run's; a level computed on another node, its own."""
        node = rec.get("node_id")
        if not node:
            return []
        if run_id not in self._nodes:
            self._nodes[run_id] = node
            return [RunTag(NODE_TAG, node)]
        return [] if node == self._nodes[run_id] else [RunTag(f"{NODE_TAG}.{artifact_dir(int(rec['level']))}", node)]

    def _level_platform(self, run_id: str, rec: Mapping) -> list[RunTag]:
        """A level's own platform tag, only when it was computed elsewhere than the run's first level."""
        if not rec.get("platform"):
            return []
        label = label_of(rec["platform"])
        seen = self._platforms.get(run_id) or [label]
        return [] if label == seen[0] else [RunTag(f"{PLATFORM_TAG}.{artifact_dir(int(rec['level']))}", label)]

    def _platform_run_tags(self, run_id: str, rec: Mapping) -> list[RunTag]:
        """The run's platform tags when this level adds a platform to those its levels were computed on: its
        one platform, or ``mixed: A | B`` (a chain continued elsewhere, or a store filled by several nodes)."""
        if not rec.get("platform"):
            return []
        label, seen = label_of(rec["platform"]), self._platforms.setdefault(run_id, [])
        if label in seen:
            return []
        seen.append(label)
        value = seen[0] if len(seen) == 1 else "mixed: " + " | ".join(seen)
        return [RunTag(PLATFORM_TAG, value), RunTag(f"{PLATFORM_TAG}s", str(len(seen)))]

    def _log_image(self, run_id: str, path: Path, level: int) -> None:
        """The level's reconstruction as an MLflow image at step = level (side by side across runs in the UI);
        a level retried after a part-way failure is not logged twice."""
        if not path.is_file():
            return
        if (run_id, level) in self._tried:
            prefix = f"{LEVEL_IMAGE}+step+{level}+"
            if any(Path(a.path).name.startswith(prefix) for a in self.client.list_artifacts(run_id, "images")):
                return
        self._tried.add((run_id, level))
        from PIL import Image

        with Image.open(path) as img:
            self.client.log_image(run_id, img.convert("RGB"), key=LEVEL_IMAGE, step=level, synchronous=True)

    def log_metrics(self, run_id: str, values: Mapping[str, float]) -> None:
        """Summary metrics (the sweep run's best level within delta per axis value), step 0."""
        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, 0) for k, v in values.items()]
        for i in range(0, len(items), 200):
            self.client.log_batch(run_id, metrics=items[i:i + 200])

    def finish(self, run_id: str, status: str = "FINISHED") -> None:
        """End a run as FINISHED, FAILED or KILLED (cut by the time budget or an interrupt: resumable)."""
        self.client.set_terminated(run_id, RunStatus.to_string(RunStatus.from_string(status)))

    def log_artifacts(self, run_id: str, directory: Path, artifact_path: str | None = None) -> None:
        self.client.log_artifacts(run_id, str(directory), artifact_path)
