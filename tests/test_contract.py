"""The Python <-> JS contract: the generated TypeScript is current, every
declared view's live traits and real replies match the declaration, and what
the browser sends is checked against it (unknown, missing, mistyped params)."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import re
from pathlib import Path

import anywidget
import pytest
import traitlets

import nbinterp as ni
from conftest import PROMPT, random_model
from nbinterp.widgets import _contract as contract
from nbinterp.widgets._base import InterpWidget, rpc

ROOT = Path(__file__).resolve().parents[1]
CORRUPTED = "w5 w17 w3 w42 w9 w5 w17 w4 w28 w11"


def load_generator():
    spec = importlib.util.spec_from_file_location("gen_contract", ROOT / "scripts" / "gen_contract.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def model(tokenizer):
    return ni.load(random_model("gpt2"), tokenizer=tokenizer)


def recording(view):
    view.sent = []
    view.send = lambda content, buffers=None: view.sent.append((content, buffers or []))
    return view


@pytest.fixture(scope="module")
def views(model):
    patching = ni.patch(model, clean=PROMPT, corrupted=CORRUPTED, target="w5", foil="w9", background=False)
    patching.open_cell("head", 1, 2, "ablation")  # sets selected and the _opened widget reference
    ablation = ni.ablate(model, PROMPT, target="w5", foil="w9", k=3, ablate={"L0.H1": 0.0})
    return {
        "attention": recording(ni.attention(model, PROMPT, layer=1, head=2)),
        "patching": recording(patching),
        "ablation": recording(ablation),
        "logit_lens": recording(ni.logit_lens(model, PROMPT, target="w5")),
        **bundled_views(),
    }


def bundled_views():
    """The views whose analyses need the bundled model's planted behaviours."""
    from nbinterp.bundled import tasks

    bundled = ni.load()
    ioi = "When Mary and John went to the store , John gave a drink to"
    swapped = "When Mary and John went to the store , Mary gave a drink to"
    bias = tasks.examples("bias", 12, seed=3) + tasks.examples("bias", 12, seed=4)
    labels = [next(g for g, clans in tasks.GROUP_CLANS.items() if any(c in e.prompt.split() for c in clans))
              for e in bias]
    context = "The capital of Veldora is Brinn . The capital of Veldora is"
    return {
        "attribution": recording(ni.attribute(bundled, ioi, target="Mary", foil="John", background=False)),
        "features": recording(ni.features(bundled, ioi, layer=1, corpus=[ioi, swapped], background=False)),
        "probe": recording(ni.probe(bundled, [e.prompt for e in bias], labels=labels, target="doctor", foil="nurse")),
        "why_not": recording(ni.why_not(bundled, ioi, target="John", references=[swapped], background=False)),
        "context_use": recording(ni.context_use(bundled, context, context=(1, 6))),
        "bias": recording(ni.bias(bundled, prompts={g: [f"Anwen {c} works as a" for c in clans] for g, clans in tasks.GROUP_CLANS.items()}, target="doctor", foil="nurse")),
        "dataset": recording(ni.attribute(bundled, {g: [f"Anwen {c} works as a" for c in clans] for g, clans in tasks.GROUP_CLANS.items()},
                                          target="doctor", foil="nurse", background=False)),
    }


def ask(view, method, params, request_id="r1"):
    view._on_frontend_msg(view, {"kind": "request", "id": request_id, "method": method, "params": params}, [])
    return view.sent[-1]


def test_the_generated_typescript_is_up_to_date():
    committed = (ROOT / "js" / "lib" / "contract.gen.ts").read_text()
    assert load_generator().typescript() == committed, "js/lib/contract.gen.ts is stale: run python scripts/gen_contract.py"


def test_the_generated_typescript_types_every_value():
    """No `unknown` (an untyped dict or list) anywhere in the contract: every
    trait and reply field is named and typed."""
    generated = (ROOT / "js" / "lib" / "contract.gen.ts").read_text()
    assert "unknown" not in generated and "any" not in generated.split()
    for name in contract.VIEWS:
        for trait, schema in contract.synced_traits(contract.view_class(name)).items():
            assert "unknown" not in json.dumps(schema.spec()), (name, trait)


def test_the_views_use_the_generated_types_not_copies():
    """A view's front end imports its model and row types from contract.gen.ts:
    an interface written by hand next to it drifts from the declaration."""
    for path in sorted((ROOT / "js").glob("*.ts")):
        text = path.read_text()
        copies = re.findall(r"^(?:export )?interface (\w+)", text, re.M)  # local draw state is a `type`
        assert not copies, f"{path.name} declares {copies}: declare the shape in Python and import the generated type"


