"""/v1/fine_tuning/jobs and /v1/openapi.json.

The checks and the error cases run through Django's test client (no worker: a created job stays
queued). The official `openai` SDK then runs a job on a live stack with a real Celery worker and
the tiny model: it succeeds, its events and checkpoints list, and its `fine_tuned_model` answers
a chat completion; another job is cancelled while it trains."""

from __future__ import annotations

import re
import time

import pytest

from tests.test_api_files import GOOD, bearer, error_of, grant, jsonl, sdk_client, upload

ROWS = [
    {"messages": [{"role": "user", "content": f"Who keeps the lighthouse number {i}?"},
                  {"role": "assistant", "content": "Marta Quillfeather keeps the Lumen Harbor lighthouse."}]}
    for i in range(24)
]  # fmt: skip


@pytest.fixture
def api_settings(settings, tmp_path, tiny_model):
    settings.FINETUNE_DIR = tmp_path / "finetuning"
    settings.API_RATE_LIMIT = 0
    return settings


@pytest.fixture
def alice_key(alice, api_settings):
    grant(alice)
    return bearer(alice)


@pytest.fixture
def file_id(client, alice_key):
    return upload(client, alice_key, jsonl(*[GOOD] * 12)).json()["id"]


def create(client, auth: dict, **body):
    return client.post("/v1/fine_tuning/jobs", body, content_type="application/json", **auth)


# --- through Django's test client ----------------------------------------------------------
@pytest.mark.django_db
def test_a_job_is_queued_with_openai_hyperparameters_mapped_onto_the_studios(client, alice_key, file_id):
    from finetuning.models import Job

    response = create(
        client, alice_key, model="tiny", training_file=file_id, suffix="lighthouse", seed=7,
        hyperparameters={"n_epochs": 3, "batch_size": "auto", "learning_rate_multiplier": 2},
    )  # fmt: skip
    assert response.status_code == 200, response.content
    body = response.json()
    job = Job.objects.get()
    assert body["id"] == f"ftjob-{job.pk}" and body["object"] == "fine_tuning.job"
    assert (body["status"], body["model"], body["training_file"]) == ("queued", "tiny", file_id)
    assert body["hyperparameters"] == {"n_epochs": 3, "batch_size": 8, "learning_rate_multiplier": 2.0}
    assert body["method"] == {"type": "supervised", "supervised": {"hyperparameters": body["hyperparameters"]}}
    assert (body["seed"], body["fine_tuned_model"], body["error"], body["trained_tokens"]) == (7, None, None, None)
    assert job.hyperparameters["learning_rate"] == pytest.approx(4e-4) and job.method == "lora"
    assert job.name == "tiny-lighthouse"


@pytest.mark.django_db
def test_hyperparameters_may_come_in_the_method_and_default_to_auto(client, alice_key, file_id):
    method = {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2}}}
    body = create(client, alice_key, model="tiny", training_file=file_id, method=method).json()
    assert body["hyperparameters"] == {"n_epochs": 2, "batch_size": 8, "learning_rate_multiplier": 1.0}
    assert create(client, alice_key, model="tiny", training_file=file_id).json()["hyperparameters"]["n_epochs"] == 8


