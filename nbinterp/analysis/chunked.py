"""Work done a chunk at a time, cancellable from another thread: the shared
loop of the streamed analyses (the logit lens's remaining rows, effects over
a data set)."""

from __future__ import annotations

import threading
from typing import Any, Iterator


class ChunkedWork:
    """Iterate it to compute chunk by chunk (each step yields what `_step()`
    returns), `cancel()` it from any thread to stop after the chunk in
    flight, iterate again to resume. Subclasses keep the work still to do in
    `pending` (anything truthy while work is left) and consume it in `_step()`,
    which returns None when it finds nothing left."""

    pending: Any

    def __init__(self) -> None:
        self._stop = threading.Event()

    @property
    def finished(self) -> bool:
        return not self.pending

    @property
    def cancelled(self) -> bool:
        return self._stop.is_set() and not self.finished

    def cancel(self) -> None:
        """Stop after the chunk in flight (safe from another thread); what is computed stays."""
        self._stop.set()

    def __iter__(self) -> Iterator[Any]:
        self._stop.clear()
        while self.pending and not self._stop.is_set():
            step = self._step()
            if step is None:  # another thread iterating took what was left
                return
            yield step

    def _step(self) -> Any:
        raise NotImplementedError
