"""The Python <-> JS contract of each view, declared once, here in Python:
its synced traits (derived from the traitlets declarations) and its requests
(declared on the `@rpc` handler). `scripts/gen_contract.py` turns it into
`js/lib/contract.gen.ts` (TypeScript types, method names and the schemas the
JS validates every reply against); Python checks what the browser sends
against the same declaration.

How a view declares its contract
--------------------------------
1. Traits: declare them with traitlets as usual. Unicode, Int, Float, Bool,
   List(<item trait>) and anywidget.WidgetTrait map by themselves
   (allow_none=True adds `| null`). Where the traitlets type says too little
   (a Dict, a Unicode that holds one of a few words), say the shape in the
   tag; a Dict or List without it is refused, so nothing crosses untyped::

       mode = traitlets.Unicode("probabilities").tag(sync=True, schema=Choice(*MODES))
       _pattern = traitlets.Dict(allow_none=True, default_value=None).tag(
           sync=True, schema=Nullable(Obj({"layer": INT, "tensor": TENSOR})))

   A tensor sent in a trait (`_buffers.encode`) is TENSOR. Where the browser
   may set less than Python (sliders bound to 0..1.5), add
   `from_browser=SCHEMA`: values from the browser are checked against it.
2. Requests: give `@rpc` the params and result fields::

       @rpc("token_weights", params={"layer": INT, "head": Opt(INT)}, result={"weights": TENSOR_REF})
       def _rpc_token_weights(self, params): ...

   `Opt(s)`: the field may be left out. A tensor in a reply
   (`_buffers.pack`) is TENSOR_REF. Params are checked against the
   declaration before the handler runs (unknown, missing and mistyped params
   are refused with a message), so the handler trusts their types and only
   asks the model about what depends on the instance (a layer below n_layers).
   Give an Obj that several traits or replies share a `name`: the generated
   file then declares it once as an interface the views import.
3. Register the view in VIEWS below ("features": "nbinterp.widgets.features:FeaturesView"),
   run `python scripts/gen_contract.py`, and in js/<view>.ts import
   `FeaturesModel` and `FEATURES_REQUESTS` from "./lib/contract.gen"; send
   requests with `rpc.call(FEATURES_REQUESTS.name, params)`, which validates
   the reply (a malformed one rejects with an RpcError the view shows).
   `checkTrait(model, FEATURES_TRAITS, "name")` validates a data trait.
   tests/test_contract.py then checks the generated file is current and every
   declared view's live trait values and replies match the declaration.
"""

from __future__ import annotations

import importlib
import json
import math
import numbers
from dataclasses import dataclass
from typing import Any

import traitlets

# name -> "module:Class"; the generated file lists the views in this order.
VIEWS = {
    "attention": "nbinterp.widgets.attention:AttentionView",
    "patching": "nbinterp.widgets.patching:PatchingView",
    "ablation": "nbinterp.widgets.ablation:AblationPanel",
    "logit_lens": "nbinterp.widgets.logit_lens:LogitLensView",
    "attribution": "nbinterp.widgets.attribution:AttributionView",
    "features": "nbinterp.widgets.features:FeatureView",
    "probe": "nbinterp.widgets.probe:ProbeView",
    "why_not": "nbinterp.widgets.why_not:WhyNotView",
    "context_use": "nbinterp.widgets.context_use:ContextUseView",
    "bias": "nbinterp.widgets.bias:BiasView",
    "dataset": "nbinterp.widgets.dataset_view:DatasetView",
}


class ContractError(ValueError):
    """A value does not match its declaration (FrontendError subclasses it
    for values the browser sent)."""


def _fail(path: str, expected: str, value: Any) -> None:
    shown = repr(value) if len(repr(value)) <= 80 else f"{type(value).__name__} {repr(value)[:60]}..."
    raise ContractError(f"{path} must be {expected}, got {shown}")


class Schema:
    def ts(self) -> str:
        raise NotImplementedError

    def spec(self) -> dict[str, Any]:
        raise NotImplementedError

    def check(self, value: Any, path: str) -> None:
        raise NotImplementedError


