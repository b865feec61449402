"""Delayed work for one cloud: boots finishing, snapshots saving.

One timer thread keeps a heap of due times and hands due work to a small
thread pool (copying an image into a node root must not hold up the others).
``shutdown()`` drops what is not due yet, waits for what is running and joins
every thread it started, so a torn-down cloud leaves no threads behind.
"""

import heapq
import itertools
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

LOG = logging.getLogger(__name__)


class Handle:
    __slots__ = ("cancelled",)

    def __init__(self):
        self.cancelled = False

    def cancel(self):
        self.cancelled = True


class Scheduler:
    def __init__(self, name, workers=4):
        self._name = name
        self._heap = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._closed = False
        self._executor = ThreadPoolExecutor(max_workers=workers,
                                            thread_name_prefix=name)
        self._thread = threading.Thread(target=self._run, name=name + "-timer",
                                        daemon=True)
        self._thread.start()

    def call_later(self, delay, func, *args):
        """Run ``func(*args)`` on a worker after ``delay`` seconds."""
        handle = Handle()
        with self._cond:
            if self._closed:
                handle.cancel()
                return handle
            heapq.heappush(self._heap, (time.monotonic() + max(0.0, delay),
                                        next(self._seq), handle, func, args))
            self._cond.notify()
        return handle

    def _run(self):
        while True:
            with self._cond:
                while not self._closed:
                    now = time.monotonic()
                    if self._heap and self._heap[0][0] <= now:
                        break
                    timeout = self._heap[0][0] - now if self._heap else None
                    self._cond.wait(timeout)
                if self._closed:
                    return
                _, _, handle, func, args = heapq.heappop(self._heap)
            if not handle.cancelled:
                try:
                    self._executor.submit(self._call, func, args)
                except RuntimeError:     # executor already shut down
                    return

    def _call(self, func, args):
        try:
            func(*args)
        except Exception:
            LOG.exception("%s: scheduled %s failed", self._name,
                          getattr(func, "__name__", func))

    def shutdown(self):
        """Forget pending work, finish running work, join all threads."""
        with self._cond:
            self._closed = True
            self._heap.clear()
            self._cond.notify_all()
        self._thread.join()
        self._executor.shutdown(wait=True, cancel_futures=True)
