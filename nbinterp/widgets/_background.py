"""Long measurements a view streams in: a batch iterator run in a thread, one
batch per hold of the model's lock (so the user's own cells and other views
run in between), published at most every `every_s` seconds, cancellable
(the iterator stops after the batch in flight) and resumable.

Used by the patching view (a sweep) and the attribution view (the exact
measurements)."""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Iterator


class BackgroundJob:
    """`start(steps, finished)` runs `steps()` to exhaustion; `publish(state,
    updates)` gets "running" / "done" / "cancelled" / "error" and the items
    yielded since the last publish; `fail(exc)` shows an exception in the view."""

    def __init__(self, name: str, lock: Any, publish: Callable[[str, list], None],
                 fail: Callable[[Exception], None], every_s: float) -> None:
        self.name = name
        self.lock = lock
        self.publish = publish
        self.fail = fail
        self.every_s = every_s
        self.thread: threading.Thread | None = None
        self.started = time.perf_counter()

    @property
    def running(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def start(self, steps: Callable[[], Iterator[Any]], finished: Callable[[], bool], background: bool,
              elapsed_s: float = 0.0) -> None:
        """Run in a thread (background) or here; `elapsed_s` continues a resumed job's clock."""
        self.started = time.perf_counter() - elapsed_s
        if background:
            self.thread = threading.Thread(target=self._work, args=(steps, finished), name=self.name, daemon=True)
            self.thread.start()
        else:
            self._work(steps, finished)

    def wait(self, timeout: float | None = None) -> None:
        """Block until the job stops (no-op from the job's own thread)."""
        thread = self.thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def _work(self, steps: Callable[[], Iterator[Any]], finished: Callable[[], bool]) -> None:
        last, pending = 0.0, []
        try:
            iterator = steps()
            while True:
                with self.lock:  # one batch at a time; other views and cells run in between
                    item = next(iterator, None)
                if item is None:
                    break
                pending.append(item)
                if time.perf_counter() - last > self.every_s:
                    self.publish("running", pending)
                    pending, last = [], time.perf_counter()
            self.publish("done" if finished() else "cancelled", pending)
        except Exception as exc:  # noqa: BLE001 - shown in the view; the kernel is not ours to crash
            self.publish("error", pending)
            self.fail(exc)
