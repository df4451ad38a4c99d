"""``python -m lipsweep.cli``: the ``lipsweep`` command."""

import sys

from lipsweep.cli.main import main

sys.exit(main())
