"""No thread outlives its view or the interpreter, and a kernel interrupt
mid-stream leaves the model usable with what was computed kept.

- A script that ends with two feature views still streaming their contexts
  pass used to abort at exit ("terminate called without an active
  exception", exit code 134): torch was torn down under a daemon thread.
- close() stops a view's thread after the batch in flight and joins it.
- In a real kernel, interrupting a patching sweep that streams in the
  foreground leaves the model's lock free, `model.run` right, the cells
  computed so far in the view, and `resume()` finishing to the numbers of an
  uninterrupted sweep.
- A contexts pass cut by an interrupt mid-batch does that batch again on
  resume and ends equal to an uninterrupted pass.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import torch

import nbinterp as ni
from nbinterp.representations.contexts import ContextIndex, default_corpus

REPO = Path(__file__).resolve().parents[1]
PROMPT = "When Mary and John went to the store , John gave a drink to"
SAE_DIR = REPO / "nbinterp" / "bundled" / "sae"


def subprocess_env(**extra: str) -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
                **extra)


def test_a_script_ending_with_streaming_views_exits_cleanly(tmp_path: Path) -> None:
    # torch keeps its default intra-op threads here: the abort needed them
    script = tmp_path / "two_views.py"
    script.write_text(textwrap.dedent(f"""
        import nbinterp as ni
        m = ni.load()
        p = {PROMPT!r}
        views = [ni.features(m, p, sae=ni.load_sae({str(SAE_DIR)!r})) for _ in range(2)]
        [v.steer({{}}) for v in views]
        assert any(v._context_thread is not None and v._context_thread.is_alive() for v in views), \\
            "no contexts pass was running at exit: the test would prove nothing"
        print("views made")
    """))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300,
                          env=subprocess_env(), cwd=tmp_path)
    assert "views made" in done.stdout, done.stderr[-3000:]
    assert "terminate called" not in done.stderr
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.fixture(scope="module")
def model() -> Any:
    return ni.load()


def long_corpus() -> list[str]:
    return default_corpus(n_per_task=200)


def test_closing_a_feature_view_stops_and_joins_its_contexts_thread(model: Any) -> None:
    view = ni.features(model, PROMPT, sae=ni.load_sae(SAE_DIR), corpus=long_corpus(), context_batch_size=16)
    thread = view._context_thread
    assert thread is not None and thread.is_alive()
    started = time.perf_counter()
    view.close()
    assert not thread.is_alive() and time.perf_counter() - started < 30
    index = view._index
    assert index is None or not index.finished  # stopped, not run to the end
    view.resume_contexts()  # a closed view starts nothing again
    assert view._context_thread is None or not view._context_thread.is_alive()


def test_closing_a_patching_view_stops_its_sweep(model: Any) -> None:
    clean = " ".join([PROMPT] * 3)
    view = ni.patch(model, clean, corrupted=clean.replace("Mary", "Anna"), target=" Mary", foil=" John",
                    batch_size=1)
    assert view.running
    view.close()
    deadline = time.perf_counter() + 30
    while view.running and time.perf_counter() < deadline:
        time.sleep(0.01)
    assert not view.running
    assert view.progress["done"] < view.progress["total"]
    assert model.lock.acquire(blocking=False)
    model.lock.release()


def test_an_interrupted_context_pass_keeps_its_batches_and_redoes_the_cut_one(model: Any, monkeypatch: Any) -> None:
    from nbinterp.representations.activations import FeatureActivations

    source = FeatureActivations(model, PROMPT, sae=ni.load_sae(SAE_DIR)).source
    corpus = long_corpus()[:60]
    reference = ContextIndex(model, source, corpus, batch_tokens=64).run()

    index = ContextIndex(model, source, corpus, batch_tokens=64)
    assert len(index.batches) > 4
    forward = model.capture_batch
    calls = {"n": 0}

    def interrupted(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # what a kernel interrupt raises mid-forward
        return forward(*args, **kwargs)

    monkeypatch.setattr(model, "capture_batch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        index.run()
    assert index.progress["done_docs"] > 0 and not index.finished  # the two batches before are kept
    assert model.lock.acquire(blocking=False)
    model.lock.release()
    index.run()
    assert index.finished and index.tokens_seen == reference.tokens_seen
    for feature in range(0, source.n_features, max(1, source.n_features // 64)):
        got, want = index.top(feature, 10), reference.top(feature, 10)
        assert [(doc, position) for doc, position, _ in got] == [(doc, position) for doc, position, _ in want]
        assert [value for *_, value in got] == pytest.approx([value for *_, value in want], rel=1e-6, abs=1e-6)
        assert index.density(feature) == reference.density(feature)


# ------------------------------------------------------------ a real kernel
KERNEL_SETUP = f"""
import json, time
import torch
torch.set_num_threads(1)
import nbinterp as ni
model = ni.load()
clean = " ".join([{PROMPT!r}] * 3)
corrupted = clean.replace("Mary", "Anna")
options = dict(corrupted=corrupted, target=" Mary", foil=" John", batch_size=1)
reference = ni.patch(model, clean, background=False, **options).effects
logit_diff = model.run(clean).logit_diff(" Mary", " John")
view = ni.patch(model, clean, **options)
view.cancel()
view.wait()
print(json.dumps({{"done": view.progress["done"]}}))

