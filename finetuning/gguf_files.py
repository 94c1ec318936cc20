"""GGUF files for llama.cpp from a tuned model: the merged model, and a LoRA adapter that
llama.cpp applies over the base GGUF it already holds.

Both start from the base model's own GGUF file (the packaged default has one; a local model
may name one), so the tokenizer, the architecture's settings and the chat template that
llama.cpp reads come from a file llama.cpp already serves. The chat template written is the
one the model was trained with (the tokenizer's), so an exported model answers in the format
it learned (the bug in LLaMA-Factory #3538, Unsloth #1589, ms-swift #2349).

Tensor names follow gguf-py's map from transformers' names. Llama-family GGUF files store the
query and key projections with their rows permuted for llama.cpp's rotary layout (as
llama.cpp's converter writes them); transformers' copies are not, so they are permuted here:
the whole weight for the merged model, the B matrix (the output side) for a LoRA adapter.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np

# Architectures whose tensor layout this module knows. Others get a clear refusal rather than
# a file that loads and answers nonsense.
SUPPORTED_ARCHITECTURES = ("llama",)


class GGUFExportError(Exception):
    """The model cannot be written as GGUF; the message says why, for the job's log."""


def _reader(base_gguf: Path):
    import gguf

    reader = gguf.GGUFReader(str(base_gguf))
    arch = reader.fields["general.architecture"].contents()
    if arch not in SUPPORTED_ARCHITECTURES:
        raise GGUFExportError(
            f"GGUF export supports {', '.join(SUPPORTED_ARCHITECTURES)} models; the base is {arch!r}."
        )
    return reader, arch


def _field(reader, key: str):
    field = reader.fields.get(key)
    return field.contents() if field is not None else None


def _permute(weights: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's row order for a query or key projection (its converter's `permute`)."""
    return (
        weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


class _Names:
    """transformers' parameter names → GGUF tensor names, and the heads used by the permute."""

    def __init__(self, reader, arch: str) -> None:
        import gguf

        blocks = int(_field(reader, f"{arch}.block_count"))
        arch_id = next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch)
        self.map = gguf.get_tensor_name_map(arch_id, blocks)
        self.n_head = int(_field(reader, f"{arch}.attention.head_count"))
        self.n_head_kv = int(_field(reader, f"{arch}.attention.head_count_kv") or self.n_head)

    def gguf_name(self, hf_name: str) -> str | None:
        return self.map.get_name(hf_name, try_suffixes=(".weight", ".bias"))

    def heads_to_permute(self, hf_name: str) -> int | None:
        if hf_name.endswith("q_proj.weight"):
            return self.n_head
        if hf_name.endswith("k_proj.weight"):
            return self.n_head_kv
        return None


def _copy_metadata(reader, writer, skip: tuple[str, ...]) -> None:
    """Every key of the base file (tokenizer, hyperparameters) except those in `skip`."""
    import gguf

    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key in skip or key == "general.architecture":
            continue
        main = field.types[0]
        if main == gguf.GGUFValueType.ARRAY:
            writer.add_key_value(key, field.contents(), main, sub_type=field.types[-1])
        else:
            writer.add_key_value(key, field.contents(), main)


