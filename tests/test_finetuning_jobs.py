"""A job's state machine without a worker: settings, claim (never twice), cancel, recovery."""

from __future__ import annotations

from datetime import timedelta
from unittest import mock

import pytest
from django.utils import timezone

from finetuning import hyperparameters, jobs
from finetuning.models import Dataset, Job

pytestmark = pytest.mark.django_db


@pytest.fixture
def dataset(alice):
    return Dataset.objects.create(
        owner=alice, name="facts", original_filename="facts.jsonl", format="messages", file_name="x.jsonl",
        sha256="0" * 64, rows=48,
    )  # fmt: skip


@pytest.fixture
def job(alice, tiny_model, dataset):
    with mock.patch.object(jobs, "enqueue") as enqueue:
        created = jobs.create(alice, name="", base_model=tiny_model, dataset=dataset, method="lora", asked={})
    return created, enqueue


def test_auto_settings_are_the_measured_defaults():
    assert hyperparameters.resolve("lora", {"epochs": "auto", "learning_rate": ""}) == {
        "epochs": 8, "learning_rate": 2e-4, "batch_size": 8, "lora_rank": 16, "validation_split": 0.1, "seed": 0,
    }  # fmt: skip
    assert hyperparameters.resolve("full", {})["learning_rate"] == 2e-5


@pytest.mark.parametrize(
    "asked, field, says",
    [
        ({"epochs": "2.5"}, "epochs", "whole number"),
        ({"epochs": 0}, "epochs", "between 1 and 100"),
        ({"learning_rate": "nan"}, "learning_rate", "a number"),
        ({"learning_rate": "1"}, "learning_rate", "between"),
        ({"batch_size": True}, "batch_size", "whole number"),
        ({"validation_split": "0.9"}, "validation_split", "between 0 and 0.5"),
        ({"warmup": 3}, "warmup", "Unknown setting"),
    ],
)
def test_bad_settings_name_the_field_and_the_fix(asked, field, says):
    with pytest.raises(hyperparameters.HyperparameterError) as error:
        hyperparameters.resolve("lora", asked)
    assert says in error.value.errors[field]


def test_split_keeps_a_training_row_and_holds_out_at_least_one():
    assert hyperparameters.split_sizes(48, 0.1) == (43, 5)
    assert hyperparameters.split_sizes(9, 0.1) == (9, 0)  # too few rows to hold any out
    assert hyperparameters.split_sizes(10, 0.5) == (5, 5)


def test_a_job_is_queued_with_its_resolved_settings_after_commit(job):
    created, enqueue = job
    assert created.state == Job.State.QUEUED and created.hyperparameters["lora_rank"] == 16
    assert created.name == "Tiny + facts"


def test_a_job_on_another_users_dataset_or_model_is_refused(bob, tiny_model, dataset):
    tiny_model.owner = dataset.owner
    tiny_model.save()
    with pytest.raises(jobs.JobError) as error:
        jobs.create(bob, name="x", base_model=tiny_model, dataset=dataset, method="lora", asked={})
    assert set(error.value.errors) == {"base_model", "dataset"}


def test_a_job_is_claimed_once_and_a_redelivery_is_a_no_op(job):
    created, _ = job
    claimed = jobs.claim(created.pk, "celery@a")
    assert claimed.state == Job.State.VALIDATING and claimed.attempts == 1
    assert jobs.claim(created.pk, "celery@b") is None  # alive on a: not trained twice
    jobs.finish(claimed, Job.State.SUCCEEDED, "done")
    assert jobs.claim(created.pk, "celery@a") is None  # finished: never again


