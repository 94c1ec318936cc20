"""A tuned model's files for download from its job page: the LoRA adapter, the merged weights and
the GGUF copies that finetuning/runner.py `export` wrote into its folder under MODEL_DIR/tuned.

Only the job's owner (or staff: `Job.objects.owned_by`) sees them. A file is named by its path
inside the folder and must be one of the files listed (no other path, no link leading out of the
folder); it is streamed a block at a time (chatsite/streaming.py), never read into memory."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from inference.loading import ModelLoadError, check_location


@dataclass(frozen=True)
class ModelFile:
    path: str  # inside the model's folder, with "/"
    bytes: int
    kind: str

    @property
    def size(self) -> str:
        for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
            if self.bytes >= scale:
                return f"{self.bytes / scale:.1f} {unit}"
        return f"{self.bytes} bytes"


def _kind(path: str) -> str:
    if path.startswith("adapter/"):
        return "LoRA adapter (peft; adapter.gguf for llama.cpp)"
    if path.endswith(".gguf"):
        return "merged model, GGUF (llama.cpp, Ollama, LM Studio)"
    if path.endswith(".safetensors"):
        return "merged model weights (safetensors, transformers)"
    return "model configuration and tokenizer"


def folder_of(model) -> Path | None:
    try:
        folder = check_location(model.location)
    except ModelLoadError:
        return None
    return folder if folder.is_dir() else None


def files_of(model) -> list[ModelFile]:
    """The files of a tuned model's folder (none when it is not on this server)."""
    folder = folder_of(model)
    if folder is None:
        return []
    found = []
    for path in sorted(folder.rglob("*")):
        if (
            path.is_symlink()
            or not path.is_file()
            or any(part.startswith(".") for part in path.relative_to(folder).parts)
        ):
            continue
        name = path.relative_to(folder).as_posix()
        found.append(ModelFile(name, path.stat().st_size, _kind(name)))
    return found


def file_of(model, name: str) -> Path | None:
    """The file `name` of the model's folder, if it is one of `files_of`; else None."""
    if name not in {f.path for f in files_of(model)}:
        return None
    return folder_of(model) / name
