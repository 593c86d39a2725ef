"""Static pictures of views: sent after the live view in a real kernel (never
before it), recorded where an exporter needs them; the nbconvert
preprocessor that turns widget outputs into those pictures (and progress
bars into their final text) for an offline HTML export; the config that
makes plain `jupyter nbconvert --to html` use it; and a model load that
shows no progress widget. The end-to-end export in Chromium is
tests/browser/test_export_html.py."""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from nbformat.v4 import new_code_cell, new_notebook, new_output

from nbinterp.export import PICTURE_STATE_KEY, WIDGET_STATE, WIDGET_VIEW, StaticViews

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


def test_a_cell_result_s_picture_also_goes_into_its_widget_state(kernel: Any) -> None:
    """JupyterLab ignores the display update above; the picture sent into the
    widget model is what its saved widget state keeps."""
    messages = execute(kernel, "ni.attention(model, prompt, layer=1, head=1)")
    (_, result), = [(kind, content) for kind, content in outputs(messages) if kind == "execute_result"]
    model_id = result["data"][WIDGET_VIEW]["model_id"]
    stored = [m for m in messages if m["msg_type"] == "comm_msg" and m["content"]["comm_id"] == model_id
              and m["content"]["data"].get("buffer_paths") == [[PICTURE_STATE_KEY]]]
    assert len(stored) == 1 and stored[0]["content"]["data"]["method"] == "update"
    assert bytes(stored[0]["buffers"][0]).startswith(PNG_MAGIC)


def test_the_exporter_and_the_widgets_agree_on_where_the_picture_is_stored() -> None:
    from nbinterp.widgets._picture import STATE_KEY

    assert STATE_KEY == PICTURE_STATE_KEY


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
def widget_output(model_id: str, picture: bool, text: str | None = None) -> Any:
    data = {"text/plain": text or f"View({model_id})",
            WIDGET_VIEW: {"model_id": model_id, "version_major": 2, "version_minor": 0}}
    if picture:
        data["image/png"] = base64.b64encode(PNG_MAGIC).decode()
    return new_output("display_data", data=data)


FROZEN_BAR = "Loading weights:   0%|          | 0/52 [00:00<?, ?it/s]"


def notebook_with_widgets() -> Any:
    """A view with a picture (model "view", its layout "view_layout"), a tqdm
    progress bar as stored when it ended ("box" -> children "label", "bar",
    "counts"; "bar" -> "bar_style") whose text/plain froze at 0%, a slider
    of another library ("slider" -> "slider_layout"), and a model that
    nothing displays ("orphan")."""
    def state(name: str, **fields: Any) -> dict[str, Any]:
        return {"model_name": name, "model_module": "m", "model_module_version": "1", "state": {"_model_name": name, **fields}}

    states = {
        "view": state("AnyModel", layout="IPY_MODEL_view_layout"),
        "view_layout": state("LayoutModel"),
        "box": state("HBoxModel", children=["IPY_MODEL_label", "IPY_MODEL_bar", "IPY_MODEL_counts"]),
        "label": state("HTMLModel", value="Loading weights: "),
        "bar": state("FloatProgressModel", min=0, max=52, value=52, style="IPY_MODEL_bar_style"),
        "bar_style": state("ProgressStyleModel"),
        "counts": state("HTMLModel", value="\u200752/52\u2007[00:00&lt;00:00,\u200710787.61it/s]"),
        "slider": state("IntSliderModel", value=3, layout="IPY_MODEL_slider_layout"),
        "slider_layout": state("LayoutModel"),
        "orphan": state("LayoutModel"),
    }
    nb = new_notebook(cells=[new_code_cell("bar", outputs=[widget_output("box", False, FROZEN_BAR)]),
                             new_code_cell("view", outputs=[widget_output("view", True)]),
                             new_code_cell("slider", outputs=[widget_output("slider", False)])])
    nb.metadata["widgets"] = {WIDGET_STATE: {"state": states, "version_major": 2, "version_minor": 0}}
    return nb