@dataclass(frozen=True)
class Number(Schema):
    integer: bool = False
    low: float | None = None
    high: float | None = None  # both inclusive

    def describe(self) -> str:
        what = "an integer" if self.integer else "a number"
        if self.low is not None and self.high is not None:
            return f"{what} from {self.low:g} to {self.high:g}"
        return what

    def ts(self) -> str:
        return "number"

    def spec(self) -> dict[str, Any]:
        spec: dict[str, Any] = {"kind": "int" if self.integer else "number"}
        if self.low is not None:
            spec["min"] = self.low
        if self.high is not None:
            spec["max"] = self.high
        return spec

    def check(self, value: Any, path: str) -> None:
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
        ok = ok and (not self.integer or isinstance(value, numbers.Integral))
        ok = ok and (self.low is None or value >= self.low) and (self.high is None or value <= self.high)
        if not ok:
            _fail(path, self.describe(), value)


@dataclass(frozen=True)
class Scalar(Schema):
    kind: str  # string | boolean

    def ts(self) -> str:
        return self.kind

    def spec(self) -> dict[str, Any]:
        return {"kind": self.kind}

    def check(self, value: Any, path: str) -> None:
        if self.kind == "string" and not isinstance(value, str):
            _fail(path, "a string", value)
        if self.kind == "boolean" and not isinstance(value, bool):
            _fail(path, "true or false", value)


@dataclass(frozen=True)
class Choice(Schema):
    values: tuple[str, ...]

    def __init__(self, *values: str) -> None:
        object.__setattr__(self, "values", tuple(values))

    def ts(self) -> str:
        return " | ".join(json.dumps(v) for v in self.values)

    def spec(self) -> dict[str, Any]:
        return {"kind": "choice", "values": list(self.values)}

    def check(self, value: Any, path: str) -> None:
        if value not in self.values or not isinstance(value, str):
            _fail(path, f"one of {', '.join(self.values)}", value)


@dataclass(frozen=True)
class Nullable(Schema):
    of: Schema

    def ts(self) -> str:
        return f"{self.of.ts()} | null"

    def spec(self) -> dict[str, Any]:
        return {"kind": "nullable", "of": self.of.spec()}

    def check(self, value: Any, path: str) -> None:
        if value is not None:
            self.of.check(value, path)


@dataclass(frozen=True)
class Opt:
    """A field of an Obj that may be left out (not a Schema on its own)."""

    of: Schema


@dataclass(frozen=True)
class ListOf(Schema):
    of: Schema

    def ts(self) -> str:
        inner = self.of.ts()
        return f"Array<{inner}>" if "|" in inner else f"{inner}[]"

    def spec(self) -> dict[str, Any]:
        return {"kind": "list", "of": self.of.spec()}

    def check(self, value: Any, path: str) -> None:
        if not isinstance(value, (list, tuple)):
            _fail(path, "a list", value)
        for i, item in enumerate(value):
            self.of.check(item, f"{path}[{i}]")


@dataclass(frozen=True)
class MapOf(Schema):
    """An object with any string keys (or only `keys`); `entry` names an entry
    in messages, "{key}" standing for its key ("the scale of {key}")."""

    of: Schema
    keys: Choice | None = None
    entry: str | None = None

    def ts(self) -> str:
        return f"Partial<Record<{self.keys.ts()}, {self.of.ts()}>>" if self.keys else f"Record<string, {self.of.ts()}>"

    def spec(self) -> dict[str, Any]:
        spec: dict[str, Any] = {"kind": "map", "of": self.of.spec()}
        if self.keys:
            spec["keys"] = list(self.keys.values)
        if self.entry:
            spec["entry"] = self.entry
        return spec

    def check(self, value: Any, path: str) -> None:
        if not isinstance(value, dict):
            _fail(path, "an object", type(value).__name__)
        for key, item in value.items():
            if self.keys is not None:
                self.keys.check(key, f"a key of {path}")
            self.of.check(item, self.entry.format(key=repr(key)) if self.entry else f"{path}[{key!r}]")


