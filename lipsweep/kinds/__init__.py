"""Trial kinds (the ``KINDS`` registry, ``kinds/base.py``): each declares the wire fields it reads and
parses them into its own typed config. The DIP kinds register here; kinds whose modules need torch are
imported, and registered, when a trial of theirs is first made."""

from lipsweep.kinds.base import KINDS
from lipsweep.kinds.dip import CHAIN, EVALUATION

KINDS.register("chain", CHAIN)
KINDS.register("evaluation", EVALUATION)
KINDS.defer("gan", "lipsweep.kinds.gan.kind:KIND")  # a pretrained generator (paper Section 5)
KINDS.defer("classify", "lipsweep.kinds.classify.kind:CLASSIFY")  # the hourglass as a classifier (Fig. 6)
KINDS.defer("classify_transfer", "lipsweep.kinds.classify.kind:TRANSFER")
