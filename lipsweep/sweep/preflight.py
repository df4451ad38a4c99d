"""What is refused before a sweep starts, each in one line and before anything is recorded: a cluster
address nothing answers at, resources no node has (or, on a cluster, none offers within a timeout), and a
store or Tune storage that only one node of a multi-node cluster can see."""

from __future__ import annotations

import os
import socket
import sys
import time
from pathlib import Path

from lipsweep.core.errors import ConfigError
from lipsweep.experiments.spec import Experiment
from lipsweep.kinds.base import KINDS
from lipsweep.sweep.options import SweepOptions, is_local_path

NETWORK_FS = ("nfs", "nfs4", "cifs", "smb3", "smbfs", "lustre", "ceph", "glusterfs", "gpfs", "beegfs", "9p",
              "fuse.s3fs", "fuse.gcsfuse", "fuse.juicefs", "fuse.sshfs", "efs")


def _fs_type(path: str) -> str:
    """The filesystem type of the mount that holds ``path`` (longest mount-point prefix in /proc/mounts)."""
    target, best = str(Path(path).resolve()), ("", "")
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return ""
    for line in mounts:
        parts = line.split()
        if len(parts) >= 3 and (target == parts[1] or target.startswith(parts[1].rstrip("/") + "/")):
            if len(parts[1]) > len(best[0]):
                best = (parts[1], parts[2])
    return best[1]


def is_shared(path: str, declared: tuple[str, ...]) -> bool:
    """Every node can reach it: a cloud URI, a network filesystem, or a path the user declared shared."""
    if not is_local_path(path):
        return True
    resolved = str(Path(path.removeprefix("file://")).resolve())
    if any(resolved == str(Path(d).resolve()) or resolved.startswith(str(Path(d).resolve()) + "/") for d in declared):
        return True
    return _fs_type(resolved) in NETWORK_FS


def planned_size(attached: bool) -> tuple[int, str]:
    """How many nodes the sweep may run on, and how that is known: the nodes alive now or, attached to a
    ``ray up`` cluster, the most its cluster file lets the autoscaler launch (workers come only when trials
    ask for them, after the point where a node-local store must already be refused)."""
    import ray

    from lipsweep.sweep.clusterfile import (
        bootstrap_config_path,
        load_cluster_config,
        planned_nodes,
    )

    alive = sum(bool(n.get("Alive")) for n in ray.nodes())
    path = bootstrap_config_path() if attached else None
    planned = planned_nodes(load_cluster_config(path)) if path else 0
    if planned > alive:
        return planned, f"the cluster can grow to {planned} nodes ({path})"
    return alive, f"the cluster has {alive} nodes"


def check_cluster_paths(paths: dict[str, str] | list[tuple[str, str]], declared: tuple[str, ...],
                        attached: bool = False) -> None:
    """Refuse, before any trial starts, a multi-node sweep whose storage, store or input files (``paths``:
    field -> path, or (field, path) pairs) only one node can see."""
    size, why = planned_size(attached)
    if size < 2:
        return
    for field_name, path in paths.items() if isinstance(paths, dict) else paths:
        if not is_shared(path, declared):
            raise ConfigError(field_name, f"{path!r} is node-local ({_fs_type(path) or 'unknown'} filesystem) but "
                                          f"{why}; allowed: s3:// or gs:// URIs, an NFS "
                                          "(or other network) filesystem, or a path declared with --shared-path")


INPUT_FIELDS = ("image", "inpaint_mask", "multi_images", "source_image", "source_multi_images", "generator", "data")


def input_paths(exp: Experiment) -> list[tuple[str, str]]:
    """(field, path) of the files and folders the trials read from this machine's disk (a shipped name is in
    every node's install): on a multi-node cluster each must be on a path every node sees."""
    out: dict[str, str] = {}
    for trial in exp.trials:
        for name in INPUT_FIELDS:
            value = getattr(trial, name)
            for one in value if isinstance(value, tuple) else (value,):
                if isinstance(one, str) and Path(one).is_absolute() and Path(one).exists():
                    out.setdefault(one, name)
    return [(name, path) for path, name in out.items()]


