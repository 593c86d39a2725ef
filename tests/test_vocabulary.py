"""One vocabulary for every public call: the README's table is the code's,
arguments after the first two are keyword-only, earlier spellings warn and
still give the same numbers, and the ablation panel takes a Run and a position."""

from __future__ import annotations

import importlib.util
import inspect
from pathlib import Path

import pytest
import torch

import nbinterp as ni
from nbinterp.errors import NbinterpError

ROOT = Path(__file__).resolve().parent.parent
IOI = "When Mary and John went to the store , John gave a drink to"


def _api_table():
    spec = importlib.util.spec_from_file_location("api_table", ROOT / "scripts" / "api_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def model():
    return ni.load()


def test_readme_table_is_the_code():
    api = _api_table()
    readme = (ROOT / "README.md").read_text()
    assert api.readme_with_table(readme) == readme, "README's call table is stale: run python scripts/api_table.py --write"


def test_calls_are_keyword_only_after_two_and_use_one_name_per_thing():
    old_names = {"expected", "actual", "ablations"}
    for written, function in _api_table().public_calls():
        if not written.startswith("ni.") or written in ("ni.load", "ni.load_sae", "ni.bundled_card"):
            continue
        parameters = list(inspect.signature(function).parameters.values())
        assert [p.kind for p in parameters[:2]] == [inspect.Parameter.POSITIONAL_OR_KEYWORD] * 2, written
        assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in parameters[2:]), written
        assert not old_names & {p.name for p in parameters}, written


def test_positional_layer_and_head_warn_and_open_the_same_head(model):
    with pytest.warns(DeprecationWarning, match=r"pass layer, head by name"):
        old = ni.attention(model, IOI, 1, 2)
    new = ni.attention(model, IOI, layer=1, head=2)
    assert (old.layer, old.head) == (new.layer, new.head) == (1, 2)


def test_renamed_keywords_warn_and_map(model):
    with pytest.warns(DeprecationWarning, match=r"ablations= is now ablate="):
        old = ni.ablate(model, IOI, target="Mary", foil="John", ablations={"L3.H0": 0.0})
    new = ni.ablate(model, IOI, target="Mary", foil="John", ablate={"L3.H0": 0.0})
    assert old.ablations == new.ablations == {"L3.H0": 0.0}
    assert old.result.logit_diff == pytest.approx(new.result.logit_diff, abs=1e-4)
    with pytest.raises(NbinterpError, match="both ablations= and ablate="):
        ni.ablate(model, IOI, ablations={}, ablate={})
    with pytest.raises(NbinterpError, match="takes 2 positional arguments"):
        ni.logit_lens(model, IOI, "Mary", "John")


def test_probe_metric_spelling_still_works(model):
    from nbinterp.bundled import tasks

    examples = tasks.examples("bias", 8)
    prompts, labels = [e.prompt for e in examples], [e.meta["group"] for e in examples]
    with pytest.warns(DeprecationWarning, match=r"metric=\(target, foil\) is now target="):
        old = ni.probe(model, prompts, labels=labels, metric=("doctor", "nurse"), usage_layer=None)
    new = ni.probe(model, prompts, labels=labels, target="doctor", foil="nurse", usage_layer=None)
    assert old.metric_label == new.metric_label and "doctor" in new.metric_label
    with pytest.raises(NbinterpError, match="both metric= and target="):
        ni.probe(model, prompts, labels=labels, metric=("doctor", "nurse"), target="doctor")


def test_ablate_takes_a_run_and_a_position(model):
    run = model.run(IOI, ablate={"L3.H0": 0.0})
    panel = ni.ablate(model, run, target="Mary", foil="John", position=-2)
    assert panel.ablations == {"L3.H0": 0.0}  # the run's ablations are where the sliders start
    # the unablated baseline at position -2, against a plain HF forward
    ids = torch.tensor([run.token_ids])
    with torch.no_grad():
        logits = model.hf(ids).logits[0, -2].double()
    mary, john = model.token_id("Mary"), model.token_id("John")
    expected = float(logits[mary] - logits[john])
    scale = float(logits.abs().max())
    assert panel.baseline.logit_diff == pytest.approx(expected, abs=64 * torch.finfo(torch.float32).eps * scale)
    top = panel.baseline.top_k[0]
    assert top.id == int(logits.argmax())
    # and the ablated run reads the same position
    ablated = model.run(IOI, ablate={"L3.H0": 0.0}, capture=["logits"]).logit_diff("Mary", "John", position=-2)
    assert panel.result.logit_diff == pytest.approx(ablated, abs=64 * torch.finfo(torch.float32).eps * scale)
    with pytest.raises(NbinterpError, match="outside the prompt"):
        ni.ablate(model, IOI, position=99)


def test_analysis_functions_are_not_named_like_the_views():
    """ni.why_not is the view; nbinterp.analysis.why_not.compute_why_not the numbers behind it
    (the old name still works one release, with a warning)."""
    from nbinterp.analysis import attribution, context_use, logit_lens, why_not

    for module, old in ((attribution, "attribute"), (logit_lens, "logit_lens"), (context_use, "context_use"),
                        (why_not, "why_not")):
        assert old not in vars(module), module.__name__
        with pytest.warns(DeprecationWarning, match=rf"{old} is now compute_"):
            assert getattr(module, old) is getattr(module, "compute_" + ("attribution" if old == "attribute" else old))
