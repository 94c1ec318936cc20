"""A worker keeps at most INFERENCE_MAX_MODELS loaded and unloads models unused for a while."""

import time

import pytest

from inference.models import LanguageModel
from inference.worker import InferenceWorker

pytestmark = pytest.mark.django_db


@pytest.fixture
def second_tiny(tiny_model):
    return LanguageModel.objects.create(
        name="Tiny 2", slug="tiny-2", source="local", location=tiny_model.location, dtype="float32", max_tokens=8
    )


def test_loading_a_model_past_the_limit_unloads_the_least_recently_used_idle_one(tiny_model, second_tiny, settings):
    settings.INFERENCE_MAX_MODELS = 1
    worker = InferenceWorker(worker_id="unload-test")
    worker._serving("tiny")[0]
    assert list(worker.models) == ["tiny"]
    worker._serving("tiny-2")[0]
    assert list(worker.models) == ["tiny-2"]


def test_a_model_unused_for_the_idle_time_is_unloaded_and_loaded_again_on_use(tiny_model, settings):
    settings.INFERENCE_IDLE_UNLOAD_S = 60
    worker = InferenceWorker(worker_id="idle-test")
    worker._serving("tiny")[0]
    worker._unload_idle()
    assert "tiny" in worker.models  # used just now
    worker.models["tiny"].last_used = time.monotonic() - 61
    worker._unload_idle()
    assert worker.models == {}
    worker._serving("tiny")[0]
    assert "tiny" in worker.models


def test_changing_a_models_backend_reloads_it_without_a_restart(tiny_model):
    worker = InferenceWorker(worker_id="reload-test")
    first = worker._serving("tiny")[0]
    assert worker._serving("tiny")[0] is first
    LanguageModel.objects.filter(pk=tiny_model.pk).update(dtype="bfloat16")
    second = worker._serving("tiny")[0]
    assert second is not first and next(second.model.parameters()).dtype.is_floating_point
    assert str(next(second.model.parameters()).dtype) == "torch.bfloat16"
