"""One vocabulary for every public call.

The same thing has the same name everywhere: `prompt`, `target`, `foil`,
`position`, `layer`, `head`; everything after a call's first two arguments is
keyword-only. Spellings of an earlier release (a positional `layer`,
`expected=` for `target=`, ...) keep working for one release with a
`DeprecationWarning` that says what to write instead.
"""

from __future__ import annotations

import functools
import inspect
import warnings
from typing import Any, Callable, TypeVar

from nbinterp.errors import NbinterpError

F = TypeVar("F", bound=Callable[..., Any])

# The bundled model's name, as `Model.name` and the views show it.
BUNDLED_MODEL_NAME = "nbinterp-tiny"


def public_call(*, positional: tuple[str, ...] = (), renamed: dict[str, str] | None = None) -> Callable[[F], F]:
    """Decorate a public call whose signature is `(first, second, *, ...)`.

    positional: the keyword names that earlier releases took positionally after
                the first two arguments, in their old order.
    renamed:    {old keyword: new keyword}.
    Either spelling still works for one release and warns, naming the new one.
    """
    renamed = dict(renamed or {})

    def decorate(function: F) -> F:
        name = function.__name__
        parameters = inspect.signature(function).parameters
        for new in (*positional, *renamed.values()):
            if new not in parameters:
                raise TypeError(f"{name}: {new!r} is not a parameter")  # a mistake in this package

        @functools.wraps(function)
        def call(first: Any, second: Any = inspect.Parameter.empty, *extra: Any, **kwargs: Any) -> Any:
            if extra:
                if len(extra) > len(positional):
                    raise NbinterpError(
                        f"{name}() takes 2 positional arguments; pass the rest by name: "
                        + ", ".join(f"{p}=..." for p in positional or [k for k in parameters][2:])
                    )
                names = positional[: len(extra)]
                _warn(f"{name}(): pass {', '.join(names)} by name ({', '.join(f'{n}=...' for n in names)}); "
                      "positional use goes in the next release")
                for key, value in zip(names, extra):
                    if key in kwargs:
                        raise NbinterpError(f"{name}() got {key!r} both by position and by name")
                    kwargs[key] = value
            for old, new in renamed.items():
                if old in kwargs:
                    if new in kwargs:
                        raise NbinterpError(f"{name}() got both {old}= and {new}=: write {new}= only")
                    _warn(f"{name}(): {old}= is now {new}= (the same name in every call); {old}= goes in the next release")
                    kwargs[new] = kwargs.pop(old)
            if second is inspect.Parameter.empty:
                return function(first, **kwargs)
            return function(first, second, **kwargs)

        return call  # type: ignore[return-value]

    return decorate


def _warn(message: str) -> None:
    # stacklevel 3: the user's line (call -> _warn), so Jupyter shows it for a cell's call
    warnings.warn(message, DeprecationWarning, stacklevel=3)


def renamed_function(module: str, old: str, function: Callable[..., Any]) -> Callable[[str], Any]:
    """A module's `__getattr__` that still serves a function under its old name
    for one release, with a DeprecationWarning (e.g. an analysis that was named
    like the view `ni.<old>`)."""

    def __getattr__(name: str) -> Any:
        if name == old:
            warnings.warn(f"{module}.{old} is now {function.__name__} (ni.{old} is the view); the old name goes in "
                          "the next release", DeprecationWarning, stacklevel=2)
            return function
        raise AttributeError(f"module {module!r} has no attribute {name!r}")

    return __getattr__
