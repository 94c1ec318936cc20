"""Tuned models served as LoRA adapters over the base both backends already hold: rows with
different adapters (or none) share batches and each gets exactly its own model's reply."""

from __future__ import annotations

import time

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from inference.backends.base import GenerationRequest
from inference.backends.transformers import BatchEngine

from .adapters import make_adapter, with_gguf
from .test_engine import PROMPTS, prompt_ids, run


def fresh(model_dir):
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def tiny_adapters(tiny_model_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tiny-adapters")
    return {
        "one": make_adapter(tiny_model_dir, tmp / "one", seed=1, strength=2.0),
        "two": make_adapter(tiny_model_dir, tmp / "two", seed=2, targets=["q_proj", "v_proj"], rank=4, strength=2.0),
    }


def reference(model_dir, adapter_dir, tokenizer, text: str, n: int) -> list[int]:
    """Plain `generate` of the base, or of the base with one adapter through peft."""
    from peft import PeftModel

    model = fresh(model_dir)
    if adapter_dir is not None:
        model = PeftModel.from_pretrained(model, str(adapter_dir)).eval()
    ids = torch.tensor([prompt_ids(tokenizer, text)])
    with torch.inference_mode():
        out = model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n, do_sample=False
        )
    return out[0, ids.shape[1] :].tolist()


def test_rows_with_different_adapters_share_batches_and_each_gets_its_own_model(tiny_model_dir, tiny_adapters):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    engine = BatchEngine(fresh(tiny_model_dir), tokenizer, max_batch=8)
    engine.stop_ids = set()  # random weights: a fixed length, compared token for token
    assert engine.add_adapter("one", tiny_adapters["one"]) and engine.add_adapter("two", tiny_adapters["two"])
    requests = {
        "base": GenerationRequest("base", prompt_ids(tokenizer, PROMPTS[0]), 12),
        "one": GenerationRequest("one", prompt_ids(tokenizer, PROMPTS[1]), 12, adapter="one"),
        "two": GenerationRequest("two", prompt_ids(tokenizer, PROMPTS[2]), 10, adapter="two"),
        "one-late": GenerationRequest("one-late", prompt_ids(tokenizer, PROMPTS[0]), 8, adapter="one"),
    }
    tokens = {}
    real_accept = engine._accept

    def record(row, token):
        tokens.setdefault(row.request.id, []).append(token)
        return real_accept(row, token)

    engine._accept = record
    run(engine, {0: [requests["base"], requests["one"]], 2: [requests["two"]], 4: [requests["one-late"]]})
    texts = {"base": PROMPTS[0], "one": PROMPTS[1], "two": PROMPTS[2], "one-late": PROMPTS[0]}
    for request_id, request in requests.items():
        adapter_dir = tiny_adapters[request.adapter] if request.adapter else None
        expected = reference(tiny_model_dir, adapter_dir, tokenizer, texts[request_id], request.max_new_tokens)
        assert tokens[request_id] == expected, request_id
    # The adapters matter: the same prompt gives another reply with an adapter than without.
    assert tokens["one-late"] != tokens["base"][:8]


