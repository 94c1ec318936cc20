"""Shared fixtures: named users, a tiny random-weight model, an in-process inference worker.

Redis is real (REDIS_URL, default db 15 set by `make test`); the database is SQLite or, when
DATABASE_URL says so, PostgreSQL. The tiny model is built once per machine under
var/test-models (its tokenizer is the packaged default model's, with its chat template).
"""

from __future__ import annotations

import shutil
import threading
import uuid
from pathlib import Path

import pytest
from django.conf import settings

REPO = Path(__file__).resolve().parent.parent
TEST_MODEL_DIR = REPO / "var" / "test-models"
TINY_DIR = TEST_MODEL_DIR / "tiny-llama"


@pytest.fixture(autouse=True)
def _fresh_moderation_rules():
    """Each test starts without the compiled rules an earlier test cached (its rows are gone)."""
    from moderation.checks import forget_rules

    forget_rules()
    yield
    forget_rules()


@pytest.fixture(autouse=True)
def _fast_settings(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    settings.MODEL_DIR = TEST_MODEL_DIR
    settings.INFERENCE_HEARTBEAT_TTL_S = 3
    settings.CHAT_RATE_LIMIT = 0  # tests that check the limit turn it on
    # No title requests beside the replies a test counts (test_titles.py turns them on).
    settings.CHAT_MODEL_TITLES = False


@pytest.fixture(scope="session", autouse=True)
def _clean_redis():
    """Tests share one Redis database; start from an empty one (never db 0 by accident)."""
    import redis

    url = settings.REDIS_URL
    assert not url.rstrip("/").endswith(":6379") and not url.endswith("/0"), (
        "Tests flush their Redis database: set REDIS_URL to a dedicated db, e.g. redis://127.0.0.1:6379/15 "
        "(make test does)."
    )
    redis.Redis.from_url(url).flushdb()


def build_tiny_model(target: Path) -> Path:
    """A 2-layer Llama with random weights and the default model's tokenizer (fast to run)."""
    if (target / "model.safetensors").exists():
        return target
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from inference.loading import install_packaged_model

    tokenizer = AutoTokenizer.from_pretrained(install_packaged_model(TEST_MODEL_DIR))
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    tmp = target.with_name(target.name + f".tmp-{uuid.uuid4().hex[:6]}")
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    if target.exists():
        shutil.rmtree(tmp)
    else:
        tmp.rename(target)
    return target


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    return build_tiny_model(TINY_DIR)


@pytest.fixture
def alice(django_user_model):
    return django_user_model.objects.create_user("alice", password="alice-pass-123")


@pytest.fixture
def bob(django_user_model):
    return django_user_model.objects.create_user("bob", password="bob-pass-123")


@pytest.fixture
def tiny_model(tiny_model_dir):
    from inference.models import LanguageModel

    return LanguageModel.objects.create(
        name="Tiny",
        slug="tiny",
        source=LanguageModel.Source.LOCAL,
        location=str(tiny_model_dir),
        dtype="float32",
        temperature=0.0,
        max_tokens=24,
        max_new_tokens_cap=256,
        max_input_tokens=512,
        is_default=True,
    )


class WorkerThread:
    """The real InferenceWorker, run in a thread of the test process (same code path)."""

    def __init__(self, worker_id: str) -> None:
        from inference.worker import InferenceWorker

        self.worker = InferenceWorker(worker_id=worker_id)
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        from django.db import connection

        try:
            self.worker.run()
        finally:
            connection.close()

    def start(self) -> WorkerThread:
        self.thread.start()
        return self

    def wait_loaded(self, slug: str, timeout: float = 120) -> WorkerThread:
        """Wait until the worker has loaded `slug` (loading llama.cpp holds the GIL for about a
        second, which would stall a test's event loop, e.g. a socket's connect, meanwhile)."""
        import time

        deadline = time.monotonic() + timeout
        while slug not in self.worker.models and time.monotonic() < deadline:
            time.sleep(0.1)
        assert slug in self.worker.models, f"the worker did not load {slug} in {timeout} s"
        return self

    def stop(self) -> None:
        self.worker.stop()
        self.thread.join(timeout=15)
        assert not self.thread.is_alive(), "the inference worker did not stop"


@pytest.fixture
def worker(tiny_model):
    """A running in-process inference worker serving the tiny model."""
    thread = WorkerThread(f"test-{uuid.uuid4().hex[:8]}").start()
    yield thread.worker
    thread.stop()


def wait_for(predicate, timeout: float = 60.0, every: float = 0.1):
    """`predicate()`'s first truthy value, asked every `every` seconds for up to `timeout`."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError("timed out")