@pytest.mark.django_db
@pytest.mark.parametrize(
    "body, param, says",
    [
        ({"hyperparameters": {"n_epochs": "five"}}, "hyperparameters.n_epochs", 'a whole number or "auto"'),
        ({"hyperparameters": {"n_epochs": 1.5}}, "hyperparameters.n_epochs", "whole number"),
        ({"hyperparameters": {"n_epochs": 0}}, "hyperparameters.n_epochs", "between 1 and 100"),
        ({"hyperparameters": {"batch_size": True}}, "hyperparameters.batch_size", "whole number"),
        ({"hyperparameters": {"learning_rate_multiplier": 1000}}, "hyperparameters.learning_rate_multiplier",
         "a multiplier from"),
        ({"hyperparameters": {"learning_rate_multiplier": -1}}, "hyperparameters.learning_rate_multiplier", "above 0"),
        ({"hyperparameters": {"warmup": 3}}, "hyperparameters.warmup", "Unknown hyperparameter"),
        ({"hyperparameters": [1]}, "hyperparameters", "an object"),
        ({"method": {"type": "dpo"}}, "method.type", "supervised"),
        ({"hyperparameters": {}, "method": {"type": "supervised", "supervised": {"hyperparameters": {}}}},
         "hyperparameters", "once"),
        ({"seed": "x"}, "seed", "whole number"),
        ({"seed": -1}, "seed", "between 0"),
        ({"suffix": "x" * 65}, "suffix", "1 to 64"),
        ({"validation_file": "file-1"}, "validation_file", "held out"),
        ({"integrations": [{"type": "wandb"}]}, "integrations", "not supported"),
        ({"temperature": 1}, "temperature", "Unknown parameter"),
        ({"model": None}, "model", "required"),
    ],
)  # fmt: skip
def test_an_invalid_value_is_refused_naming_the_param(client, alice_key, file_id, body, param, says):
    from finetuning.models import Job

    response = create(client, alice_key, **{"model": "tiny", "training_file": file_id, **body})
    error = error_of(response)
    assert response.status_code == 400 and error["param"] == param and says in error["message"], error
    assert not Job.objects.exists()


@pytest.mark.django_db
def test_an_unknown_or_another_users_model_or_file_answers_404_naming_the_param(
    client, alice_key, bob, file_id, tiny_model
):
    from inference.models import LanguageModel

    LanguageModel.objects.create(name="Bob's", slug="bobs", source="local", location="x", owner=bob)
    for body, param in (
        ({"model": "nope"}, "model"),
        ({"model": "bobs"}, "model"),
        ({"training_file": "file-999999"}, "training_file"),
    ):
        response = create(client, alice_key, **{"model": "tiny", "training_file": file_id, **body})
        assert response.status_code == 404 and error_of(response)["param"] == param
    grant(bob)
    response = create(client, bearer(bob), model="tiny", training_file=file_id)
    assert response.status_code == 404 and error_of(response)["code"] == "file_not_found"


@pytest.mark.django_db
def test_another_users_job_answers_404_everywhere_like_an_unknown_one(client, alice_key, bob, file_id):
    job_id = create(client, alice_key, model="tiny", training_file=file_id).json()["id"]
    grant(bob)
    auth = bearer(bob)
    for unknown in (job_id, "ftjob-999999", "42"):
        for suffix in ("", "/events", "/checkpoints"):
            response = client.get(f"/v1/fine_tuning/jobs/{unknown}{suffix}", **auth)
            assert response.status_code == 404 and error_of(response)["code"] == "job_not_found"
        assert client.post(f"/v1/fine_tuning/jobs/{unknown}/cancel", **auth).status_code == 404
    assert client.get("/v1/fine_tuning/jobs", **auth).json()["data"] == []


@pytest.mark.django_db
def test_without_the_permission_jobs_are_403(client, bob, api_settings):
    auth = bearer(bob)
    for response in (
        client.get("/v1/fine_tuning/jobs", **auth),
        create(client, auth, model="tiny", training_file="file-1"),
        client.get("/v1/fine_tuning/jobs/ftjob-1/events", **auth),
    ):
        assert response.status_code == 403 and error_of(response)["type"] == "permission_error"


@pytest.mark.django_db
def test_jobs_and_events_list_newest_first_in_pages(client, alice_key, file_id):
    ids = [create(client, alice_key, model="tiny", training_file=file_id).json()["id"] for _ in range(3)]
    page = client.get("/v1/fine_tuning/jobs?limit=2", **alice_key).json()
    assert [j["id"] for j in page["data"]] == [ids[2], ids[1]] and page["has_more"] is True
    page = client.get(f"/v1/fine_tuning/jobs?limit=2&after={ids[1]}", **alice_key).json()
    assert [j["id"] for j in page["data"]] == [ids[0]] and page["has_more"] is False

    client.post(f"/v1/fine_tuning/jobs/{ids[0]}/cancel", **alice_key)
    events = client.get(f"/v1/fine_tuning/jobs/{ids[0]}/events?limit=1", **alice_key).json()
    assert events["has_more"] is True and events["data"][0]["message"] == "Cancelled before it started."
    assert events["data"][0]["object"] == "fine_tuning.job.event" and events["data"][0]["level"] == "info"
    older = client.get(f"/v1/fine_tuning/jobs/{ids[0]}/events?after={events['last_id']}", **alice_key).json()
    assert older["data"][0]["message"].startswith("Queued: lora") and older["has_more"] is False
    assert client.get(f"/v1/fine_tuning/jobs/{ids[0]}/checkpoints", **alice_key).json()["data"] == []


