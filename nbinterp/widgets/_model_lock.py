"""One lock per model. nnsight cannot run two traces of one model at once
(from two threads they fail with "parent cannot be on a different thread"),
and a patching sweep computes in a background thread while the user keeps
working in the kernel. So every forward on a guarded model takes its lock:
the views' own traces explicitly, and the engine's (`model.run`, lazy
`Run` captures) through a wrapper around the instance's `_execute`.

TODO(engine): a lock inside `Model._execute` would make `guard_model`
unnecessary; a user's own `model.nn.trace(...)` during a sweep is still
unguarded."""

from __future__ import annotations

import functools
import threading
import weakref
from typing import Any

_LOCKS: "weakref.WeakKeyDictionary[Any, threading.RLock]" = weakref.WeakKeyDictionary()
_GUARD = threading.Lock()


def model_lock(model: Any) -> threading.RLock:
    with _GUARD:
        lock = _LOCKS.get(model)
        if lock is None:
            lock = _LOCKS[model] = threading.RLock()
        return lock


def guard_model(model: Any) -> threading.RLock:
    """From now on every engine run of `model` holds its lock (idempotent)."""
    lock = model_lock(model)
    with _GUARD:
        if not getattr(model, "_nbinterp_guarded", False):
            execute = model._execute

            @functools.wraps(execute)
            def locked_execute(*args: Any, **kwargs: Any) -> Any:
                with lock:
                    return execute(*args, **kwargs)

            model._execute = locked_execute
            model._nbinterp_guarded = True
    return lock
