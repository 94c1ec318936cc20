"""A base model's general-knowledge probe is measured once per model version and reused by every
job on that base (finetuning/evaluation.py `base_probe`), and each measuring phase reports its
progress (questions answered / total) for the job's page. The real tiny model answers."""

from __future__ import annotations

import pytest

from finetuning import evaluation, runner, training
from finetuning.models import BaseProbe, Job

pytestmark = pytest.mark.django_db


def test_the_probe_is_measured_once_per_model_version_with_progress_and_then_reused(tiny_model, settings):
    settings.FINETUNE_PROBE_ITEMS = 20
    model, tokenizer, _, _ = training.load_base(tiny_model)
    calls = []
    first, reused = evaluation.base_probe(tiny_model, model, tokenizer, progress=lambda d, t: calls.append((d, t)))
    assert not reused and first["total"] == 20 and len(first["answers"]) == 20
    assert calls == [(16, 20), (20, 20)]  # one call per batch of 16 questions
    again, reused = evaluation.base_probe(tiny_model, model, tokenizer, progress=lambda d, t: calls.append((d, t)))
    assert reused and again == first and len(calls) == 2 and BaseProbe.objects.count() == 1

    tiny_model.dtype = "bfloat16"  # another version of the model: measured again
    tiny_model.save()
    _, reused = evaluation.base_probe(tiny_model, model, tokenizer)
    assert not reused and BaseProbe.objects.count() == 2
    settings.FINETUNE_PROBE_ITEMS = 10  # another probe: measured again
    assert evaluation.base_probe(tiny_model, model, tokenizer)[1] is False


def test_a_phase_shows_on_the_job_until_it_ends(alice, tiny_model):
    from finetuning.models import Dataset
    from finetuning.progress import job_json

    dataset = Dataset.objects.create(owner=alice, name="d", original_filename="d.jsonl", format="messages",
                                     file_name="d.jsonl", sha256="0" * 64, rows=12)  # fmt: skip
    job = Job.objects.create(owner=alice, name="j", base_model=tiny_model, dataset=dataset, state=Job.State.VALIDATING)
    runner._phase(job, "Base model: general-knowledge probe")(48, 300)
    job.refresh_from_db()
    assert job_json(job)["phase"] == {"name": "Base model: general-knowledge probe", "done": 48, "total": 300}
    Job.objects.filter(pk=job.pk).update(state=Job.State.FAILED)
    job.refresh_from_db()
    assert job_json(job)["phase"] == {}  # a finished job shows no phase left over
