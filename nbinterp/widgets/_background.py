"""Long measurements a view streams in: a batch iterator run in a thread, one
batch per hold of the model's lock (so the user's own cells and other views
run in between), published at most every `every_s` seconds, cancellable
(the iterator stops after the batch in flight) and resumable.

Used by the patching view (a sweep) and the attribution view (the exact
measurements); `Worker` is the thread under it and under the feature view's
contexts pass.

No thread outlives its view or the interpreter. A daemon thread alone is
not enough: at exit Python tears the interpreter down under it, and a thread
still inside a torch op then aborts the process ("terminate called without
an active exception", exit code 134). So every worker is told to stop when
its view closes and at interpreter exit, and is joined: it finishes the
batch in flight and returns.
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
import weakref
from typing import Any, Callable, Iterator

log = logging.getLogger("nbinterp.widgets")

EXIT_JOIN_S = 120.0  # the longest a batch in flight may hold up interpreter exit

_workers: "weakref.WeakSet[Worker]" = weakref.WeakSet()


class Worker(threading.Thread):
    """A daemon thread running `target()` that `stop()` asks to finish (by
    calling `on_stop`, which the target must heed between batches) and joins;
    every live worker is stopped and joined at interpreter exit."""

    def __init__(self, target: Callable[[], None], name: str, on_stop: Callable[[], None]) -> None:
        super().__init__(target=target, name=name, daemon=True)
        self.on_stop = on_stop

    def start(self) -> None:
        _workers.add(self)
        super().start()

    def stop(self, timeout: float | None = EXIT_JOIN_S) -> bool:
        """Ask the thread to stop and wait for it; True once it has ended."""
        self.on_stop()
        if self is not threading.current_thread() and self.is_alive():
            self.join(timeout)
        return not self.is_alive()


def stop_all_workers(timeout: float = EXIT_JOIN_S) -> None:
    """Stop every running worker and wait for them (all asked first, so
    their batches in flight finish side by side)."""
    workers = [w for w in list(_workers) if w.is_alive()]
    for worker in workers:
        worker.on_stop()
    deadline = time.monotonic() + timeout
    for worker in workers:
        worker.stop(max(0.0, deadline - time.monotonic()))
        if worker.is_alive():
            log.warning("nbinterp: %s did not stop within %.0f s of interpreter exit", worker.name, timeout)


# Registered at import, i.e. after torch's own exit handlers: atexit runs
# them last-in first-out, so the workers stop while torch is still whole.
atexit.register(stop_all_workers)


def stop_with(widget: Any, stop: Callable[[], Any]) -> None:
    """Call `stop()` when `widget` is closed (ipywidgets' close() sets its
    `comm` to None)."""
    def closed(change: dict[str, Any]) -> None:
        if change["new"] is None:
            stop()

    widget.observe(closed, "comm")


class BackgroundJob:
    """`start(steps, finished)` runs `steps()` to exhaustion; `publish(state,
    updates)` gets "running" / "done" / "cancelled" / "error" and the items
    yielded since the last publish; `fail(exc)` shows an exception in the view.

    The job stops for good when its view closes: `owner`, or the widget whose
    bound method `fail` is. A KeyboardInterrupt (a kernel interrupt) while the
    job runs in the foreground publishes what was computed, as "cancelled",
    before it propagates; resuming continues from there."""

    def __init__(self, name: str, lock: Any, publish: Callable[[str, list], None],
                 fail: Callable[[Exception], None], every_s: float, owner: Any = None) -> None:
        self.name = name
        self.lock = lock
        self.publish = publish
        self.fail = fail
        self.every_s = every_s
        self.thread: threading.Thread | None = None
        self.started = time.perf_counter()
        self.closed = threading.Event()
        owner = owner if owner is not None else getattr(fail, "__self__", None)
        if owner is not None and hasattr(owner, "observe") and "comm" in getattr(owner, "trait_names", lambda: [])():
            stop_with(owner, self.stop)

    @property
    def running(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def start(self, steps: Callable[[], Iterator[Any]], finished: Callable[[], bool], background: bool,
              elapsed_s: float = 0.0) -> None:
        """Run in a thread (background) or here; `elapsed_s` continues a resumed job's clock."""
        if self.closed.is_set():
            return
        self.started = time.perf_counter() - elapsed_s
        if background:
            self.thread = Worker(lambda: self._work(steps, finished), self.name, self.closed.set)
            self.thread.start()
        else:
            self._work(steps, finished)

    def wait(self, timeout: float | None = None) -> None:
        """Block until the job stops (no-op from the job's own thread)."""
        thread = self.thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def stop(self, timeout: float | None = EXIT_JOIN_S) -> None:
        """Stop after the batch in flight and wait for the thread; the job
        does not start again (its view is gone)."""
        self.closed.set()
        thread = self.thread
        if isinstance(thread, Worker):
            thread.stop(timeout)

    def _work(self, steps: Callable[[], Iterator[Any]], finished: Callable[[], bool]) -> None:
        last, pending = 0.0, []
        try:
            iterator = steps()
            while not self.closed.is_set():
                with self.lock:  # one batch at a time; other views and cells run in between
                    item = next(iterator, None)
                if item is None:
                    break
                pending.append(item)
                if time.perf_counter() - last > self.every_s:
                    self.publish("running", pending)
                    pending, last = [], time.perf_counter()
            self.publish("done" if finished() else "cancelled", pending)
        except KeyboardInterrupt:
            # Only the main thread gets one: a foreground job the user
            # interrupted. Show what was computed, then let it propagate.
            self.publish("cancelled", pending)
            raise
        except Exception as exc:  # noqa: BLE001 - shown in the view; the kernel is not ours to crash
            self.publish("error", pending)
            self.fail(exc)
