"""The documented plugin import path ``lipsweep.tasks``: the registry lives in ``lipsweep.problems.tasks``."""

from lipsweep.problems.tasks import *  # noqa: F401,F403
from lipsweep.problems.tasks import TASKS  # noqa: F401
