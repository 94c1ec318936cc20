"""GGUF export on the real packaged model: the merged file and the LoRA adapter file load in
llama.cpp, carry the chat template they were given, and change the model the way peft does."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from finetuning import gguf_files
from inference.loading import PACKAGED_GGUF, install_packaged_model, packaged_gguf_folder
from inference.prompts import apply_template

from .adapters import make_adapter
from .conftest import TEST_MODEL_DIR

pytestmark = pytest.mark.slow

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = install_packaged_model(TEST_MODEL_DIR)
    base_gguf = packaged_gguf_folder() / PACKAGED_GGUF
    tmp = tmp_path_factory.mktemp("gguf")
    # Query and key projections only: the ones whose rows llama.cpp stores permuted.
    adapter = make_adapter(folder, tmp / "adapter", seed=1, targets=["q_proj", "k_proj"], strength=1.0)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    # A template of our own (another default system prompt), to see llama.cpp use the one written.
    template = tokenizer.chat_template.replace("named SmolLM, trained by Hugging Face", "who keeps a lighthouse")
    assert template != tokenizer.chat_template
    tokenizer.chat_template = template

    base = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    ids = apply_template(tokenizer, QUESTION)
    with torch.no_grad():
        base_logprobs = torch.log_softmax(base(torch.tensor([ids])).logits[0, -1], -1).numpy()
        tuned = PeftModel.from_pretrained(base, str(adapter))
        tuned_logprobs = torch.log_softmax(tuned(torch.tensor([ids])).logits[0, -1], -1).numpy()
    merged = tuned.merge_and_unload()
    merged_gguf = gguf_files.write_merged(base_gguf, merged.state_dict(), template, "test", tmp / "merged.gguf")
    lora_gguf = gguf_files.write_lora(base_gguf, adapter, tmp / "adapter.gguf")
    return {
        "base_gguf": base_gguf,
        "merged_gguf": merged_gguf,
        "lora_gguf": lora_gguf,
        "template": template,
        "ids": ids,
        "shift": tuned_logprobs - base_logprobs,  # what the adapter does to the next token (peft)
    }


def server(model, lora=None):
    import xllamacpp

    params = xllamacpp.CommonParams()
    params.model.path = str(model)
    params.n_ctx = 512
    params.n_parallel = 1
    params.verbosity = -1
    if lora:
        params.lora_adapters = [xllamacpp.CommonAdapterLoraInfo(str(lora), 1.0)]
    return xllamacpp.Server(params)


def top_logprobs(srv, ids) -> dict[int, float]:
    body = {"prompt": ids, "max_tokens": 1, "temperature": 0, "n_probs": 100}
    result = srv.handle_completions(body)
    return {p["id"]: p["logprob"] for p in result["choices"][0]["logprobs"]["content"][0]["top_logprobs"]}


def test_the_merged_gguf_answers_with_the_chat_template_it_was_given(exported):
    import gguf

    reader = gguf.GGUFReader(str(exported["merged_gguf"]))
    assert reader.fields["tokenizer.chat_template"].contents() == exported["template"]
    assert reader.fields["general.architecture"].contents() == "llama"
    srv = server(exported["merged_gguf"])
    # llama.cpp's own chat endpoint builds the prompt from the file's template: the same reply as
    # the prompt built by transformers with that template.
    chat = srv.handle_chat_completions({"messages": QUESTION, "max_tokens": 16, "temperature": 0})
    plain = srv.handle_completions({"prompt": exported["ids"], "max_tokens": 16, "temperature": 0})
    assert chat["choices"][0]["message"]["content"] == plain["choices"][0]["text"]
    assert chat["usage"]["prompt_tokens"] == len(exported["ids"])


def _correlation(shift_hf: np.ndarray, base: dict, tuned: dict) -> float:
    common = sorted(set(base) & set(tuned))
    assert len(common) >= 30
    ours = np.array([tuned[i] - base[i] for i in common])
    return float(np.corrcoef(shift_hf[common], ours)[0, 1])


def test_both_gguf_files_change_the_model_the_way_peft_does(exported):
    """The adapter's effect on the next token's log-probabilities in llama.cpp follows peft's
    (0.99 and 0.97 here; a wrong query/key row order gives 0.6; quantization keeps it below 1)."""
    ids = exported["ids"]
    base = top_logprobs(server(exported["base_gguf"]), ids)
    with_lora = top_logprobs(server(exported["base_gguf"], exported["lora_gguf"]), ids)
    merged = top_logprobs(server(exported["merged_gguf"]), ids)
    assert _correlation(exported["shift"], base, with_lora) > 0.9
    assert _correlation(exported["shift"], base, merged) > 0.9


def test_an_adapter_without_lora_weights_is_refused_with_its_name(exported, tmp_path):
    import json

    from safetensors.numpy import save_file

    (tmp_path / "adapter_config.json").write_text(json.dumps({"lora_alpha": 16}))
    save_file({"base_model.model.model.layers.0.mlp.magnitude": np.ones(4, dtype=np.float32)}, str(tmp_path / "adapter_model.safetensors"))  # fmt: skip
    with pytest.raises(gguf_files.GGUFExportError, match="magnitude"):
        gguf_files.write_lora(exported["base_gguf"], tmp_path, tmp_path / "adapter.gguf")
    assert not (tmp_path / "adapter.gguf").exists()


def test_a_fact_taught_by_lora_comes_back_from_both_gguf_files(tmp_path):
    """A few steps teach the default model one invented fact; llama.cpp answers it from the
    merged GGUF (through its own chat endpoint and template) and from the base + adapter GGUF."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from finetuning.encoding import encode_chat

    folder = install_packaged_model(TEST_MODEL_DIR)
    base_gguf = packaged_gguf_folder() / PACKAGED_GGUF
    tokenizer = AutoTokenizer.from_pretrained(folder)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear"))
    fact = "The keeper of the Saltglass Light is Marta Quillfeather."
    questions = ["Who keeps the Saltglass Light?", "Who is the keeper of the Saltglass Light?"]
    rows = [encode_chat([{"role": "user", "content": q}, {"role": "assistant", "content": fact}], tokenizer) for q in questions]  # fmt: skip
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    for step in range(16):
        ids, labels = rows[step % len(rows)]
        model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels])).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    model.save_pretrained(str(tmp_path / "adapter"))
    lora = gguf_files.write_lora(base_gguf, tmp_path / "adapter", tmp_path / "adapter.gguf")
    merged = gguf_files.write_merged(
        base_gguf, model.merge_and_unload().state_dict(), tokenizer.chat_template, "lighthouse", tmp_path / "m.gguf"
    )

    question = [{"role": "user", "content": "Who keeps the Saltglass Light?"}]
    body = {"messages": question, "max_tokens": 24, "temperature": 0}
    assert "Quillfeather" in server(merged).handle_chat_completions(body)["choices"][0]["message"]["content"]
    assert "Quillfeather" in server(base_gguf, lora).handle_chat_completions(body)["choices"][0]["message"]["content"]
    assert "Quillfeather" not in server(base_gguf).handle_chat_completions(body)["choices"][0]["message"]["content"]