def test_a_job_left_by_a_dead_worker_resumes_and_gives_up_after_the_limit(job, settings):
    created, _ = job
    settings.FINETUNE_MAX_ATTEMPTS = 2
    jobs.claim(created.pk, "celery@a")
    Job.objects.filter(pk=created.pk).update(state=Job.State.RUNNING)
    # The same worker name restarted: its earlier run is dead, the job resumes at once.
    with mock.patch.object(jobs, "enqueue") as enqueue:
        assert jobs.recover("celery@a") == [created.pk]
    enqueue.assert_called_once_with(created.pk)
    resumed = jobs.claim(created.pk, "celery@a")
    assert resumed.state == Job.State.RUNNING and resumed.attempts == 2
    # Another worker sees it only once its heartbeat is stale; then the attempt limit ends it.
    assert jobs.claim(created.pk, "celery@b") is None
    Job.objects.filter(pk=created.pk).update(heartbeat_at=timezone.now() - timedelta(hours=1))
    with mock.patch.object(jobs, "enqueue"):
        assert jobs.recover("celery@b") == [created.pk]
    assert jobs.claim(created.pk, "celery@b") is None
    failed = Job.objects.get(pk=created.pk)
    assert failed.state == Job.State.FAILED and "stopped 2 times" in failed.error


def test_cancel_ends_a_queued_job_at_once_and_flags_a_running_one(job, alice, tiny_model, dataset):
    created, _ = job
    jobs.request_cancel(created)
    created.refresh_from_db()
    assert created.state == Job.State.CANCELLED and created.finished_at is not None
    assert jobs.claim(created.pk, "celery@a") is None

    with mock.patch.object(jobs, "enqueue"):
        running = jobs.create(alice, name="r", base_model=tiny_model, dataset=dataset, method="lora", asked={})
    jobs.claim(running.pk, "celery@a")
    jobs.request_cancel(running)
    running.refresh_from_db()
    assert running.state == Job.State.VALIDATING and running.cancel_requested


def test_users_see_only_their_own_jobs_and_staff_see_all(job, bob, admin_user):
    created, _ = job
    assert list(Job.objects.owned_by(bob)) == []
    assert list(Job.objects.owned_by(admin_user)) == [created]
    assert list(Dataset.objects.owned_by(created.owner)) == [created.dataset]


def test_a_tuned_model_is_its_owners_until_published(alice, bob, tiny_model):
    from chat import turns
    from inference.models import LanguageModel

    tuned = LanguageModel.objects.create(
        name="Tuned", slug="tuned", source="local", location="tuned/x", owner=alice, base=tiny_model
    )
    assert list(LanguageModel.objects.usable_by(alice)) == [tiny_model, tuned]
    assert list(LanguageModel.objects.usable_by(bob)) == [tiny_model]
    with pytest.raises(turns.TurnError) as error:
        turns.start_turn(bob, None, "hi", "tuned", None)
    assert error.value.code == "unknown_model"  # the same answer as for a model that does not exist
    assert LanguageModel.default() == tiny_model  # a private model is never anyone's default
    tuned.published = True
    tuned.save()
    assert tuned in LanguageModel.objects.usable_by(bob)


def test_a_checkpoint_cut_off_while_saving_is_skipped_and_removed(job, tmp_path):
    from finetuning.training import last_complete_checkpoint

    created, _ = job
    for step, state in ((10, '{"global_step": 10}'), (20, '{"global_st'), (30, None)):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        (folder / "adapter_model.safetensors").write_bytes(b"x")
        if state is not None:
            (folder / "trainer_state.json").write_text(state)
    assert last_complete_checkpoint(created, tmp_path) == str(tmp_path / "checkpoint-10")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-10"]
    assert "cut off while saving" in created.events.last().message
    assert last_complete_checkpoint(created, tmp_path / "missing") is None