def test_beyond_the_limit_the_least_recently_used_adapter_is_dropped(tiny_model_dir, tiny_adapters, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    engine = BatchEngine(fresh(tiny_model_dir), tokenizer, max_adapters=1)
    assert engine.add_adapter("one", tiny_adapters["one"])
    assert engine.add_adapter("two", tiny_adapters["two"])
    assert list(engine.adapters) == ["two"]
    assert "one" not in engine.model.peft_config
    assert not engine.add_adapter("none", tmp_path)  # no adapter_config.json there: refused


@pytest.mark.slow
def test_llamacpp_applies_each_request_s_adapter_even_in_one_batch(tmp_path_factory):
    from inference.backends import open_backend
    from inference.loading import PACKAGED_GGUF, PACKAGED_SLUG, ModelSpec, install_packaged_model, packaged_gguf_folder
    from inference.prompts import apply_template

    from .conftest import TEST_MODEL_DIR

    folder = install_packaged_model(TEST_MODEL_DIR)
    tmp = tmp_path_factory.mktemp("llama-adapters")
    adapter = with_gguf(make_adapter(folder, tmp / "one", seed=3, strength=1.0), packaged_gguf_folder() / PACKAGED_GGUF)
    spec = ModelSpec(slug=PACKAGED_SLUG, source="packaged", location="", backend="llamacpp", gguf_file=PACKAGED_GGUF)
    options = dict(max_batch=4, prefill_chunk=64, parallel=4, threads=0, max_input_tokens=512, max_new_tokens=64)
    backend = open_backend(spec, TEST_MODEL_DIR, adapters={"one": adapter}, **options)
    assert backend.add_adapter("one", adapter) and not backend.add_adapter("other", tmp)
    ids = apply_template(backend.tokenizer, [{"role": "user", "content": "What is the capital of France?"}])

    def answers(requests):
        for request in requests:
            backend.add(request)
        texts = {r.id: "" for r in requests}
        deadline = time.monotonic() + 120
        while backend.has_work and time.monotonic() < deadline:
            for event in backend.step():
                texts[event.request_id] += event.text
        return texts

    # Seeded, so each request reads its whole prompt (see LlamaCppBackend._body): a prompt read
    # partly from a slot's cache computes its last token in another batch shape, whose last bits
    # changed this random adapter's greedy answer after ten tokens (on CI and here), which is
    # not what this test is about.
    base, one = GenerationRequest("base", ids, 24, seed=0), GenerationRequest("one", ids, 24, adapter="one", seed=0)
    alone = answers([base]) | answers([one])
    together = answers([base, one])
    backend.close()
    assert alone["base"] != alone["one"]  # the adapter changes the answer
    assert together == alone  # and applies to its own request only, side by side


def _tuned_row(base, slug: str, folder, adapter_from):
    """A tuned model row the way the fine-tuning runner registers one: a merged copy (here the
    base's own files, hard-linked) with its adapter in `adapter/`."""
    import os
    import shutil

    from inference.models import LanguageModel

    folder.mkdir(parents=True, exist_ok=True)
    for item in base.iterdir():
        if item.is_file() and not (folder / item.name).exists():
            os.link(item, folder / item.name)
    shutil.copytree(adapter_from, folder / "adapter", dirs_exist_ok=True)
    return LanguageModel.objects.create(
        name=slug, slug=slug, source="local", location=str(folder), adapter="adapter", backend="transformers",
        base=LanguageModel.objects.get(is_default=True), dtype="float32",
    )  # fmt: skip


@pytest.mark.slow
@pytest.mark.django_db
def test_the_worker_serves_tuned_models_over_the_base_it_holds(tmp_path_factory):
    from inference.backends.llamacpp import LlamaCppBackend, adapter_gguf
    from inference.defaults import ensure_default_model
    from inference.loading import PACKAGED_GGUF, install_packaged_model, packaged_gguf_folder
    from inference.models import LanguageModel
    from inference.worker import InferenceWorker, Reply

    from .conftest import TEST_MODEL_DIR

    base_row, _ = ensure_default_model()
    LanguageModel.objects.filter(pk=base_row.pk).update(backend="llamacpp")
    folder = install_packaged_model(TEST_MODEL_DIR)
    adapter = with_gguf(
        make_adapter(folder, tmp_path_factory.mktemp("a") / "adapter", seed=4), packaged_gguf_folder() / PACKAGED_GGUF
    )
    root = TEST_MODEL_DIR / "tuned-test"
    worker = InferenceWorker("adapters-test")
    try:
        _tuned_row(folder, "t1", root / "t1", adapter)
        backend, name = worker._serving("t1")
        assert isinstance(backend, LlamaCppBackend) and name == "t1"
        assert set(worker.models) == {base_row.slug}  # no second copy of the model

        # A model tuned later: llama.cpp takes adapters when it starts, so the idle base reopens.
        _tuned_row(folder, "t2", root / "t2", adapter)
        reopened, name = worker._serving("t2")
        assert name == "t2" and reopened is not backend and set(reopened.adapters) == {"t1", "t2"}
        assert set(worker.models) == {base_row.slug}

        # While the base is busy, a new one is served from its merged copy instead of waiting.
        worker.replies["busy"] = Reply(request=None, prompt_tokens=1, backend=reopened)
        _tuned_row(folder, "t3", root / "t3", adapter)
        merged, name = worker._serving("t3")
        assert name == "" and merged is worker.models["t3"].backend and merged.name == "transformers"
        del worker.replies["busy"]

        # A broken adapter file does not take the base down: that model falls back to its copy.
        bad = _tuned_row(folder, "t4", root / "t4", adapter)
        adapter_gguf(root / "t4" / "adapter").write_bytes(b"GGUF-not-really")
        fallback, name = worker._serving("t4")
        assert name == "" and "t4" in worker.broken_adapters and fallback is worker.models[bad.slug].backend
        assert worker._serving("t1")[1] == "t1"

        # On transformers the adapter is loaded over the base when first asked for.
        LanguageModel.objects.filter(pk=base_row.pk).update(backend="transformers")
        engine, name = worker._serving("t2")
        assert name == "t2" and engine.name == "transformers" and "t2" in engine.adapters
    finally:
        for loaded in worker.models.values():
            loaded.backend.close()
        import shutil

        shutil.rmtree(root, ignore_errors=True)
