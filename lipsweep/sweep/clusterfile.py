"""How large a Ray cluster may grow, read from its cluster file (the YAML of ``ray up``).

A driver on a fresh cluster sees one node (the head): the workers come only when trials ask for them. The
shared-storage check must not wait for them, so it asks the cluster file what is planned. ``ray up`` copies
the file to ``~/ray_bootstrap_config.yaml`` on the head, which is where a driver there finds it.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from lipsweep.core.errors import ConfigError

BOOTSTRAP_CONFIG = "ray_bootstrap_config.yaml"


def load_cluster_config(path: str | Path) -> dict:
    """The cluster file as a dict; anything else (a list, an empty file) is one clear error."""
    try:
        config = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError("cluster_config", f"cannot read {path}: {exc}") from None
    if not isinstance(config, dict):
        raise ConfigError("cluster_config", f"{path} is not a Ray cluster file (a YAML mapping); "
                                            f"got {type(config).__name__}")
    return config


def planned_nodes(config: dict) -> int:
    """The most nodes the cluster can have: the head plus every worker the autoscaler may launch.

    Per node type, ``max_workers`` (the head's type counts only the head); the top-level ``max_workers``
    caps the sum, as Ray's autoscaler does. The ``local`` provider (machines listed by IP) launches at most
    its ``worker_ips``; a file without node types (Ray's legacy format) has only the top-level cap.
    """
    provider = config.get("provider") or {}
    if provider.get("type") == "local" and "worker_ips" in provider:
        return 1 + len(provider["worker_ips"] or [])
    cap = config.get("max_workers")
    types = config.get("available_node_types")
    if not types:
        return 1 + int(cap or 0)
    head = config.get("head_node_type")
    workers = sum(int(t.get("max_workers", cap or 0)) for name, t in types.items() if name != head)
    return 1 + (workers if cap is None else min(workers, int(cap)))


def bootstrap_config_path(home: Path | None = None) -> Path | None:
    """``~/ray_bootstrap_config.yaml`` if this machine is the head of a ``ray up`` cluster, else None."""
    path = (home or Path.home()) / BOOTSTRAP_CONFIG
    return path if path.is_file() else None