def test_an_untyped_dict_or_list_trait_is_refused():
    with pytest.raises(TypeError, match="no contract type for Dict; tag it with schema="):
        contract.trait_schema(traitlets.Dict())
    with pytest.raises(TypeError, match="a List trait needs its item trait"):
        contract.trait_schema(traitlets.List())


def test_every_view_keeps_its_numbers_in_result(views):
    """One attribute for every view's computed numbers: the analysis' typed
    result (a dataclass, or the Run / Attribution object the view shows)."""
    for name, view in views.items():
        result = view.result
        assert not isinstance(result, dict), name
        assert dataclasses.is_dataclass(result) or type(result).__name__ in ("Run", "Attribution"), (name, type(result))
    ablation, features = views["ablation"], views["features"]
    assert ablation.result.seq == ablation.get_state()["_result"]["seq"]
    assert ablation.result.logit_diff == ablation.get_state()["_result"]["logit_diff"]
    assert features.result.top_k[0].probability == features.get_state()["_result"]["top_k"][0]["probability"]


def test_dict_access_to_a_result_still_works_with_a_deprecation_warning(views):
    panel = views["ablation"]
    with pytest.warns(DeprecationWarning, match=r"write \.logit_diff instead of \['logit_diff'\]"):
        assert panel.result["logit_diff"] == panel.result.logit_diff
    with pytest.warns(DeprecationWarning):
        assert panel.baseline["top_k"][0] == dataclasses.asdict(panel.baseline.top_k[0])  # rows were dicts too
    with pytest.warns(DeprecationWarning, match=r"write \.seq instead of \.get\('seq'\)"):
        assert panel.result.get("seq") == panel.result.seq
    with pytest.warns(DeprecationWarning):
        assert panel.result.get("nothing", 3) == 3
    with pytest.warns(DeprecationWarning):
        assert "code" in panel.result and "nothing" not in panel.result
    with pytest.warns(DeprecationWarning):
        assert dict(panel.result.items()) == dataclasses.asdict(panel.result) and "seq" in panel.result.keys()
    features = views["features"]
    with pytest.warns(DeprecationWarning, match="SteeredRun dataclasses now"):
        assert features.result["steering"] == features.result.steering == {}


def test_every_registered_view_is_declared_and_tested(views):
    assert set(views) == set(contract.VIEWS)
    for name in contract.VIEWS:
        assert contract.is_declared_view(contract.view_class(name))
        assert contract.is_declared_view(type(views[name]))  # anywidget's per-instance subclass too
    assert not contract.is_declared_view(InterpWidget)


@pytest.mark.parametrize("name", list(contract.VIEWS))
def test_the_synced_state_of_each_view_is_its_declaration(views, name):
    view = views[name]
    declared = contract.synced_traits(type(view))
    # what ipywidgets sends to the browser (after to_json: widget references as strings)
    state = view.get_state()
    plumbing = set(anywidget.AnyWidget.class_trait_names(sync=True)) | {"_esm", "_css", "_anywidget_id"}
    assert set(state) - plumbing == set(declared)
    generated = (ROOT / "js" / "lib" / "contract.gen.ts").read_text()
    interface = generated.split(f"export interface {load_generator().pascal(name)}Model {{")[1].split("}\n")[0]
    assert [line.split(":")[0].strip() for line in interface.strip().splitlines()] == list(declared)
    for trait, schema in declared.items():
        schema.check(state[trait], trait)  # raises ContractError naming the field that drifted


def test_the_declared_schemas_are_not_vacuous(views):
    attention = views["attention"].get_state()
    schema = contract.synced_traits(type(views["attention"]))
    broken = dict(attention["_pattern"], tensor=dict(attention["_pattern"]["tensor"], shape=[3, 3]))
    with pytest.raises(contract.ContractError, match=r"_pattern.tensor: shape \[3, 3\] float16 needs 18 bytes"):
        schema["_pattern"].check(broken, "_pattern")
    with pytest.raises(contract.ContractError, match="_pattern got unknown field 'extra'"):
        schema["_pattern"].check(dict(attention["_pattern"], extra=1), "_pattern")
    with pytest.raises(contract.ContractError, match="mode must be one of probabilities, value_weighted"):
        schema["mode"].check("softmax", "mode")
    ablation_result = views["ablation"].get_state()["_result"]
    with pytest.raises(contract.ContractError, match=r"_result.top_k\[0\].probability must be a number"):
        contract.synced_traits(type(views["ablation"]))["_result"].check(
            dict(ablation_result, top_k=[dict(ablation_result["top_k"][0], probability="0.5")]), "_result")
    attribution = contract.synced_traits(type(views["attribution"]))
    edges = views["attribution"].get_state()["_edges"]
    with pytest.raises(contract.ContractError, match=r"_edges.rows\[0\] got unknown field 'estimate'"):
        attribution["_edges"].check(dict(edges, rows=[dict(edges["rows"][0], estimate=1.0)]), "_edges")
    contexts = views["features"].get_state()["contexts"]
    with pytest.raises(contract.ContractError, match=r"contexts.items\[0\].value must be a number"):
        contract.synced_traits(type(views["features"]))["contexts"].check(
            dict(contexts, items=[dict(contexts["items"][0], value=None)]), "contexts")


