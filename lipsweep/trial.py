"""The documented plugin import path ``lipsweep.trial.KINDS``: trial kinds live in ``lipsweep.kinds``."""

from lipsweep.kinds.base import KINDS, TrialConfig, TrialKind  # noqa: F401
