"""The outbox that carries a sweep's MLflow calls: in order per trial, several trials at once against a server,
every call exactly once through failures. The tracker here records calls (the real MLflow paths are the
sweep and cluster tests': SQLite, a real server, a server stopped for 20 s)."""

from __future__ import annotations

import threading
import time

import pytest

from lipsweep.tracking.outbox import Outbox, log_workers


class Recorder:
    """A tracker that records what it is asked, sleeps like an upload, and fails the first ``fail`` calls."""

    def __init__(self, fail: int = 0, seconds: float = 0.02):
        self.calls, self.fail, self.seconds, self.now, self.most = [], fail, seconds, 0, 0
        self.lock = threading.Lock()

    def log_level(self, run_id: str, rec: dict, store_root) -> None:
        with self.lock:
            if self.fail > 0:
                self.fail -= 1
                raise ConnectionError("server down")
            self.now += 1
            self.most = max(self.most, self.now)
        time.sleep(self.seconds)
        with self.lock:
            self.now -= 1
            self.calls.append((run_id, rec["level"]))

    def finish(self, run_id: str, status: str) -> None:
        with self.lock:
            self.calls.append((run_id, status))


@pytest.mark.parametrize("workers", [1, 4])
def test_calls_run_once_in_order_per_trial_through_failures(workers):
    rec = Recorder(fail=3)
    box = Outbox(rec, None, quiet=True, retry_s=30, run_of=lambda key: f"run-{key}", workers=workers)
    for level in range(4):
        for key in "abc":
            box.level(key, {"level": level})
    for key in "abc":
        box.finish(key)
    box.drain(sleep=lambda s: time.sleep(0.05))
    assert len(rec.calls) == 15 and not box.pending
    for key in "abc":
        assert [c[1] for c in rec.calls if c[0] == f"run-{key}"] == [0, 1, 2, 3, "FINISHED"]
    assert rec.most == (1 if workers == 1 else 3)  # a pool runs the three trials' uploads at once


def test_a_server_gets_a_pool_and_a_sqlite_file_one_writer():
    assert log_workers("http://127.0.0.1:5000") > 1 and log_workers("sqlite:////tmp/mlflow.db") == 1


def test_an_outage_longer_than_the_retry_window_is_reported_with_nothing_lost_from_the_lane():
    rec = Recorder(fail=10**6)
    box = Outbox(rec, None, quiet=True, retry_s=0.3, run_of=str, workers=2)
    box.level("a", {"level": 0})
    with pytest.raises(RuntimeError, match="1 calls not logged"):
        box.drain(sleep=lambda s: time.sleep(0.05))
    assert rec.calls == []
