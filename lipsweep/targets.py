"""The documented plugin import path ``lipsweep.targets``: the registry lives in ``lipsweep.problems.targets``."""

from lipsweep.problems.targets import *  # noqa: F401,F403
from lipsweep.problems.targets import TARGETS  # noqa: F401