def check_address(address: str) -> None:
    """A cluster address nothing answers at would make ``ray.init`` wait for minutes; ``ray://`` needs Ray's
    client (``ray[client]``, installed with lipsweep). One line, before anything starts."""
    if address in ("auto", "local"):
        return
    client = address.startswith("ray://")
    if client:
        try:
            import grpc  # noqa: F401 - Ray's client transport
        except ImportError:
            raise ConfigError("address", "ray:// addresses need Ray's client: pip install 'ray[client]'") from None
    host, _, port = address.removeprefix("ray://").rpartition(":")
    host, port = (host, port) if host else (port, "10001" if client else "6379")
    try:
        answer = _first_bytes(host, int(port))
    except (OSError, ValueError) as exc:
        raise ConfigError("address", f"nothing answers at {host}:{port} ({type(exc).__name__}); start the cluster "
                                     "(`ray up cluster.yaml`) or leave --address out for a local Ray") from None
    if answer.startswith(b"HTTP/"):
        server = next((line.split(b":", 1)[1].strip().decode(errors="replace") for line in answer.split(b"\r\n")
                       if line.lower().startswith(b"server:")), "a web server")
        raise ConfigError("address", f"{host}:{port} answers HTTP ({server}), not Ray: that is a web port (Ray's "
                                     "dashboard and job server listen on 8265, MLflow on 5000); pass the head's "
                                     f"GCS address ({host}:6379 by default) or ray://{host}:10001")


def _first_bytes(host: str, port: int) -> bytes:
    """What a server says to an HTTP/1.0 request: Ray's GCS and client ports speak gRPC (HTTP/2) and answer
    with a binary SETTINGS frame; a web port (the dashboard, MLflow) answers ``HTTP/1.x``."""
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.settimeout(2)
        sock.sendall(b"GET / HTTP/1.0\r\nHost: lipsweep-preflight\r\n\r\n")
        try:
            return sock.recv(512)
        except OSError:
            return b""  # silent: not a web server; ray.init says what it is


def check_local_resources(exp: Experiment, gpu: float) -> None:
    """A local Ray has exactly this machine: a trial that asks for more would never start (Tune waits forever).
    GPUs are counted only when asked for: torch costs the driver seconds and ~180 MB it otherwise never needs."""
    cpus = os.cpu_count() or 1
    if exp.resources["cpu"] > cpus:
        raise ConfigError("resources.cpu", f"{exp.resources['cpu']} per trial, but this machine (a local Ray) "
                                           f"has cpu: {cpus}")
    if gpu == 0 and not any(t.device.startswith("cuda") for t in exp.trials):
        return
    import torch

    gpus = torch.cuda.device_count()
    have = f"this machine (a local Ray) has cpu: {cpus}, gpu: {gpus}"
    if gpu > gpus:
        raise ConfigError("resources.gpu", f"{gpu} per trial, but {have}; use --gpus-per-trial 0, or --address "
                                           "of a cluster with GPUs")
    if gpus == 0 and any(t.device.startswith("cuda") for t in exp.trials):
        raise ConfigError("device", f"cuda was requested but {have}; allowed here: auto, cpu")


def _fits_a_node(demand: dict) -> bool:
    import ray

    return any(n["Alive"] and n["Resources"].get("CPU", 0) >= demand["cpu"]
               and n["Resources"].get("GPU", 0) >= demand["gpu"] for n in ray.nodes())


def wait_for_resources(demand: dict, timeout_s: float, quiet: bool = False) -> None:
    """On a cluster, a trial no node can hold would wait forever: ask the autoscaler for one such node, say
    so, and give up after ``timeout_s`` with one line naming what the cluster has."""
    import ray

    if _fits_a_node(demand):
        return
    from ray.autoscaler.sdk import request_resources

    request_resources(bundles=[{"CPU": demand["cpu"], **({"GPU": demand["gpu"]} if demand["gpu"] else {})}])
    if not quiet:
        print(f"lipsweep: no node has cpu: {demand['cpu']}, gpu: {demand['gpu']} yet; asked the autoscaler, "
              f"waiting up to {timeout_s:.0f} s", file=sys.stderr, flush=True)
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if _fits_a_node(demand):
            return
        time.sleep(min(5.0, max(0.1, deadline - time.time())))
    have = ray.cluster_resources()
    raise ConfigError("resources", f"no node of the cluster offers cpu: {demand['cpu']}, gpu: {demand['gpu']} per "
                                   f"trial after {timeout_s:.0f} s (the cluster has cpu: {have.get('CPU', 0):g}, gpu: "
                                   f"{have.get('GPU', 0):g} in all); lower resources or --gpus-per-trial, or add nodes")


def preflight(exp: Experiment, opts: SweepOptions) -> None:
    """What Ray would only find out by waiting: an address nothing answers at, resources no node has."""
    for trial in exp.trials:
        KINDS.get(trial.kind).ready(trial.typed)
    address = opts.address or os.environ.get("RAY_ADDRESS")
    if address:
        check_address(address)
    else:
        from lipsweep.experiments.plan import check_memory

        check_local_resources(exp, exp.resources["gpu"] if opts.gpus_per_trial is None else opts.gpus_per_trial)
        check_memory([t for t in exp.trials if not t.device.startswith("cuda")])
