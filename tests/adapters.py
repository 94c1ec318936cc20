"""LoRA adapters for tests: random peft adapters (no training needed) over a model folder, with
their llama.cpp copies. Random B matrices (peft starts them at zero) so the adapter changes
answers; `strength` scales them so the model still writes text."""

from __future__ import annotations

from pathlib import Path

import torch


def make_adapter(base_dir: Path, target: Path, *, seed: int, targets="all-linear", rank=8, strength=0.5) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    if (target / "adapter_config.json").exists():
        return target
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    torch.manual_seed(seed)
    config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=targets, init_lora_weights=False)
    peft_model = get_peft_model(model, config)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.mul_(strength)
    peft_model.save_pretrained(str(target))
    return target


def with_gguf(adapter_dir: Path, base_gguf: Path) -> Path:
    """Add the adapter's llama.cpp copy (adapter.gguf) to its folder."""
    from finetuning import gguf_files
    from inference.backends.llamacpp import adapter_gguf

    if not adapter_gguf(adapter_dir).exists():
        gguf_files.write_lora(base_gguf, adapter_dir, adapter_gguf(adapter_dir))
    return adapter_dir
