"""Experiments: ``search_spaces/NAME.yaml`` -> validated spec -> the list of trials of one profile.

The shipped experiments install with the package (``lipsweep.search_spaces``, the top-level
``search_spaces/`` folder of the source tree); a user's own YAML path works too.
A file holds ``name``, ``description``, ``paper`` (the figure or table), ``kind`` (a trial kind, or
``stop_replay``), optional ``plugins`` (modules or .py files that register priors, tasks, mask methods
or trial kinds; imported by the driver and by every trial),
``metric`` / ``mode``, ``base`` (trial fields), ``axes`` (trial field -> list of values; the special axes
``cases`` and ``cases_<anything>`` each take a list of field mappings, crossed with the other axes), ``resources`` (cpu, gpu; fractions allowed), optional
``scheduler`` (ASHA over IMP levels), ``search`` (grid), ``time_budget_s``, and ``profiles``: ``paper``,
``local`` and ``smoke``, each overriding ``base`` / ``axes`` / ``resources`` / ``scheduler`` /
``time_budget_s``. Everything is checked before any work starts; an error names the file, the key path
and the allowed values.
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from lipsweep.core.errors import ConfigError, allowed
from lipsweep.core.paths import search_spaces
from lipsweep.core.registry import load_plugin
from lipsweep.experiments.labels import is_cases, trial_labels
from lipsweep.kinds.base import FIELD_NAMES, KINDS, TrialConfig
from lipsweep.problems.images import expand_images, is_pattern

PROFILES = ("paper", "local", "smoke")
TOP_KEYS = ("name", "description", "paper", "kind", "plugins", "metric", "mode", "base", "axes", "resources",
            "scheduler", "search", "time_budget_s", "num_samples", "delta", "profiles")
PROFILE_KEYS = ("description", "metric", "base", "axes", "resources", "scheduler", "time_budget_s", "num_samples",
                "delta")
REPLAY_KINDS = {"stop_replay": "chain"}  # experiment kind -> the kind of the trials it replays
RESOURCE_KEYS = ("cpu", "gpu")
SCHEDULER_KEYS = ("type", "grace_period", "reduction_factor")
METRICS = ("psnr_final", "psnr_ema", "psnr_peak", "psnr_ema_peak", "ypsnr_ema_peak", "ssim_final", "ssim_ema", "imp_loss", "ypsnr_final", "ypsnr_peak",
           "objective", "mse", "mse_oracle", "psnr", "ssim", "psnr_posterior", "ssim_posterior", "accuracy")
MODES = ("max", "min")
SEARCHES = ("grid", "optuna")
SCHEDULERS = ("asha",)


class SpecError(ConfigError):
    """A search-space error: file, key path, message."""

    def __init__(self, file: Path | str, path: str, message: str):
        self.file, self.path = str(file), path
        super().__init__(f"{self.file}: {path}" if path else self.file, message)

    def __reduce__(self):
        return (type(self), (self.file, self.path, self.message))


@dataclass(frozen=True)
class Experiment:
    """One experiment in one profile, expanded: the trials and how to run them."""

    name: str
    description: str
    paper: str
    profile: str
    kind: str
    metric: str
    mode: str
    trials: tuple[TrialConfig, ...]
    labels: tuple[str, ...]  # short and unique: MLflow run names, ``show``'s rows
    resources: dict = field(default_factory=dict)
    scheduler: dict | None = None
    search: str = "grid"
    time_budget_s: float | None = None
    num_samples: int = 1
    delta: float = 0.5
    file: str = ""
    plugins: tuple[str, ...] = ()
    long_labels: tuple[str, ...] = ()  # ``k=v,...`` of the same axes: a run's tag and description, messages



def experiment_names(root: Path | None = None) -> list[str]:
    return sorted(p.stem for p in (root or search_spaces()).glob("*.yaml"))


def find(name_or_path: str, root: Path | None = None) -> Path:
    root = root or search_spaces()
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path
    candidate = root / f"{name_or_path}.yaml"
    if candidate.is_file():
        return candidate
    raise ConfigError("experiment", f"unknown experiment {name_or_path!r}; allowed: {allowed(experiment_names(root))} "
                                    f"or a path to a .yaml file")


def _mapping(file: Path, path: str, value: object, keys: tuple[str, ...]) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise SpecError(file, path, f"must be a mapping, got {type(value).__name__}")
    unknown = [k for k in value if k not in keys]
    if unknown:
        raise SpecError(file, f"{path}.{unknown[0]}" if path else str(unknown[0]),
                        f"unknown key; allowed: {allowed(keys)}")
    return value


def _trial(file: Path, path: str, values: dict) -> TrialConfig:
    try:
        return TrialConfig(**values)
    except ConfigError as exc:
        raise SpecError(file, f"{path}.{exc.field}" if path else exc.field, exc.message) from None
    except TypeError as exc:
        raise SpecError(file, path, f"{exc}; allowed fields: {allowed(FIELD_NAMES)}") from None


def _image_sets(file: Path, path: str, key: str, values: list) -> list:
    """An ``image`` value that names a set (``Set12/*``, a folder) becomes one value per image; a case with
    such an image becomes one case per image."""
    out = []
    for i, value in enumerate(values):
        image = value.get("image") if is_cases(key) and isinstance(value, dict) else value if key == "image" else None
        if not is_pattern(image):
            out.append(value)
            continue
        try:
            names = expand_images(image)
        except ConfigError as exc:
            raise SpecError(file, f"{path}.{key}[{i}]" + (".image" if is_cases(key) else ""), exc.message) from None
        out += [{**value, "image": n} for n in names] if is_cases(key) else names
    return out


def _check_axes(file: Path, path: str, axes: dict, base: dict) -> dict[str, list]:
    cases = tuple(k for k in axes if is_cases(k)) if isinstance(axes, dict) else ()
    out = {}
    for key, values in _mapping(file, path, axes, (*FIELD_NAMES, *cases)).items():
        if not isinstance(values, list) or not values:
            raise SpecError(file, f"{path}.{key}", "must be a non-empty list of values")
        values = _image_sets(file, path, key, values)
        for i, value in enumerate(values):
            if is_cases(key):
                case = _mapping(file, f"{path}.{key}[{i}]", value, FIELD_NAMES)
                _trial(file, f"{path}.{key}[{i}]", {**base, **case})
            else:
                _trial(file, f"{path}.{key}[{i}]", {**base, key: value})
        out[key] = values
    return out


def _check_resources(file: Path, path: str, res: dict) -> dict:
    _mapping(file, path, res, RESOURCE_KEYS)
    for key in RESOURCE_KEYS:
        value = res.get(key, 1 if key == "cpu" else 0)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise SpecError(file, f"{path}.{key}", f"must be a number >= 0 (fractions allowed), got {value!r}")
        if key == "cpu" and value == 0:
            raise SpecError(file, f"{path}.{key}", "must be > 0")
    return {"cpu": res.get("cpu", 1), "gpu": res.get("gpu", 0)}


def _check_scheduler(file: Path, path: str, sched: object) -> dict | None:
    if sched is None:
        return None
    sched = _mapping(file, path, sched, SCHEDULER_KEYS)
    if sched.get("type") not in SCHEDULERS:
        raise SpecError(file, f"{path}.type", f"unknown scheduler {sched.get('type')!r}; allowed: {allowed(SCHEDULERS)}")
    for key in ("grace_period", "reduction_factor"):
        value = sched.get(key, 1 if key == "grace_period" else 2)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise SpecError(file, f"{path}.{key}", f"must be an integer >= 1, got {value!r}")
    return {"type": sched["type"], "grace_period": sched.get("grace_period", 1),
            "reduction_factor": sched.get("reduction_factor", 2)}


def _choice(file: Path, path: str, value: object, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise SpecError(file, path, f"unknown value {value!r}; allowed: {allowed(choices)}")
    return value  # type: ignore[return-value]


def expand(base: dict, axes: dict[str, list]) -> list[dict]:
    """Cartesian product of the axes over the base (``cases*`` entries are merged whole)."""
    keys = list(axes)
    out = []
    for combo in itertools.product(*(axes[k] for k in keys)):
        values = dict(base)
        for key, value in zip(keys, combo):
            values.update(value if is_cases(key) else {key: value})
        out.append(values)
    return out


def _read(file: Path) -> dict:
    """The file's top level: known keys, required keys present, strings non-empty, name = file stem."""
    try:
        raw = yaml.load(file.read_text(), Loader=DecimalLoader)
    except yaml.YAMLError as exc:
        raise SpecError(file, "", f"not valid YAML ({' '.join(str(exc).split())})") from None
    spec = _mapping(file, "", raw, TOP_KEYS)
    for key in ("name", "description", "paper", "kind", "metric", "base", "axes", "profiles"):
        if key not in spec:
            raise SpecError(file, key, "missing required key")
    for key in ("name", "description", "paper"):
        if not isinstance(spec[key], str) or not spec[key]:
            raise SpecError(file, key, "must be a non-empty string")
    if spec["name"] != file.stem:
        raise SpecError(file, "name", f"must match the file name {file.stem!r}, got {spec['name']!r}")
    return spec


def _plugins(file: Path, spec: dict) -> tuple[str, ...]:
    """Import the experiment's plugins (modules or .py files, relative to the YAML's folder) so that the
    entries they register are known before the trials are checked; returns what workers must import."""
    refs = spec.get("plugins") or []
    if not isinstance(refs, list) or not all(isinstance(r, str) and r for r in refs):
        raise SpecError(file, "plugins", "must be a list of module names or .py file paths")
    out = []
    for ref in refs:
        path = file.parent / ref if ref.endswith(".py") and not Path(ref).is_absolute() else Path(ref)
        resolved = str(path.resolve()) if ref.endswith(".py") else ref
        try:
            load_plugin(resolved)
        except ConfigError as exc:
            raise SpecError(file, "plugins", exc.message) from None
        out.append(resolved)
    return tuple(out)


def _profile(file: Path, spec: dict, profile: str) -> dict:
    profiles = _mapping(file, "profiles", spec["profiles"], PROFILES)
    missing = [p for p in PROFILES if p not in profiles]
    if missing:
        raise SpecError(file, f"profiles.{missing[0]}", f"missing; every experiment defines {allowed(PROFILES)}")
    _choice(file, "profile", profile, PROFILES)
    return _mapping(file, f"profiles.{profile}", profiles[profile], PROFILE_KEYS)


def _header(file: Path, spec: dict, prof: dict) -> dict:
    """kind, metric (a profile may set its own), mode, search; a replay's trials are the chains it replays."""
    kind = _choice(file, "kind", spec["kind"], (*KINDS.names(), *REPLAY_KINDS))
    search = _choice(file, "search", spec.get("search", "grid"), SEARCHES)
    if (kind in REPLAY_KINDS) != (search == "optuna"):
        raise SpecError(file, "search", "kind 'stop_replay' (the online stop-rule search) goes with search 'optuna', "
                                        "every other kind with 'grid'")
    return {"kind": kind, "metric": _choice(file, "metric", prof.get("metric", spec["metric"]), METRICS),
            "mode": _choice(file, "mode", spec.get("mode", "max"), MODES), "search": search,
            "trial_kind": REPLAY_KINDS.get(kind, kind)}


def _base(file: Path, spec: dict, prof: dict, profile: str, trial_kind: str, overrides: dict | None) -> dict:
    """The base trial fields: file, then profile, then ``--set``; each stage checked on its own."""
    base = _mapping(file, "base", spec["base"], FIELD_NAMES)
    _trial(file, "base", {**base, "kind": trial_kind})
    merged = {**base, **_mapping(file, f"profiles.{profile}.base", prof.get("base"), FIELD_NAMES), "kind": trial_kind}
    _trial(file, f"profiles.{profile}.base", merged)
    if overrides:
        _mapping(file, "--set", overrides, FIELD_NAMES)
        merged.update(overrides)
        _trial(file, "--set", merged)
    return merged


def _number(file: Path, key: str, value: object, *, integer: bool, minimum: float, what: str) -> None:
    bad = isinstance(value, bool) or not isinstance(value, int if integer else (int, float))
    if bad or not math.isfinite(value) or value < minimum or (not integer and value <= 0):
        raise SpecError(file, key, f"must be {what}, got {value!r}")


def _settings(file: Path, spec: dict, prof: dict, profile: str) -> dict:
    """How the trials run: resources, scheduler, time budget, samples (online search), delta (stop rule)."""
    def pick(key: str, default: object) -> object:
        return prof.get(key, spec.get(key, default))

    budget, samples, delta = pick("time_budget_s", None), pick("num_samples", 1), pick("delta", 0.5)
    if budget is not None:
        _number(file, "time_budget_s", budget, integer=False, minimum=0, what="a number of seconds > 0")
    _number(file, "num_samples", samples, integer=True, minimum=1, what="an integer >= 1")
    _number(file, "delta", delta, integer=False, minimum=0, what="a PSNR loss in dB > 0")
    return {"resources": _check_resources(file, f"profiles.{profile}.resources",
                                          {**(spec.get("resources") or {}), **(prof.get("resources") or {})}),
            "scheduler": _check_scheduler(file, f"profiles.{profile}.scheduler", pick("scheduler", None)),
            "time_budget_s": budget, "num_samples": samples, "delta": float(delta)}


def _trials(file: Path, base: dict, axes: dict[str, list]) -> tuple[TrialConfig, ...]:
    """The product of the axes; two axis combinations that describe the same trial give one trial."""
    trials, seen = [], set()
    for i, values in enumerate(expand(base, axes)):
        trial = _trial(file, f"trials[{i}]", values)
        if trial.key not in seen:
            seen.add(trial.key)
            trials.append(trial)
    return tuple(trials)


def _check_metric(file: Path, head: dict, trials: tuple[TrialConfig, ...]) -> None:
    """The metric the report compares by must be one the experiment's trials report (``TrialKind.metrics``;
    an online stop-rule search reports its ``objective``)."""
    if head["kind"] in REPLAY_KINDS:
        reported = {"objective"}
    else:
        reported = {m for kind in {t.kind for t in trials} for m in KINDS.get(kind).metrics}
    if head["metric"] not in reported:
        kinds = ", ".join(sorted({t.kind for t in trials})) or head["trial_kind"]
        raise SpecError(file, "metric", f"{head['metric']!r} is not reported by kind {kinds}; allowed: "
                                        f"{allowed(m for m in METRICS if m in reported)}")


def _check_threads(file: Path, trials: tuple[TrialConfig, ...], cpu: float) -> None:
    """A trial may not use more threads than the CPUs it reserves: Ray packs trials by ``resources.cpu``, so
    the extra threads would share cores with other trials (measured 5x slower at 64 threads on 2 cores)."""
    limit = max(1, math.ceil(cpu))
    over = max((t.threads for t in trials), default=1)
    if over > limit:
        raise SpecError(file, "threads", f"{over} threads per trial, but each trial reserves resources.cpu: {cpu:g}; "
                                         f"allowed: 1..{limit} (raise resources.cpu to give a trial more cores)")


def metric_of(name_or_path: str, profile: str = "local") -> str:
    """The quality metric an experiment's profile compares by (its report's main table), without its trials."""
    file = find(name_or_path)
    spec = _read(file)
    return _header(file, spec, _profile(file, spec, profile))["metric"]


def load(name_or_path: str, profile: str = "local", overrides: dict | None = None,
         root: Path | None = None) -> Experiment:
    """Read, validate and expand one experiment in one profile; ``overrides`` (``--set``) patch the base."""
    file = find(name_or_path, root)
    spec = _read(file)
    plugins = _plugins(file, spec)
    prof = _profile(file, spec, profile)
    head = _header(file, spec, prof)
    settings = _settings(file, spec, prof, profile)
    base = _base(file, spec, prof, profile, head["trial_kind"], overrides)
    base.setdefault("threads", max(1, int(settings["resources"]["cpu"])))  # what a trial's CPUs give it
    axes = _check_axes(file, "axes", spec["axes"] or {}, base)
    axes.update(_check_axes(file, f"profiles.{profile}.axes", prof.get("axes") or {}, base))
    for key in (overrides or {}):
        axes.pop(key, None)  # --set pins an axis to one value
    trials = _trials(file, base, axes)
    labels, long_labels = trial_labels(trials, axes)
    _check_metric(file, head, trials)
    _check_threads(file, trials, settings["resources"]["cpu"])
    return Experiment(name=spec["name"], description=prof.get("description", spec["description"]),
                      paper=spec["paper"], profile=profile, kind=head["kind"], metric=head["metric"],
                      mode=head["mode"], trials=trials, labels=labels, search=head["search"], file=str(file),
                      plugins=plugins, long_labels=long_labels, **settings)


class DecimalLoader(yaml.SafeLoader):
    """YAML 1.1 reads ``010`` as octal 8 and ``1:20`` as 80, and ``1e-3`` as a string: here an integer is plain
    decimal (anything else stays a string, which the field's check then names) and ``1e-3`` is a number. A key
    given twice in one mapping is refused (YAML keeps the last silently)."""

    def construct_mapping(self, node, deep=False):
        seen: dict[object, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is given twice (lines {seen[key] + 1} and {key_node.start_mark.line + 1})",
                    key_node.start_mark)
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep)


DecimalLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:int"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
DecimalLoader.add_implicit_resolver("tag:yaml.org,2002:int", re.compile(r"^[-+]?(0|[1-9][0-9]*)$"),
                                    list("-+0123456789"))
DecimalLoader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(r"^[-+]?([0-9]+\.?[0-9]*|\.[0-9]+)[eE][-+]?[0-9]+$"),
                                    list("-+.0123456789"))  # 1e-3, as YAML 1.2 reads it


def parse_set(items: list[str]) -> dict:
    """``--set key=value`` pairs, values parsed as YAML scalars/lists (``levels=4``, ``multi_images=[a, b]``);
    a key given twice is an error (which one should win?)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError("--set", f"expected key=value, got {item!r}; keys: {allowed(FIELD_NAMES)}")
        if key.strip() in out:
            raise ConfigError("--set", f"{key.strip()!r} is given twice; give each key once")
        out[key.strip()] = yaml.load(value, Loader=DecimalLoader)
    return out