@dataclass(frozen=True)
class Obj(Schema):
    """An object with exactly these fields (Opt(...) ones may be missing);
    `name` makes it a named interface in the generated file."""

    fields: dict[str, Schema | Opt]
    name: str | None = None

    def __hash__(self) -> int:
        return hash((tuple(self.fields), self.name))

    def field_ts(self) -> str:
        parts = []
        for key, field in self.fields.items():
            optional = isinstance(field, Opt)
            schema = field.of if isinstance(field, Opt) else field
            parts.append(f"{key}{'?' if optional else ''}: {schema.ts()}")
        return "{ " + "; ".join(parts) + " }" if parts else "Record<string, never>"

    def ts(self) -> str:
        return self.name or self.field_ts()

    def spec(self) -> dict[str, Any]:
        fields = {k: (f.of if isinstance(f, Opt) else f).spec() for k, f in self.fields.items()}
        spec = {"kind": "object", "fields": fields, "optional": [k for k, f in self.fields.items() if isinstance(f, Opt)]}
        if self.name:
            spec["name"] = self.name  # the generated file refers to it by name
        return spec

    def check(self, value: Any, path: str, label: str | None = None) -> None:
        """Fields are named `path.field`, or bare when path is "" (request
        params); `label` names the object itself in that case."""
        where = label or path
        if not isinstance(value, dict):
            _fail(where, "an object", type(value).__name__)
        unknown = sorted(set(value) - set(self.fields))
        if unknown:
            raise ContractError(f"{where} got unknown field{'s' if len(unknown) > 1 else ''} "
                                f"{', '.join(map(repr, unknown))}; it takes {', '.join(self.fields) or 'none'}")
        for key, field in self.fields.items():
            name = f"{path}.{key}" if path else key
            if key not in value:
                if not isinstance(field, Opt):
                    raise ContractError(f"{where} needs the field {key!r}")
                continue
            (field.of if isinstance(field, Opt) else field).check(value[key], name)


@dataclass(frozen=True)
class Either(Schema):
    options: tuple[Schema, ...]

    def __init__(self, *options: Schema) -> None:
        object.__setattr__(self, "options", tuple(options))

    def ts(self) -> str:
        return " | ".join(o.ts() for o in self.options)

    def spec(self) -> dict[str, Any]:
        return {"kind": "either", "of": [o.spec() for o in self.options]}

    def check(self, value: Any, path: str) -> None:
        problems = []
        for option in self.options:
            try:
                return option.check(value, path)
            except ContractError as exc:
                problems.append(str(exc))
        raise ContractError(" or ".join(problems))


_ITEM_SIZE = {"float16": 2, "float32": 4, "uint8": 1}


@dataclass(frozen=True)
class Tensor(Schema):
    """`_buffers.encode` (in a trait: bytes under "data") or, with
    in_reply, `_buffers.pack` (in a reply: the index of its buffer)."""

    in_reply: bool

    def ts(self) -> str:
        return "TensorRef" if self.in_reply else "EncodedTensor"

    def spec(self) -> dict[str, Any]:
        return {"kind": "tensor_ref" if self.in_reply else "tensor"}

    def check(self, value: Any, path: str, buffers: list[Any] | None = None) -> None:
        if not isinstance(value, dict) or value.get("dtype") not in _ITEM_SIZE:
            _fail(path, "a tensor {dtype: float16 | float32 | uint8, shape, ...}", value)
        shape = value.get("shape")
        if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
            _fail(f"{path}.shape", "a list of non-negative integers", shape)
        for key in ("scale", "offset"):
            Number().check(value.get(key, 0.0), f"{path}.{key}")
        data_key = "buffer" if self.in_reply else "data"
        if set(value) != {"dtype", "shape", "scale", "offset", data_key}:
            raise ContractError(f"{path} needs exactly the fields dtype, shape, scale, offset, {data_key}; got {sorted(value)}")
        if self.in_reply:
            Number(integer=True, low=0, high=None if buffers is None else len(buffers) - 1).check(value["buffer"], f"{path}.buffer")
            data = None if buffers is None else buffers[value["buffer"]]
        else:
            data = value["data"]
            if not isinstance(data, (bytes, bytearray, memoryview)):
                _fail(f"{path}.data", "bytes", type(data).__name__)
        if data is not None:
            expected = math.prod(shape) * _ITEM_SIZE[value["dtype"]]
            if len(memoryview(data).cast("B")) != expected:
                raise ContractError(f"{path}: shape {shape} {value['dtype']} needs {expected} bytes, got {len(data)}")


@dataclass(frozen=True)
class WidgetRef(Schema):
    """anywidget.WidgetTrait on the wire: "anywidget:<model id>" or null."""

    def ts(self) -> str:
        return "string | null"

    def spec(self) -> dict[str, Any]:
        return {"kind": "widget_ref"}

    def check(self, value: Any, path: str) -> None:
        if value is not None and getattr(value, "model_id", None) is None and not (isinstance(value, str) and value.startswith("anywidget:")):
            _fail(path, "a widget or null", value)


