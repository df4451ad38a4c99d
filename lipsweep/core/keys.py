"""Content keys: what every stored result, trial and sweep is named by (one owner, below storage, so that
configs and priors name their results without importing the store)."""

from __future__ import annotations

import hashlib
import json

KEY_LENGTH = 16
# Enters every key payload (dense, chain, evaluation, trial, sweep). Bumped when what a key names changes:
# 1 keyed images by path and seeded observations by (task, seed); 2 keys images by content and seeds each
# observation by (image content, task, seed). Entries of an older schema are never read (their keys differ).
SCHEMA = 2


def content_key(payload: object) -> str:
    """sha256 of canonical JSON (sorted keys, no whitespace): stable across runs, machines and Python versions."""
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:KEY_LENGTH]
