"""The tracking writer: one thread that makes MLflow calls in order, retried while the store is down."""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any

log = logging.getLogger("rlsweep.tracking")


class TrackingUnavailable(RuntimeError):
    """The MLflow store stayed unreachable for longer than `tracking.outage_s`."""


class Writer:
    """One thread that makes the callback's MLflow calls, in the order they were submitted.

    Tune runs the next step of a trial only after every callback has returned, so MLflow calls made
    in the hooks would stall the trials (a run status change alone waits ~1 s for MLflow's own async
    queue to stop). Here the hooks only queue work. A call that fails is retried with backoff (the
    calls after it wait: order matters) while training goes on; only a store that stays unreachable
    for `outage_s` is an error, raised again in the driver at the next hook.
    """

    def __init__(self, outage_s: float = 300.0) -> None:
        self.queue: queue.Queue[Any] = queue.Queue()
        self.outage_s = outage_s
        self.error: BaseException | None = None
        self.busy_s = 0.0  # time spent in MLflow calls
        self.cpu_s = 0.0  # CPU time of those calls
        self.waited_s = 0.0  # time the driver spent waiting in barrier()
        self.failing_since: float | None = None  # while the store is unreachable
        self._thread: threading.Thread | None = None

    def submit(self, fn: Any, *args: Any) -> None:
        """Queues `fn(*args)` for the writer thread (started on first use); raises the writer's
        error first, if it has given up.
        """
        self.check()
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="rlsweep-mlflow", daemon=True)
            self._thread.start()
        self.queue.put((fn, args))

    def barrier(self, timeout: float | None = None) -> bool:
        """Wait until everything submitted so far is written (at most `timeout` seconds); whether it was."""
        done = True
        if self._thread is not None:
            t0 = time.perf_counter()
            with self.queue.all_tasks_done:
                while self.queue.unfinished_tasks and self.error is None:
                    left = None if timeout is None else timeout - (time.perf_counter() - t0)
                    if left is not None and left <= 0:
                        done = False
                        break
                    self.queue.all_tasks_done.wait(1.0 if left is None else min(left, 1.0))
            self.waited_s += time.perf_counter() - t0
        self.check()
        return done

    def check(self) -> None:
        """Raises the error the writer gave up on, if any: `TrackingUnavailable` after an outage."""
        if self.error is not None:
            err = self.error
            if isinstance(err, TrackingUnavailable):
                raise err
            raise RuntimeError(f"MLflow tracking failed: {type(err).__name__}: {err}") from err

    def _loop(self) -> None:
        while True:
            fn, args = self.queue.get()
            try:
                if self.error is None:  # after giving up, drop the rest: the driver ends the run
                    self._call(fn, args)
            finally:
                self.queue.task_done()

    def _call(self, fn: Any, args: tuple) -> None:
        delay = 0.5
        while True:
            t0, c0 = time.perf_counter(), time.thread_time()
            try:
                fn(*args)
                if self.failing_since is not None:
                    log.warning("MLflow store reachable again after %.0f s; the buffered metrics are written",
                                time.monotonic() - self.failing_since)
                    self.failing_since = None
                return
            except Exception as e:  # noqa: BLE001 - the store's errors are many; all are retried
                now = time.monotonic()
                if self.failing_since is None:
                    self.failing_since = now
                    first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
                    log.warning("MLflow store unreachable (%s); training goes on, retrying for up to %.0f s",
                                first, self.outage_s)
                if now - self.failing_since >= self.outage_s:
                    self.error = TrackingUnavailable(
                        f"the MLflow store was unreachable for {now - self.failing_since:.0f} s "
                        f"(tracking.outage_s = {self.outage_s:g}): {type(e).__name__}: {e}")
                    self.error.__cause__ = e
                    return
            finally:
                self.busy_s += time.perf_counter() - t0
                self.cpu_s += time.thread_time() - c0
            time.sleep(delay)
            delay = min(2 * delay, 15.0)

