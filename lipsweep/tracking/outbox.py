"""The driver's MLflow calls, per trial in order and off Tune's event loop, buffered through a server outage:
a sweep never waits on, or loses, a logging call (``tracker`` makes the calls)."""

from __future__ import annotations

import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from lipsweep.tracking.tracker import Tracker

LOG_WORKERS = 8  # threads logging to an MLflow server at once (``log_workers``)


def log_workers(uri: str) -> int:
    """Threads that log at once: several against a server (each level's uploads take ~0.5 s there, one
    thread would cap a sweep at ~2 levels a second), one for a SQLite file (one writer keeps it safe)."""
    return LOG_WORKERS if uri.startswith(("http:", "https:")) else 1


class Outbox:
    """MLflow calls per trial in order, surviving an outage, off the driver's critical path.

    Each trial (named by key) has a lane of calls run in order on a bounded pool of ``workers`` threads, never
    on Tune's event loop (a SQLite write there held up scheduling: 16% of the driver's time in a 20-trial
    sweep); with ``workers`` > 1 different trials' lanes run at once, so no upload waits for another trial's;
    with one, a SQLite file keeps its single writer. A call that fails stays at the
    head of its lane (with every later one) and is retried on the next send or flush; ``drain`` waits up to
    ``retry_s`` at the end of a sweep. ``run_of`` finds or creates a trial's run when its first call runs, so
    creating a run (at the trial's start) is buffered through an outage like any other call."""

    def __init__(self, tracker: Tracker, store_root: Path | None, quiet: bool = False, retry_s: float = 300.0,
                 run_of: Callable[[str], str] = str, workers: int = 1):
        self.tracker, self.store_root, self.quiet, self.retry_s = tracker, store_root, quiet, retry_s
        self.run_of = run_of
        self.lanes: dict[str, deque] = {}
        self.busy: set[str] = set()
        self.lock = threading.Lock()
        self.pool = ThreadPoolExecutor(max(1, workers), thread_name_prefix="mlflow-log")
        self.said = 0.0

    @property
    def pending(self) -> list[tuple]:
        with self.lock:
            return [call for lane in self.lanes.values() for call in lane]

    def start(self, key: str) -> None:
        self._send(("start", key, None))

    def level(self, key: str, rec: Mapping) -> None:
        self._send(("level", key, rec))

    def finish(self, key: str, status: str = "FINISHED") -> None:
        self._send(("finish", key, status))

    def _send(self, call: tuple) -> None:
        with self.lock:
            self.lanes.setdefault(call[1], deque()).append(call)
        self.flush()

    def _call(self, call: tuple) -> None:
        kind, key, arg = call
        run_id = self.run_of(key)
        if kind == "level":
            self.tracker.log_level(run_id, arg, self.store_root)
        elif kind == "finish":
            self.tracker.finish(run_id, arg)

    def _lane(self, key: str) -> bool:
        """Run one trial's calls in order until its lane is empty (True) or a call fails (False)."""
        while True:
            with self.lock:
                lane = self.lanes.get(key)
                if not lane:
                    self.lanes.pop(key, None)
                    self.busy.discard(key)
                    return True
                call = lane[0]
            try:
                self._call(call)
            except Exception as exc:  # noqa: BLE001 - any transport/server error: keep the call, retry later
                self._say(exc)
                with self.lock:
                    self.busy.discard(key)
                return False
            with self.lock:
                lane.popleft()

    def _say(self, exc: Exception) -> None:
        if not self.quiet and time.time() - self.said > 10:
            self.said = time.time()
            print(f"MLflow unavailable ({type(exc).__name__}); {len(self.pending)} call(s) buffered",
                  file=sys.stderr, flush=True)

    def flush(self) -> None:
        """Start every idle lane on the pool (a failed call's lane waits for the next send or flush)."""
        with self.lock:
            idle = [k for k in self.lanes if k not in self.busy]
            self.busy.update(idle)
        for key in idle:
            self.pool.submit(self._lane, key)

    def drain(self, sleep: Callable[[float], None] = time.sleep) -> None:
        deadline = time.time() + self.retry_s
        while time.time() < deadline:
            self.flush()
            with self.lock:
                if not self.lanes:
                    break
            sleep(0.2)
        self.pool.shutdown(wait=True)
        if self.pending:
            raise RuntimeError(f"MLflow stayed unreachable for {self.retry_s:.0f} s; {len(self.pending)} calls "
                               "not logged (the trunk store has every level: rerun the sweep to log them)")
