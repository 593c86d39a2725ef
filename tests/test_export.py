"""Static pictures of views: sent after the live view in a real kernel (never
before it), recorded where an exporter needs them; and the nbconvert
preprocessor that turns widget outputs into those pictures for an offline
HTML export. The end-to-end export in Chromium is tests/browser/test_export_html.py."""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any

import pytest
from nbformat.v4 import new_code_cell, new_notebook, new_output

from nbinterp.export import WIDGET_STATE, WIDGET_VIEW, StaticViews

REPO = Path(__file__).resolve().parents[1]
PROMPT = "When Mary and John went to the store , John gave a drink to"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------- in a kernel
@pytest.fixture(scope="module")
def kernel(tmp_path_factory: Any) -> Any:
    from jupyter_client.manager import start_new_kernel

    home = tmp_path_factory.mktemp("kernel")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
               IPYTHONDIR=str(home / "ipython"), NBINTERP_EAGER_PICTURE="")
    km, kc = start_new_kernel(kernel_name="python3", env=env, cwd=str(home))
    execute(kc, f"import nbinterp as ni\nmodel = ni.load()\nprompt = {PROMPT!r}")
    yield kc
    kc.stop_channels()
    km.shutdown_kernel(now=True)


def execute(kc: Any, code: str) -> list[dict[str, Any]]:
    """Every iopub message of one execution, in order, up to its idle."""
    msg_id = kc.execute(code)
    messages = []
    while True:
        msg = kc.get_iopub_msg(timeout=120)
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        if msg["msg_type"] == "error":
            raise AssertionError("\n".join(msg["content"]["traceback"]))
        if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            return messages
        messages.append(msg)


def outputs(messages: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    kinds = ("execute_result", "display_data", "update_display_data")
    return [(m["msg_type"], m["content"]) for m in messages if m["msg_type"] in kinds]


def assert_png(content: dict[str, Any]) -> None:
    assert base64.b64decode(content["data"]["image/png"]).startswith(PNG_MAGIC)


def test_a_cell_result_goes_out_without_its_picture_which_follows_by_display_id(kernel: Any) -> None:
    sent = outputs(execute(kernel, "ni.attention(model, prompt, layer=1, head=1)"))
    assert [kind for kind, _ in sent] == ["execute_result", "update_display_data"]
    (_, result), (_, update) = sent
    assert "image/png" not in result["data"] and WIDGET_VIEW in result["data"]
    display_id = result["transient"]["display_id"]
    assert update["transient"]["display_id"] == display_id
    assert update["data"][WIDGET_VIEW]["model_id"] == result["data"][WIDGET_VIEW]["model_id"]
    assert update["data"]["text/plain"] == result["data"]["text/plain"]
    assert_png(update)


def test_a_displayed_view_carries_its_picture_since_frontends_rebuild_updated_displays(kernel: Any) -> None:
    sent = outputs(execute(kernel, "lens = ni.logit_lens(model, prompt, target='Mary')\ndisplay(lens)"))
    assert [kind for kind, _ in sent] == ["display_data"]
    assert_png(sent[0][1])


def test_the_old_eager_picture_on_request(kernel: Any) -> None:
    code = "import os\nos.environ['NBINTERP_EAGER_PICTURE'] = '1'\nni.attention(model, prompt)"
    sent = outputs(execute(kernel, code))
    execute(kernel, "del os.environ['NBINTERP_EAGER_PICTURE']")
    assert [kind for kind, _ in sent] == ["execute_result"]
    assert_png(sent[0][1])
    assert "transient" not in sent[0][1] or not sent[0][1]["transient"]


def test_a_bundle_made_outside_a_kernel_has_its_picture() -> None:
    import nbinterp as ni

    model = ni.load()
    data, _ = ni.attention(model, PROMPT)._repr_mimebundle_()
    assert data["image/png"].startswith(PNG_MAGIC) and WIDGET_VIEW in data


# ------------------------------------------------------------ preprocessor
def widget_output(model_id: str, picture: bool) -> Any:
    data = {"text/plain": f"View({model_id})", WIDGET_VIEW: {"model_id": model_id, "version_major": 2, "version_minor": 0}}
    if picture:
        data["image/png"] = base64.b64encode(PNG_MAGIC).decode()
    return new_output("display_data", data=data)


def notebook_with_widgets() -> Any:
    """A view with a picture (model "view", its layout "view_layout") and a
    progress bar without one ("box" -> children "bar", "label"; "bar" ->
    "bar_style"), plus a model that nothing displays ("orphan")."""
    def state(name: str, **refs: Any) -> dict[str, Any]:
        return {"model_name": name, "model_module": "m", "model_module_version": "1", "state": {"_model_name": name, **refs}}

    states = {
        "view": state("AnyModel", layout="IPY_MODEL_view_layout"),
        "view_layout": state("LayoutModel"),
        "box": state("HBoxModel", children=["IPY_MODEL_bar", "IPY_MODEL_label"]),
        "bar": state("FloatProgressModel", style="IPY_MODEL_bar_style"),
        "bar_style": state("ProgressStyleModel"),
        "label": state("HTMLModel"),
        "orphan": state("LayoutModel"),
    }
    nb = new_notebook(cells=[new_code_cell("bar", outputs=[widget_output("box", False)]),
                             new_code_cell("view", outputs=[widget_output("view", True)])])
    nb.metadata["widgets"] = {WIDGET_STATE: {"state": states, "version_major": 2, "version_minor": 0}}
    return nb


def test_static_export_turns_every_widget_into_its_picture_or_text_and_drops_the_state() -> None:
    nb, _ = StaticViews().preprocess(notebook_with_widgets(), {})
    bar, view = (cell.outputs[0].data for cell in nb.cells)
    assert set(bar) == {"text/plain"} and set(view) == {"text/plain", "image/png"}
    assert "widgets" not in nb.metadata


def test_keeping_live_widgets_keeps_exactly_the_state_they_reach() -> None:
    nb, _ = StaticViews(keep_live_widgets=True).preprocess(notebook_with_widgets(), {})
    bar, view = (cell.outputs[0].data for cell in nb.cells)
    assert WIDGET_VIEW in bar and set(view) == {"text/plain", "image/png"}
    assert set(nb.metadata["widgets"][WIDGET_STATE]["state"]) == {"box", "bar", "bar_style", "label"}


def test_a_notebook_without_pictured_widgets_is_left_alone() -> None:
    nb = notebook_with_widgets()
    nb.cells[1].outputs = []
    before = nb.metadata["widgets"][WIDGET_STATE]["state"].copy()
    nb, _ = StaticViews(keep_live_widgets=True).preprocess(nb, {})
    assert nb.metadata["widgets"][WIDGET_STATE]["state"] == before and WIDGET_VIEW in nb.cells[0].outputs[0].data


def test_the_html_exporter_shows_the_picture_and_loads_no_widget_manager() -> None:
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(preprocessors=[StaticViews])
    html, _ = exporter.from_notebook_node(notebook_with_widgets())
    assert html.count(f'src="data:image/png;base64,{base64.b64encode(PNG_MAGIC).decode()}') == 1
    assert exporter.jupyter_widgets_base_url not in html and WIDGET_VIEW not in html
    plain, _ = HTMLExporter().from_notebook_node(notebook_with_widgets())
    assert exporter.jupyter_widgets_base_url in plain  # the reason for the preprocessor

