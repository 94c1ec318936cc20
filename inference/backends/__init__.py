"""Engine backends behind one interface (base.Backend), and the factory that opens the right one
for a model row. Adding a backend adds a module and a line in BACKENDS."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

from ..loading import ModelLoadError, ModelSpec, choose_device, gguf_path, load_model, load_tokenizer
from .base import Backend, GenerationRequest, StepEvent

logger = logging.getLogger(__name__)

__all__ = ["Backend", "GenerationRequest", "StepEvent", "choose_backend", "open_backend"]


def llamacpp_available() -> bool:
    return importlib.util.find_spec("xllamacpp") is not None


def choose_backend(spec: ModelSpec) -> str:
    """`auto`: llama.cpp for a model with a GGUF file on a CPU (three times transformers' speed
    there, docs/performance.md); transformers on a GPU or for a model without one."""
    if spec.backend != "auto":
        return spec.backend
    if choose_device(spec.device).startswith("cuda"):
        return "transformers"
    has_gguf = spec.source == "packaged" or (spec.source == "local" and bool(spec.gguf_file))
    return "llamacpp" if has_gguf and llamacpp_available() else "transformers"


def _open_transformers(spec: ModelSpec, model_dir: Path, options: dict) -> Backend:
    from .torch_thread import TORCH, OnTorchThread
    from .transformers import BatchEngine

    def build() -> BatchEngine:
        model, tokenizer = load_model(spec, model_dir)
        return BatchEngine(
            model,
            tokenizer,
            max_batch=options["max_batch"],
            prefill_chunk=options["prefill_chunk"],
            max_adapters=options.get("max_adapters", 16),
        )

    # Torch runs on a thread that ends when idle, so that llama.cpp models served by the same
    # worker keep their speed afterwards (torch_thread.py).
    return OnTorchThread(TORCH.call(build))


def _open_llamacpp(spec: ModelSpec, model_dir: Path, options: dict) -> Backend:
    if not llamacpp_available():
        raise ModelLoadError("The llama.cpp backend needs the xllamacpp package: pip install xllamacpp.")
    from .llamacpp import LlamaCppBackend, adapter_gguf

    path = gguf_path(spec)
    if path is None:
        raise ModelLoadError(
            f"Model {spec.slug!r} has no GGUF file for llama.cpp; set its GGUF file or use transformers."
        )
    tokenizer = load_tokenizer(spec, model_dir)
    return LlamaCppBackend(
        str(path),
        tokenizer,
        n_parallel=options["parallel"],
        n_threads=options["threads"],
        # Each slot holds one request of the model's full length (its own KV stream).
        slot_context=options["max_input_tokens"] + options["max_new_tokens"],
        n_batch=options.get("batch", 256),
        adapters={
            name: folder for name, folder in (options.get("adapters") or {}).items() if adapter_gguf(folder).is_file()
        },
    )


BACKENDS = {"transformers": _open_transformers, "llamacpp": _open_llamacpp}


def open_backend(spec: ModelSpec, model_dir: Path, **options) -> Backend:
    """Load a model with the backend its row asks for (or `auto` picks). Raises ModelLoadError.
    `adapters` ({name: adapter folder}): LoRA adapters llama.cpp loads at start (transformers
    loads them when first asked, see Backend.add_adapter)."""
    name = choose_backend(spec)
    opener = BACKENDS.get(name)
    if opener is None:
        raise ModelLoadError(f"Unknown backend {name!r} for model {spec.slug!r}.")
    backend = opener(spec, model_dir, options)
    logger.info("Serving %s with the %s backend", spec.slug, name)
    return backend
