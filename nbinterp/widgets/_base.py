"""The base of every nbinterp widget: request/response messages with ids,
validation of everything the browser sends, errors shown inside the widget
(never a kernel traceback), and a static PNG for renderers without JS.

Wire format of the messages (mirrored by js/lib/rpc.ts):
    JS -> Python  {"kind": "request", "id": str, "method": str, "params": {...}}
                  {"kind": "cancel", "id": str}
    Python -> JS  {"kind": "response", "id": str, "ok": true, "result": ...} + buffers
                  {"kind": "response", "id": str, "ok": false, "error": str}

A view's traits and requests are declared once (_contract.py says how); the
params of a declared request are checked against it before its handler runs.

Not anywidget 0.11's experimental `invoke`/`@command`: its replies carry no
error (a failing command raises in the kernel and the browser waits out its
3 s default timeout), an abort never reaches Python (no cancel), and its
{"kind": "anywidget-command"} messages would replace this wire format.
"""

from __future__ import annotations

import io
import logging
import warnings
from collections import deque
from dataclasses import asdict
from typing import Any, Callable

import anywidget
import traitlets

from nbinterp.errors import NbinterpError

from ._contract import BOOL, INT, ContractError, Obj, Opt, Request, Schema, is_declared_view, synced_traits
from ._contract import request as declare_request
from ._picture import defer_picture, picture_png

log = logging.getLogger("nbinterp.widgets")

RpcResult = tuple[Any, list[bytes]]
MAX_ID_LENGTH = 64


class FrontendError(ContractError):
    """The browser sent something malformed or out of range."""


def as_declared(value: Any) -> Any:
    """For `_frontend_fields`: a trait whose declaration (a choice, a typed
    object) is the whole check; nothing about it depends on the instance."""
    return value


def in_range(value: int, what: str, low: int, high: int) -> int:
    """`value` (an integer: its declaration checked that) if it lies in
    [low, high), the range this instance allows (the prompt's tokens, the
    model's layers); else a FrontendError that says the range."""
    if not low <= value < high:
        raise FrontendError(f"{what} {value} is out of range {low}..{high - 1}")
    return int(value)


def all_or_none(value: dict[str, Any], what: str, fields: tuple[str, ...]) -> dict[str, Any]:
    """An object its declaration checked (every field optional), holding all
    of `fields` or none of them ({} for "none")."""
    if value and set(value) != set(fields):
        raise FrontendError(f"{what} needs all of the fields {list(fields)} or none, got {sorted(value)}")
    return value


def rpc(name: str, params: dict[str, Schema | Opt] | None = None,
        result: dict[str, Schema | Opt] | Obj | None = None) -> Callable[[Callable[..., RpcResult]], Callable[..., RpcResult]]:
    """Marks a method as the handler of request `name`; it gets the params
    dict and returns (JSON-able result, buffers). With `params` and `result`
    declared (_contract.py), params are checked before the handler runs and
    the request is part of the generated TypeScript contract."""
    if (params is None) != (result is None):
        raise TypeError(f"rpc({name!r}): declare both params and result, or neither")

    def mark(method: Callable[..., RpcResult]) -> Callable[..., RpcResult]:
        method._rpc_name = name  # type: ignore[attr-defined]
        if params is not None and result is not None:
            method._rpc_contract = declare_request(name, params, result)  # type: ignore[attr-defined]
        return method

    return mark