def report(change):  # tells the test where the sweep is, so it interrupts mid-stream (not by a timer)
    print(json.dumps({{"progress": change["new"]["done"], "total": change["new"]["total"]}}), flush=True)
"""

KERNEL_CHECK = """
view.unobserve(report, names="progress")
computed = {k: ~torch.isnan(v) for k, v in view.effects.items()}
kept_equal = all(torch.allclose(view.effects[k][m], reference[k][m], rtol=1e-5, atol=1e-5) for k, m in computed.items())
lock_free = model.lock.acquire(blocking=False)
if lock_free:
    model.lock.release()
after = {"state": view.progress["state"], "done": view.progress["done"], "total": view.progress["total"],
         "computed": int(sum(int(m.sum()) for m in computed.values())), "kept_equal": kept_equal,
         "lock_free": lock_free,
         "logit_diff_error": abs(model.run(clean).logit_diff(" Mary", " John") - logit_diff)}
view.resume(background=False)
after["finished"] = view.wait()
after["resumed_max_error"] = max(float((view.effects[k] - reference[k]).abs().max()) for k in reference)
print(json.dumps(after))
"""


def run_cell(kc: Any, code: str, timeout: float = 300) -> tuple[str, list[dict[str, Any]]]:
    """(stdout, error contents) of one execution."""
    msg_id = kc.execute(code)
    stdout, errors = [], []
    deadline = time.monotonic() + timeout
    while True:
        msg = kc.get_iopub_msg(timeout=max(1.0, deadline - time.monotonic()))
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        kind = msg["msg_type"]
        if kind == "stream" and msg["content"]["name"] == "stdout":
            stdout.append(msg["content"]["text"])
        elif kind == "error":
            errors.append(msg["content"])
        elif kind == "status" and msg["content"]["execution_state"] == "idle":
            return "".join(stdout), errors


def test_interrupting_the_kernel_mid_stream_keeps_the_model_and_the_numbers(tmp_path: Path) -> None:
    from jupyter_client.manager import start_new_kernel

    km, kc = start_new_kernel(kernel_name="python3", cwd=str(tmp_path),
                              env=subprocess_env(IPYTHONDIR=str(tmp_path / "ipython")))
    try:
        out, errors = run_cell(kc, KERNEL_SETUP)
        assert not errors, errors
        setup = json.loads(out.strip().splitlines()[-1])
        msg_id = kc.execute("view.observe(report, names='progress'); view.resume(background=False)")
        errors, interrupted = [], False
        while True:
            msg = kc.get_iopub_msg(timeout=120)
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            if not interrupted and msg["msg_type"] == "stream" and '"progress"' in msg["content"]["text"]:
                report = json.loads(msg["content"]["text"].strip().splitlines()[-1])
                if setup["done"] < report["progress"] < report["total"] // 2:
                    km.interrupt_kernel()  # the sweep has streamed cells and has most still to run
                    interrupted = True
            if msg["msg_type"] == "error":
                errors.append(msg["content"])
            if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                break
        assert [e["ename"] for e in errors] == ["KeyboardInterrupt"], "the sweep ended before the interrupt"
        out, errors = run_cell(kc, KERNEL_CHECK)
        assert not errors, errors
        after = json.loads(out.strip().splitlines()[-1])
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    assert after["state"] == "cancelled"
    assert setup["done"] <= after["done"] < after["total"]
    # what was computed is kept, and right (an interrupt may land between a cell's write and its count)
    assert after["done"] <= after["computed"] <= after["done"] + 1 and after["kept_equal"]
    assert after["lock_free"]
    assert after["logit_diff_error"] < 1e-4  # float32 logits of order 10
    assert after["finished"] and after["resumed_max_error"] < 1e-4


def test_an_interrupted_foreground_contexts_request_leaves_the_view_answering(model: Any, monkeypatch: Any) -> None:
    view = ni.features(model, PROMPT, sae=ni.load_sae(SAE_DIR), corpus=long_corpus()[:40], background=False)
    assert view.contexts["state"] == "done"
    index = view._index
    first, second = (int(f) for f in view.features.top_indices[-1, 1:3])
    contexts = index.contexts

    def interrupted(*args: Any, **kwargs: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(index, "contexts", interrupted)
    with pytest.raises(KeyboardInterrupt):
        view.selected_feature = first
    assert view.contexts["state"] == "cancelled"
    monkeypatch.setattr(index, "contexts", contexts)
    view.selected_feature = second  # before the fix the view thought a pass was still running: no answer
    assert view.contexts["state"] == "done" and view.contexts["feature"] == second
    assert view.contexts["items"] == [c.to_dict() for c in index.contexts(second, len(view.contexts["items"]))]