INT, FLOAT = Number(integer=True), Number()
STR, BOOL = Scalar("string"), Scalar("boolean")
TENSOR, TENSOR_REF, WIDGET_REF = Tensor(in_reply=False), Tensor(in_reply=True), WidgetRef()


# ------------------------------------------------------------------ requests
@dataclass(frozen=True)
class Request:
    method: str
    params: Obj
    result: Obj

    def check_params(self, params: Any) -> None:
        self.params.check(params, "", label=f"the params of {self.method}")

    def check_result(self, result: Any, buffers: list[Any]) -> None:
        _check_with_buffers(self.result, result, "result", buffers)


def _check_with_buffers(schema: Schema, value: Any, path: str, buffers: list[Any]) -> None:
    """Like schema.check, with reply tensors checked against the buffers."""
    if isinstance(schema, Tensor) and schema.in_reply:
        return schema.check(value, path, buffers)
    if isinstance(schema, Obj):
        schema.check(value, path)
        for key, field in schema.fields.items():
            if key in value:
                _check_with_buffers(field.of if isinstance(field, Opt) else field, value[key], f"{path}.{key}", buffers)
        return
    schema.check(value, path)


def request(method: str, params: dict[str, Schema | Opt], result: dict[str, Schema | Opt] | Obj) -> Request:
    """`result` may be a named Obj that a trait holds too (the probe's usage
    reply is one entry of its usage_results): one declaration, one TS type."""
    return Request(method, Obj(dict(params)), result if isinstance(result, Obj) else Obj(dict(result)))


# -------------------------------------------------------------------- traits
def trait_schema(trait: traitlets.TraitType) -> Schema:
    """The declared schema of one trait: its `schema` tag, or one derived
    from its traitlets type."""
    declared = trait.metadata.get("schema")
    if declared is not None:
        schema = declared
    elif type(trait).__name__ == "WidgetTrait":
        return WIDGET_REF
    elif isinstance(trait, traitlets.Enum) and all(isinstance(v, str) for v in trait.values):
        schema = Choice(*trait.values)
    elif isinstance(trait, traitlets.Bool):
        schema = BOOL
    elif isinstance(trait, traitlets.Int):
        schema = INT
    elif isinstance(trait, traitlets.Float):
        schema = FLOAT
    elif isinstance(trait, traitlets.Unicode):
        schema = STR
    elif isinstance(trait, traitlets.List):
        inner = trait._trait  # noqa: SLF001 - traitlets keeps the item trait here
        if inner is None:
            raise TypeError("a List trait needs its item trait (List(Unicode())) or schema=ListOf(...)")
        schema = ListOf(trait_schema(inner))
    else:
        raise TypeError(f"no contract type for {type(trait).__name__}; tag it with schema=...")
    if trait.allow_none and not isinstance(schema, Nullable):
        schema = Nullable(schema)
    return schema


def synced_traits(cls: type, from_browser: bool = False) -> dict[str, Schema]:
    """The view's own synced traits (not ipywidgets' plumbing), by name.
    from_browser: what the browser may set each to, where the trait's tag
    narrows it (`from_browser=SLIDER_SCALES`: Python may set any finite
    scale, a slider only 0..1.5)."""
    import anywidget

    base = set(anywidget.AnyWidget.class_trait_names(sync=True))
    traits = (declared_class(cls) or cls).class_traits(sync=True)
    narrowed = lambda t: t.metadata.get("from_browser") if from_browser else None  # noqa: E731
    return {name: narrowed(traits[name]) or trait_schema(traits[name]) for name in sorted(traits) if name not in base}


def requests(cls: type) -> dict[str, Request]:
    found: dict[str, Request] = {}
    for klass in reversed(cls.__mro__):
        for member in vars(klass).values():
            declared = getattr(member, "_rpc_contract", None)
            if declared is not None:
                found[declared.method] = declared
    return dict(sorted(found.items()))


def declared_class(cls: type) -> type | None:
    """The registered view class `cls` is, or derives from (anywidget adds
    _esm by deriving a class of the same name per instance), else None."""
    for klass in cls.__mro__:
        for name, where in VIEWS.items():
            if where == f"{klass.__module__}:{klass.__qualname__}" and view_class(name) is klass:
                return klass
    return None


def is_declared_view(cls: type) -> bool:
    return declared_class(cls) is not None


def view_class(name: str) -> type:
    module, _, cls = VIEWS[name].partition(":")
    return getattr(importlib.import_module(module), cls)