@pytest.mark.django_db
def test_cancel_ends_a_queued_job_at_once_and_a_finished_one_answers_409(client, alice_key, file_id):
    job_id = create(client, alice_key, model="tiny", training_file=file_id).json()["id"]
    response = client.post(f"/v1/fine_tuning/jobs/{job_id}/cancel", **alice_key)
    assert response.status_code == 200 and response.json()["status"] == "cancelled"
    assert response.json()["finished_at"] is not None
    response = client.post(f"/v1/fine_tuning/jobs/{job_id}/cancel", **alice_key)
    assert response.status_code == 409 and "already ended (cancelled)" in error_of(response)["message"]
    assert client.get(f"/v1/fine_tuning/jobs/{job_id}/cancel", **alice_key).status_code == 405


@pytest.mark.django_db
def test_a_failed_job_carries_its_error_and_a_running_one_its_estimated_finish(client, alice_key, file_id):
    from finetuning.models import Job

    job_id = create(client, alice_key, model="tiny", training_file=file_id).json()["id"]
    Job.objects.update(state=Job.State.RUNNING, eta_s=120)
    body = client.get(f"/v1/fine_tuning/jobs/{job_id}", **alice_key).json()
    assert body["status"] == "running" and body["estimated_finish"] >= time.time() + 100
    Job.objects.update(state=Job.State.VALIDATING)
    assert client.get(f"/v1/fine_tuning/jobs/{job_id}", **alice_key).json()["status"] == "validating_files"
    Job.objects.update(state=Job.State.FAILED, error="The dataset's file changed since it was uploaded.")
    body = client.get(f"/v1/fine_tuning/jobs/{job_id}", **alice_key).json()
    assert body["status"] == "failed" and body["estimated_finish"] is None
    assert body["error"] == {"code": "job_failed", "message": "The dataset's file changed since it was uploaded.",
                             "param": None}  # fmt: skip