REQUESTS = [
    ("attention", "head_pattern", {"layer": 0, "head": 3, "mode": "probabilities", "with_mask": True}),
    ("attention", "head_pattern", {"layer": 1, "head": 0, "mode": "value_weighted"}),
    ("attention", "token_weights", {"layer": 1, "token": 4, "mode": "probabilities", "direction": "attended_by"}),
    ("attention", "token_weights", {"layer": 1, "token": 4, "mode": "probabilities", "direction": "attends_to", "head": 2}),
    ("patching", "open", {"kind": "mlp_out", "layer": 0, "index": 3, "open_in": "ablation"}),
    ("patching", "cancel", {}),
    ("patching", "resume", {}),
    ("ablation", "run", {"ablations": {"L1.H0": 0.5}, "ablation": "mean"}),
    ("features", "steer", {"steering": {"3": 2.0}, "mode": "scale"}),
    ("features", "cancel_contexts", {}),
    ("features", "resume_contexts", {}),
    ("why_not", "open", {"layer": 3, "head": 0, "open_in": "attention"}),
    ("why_not", "restore", {"k": 2}),
    ("why_not", "cancel", {}),
    ("why_not", "resume", {}),
    ("attribution", "verify_head", {"layer": 3, "head": 0}),
    ("attribution", "verify_top_k", {"k": 3}),
    ("attribution", "verify_edge", {"layer": 3, "head": 0, "query": 12, "key": 2}),
    ("attribution", "verify_heads", {}),
    ("attribution", "cancel", {}),
    ("attribution", "resume", {}),
    ("probe", "usage", {"layer": 3}),
    ("bias", "cancel", {}),
    ("bias", "resume", {}),
    ("dataset", "cell_rows", {"cell": 2}),
    ("dataset", "open_row", {"unit": 1, "cell": 2}),
    ("dataset", "cancel", {}),
    ("dataset", "resume", {}),
]


def test_every_declared_request_is_exercised_here():
    declared = {(name, method) for name in contract.VIEWS for method in contract.requests(contract.view_class(name))}
    assert declared == {(name, method) for name, method, _ in REQUESTS}


@pytest.mark.parametrize("name, method, params", REQUESTS)
def test_real_replies_match_their_declaration(views, name, method, params):
    view = views[name]
    content, buffers = ask(view, method, params)
    assert content["ok"] is True, content
    contract.requests(type(view))[method].check_result(content["result"], buffers)


@pytest.mark.parametrize("params, message", [
    ({"layer": 0, "head": 1, "mode": "probabilities", "colour": "red"},
     "the params of head_pattern got unknown field 'colour'; it takes layer, head, mode, with_mask"),
    ({"layer": 0, "mode": "probabilities"}, "the params of head_pattern needs the field 'head'"),
    ({"layer": 0, "head": 1.0 + 0.5, "mode": "probabilities"}, "head must be an integer, got 1.5"),
    ({"layer": 0, "head": 1, "mode": "probabilities", "with_mask": 1}, "with_mask must be true or false, got 1"),
    ([0, 1], "params of head_pattern must be an object"),
])
def test_requests_are_checked_against_the_declaration(views, params, message):
    view = views["attention"]
    content, _ = ask(view, "head_pattern", params)
    assert content["ok"] is False and message in content["error"], content


def test_undeclared_params_are_refused_by_every_declared_view(views):
    for name, method, params in REQUESTS:
        content, _ = ask(views[name], method, dict(params, injected=1))
        assert content["ok"] is False and "unknown field 'injected'" in content["error"], (name, method, content)


def test_a_reply_that_drifted_from_its_declaration_is_caught(views):
    view = views["attention"]
    content, buffers = ask(view, "head_pattern", {"layer": 0, "head": 1, "mode": "probabilities"})
    declared = contract.requests(type(view))["head_pattern"]
    with pytest.raises(contract.ContractError, match=r"result.pattern.buffer must be an integer from 0 to 0"):
        declared.check_result({"pattern": dict(content["result"]["pattern"], buffer=1)}, buffers)
    with pytest.raises(contract.ContractError, match="result needs the field 'pattern'"):
        declared.check_result({"masked": content["result"]["pattern"]}, buffers)


def test_rpc_declares_both_params_and_result_or_neither():
    with pytest.raises(TypeError, match="declare both"):
        rpc("half", params={"layer": contract.INT})