def _write_atomically(writer_factory, target: Path) -> Path:
    """Write through a temporary file in the target's folder and rename it into place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}-", dir=target.parent)
    os.close(fd)
    try:
        writer = writer_factory(tmp)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def _quantized(array: np.ndarray):
    """Q8_0 for matrices whose rows split into 32-value blocks (near-lossless, a quarter of
    float32), float32 for vectors (norms), float16 otherwise."""
    import gguf

    if array.ndim == 1:
        return array.astype(np.float32), gguf.GGMLQuantizationType.F32
    if array.shape[-1] % 32 == 0:
        return gguf.quants.quantize(array.astype(np.float32), gguf.GGMLQuantizationType.Q8_0), (
            gguf.GGMLQuantizationType.Q8_0
        )
    return array.astype(np.float16), gguf.GGMLQuantizationType.F16


def write_merged(base_gguf: Path, state_dict: dict, chat_template: str, name: str, target: Path) -> Path:
    """The merged tuned model as one GGUF file (Q8_0 matrices) with the base file's tokenizer and
    settings and the given chat template. `state_dict`: transformers names → tensors."""
    import gguf

    reader, arch = _reader(base_gguf)
    names = _Names(reader, arch)
    base_tensors = {t.name: t for t in reader.tensors}
    tensors: dict[str, tuple] = {}
    for hf_name, tensor in state_dict.items():
        gguf_name = names.gguf_name(hf_name)
        if gguf_name is None:
            raise GGUFExportError(f"No GGUF name for the tensor {hf_name!r}.")
        if gguf_name not in base_tensors:
            if hf_name == "lm_head.weight":
                continue  # tied to the token embeddings: the base file stores them once
            raise GGUFExportError(f"The base GGUF file has no tensor {gguf_name!r} (from {hf_name!r}).")
        array = tensor.detach().float().cpu().numpy()
        heads = names.heads_to_permute(hf_name)
        if heads:
            array = _permute(array, heads)
        tensors[gguf_name] = _quantized(array)
    missing = set(base_tensors) - set(tensors)
    if any(not n.startswith("rope_") for n in missing):
        raise GGUFExportError(f"The tuned model lacks tensors the base GGUF has: {sorted(missing)[:5]}.")

    def make(path: str):
        writer = gguf.GGUFWriter(path, arch)
        _copy_metadata(reader, writer, skip=("general.name", "general.file_type", "tokenizer.chat_template"))
        writer.add_name(name)
        writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0)
        writer.add_chat_template(chat_template)
        for tensor_name in (t.name for t in reader.tensors):  # the base file's order
            if tensor_name in tensors:
                data, qtype = tensors[tensor_name]
                writer.add_tensor(tensor_name, data, raw_dtype=qtype)
            else:  # a computed table such as rope_freqs: kept as the base has it
                base = base_tensors[tensor_name]
                writer.add_tensor(tensor_name, np.array(base.data), raw_dtype=base.tensor_type)
        return writer

    return _write_atomically(make, target)


def write_lora(base_gguf: Path, adapter_dir: Path, target: Path) -> Path:
    """A peft LoRA adapter folder (adapter_config.json, adapter_model.safetensors) as a GGUF
    LoRA adapter for llama.cpp over `base_gguf`."""
    import gguf
    from safetensors.numpy import load_file

    reader, arch = _reader(base_gguf)
    names = _Names(reader, arch)
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    weights = load_file(str(adapter_dir / "adapter_model.safetensors"))
    pairs: dict[str, dict] = {}
    for key, array in weights.items():
        for part in ("lora_A", "lora_B"):
            marker = f".{part}.weight"
            if marker in key:
                # base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight → model.layers.0...q_proj.weight
                hf_name = key.replace(marker, ".weight").removeprefix("base_model.model.")
                pairs.setdefault(hf_name, {})[part] = array
                break
        else:
            raise GGUFExportError(f"The adapter has a tensor llama.cpp cannot apply: {key!r}.")
    base_names = {t.name for t in reader.tensors}

    def make(path: str):
        writer = gguf.GGUFWriter(path, arch)
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(config["lora_alpha"]))
        for hf_name, pair in pairs.items():
            gguf_name = names.gguf_name(hf_name)
            if gguf_name is None or gguf_name not in base_names or set(pair) != {"lora_A", "lora_B"}:
                raise GGUFExportError(f"The adapter's {hf_name!r} has no matching tensor in the base GGUF.")
            lora_a = pair["lora_A"].astype(np.float32)  # [rank, in]
            lora_b = pair["lora_B"].astype(np.float32)  # [out, rank]
            heads = names.heads_to_permute(hf_name)
            if heads:
                lora_b = _permute(lora_b, heads)  # B carries the output rows the permute reorders
            writer.add_tensor(f"{gguf_name}.lora_a", lora_a)
            writer.add_tensor(f"{gguf_name}.lora_b", lora_b)
        return writer

    return _write_atomically(make, target)