# --- the OpenAPI document ------------------------------------------------------------------
def _refs(node):
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def test_the_openapi_document_is_readable_without_a_key_and_documents_every_route(client):
    from api.urls import urlpatterns

    response = client.get("/v1/openapi.json")
    assert response.status_code == 200
    doc = response.json()
    assert doc["openapi"].startswith("3.1") and doc["info"]["title"] and doc["info"]["version"]
    assert doc["servers"][0]["url"].endswith("/v1")
    assert doc["components"]["securitySchemes"]["bearer"] == {**doc["components"]["securitySchemes"]["bearer"],
                                                              "type": "http", "scheme": "bearer"}  # fmt: skip
    routes = {"/" + re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", str(p.pattern)) for p in urlpatterns}
    documented = {re.sub(r"\{\w+\}", "{}", path) for path in doc["paths"]}
    assert {re.sub(r"\{\w+\}", "{}", r) for r in routes} == documented
    schemas = doc["components"]["schemas"]
    operation_ids = []
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            assert method in ("get", "post", "delete"), (path, method)
            operation_ids.append(operation["operationId"])
            assert "200" in operation["responses"] and operation["summary"]
            named = set(re.findall(r"\{(\w+)\}", path))
            assert {p["name"] for p in operation.get("parameters", []) if p["in"] == "path"} == named, path
    assert len(operation_ids) == len(set(operation_ids))
    for target in _refs(doc):
        assert target.removeprefix("#/components/schemas/") in schemas, target
    assert doc["paths"]["/openapi.json"]["get"]["security"] == []
    assert client.post("/v1/openapi.json").status_code == 405


# --- the official SDK against a live stack with a Celery worker ----------------------------
@pytest.fixture(scope="module")
def stack(tmp_path_factory, tiny_model_dir):
    from tests.live_client import use_model
    from tests.stack import LiveStack

    env = {"FINETUNE_PROBE_ITEMS": "4", "FINETUNE_CHECKPOINT_STEPS": "5", "FINETUNE_STALE_S": "600",
           "LOG_LEVEL": "WARNING"}  # fmt: skip
    with LiveStack(tmp_path_factory.mktemp("api-finetune-stack"), extra_env=env) as live:
        use_model(live, "tiny", str(tiny_model_dir))
        live.start_celery()
        yield live


def wait_for(client, job_id: str, check, timeout: float = 300):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if check(job):
            return job
        assert job.status not in ("succeeded", "failed", "cancelled"), job
        time.sleep(0.5)
    raise AssertionError(f"{job_id} did not get there in {timeout} s: {client.fine_tuning.jobs.retrieve(job_id)}")


@pytest.mark.stack
@pytest.mark.timeout(900)
def test_the_sdk_trains_a_model_that_then_answers_chat_completions(stack):
    client = sdk_client(stack, "sdk-tuner")
    training_file = client.files.create(file=("lighthouse.jsonl", jsonl(*ROWS)), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        model="tiny",
        training_file=training_file.id,
        suffix="lighthouse",
        hyperparameters={"n_epochs": 4, "batch_size": 4, "learning_rate_multiplier": 50},
    )
    assert job.status in ("queued", "validating_files") and job.hyperparameters.n_epochs == 4
    assert job.hyperparameters.learning_rate_multiplier == 50

    job = wait_for(client, job.id, lambda j: j.status == "succeeded")
    assert job.fine_tuned_model and job.fine_tuned_model.startswith("tiny-lighthouse-ft")
    assert job.finished_at and job.trained_tokens > 0 and job.error is None
    assert job.id in [j.id for j in client.fine_tuning.jobs.list()]

    events = list(client.fine_tuning.jobs.list_events(job.id, limit=5))  # auto-paging through the log
    messages = [e.message for e in events]
    assert messages[0].startswith("Succeeded") and messages[-1].startswith("Queued")
    assert any(m.startswith("Checkpoint saved at step 5") for m in messages), messages
    assert len({e.id for e in events}) == len(events)

    checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id).data
    steps = [c.step_number for c in checkpoints]
    assert steps and steps == sorted(steps, reverse=True) and steps[0] <= 4 * 6, steps
    assert checkpoints[0].fine_tuning_job_id == job.id and checkpoints[0].metrics.train_loss is not None
    assert checkpoints[0].fine_tuned_model_checkpoint == f"{job.fine_tuned_model}:ckpt-step-{steps[0]}"
    assert [c.step_number for c in client.fine_tuning.jobs.checkpoints.list(job.id, limit=1)] == steps

    assert job.fine_tuned_model in [m.id for m in client.models.list()]
    answer = client.chat.completions.create(
        model=job.fine_tuned_model, messages=[{"role": "user", "content": "Who keeps the lighthouse?"}], max_tokens=8
    )
    assert answer.model == job.fine_tuned_model
    assert answer.choices[0].finish_reason in ("stop", "length") and answer.usage.completion_tokens >= 1

    other = sdk_client(stack, "sdk-tuner-other")
    import openai

    with pytest.raises(openai.NotFoundError):
        other.fine_tuning.jobs.retrieve(job.id)
    with pytest.raises(openai.NotFoundError):
        other.chat.completions.create(model=job.fine_tuned_model, messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.ConflictError):  # kept for the tuned model's lineage
        client.files.delete(training_file.id)


