"""What ``lipsweep --help`` and ``lipsweep list`` need, without torch: the registries' built-in names and each
experiment's header.

Importing the registries (``tasks.TASKS``, ``priors.PRIORS``, ...) loads numpy, PIL and the config modules (not
torch: their torch code loads when used), several times what ``--help`` takes; the parser only needs their
names. These tuples mirror them (``tests/test_fast_cli.py`` checks that they equal the registries, so they
cannot drift); a name a plugin registers is still checked by the configs.
"""

from __future__ import annotations

from pathlib import Path

from lipsweep.core.errors import ConfigError
from lipsweep.core.paths import search_spaces

TASKS = ("denoise", "inpaint", "sr4", "sr8", "fit", "cs", "inpaint_centre")  # tasks.TASKS
PRIORS = ("deep_decoder", "dip", "pggan")  # priors.PRIORS, with generators' "pggan"
METHODS = ("imp", "random", "random_profile", "snip", "synflow", "synflow_layerwise", "magnitude", "skip_cut",
           "synflow_keep_skips")  # pruning.METHODS
TARGETS = ("image", "noisy", "permuted", "noise")  # targets.TARGETS
DEVICES = ("auto", "cpu", "cuda")  # config.DEVICES
IMP_TARGETS = ("observation", "clean")  # config.IMP_TARGETS
DETECTORS = ("none", "wmv", "emv")  # early_stop.DETECTORS, with "none"
HEADER_KEYS = ("name", "paper", "description")



def header(file: Path) -> dict[str, str]:
    """An experiment's name, paper figure and description, read without building its trials."""
    import yaml  # here, not at the top: ``--help`` reads no YAML

    try:
        spec = yaml.load(file.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError as exc:
        raise ConfigError(str(file), f"not valid YAML ({exc})") from None
    if not isinstance(spec, dict):
        raise ConfigError(str(file), f"must be a mapping, got {type(spec).__name__}")
    for key in HEADER_KEYS:
        if not isinstance(spec.get(key), str) or not spec[key]:
            raise ConfigError(f"{file}: {key}", "must be a non-empty string")
    return {key: spec[key] for key in HEADER_KEYS}


def experiment_headers(root: Path | None = None) -> list[dict[str, str]]:
    """Every shipped experiment's header, sorted by name (what ``lipsweep list`` prints)."""
    return [header(path) for path in sorted((root or search_spaces()).glob("*.yaml"), key=lambda p: p.stem)]