def test_pictures_and_final_progress_replace_widgets_and_only_live_widgets_keep_state() -> None:
    nb, _ = StaticViews().preprocess(notebook_with_widgets(), {})
    bar, view, slider = (cell.outputs[0].data for cell in nb.cells)
    assert set(view) == {"text/plain", "image/png"}
    assert bar == {"text/plain": "Loading weights: 100% 52/52 [00:00<00:00, 10787.61it/s]"}
    assert WIDGET_VIEW in slider  # another library's widget, no picture: nbconvert shows it as before
    assert set(nb.metadata["widgets"][WIDGET_STATE]["state"]) == {"slider", "slider_layout"}


def test_without_live_widgets_every_widget_becomes_its_picture_or_text_and_the_state_goes() -> None:
    nb, _ = StaticViews(keep_live_widgets=False).preprocess(notebook_with_widgets(), {})
    bar, view, slider = (cell.outputs[0].data for cell in nb.cells)
    assert set(view) == {"text/plain", "image/png"} and set(slider) == {"text/plain"}
    assert bar["text/plain"].startswith("Loading weights: 100%")
    assert "widgets" not in nb.metadata


def test_a_notebook_without_pictures_or_progress_bars_is_left_alone() -> None:
    nb = notebook_with_widgets()
    nb.cells = nb.cells[2:]
    before = nb.metadata["widgets"][WIDGET_STATE]["state"].copy()
    nb, _ = StaticViews().preprocess(nb, {})
    assert nb.metadata["widgets"][WIDGET_STATE]["state"] == before and WIDGET_VIEW in nb.cells[0].outputs[0].data


def test_the_html_exporter_shows_the_picture_and_loads_no_widget_manager() -> None:
    from nbconvert import HTMLExporter

    nb = notebook_with_widgets()
    nb.cells = nb.cells[:2]
    exporter = HTMLExporter(preprocessors=[StaticViews])
    html, _ = exporter.from_notebook_node(nb)
    assert html.count(f'src="data:image/png;base64,{base64.b64encode(PNG_MAGIC).decode()}') == 1
    assert exporter.jupyter_widgets_base_url not in html and WIDGET_VIEW not in html
    assert "100%" in html and "0/52" not in html
    # nothing on the page uses require.js or MathJax: the page asks cdnjs for neither
    assert exporter.require_js_url not in html and exporter.mathjax_url not in html
    assert not re.search(r'src="https?://', html)


def test_page_scripts_stay_where_the_notebook_uses_them() -> None:
    from nbconvert import HTMLExporter
    from nbformat.v4 import new_markdown_cell

    exporter = HTMLExporter(preprocessors=[StaticViews])
    with_math = notebook_with_widgets()
    with_math.cells = [new_markdown_cell("the logit difference $\\ell_t - \\ell_f$")] + with_math.cells[:2]
    html, _ = exporter.from_notebook_node(with_math)
    assert exporter.mathjax_url in html and exporter.require_js_url not in html
    live, _ = exporter.from_notebook_node(notebook_with_widgets())  # the slider stays live: it needs both
    assert exporter.require_js_url in live and exporter.jupyter_widgets_base_url in live


# ------------------------------------------------- what `pip install` sets up
def test_the_environment_s_nbconvert_config_installs_the_preprocessor() -> None:
    """The wheel's shared data (pyproject.toml) puts the config where every
    `jupyter nbconvert` of this environment reads it; an editable install too."""
    from jupyter_core.paths import ENV_CONFIG_PATH

    installed = [Path(d) / "jupyter_nbconvert_config.json" for d in ENV_CONFIG_PATH]
    installed = [p for p in installed if p.is_file()]
    assert installed, f"no jupyter_nbconvert_config.json in {ENV_CONFIG_PATH}: reinstall nbinterp (pip install -e .)"
    shipped = json.loads((REPO / "nbinterp" / "jupyter_config" / "jupyter_nbconvert_config.json").read_text())
    assert json.loads(installed[0].read_text()) == shipped
    assert shipped["HTMLExporter"]["preprocessors"] == ["nbinterp.export.StaticViews"]