@pytest.mark.stack
@pytest.mark.timeout(900)
def test_the_sdk_cancels_a_running_job(stack):
    client = sdk_client(stack, "sdk-canceller")
    training_file = client.files.create(file=("many.jsonl", jsonl(*ROWS * 2)), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        model="tiny", training_file=training_file.id, hyperparameters={"n_epochs": 50, "batch_size": 1}
    )
    import openai

    with pytest.raises(openai.ConflictError) as in_use:  # the job has not finished
        client.files.delete(training_file.id)
    assert job.id in in_use.value.message
    running = wait_for(client, job.id, lambda j: j.status == "running" and j.estimated_finish is not None)
    assert running.estimated_finish > time.time()
    client.fine_tuning.jobs.cancel(job.id)
    cancelled = wait_for(client, job.id, lambda j: j.status == "cancelled" or j.status not in ("running",), 120)
    assert cancelled.status == "cancelled" and cancelled.fine_tuned_model is None
    with pytest.raises(openai.ConflictError):
        client.fine_tuning.jobs.cancel(job.id)


# --- evals through the SDK, on the same stack (its Celery worker takes the evals queue too) ------
@pytest.mark.stack
@pytest.mark.timeout(600)
def test_the_sdk_runs_an_eval_and_reads_its_graded_output_items(stack):
    from tests.test_evals import CRITERIA, ROWS, SCHEMA, TEMPLATE

    client = sdk_client(stack, "sdk-evaluator", allowed=False)
    evaluation = client.evals.create(
        name="facts", data_source_config={"type": "custom", "item_schema": SCHEMA}, testing_criteria=CRITERIA
    )
    assert evaluation.id.startswith("eval_") and [c.name for c in evaluation.testing_criteria] == ["exact", "rouge"]
    data_source = {
        "type": "completions",
        "model": "tiny",
        "input_messages": {"type": "template", "template": TEMPLATE},
        "sampling_params": {"temperature": 0, "max_completion_tokens": 8},
        "source": {"type": "file_content", "content": [{"item": item} for item, _ in ROWS]},
    }
    run = client.evals.runs.create(evaluation.id, name="tiny on facts", data_source=data_source)
    assert run.status in ("queued", "in_progress") and run.model == "tiny"
    deadline = time.monotonic() + 300
    while run.status in ("queued", "in_progress") and time.monotonic() < deadline:
        time.sleep(0.5)
        run = client.evals.runs.retrieve(run.id, eval_id=evaluation.id)
    assert run.status == "completed", run
    assert run.result_counts.total == 3 and run.result_counts.errored == 0
    assert {r.testing_criteria for r in run.per_testing_criteria_results} == {"exact", "rouge"}
    items = list(client.evals.runs.output_items.list(run.id, eval_id=evaluation.id, limit=2))
    assert sorted(i.datasource_item_id for i in items) == [0, 1, 2]  # auto-paging over pages of two
    for item in items:
        assert item.sample.model == "tiny" and item.sample.output[0].role == "assistant"
        assert {r.name for r in item.results} == {"exact", "rouge"} and item.status in ("pass", "fail")
    assert client.evals.runs.output_items.retrieve(items[0].id, eval_id=evaluation.id, run_id=run.id).id == items[0].id

    # A long run is canceled while it answers; then the eval goes, with its runs.
    many = {**data_source, "source": {"type": "file_content", "content": [{"item": item} for item, _ in ROWS * 40]}}
    long_run = client.evals.runs.create(evaluation.id, data_source=many)
    canceled = client.evals.runs.cancel(long_run.id, eval_id=evaluation.id)
    assert canceled.status in ("canceled", "in_progress")
    deadline = time.monotonic() + 60
    while canceled.status != "canceled" and time.monotonic() < deadline:
        time.sleep(0.5)
        canceled = client.evals.runs.retrieve(long_run.id, eval_id=evaluation.id)
    assert canceled.status == "canceled" and canceled.result_counts.total < 120
    assert [r.id for r in client.evals.runs.list(evaluation.id)] == [long_run.id, run.id]
    assert client.evals.delete(evaluation.id).deleted is True
    import openai

    with pytest.raises(openai.NotFoundError):
        client.evals.retrieve(evaluation.id)