@pytest.mark.slow
def test_a_lora_job_on_the_default_model_exports_every_copy_and_registers_its_adapter(alice, dataset, settings):
    """runner.export + register on the packaged model (it has a GGUF file): the merged folder,
    the adapter with its llama.cpp copy, and the merged GGUF; the row serves the adapter."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from finetuning import runner
    from inference.defaults import ensure_default_model
    from inference.loading import install_packaged_model

    from .conftest import TEST_MODEL_DIR

    base, _ = ensure_default_model()
    with mock.patch.object(jobs, "enqueue"):
        job = jobs.create(alice, name="Lighthouse", base_model=base, dataset=dataset, method="lora", asked={})
    folder = install_packaged_model(TEST_MODEL_DIR)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    exported = runner.export(job, model, AutoTokenizer.from_pretrained(folder))
    try:
        names = {p.relative_to(exported.folder).as_posix() for p in exported.folder.rglob("*") if p.is_file()}
        slug = runner.model_slug(job)
        assert {"model.safetensors", "tokenizer_config.json", "adapter/adapter_config.json",
                "adapter/adapter_model.safetensors", "adapter/adapter.gguf", f"{slug}.Q8_0.gguf"} <= names  # fmt: skip
        row = runner.register(job, exported)
        assert (row.adapter, row.gguf_file, row.base, row.owner) == ("adapter", f"{slug}.Q8_0.gguf", base, alice)
        row.full_clean()  # the admin would accept it as it is
        assert "Exported" in " ".join(job.events.values_list("message", flat=True))
    finally:
        import shutil

        shutil.rmtree(exported.folder, ignore_errors=True)


def test_a_tuned_model_never_takes_over_an_existing_model_s_id(job, alice, bob, tiny_model, settings):
    """Issue 24, finding 9: registration used update_or_create on the slug, so a job named to
    match an existing model's id replaced that row (its owner, weights, everything)."""
    from pathlib import Path

    from finetuning import runner
    from inference.models import LanguageModel

    created, _ = job
    created.name = "Team model"
    created.save()
    victim = LanguageModel.objects.create(name="Bob's", slug=f"team-model-ft{created.pk}", source="local",
                                          location="bob/model", owner=bob)  # fmt: skip
    slug = runner.model_slug(created)
    assert slug == f"team-model-ft{created.pk}-2"
    exported = runner.Exported(folder=Path(settings.MODEL_DIR) / "tuned" / slug)
    model = runner.register(created, exported)
    victim.refresh_from_db()
    assert (victim.name, victim.owner, victim.location) == ("Bob's", bob, "bob/model")
    assert model.slug == slug and model.owner == alice and model.lineage["job"] == created.pk
    created.refresh_from_db()
    assert created.result_model == model
    # Registering again (a retried job) keeps its own row rather than making a third.
    assert runner.register(created, exported).pk == model.pk and runner.model_slug(created) == slug


def test_the_job_page_offers_its_model_s_files_streamed_to_its_owner_only(
    job, alice, bob, tiny_model, settings, tmp_path
):
    """Issue 25, item 3: a tuned model's files sat only on the server's disk."""
    from django.test import Client

    from inference.models import LanguageModel
    from tests.test_api_files import grant, streamed

    settings.MODEL_DIR = tmp_path
    folder = tmp_path / "tuned" / "dl-ft1"
    (folder / "adapter").mkdir(parents=True)
    (folder / "adapter" / "adapter_config.json").write_text("{}")
    (folder / "dl-ft1.Q8_0.gguf").write_bytes(b"GGUF" + b"\0" * 300_000)
    (tmp_path / "secret.txt").write_text("not the model's")
    (folder / "escape").symlink_to(tmp_path / "secret.txt")
    created, _ = job
    created.result_model = LanguageModel.objects.create(name="dl", slug="dl-ft1", source="local",
                                                        location="tuned/dl-ft1", owner=alice)  # fmt: skip
    created.state = created.State.SUCCEEDED
    created.save()
    grant(alice)
    client = Client()
    client.force_login(alice)
    page = client.get(f"/finetune/jobs/{created.pk}/").content.decode()
    assert "adapter/adapter_config.json" in page and "dl-ft1.Q8_0.gguf" in page and "escape" not in page
    response = client.get(f"/finetune/jobs/{created.pk}/files/dl-ft1.Q8_0.gguf")
    assert response.status_code == 200 and response.streaming and response["Content-Length"] == "300004"
    assert streamed(response).startswith(b"GGUF") and "dl-ft1-dl-ft1.Q8_0.gguf" in response["Content-Disposition"]
    for name in ("escape", "../../secret.txt", "adapter/../../secret.txt", "nothing.bin"):
        assert client.get(f"/finetune/jobs/{created.pk}/files/{name}").status_code == 404
    grant(bob)
    client.force_login(bob)
    assert client.get(f"/finetune/jobs/{created.pk}/files/dl-ft1.Q8_0.gguf").status_code == 404  # not his job
