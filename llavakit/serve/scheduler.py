"""A bounded queue in front of N worker threads, one per slot (a forked Pipeline each).

Why threads: OpenVINO releases the GIL while it infers, so N slots decode interleaved
and N clients get more tokens/s in total than one (see benchmarks/serve.md). Why a
bound: past ``slots + max_queue`` requests the server answers 429 at once, so a burst
degrades into quick refusals instead of everyone's latency growing without limit.
Cancelling a job (client gone, timeout, stop button) takes it out of the queue, or
tells its worker to stop after the current token, which frees the slot.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from llavakit.serve.errors import QueueFullError

log = logging.getLogger("llavakit.serve")


class Job:
    """One unit of work: ``work(slot, job)`` runs in a worker thread; it should poll ``job.stopped()``."""

    def __init__(self, work: Callable[[Any, Job], None], timeout_s: float | None = None) -> None:
        self.work = work
        self.deadline = time.monotonic() + timeout_s if timeout_s else float("inf")
        self.cancelled = threading.Event()
        self.done = threading.Event()

    def cancel(self) -> None:
        self.cancelled.set()

    def expired(self) -> bool:
        return time.monotonic() > self.deadline

    def stopped(self) -> bool:
        """Whether the worker should stop now (cancelled or past the deadline)."""
        return self.cancelled.is_set() or self.expired()


class Scheduler:
    """Runs submitted jobs on ``slots``, at most ``len(slots)`` at once, ``max_queue`` waiting."""

    def __init__(self, slots: list[Any], max_queue: int) -> None:
        self.slots = slots
        self.max_queue = max_queue
        self._waiting: deque[Job] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self.busy = 0
        self.counts = {"completed": 0, "cancelled": 0, "rejected": 0}
        self._threads = [threading.Thread(target=self._worker, args=(slot,), daemon=True, name=f"llavakit-slot-{i}")
                         for i, slot in enumerate(slots)]
        for thread in self._threads:
            thread.start()

    def submit(self, job: Job) -> Job:
        """Queue ``job``; raise QueueFullError when every slot is busy and the queue is full."""
        with self._cond:
            idle = len(self.slots) - self.busy - len(self._waiting)
            if idle <= 0 and len(self._waiting) >= self.max_queue:
                self.counts["rejected"] += 1
                raise QueueFullError(f"the server is busy: {len(self.slots)} slot(s) generating and "
                                     f"{len(self._waiting)} request(s) queued (the limit, --max-queue); retry shortly")
            self._waiting.append(job)
            self._cond.notify()
        return job

    def cancel(self, job: Job) -> None:
        """Stop ``job``: drop it from the queue, or make its worker stop after the current token."""
        job.cancel()
        with self._cond:
            if job in self._waiting:
                self._waiting.remove(job)
                self.counts["cancelled"] += 1
                job.done.set()

    def stats(self) -> dict[str, int]:
        with self._cond:
            return {"slots": len(self.slots), "busy": self.busy, "queued": len(self._waiting),
                    "max_queue": self.max_queue, **self.counts}

    def close(self) -> None:
        with self._cond:
            self._closed = True
            for job in self._waiting:
                job.cancel()
            self._waiting.clear()
            self._cond.notify_all()

    def _worker(self, slot: Any) -> None:
        while True:
            with self._cond:
                while not self._waiting and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                job = self._waiting.popleft()
                self.busy += 1
            try:
                job.work(slot, job)
            except BaseException:  # work() reports its own errors; this is a last guard for the thread
                log.exception("job failed outside its own error handling")
            finally:
                with self._cond:
                    self.busy -= 1
                    self.counts["cancelled" if job.cancelled.is_set() else "completed"] += 1
                job.done.set()