def test_plain_nbconvert_on_a_notebook_saved_with_widget_state_needs_nothing_outside(tmp_path: Path) -> None:
    """What JupyterLab saves with "save widget state" on: outputs that carry
    the pictures, and the state of every widget (a progress bar included)."""
    import nbformat

    nb = notebook_with_widgets()
    nb.cells = nb.cells[:2]
    nbformat.write(nb, tmp_path / "saved.ipynb")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
               JUPYTER_CONFIG_DIR=str(tmp_path / "config"))
    done = subprocess.run([sys.executable, "-m", "jupyter", "nbconvert", "--to", "html", "saved.ipynb"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    html = (tmp_path / "saved.html").read_text()
    assert "data:image/png;base64," in html and "Loading weights: 100%" in html
    assert "unpkg.com" not in html and "jsdelivr" not in html and WIDGET_VIEW not in html
    assert not re.search(r'src="https?://', html)


def test_a_view_without_a_picture_in_its_output_gets_the_one_in_its_stored_state() -> None:
    nb = notebook_with_widgets()
    nb.cells = nb.cells[1:2]
    del nb.cells[0].outputs[0].data["image/png"]
    picture = base64.b64encode(PNG_MAGIC + b"stored").decode()
    nb.metadata["widgets"][WIDGET_STATE]["state"]["view"]["buffers"] = [
        {"path": [PICTURE_STATE_KEY], "encoding": "base64", "data": picture}]
    nb, _ = StaticViews().preprocess(nb, {})
    assert nb.cells[0].outputs[0].data == {"text/plain": "View(view)", "image/png": picture}
    assert "widgets" not in nb.metadata


def test_a_notebook_saved_from_jupyterlab_shows_a_cell_result_s_picture(tmp_path: Path) -> None:
    """JupyterLab keeps a cell's result as it first came (no picture: it
    ignores the display update) and, with "save widget state" on, every
    widget's state. Executed here by nbclient (which stores the state the
    same way), the outputs' pictures removed as JupyterLab would save them,
    then through plain `jupyter nbconvert --to html`."""
    import nbformat
    from nbclient import NotebookClient

    nb = new_notebook(cells=[new_code_cell("import nbinterp as ni\nmodel = ni.load()"),
                             new_code_cell(f"ni.attention(model, {PROMPT!r}, layer=1, head=1)")],
                      metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
    env_path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    os.environ["PYTHONPATH"], before = env_path, os.environ.get("PYTHONPATH")
    try:
        NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    finally:
        if before is None:
            os.environ.pop("PYTHONPATH")
        else:
            os.environ["PYTHONPATH"] = before
    (output,) = [o for o in nb.cells[1].outputs if o.output_type == "execute_result"]
    output.data.pop("image/png", None)
    assert WIDGET_VIEW in output.data
    nbformat.write(nb, tmp_path / "saved.ipynb")
    env = dict(os.environ, PYTHONPATH=env_path, JUPYTER_CONFIG_DIR=str(tmp_path / "config"))
    done = subprocess.run([sys.executable, "-m", "jupyter", "nbconvert", "--to", "html", "saved.ipynb"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    html = (tmp_path / "saved.html").read_text()
    assert html.count('src="data:image/png;base64,') == 1 and WIDGET_VIEW not in html
    assert not re.search(r'src="https?://', html)


def test_loading_a_model_shows_no_weight_loading_progress_bar(capfd: Any) -> None:
    import nbinterp as ni
    from transformers.utils import logging as hf_logging

    hf_logging.enable_progress_bar()
    ni.load()
    assert "Loading weights" not in capfd.readouterr().err
    assert hf_logging.is_progress_bar_enabled()  # the user's setting is back
    hf_logging.disable_progress_bar()
    ni.load()
    assert not hf_logging.is_progress_bar_enabled()
    hf_logging.enable_progress_bar()