class DictAccessDeprecated:
    """For a view's result dataclass that was a dict (`panel.result["logit_diff"]`)
    one release ago: the old subscripts keep working, with a DeprecationWarning
    that names the attribute to write instead."""

    def _as_dict(self, instead: str) -> dict[str, Any]:
        warnings.warn(f"view.result and view.baseline are {type(self).__name__} dataclasses now: write "
                      f"{instead} (dict access goes in the next release)", DeprecationWarning, stacklevel=3)
        return asdict(self)  # type: ignore[call-overload]

    def __getitem__(self, key: str) -> Any:
        return self._as_dict(f".{key} instead of [{key!r}]")[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self._as_dict(f".{key} instead of .get({key!r})").get(key, default)

    def __contains__(self, key: str) -> bool:
        return key in self._as_dict(f"hasattr(result, {key!r}) instead of {key!r} in result")

    def keys(self) -> Any:
        return self._as_dict("dataclasses.fields(result) instead of result.keys()").keys()

    def items(self) -> Any:
        return self._as_dict("dataclasses.asdict(result).items() instead of result.items()").items()


class InterpWidget(anywidget.AnyWidget):
    """Shared plumbing; subclasses declare traits, `_frontend_fields`, @rpc
    handlers and `to_figure`."""

    error = traitlets.Unicode("").tag(sync=True)

    def __init__(self, **kwargs: Any) -> None:
        self._in_frontend_update = False
        super().__init__(**kwargs)
        self._cancelled: deque[str] = deque(maxlen=256)
        self._rpc_handlers: dict[str, Callable[[dict[str, Any]], RpcResult]] = {}
        self._rpc_contracts: dict[str, Request] = {}
        for klass in reversed(type(self).__mro__):
            for member in vars(klass).values():
                if callable(member) and hasattr(member, "_rpc_name"):
                    self._rpc_handlers[member._rpc_name] = member.__get__(self)
                    self._rpc_contracts.pop(member._rpc_name, None)
                    if getattr(member, "_rpc_contract", None) is not None:
                        self._rpc_contracts[member._rpc_name] = member._rpc_contract
        self.on_msg(self._on_frontend_msg)

    # --------------------------------------------------------- trait changes
    def _frontend_fields(self) -> dict[str, Callable[[Any], Any]]:
        """Traits the browser may set, each with what this instance adds to
        the trait's declaration (a range that depends on the prompt or the
        model), returning the clean value or raising FrontendError. The
        declaration is checked first, so these trust the value's type.
        Anything not listed is refused."""
        return {"error": lambda v: "" if v == "" else _refuse("error can only be cleared from the browser")}

    def set_state(self, sync_data: dict[str, Any]) -> None:
        fields = self._frontend_fields()
        declared = _declared_traits(type(self))
        accepted: dict[str, Any] = {}
        problems: list[str] = []
        refused: list[str] = []
        for name, value in sync_data.items():
            check = fields.get(name)
            try:
                if check is None:
                    raise FrontendError(f"{name} cannot be set from the browser")
                if name in declared:  # one layer: the declaration says what the value may be
                    declared[name].check(value, name)
                accepted[name] = check(value)
            except ContractError as exc:
                problems.append(str(exc))
                refused.append(name)
        if accepted:
            self._in_frontend_update = True
            try:
                super().set_state(accepted)
            except Exception as exc:  # an observer failed: show it, keep the kernel clean
                self._show_exception(exc)
            finally:
                self._in_frontend_update = False
        if problems:
            self.error = "The view sent a value that was refused: " + "; ".join(problems)
            known = [name for name in refused if name in self.keys]
            if known:
                self.send_state(known)  # put the browser back on Python's values

    @property
    def changed_by_frontend(self) -> bool:
        """True inside observers run for a change the browser made (the
        browser then fetches what it needs itself)."""
        return self._in_frontend_update

    # --------------------------------------------------------------- messages
    def _on_frontend_msg(self, _widget: Any, content: Any, buffers: list[Any]) -> None:
        request_id = content.get("id") if isinstance(content, dict) else None
        if not (isinstance(request_id, str) and 0 < len(request_id) <= MAX_ID_LENGTH):
            request_id = None
        try:
            if not isinstance(content, dict):
                raise FrontendError(f"a message must be an object, got {type(content).__name__}")
            kind = content.get("kind")
            if kind == "cancel":
                if request_id is not None:
                    self._cancelled.append(request_id)
                return
            if kind != "request":
                raise FrontendError(f"unknown message kind {kind!r}")
            if request_id is None:
                raise FrontendError("a request needs a string id of at most 64 characters")
            method = content.get("method")
            handler = self._rpc_handlers.get(method) if isinstance(method, str) else None
            if handler is None:
                raise FrontendError(f"unknown request {method!r}; this view answers {sorted(self._rpc_handlers)}")
            params = content.get("params", {})
            if not isinstance(params, dict):
                raise FrontendError(f"params of {method} must be an object")
            if request_id in self._cancelled:
                return  # the browser gave up on it before we got to it
            if method in self._rpc_contracts:
                self._rpc_contracts[method].check_params(params)
            result, out_buffers = handler(params)
            self.send({"kind": "response", "id": request_id, "ok": True, "result": result}, out_buffers)
        except (ContractError, NbinterpError) as exc:
            self._reply_error(request_id, str(exc))
        except Exception as exc:
            log.exception("nbinterp widget request failed")
            self._reply_error(request_id, f"{type(exc).__name__}: {exc}")

    def _reply_error(self, request_id: str | None, message: str) -> None:
        if request_id is None:
            self.error = f"The view sent a message that was refused: {message}"
        else:
            self.send({"kind": "response", "id": request_id, "ok": False, "error": message})

    def _show_exception(self, exc: Exception) -> None:
        if not isinstance(exc, (FrontendError, NbinterpError)):
            log.exception("nbinterp widget update failed", exc_info=exc)
        self.error = str(exc) if isinstance(exc, (FrontendError, NbinterpError)) else f"{type(exc).__name__}: {exc}"

    # ---------------------------------------------------------- static output
    def to_figure(self) -> Any:
        raise NotImplementedError

    def static_png(self) -> bytes:
        """The picture shown where the live view can't be (an HTML export,
        GitHub); a view may override this with a cheaper draw."""
        return figure_png(self.to_figure())

    def live_bundle(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """The display bundle of the live view alone (no picture)."""
        bundle = super()._repr_mimebundle_()
        data, metadata = bundle if isinstance(bundle, tuple) else (bundle, {})
        return dict(data or {}), dict(metadata or {})

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        bundle = super()._repr_mimebundle_(**kwargs)
        # anywidget returns (data, metadata); ipywidgets returns data alone.
        data = bundle[0] if isinstance(bundle, tuple) else bundle
        # Where the widget can't render (nbconvert, GitHub) a picture of the
        # same view shows instead of a blank box. In a kernel it follows the
        # live view (_picture.py), so drawing it never delays the first paint.
        if isinstance(data, dict) and not defer_picture(self):
            try:
                data["image/png"] = picture_png(self)
            except Exception:
                log.exception("nbinterp: no static picture for this view")
        return bundle


def _refuse(message: str) -> Any:
    raise FrontendError(message)


_declared_cache: dict[type, dict[str, Schema]] = {}


def _declared_traits(cls: type) -> dict[str, Schema]:
    """The schemas of the values the browser may send for a declared view's
    synced traits ({} for a view not in _contract.VIEWS), worked out once per class."""
    if cls not in _declared_cache:
        _declared_cache[cls] = synced_traits(cls, from_browser=True) if is_declared_view(cls) else {}
    return _declared_cache[cls]


class HeadWidget(InterpWidget):
    """A view of one run's tokens with a chosen (layer, head) and a selected
    (query, key) cell; subclasses say which model they show (`_model`)."""

    model_name = traitlets.Unicode("").tag(sync=True)
    tokens = traitlets.List(traitlets.Unicode()).tag(sync=True)
    n_layers = traitlets.Int(1).tag(sync=True)
    n_heads = traitlets.Int(1).tag(sync=True)
    layer = traitlets.Int(0).tag(sync=True)
    head = traitlets.Int(0).tag(sync=True)
    selected = traitlets.Dict().tag(sync=True, schema=Obj({"query": Opt(INT), "key": Opt(INT)}))  # {} or both

    @property
    def _model(self) -> Any:
        raise NotImplementedError

    def _frontend_fields(self) -> dict[str, Callable[[Any], Any]]:
        n_tokens = len(self.tokens)

        def selected(value: dict[str, int]) -> dict[str, int]:
            return {what: in_range(v, what, 0, n_tokens) for what, v in all_or_none(value, "selected", ("query", "key")).items()}

        fields = super()._frontend_fields()
        fields.update(
            layer=lambda v: in_range(v, "layer", 0, self.n_layers),
            head=lambda v: in_range(v, "head", 0, self.n_heads),
            selected=selected,
        )
        return fields

    @traitlets.validate("layer")
    def _valid_layer(self, proposal: Any) -> int:
        return self._model.check_layer(proposal["value"])

    @traitlets.validate("head")
    def _valid_head(self, proposal: Any) -> int:
        return self._model.check_head(proposal["value"])


_figure_class: Any = None


def new_figure(**kwargs: Any) -> Any:
    """A matplotlib Figure outside pyplot's global state that shows itself
    as a PNG in any notebook, with or without `%matplotlib inline`."""
    global _figure_class
    if _figure_class is None:
        from matplotlib.figure import Figure

        class ViewFigure(Figure):
            def _repr_png_(self) -> bytes:
                return figure_png(self, dpi=100)

        _figure_class = ViewFigure
    return _figure_class(**kwargs)


def figure_png(figure: Any, dpi: int = 80) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    return buffer.getvalue()


class CancelResume:
    """The browser's cancel and resume buttons of a view that measures in the
    background: the requests call the view's own `cancel()` / `resume()`."""

    @rpc("cancel", params={}, result={"cancelled": BOOL})
    def _rpc_cancel(self, params: dict[str, Any]) -> tuple[Any, list[bytes]]:
        self.cancel()
        return {"cancelled": True}, []

    @rpc("resume", params={}, result={"resumed": BOOL})
    def _rpc_resume(self, params: dict[str, Any]) -> tuple[Any, list[bytes]]:
        self.resume()
        return {"resumed": True}, []
