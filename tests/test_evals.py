"""/v1/evals through Django's test client, and runs executed for real: `runs.execute` (what the
Celery task calls) in the test's thread, with the in-process inference worker and the tiny model
answering the items. The official SDK against a live stack with Celery is in
tests/test_api_finetuning.py (it shares that module's stack)."""

from __future__ import annotations

import os

import pytest

from evals import graders, runs, samples
from evals.models import OutputItem, Run
from inference import streams
from tests.test_api_files import bearer, error_of

pytestmark = pytest.mark.django_db(transaction=True)

SCHEMA = {
    "type": "object",
    "properties": {"question": {"type": "string"}, "answer": {"type": "string"}},
    "required": ["question", "answer"],
}
CRITERIA = [
    {"type": "string_check", "name": "exact", "input": "{{sample.output_text}}", "reference": "{{item.answer}}",
     "operation": "eq"},
    {"type": "text_similarity", "name": "rouge", "input": "{{sample.output_text}}", "reference": "{{item.answer}}",
     "evaluation_metric": "rouge_l", "pass_threshold": 0.5},
]  # fmt: skip
ROWS = [
    ({"question": "Capital of France?", "answer": "Paris"}, "Paris"),
    ({"question": "Two plus two?", "answer": "four"}, "It is four"),
    ({"question": "Color of the sky?", "answer": "blue sky"}, "green grass"),
]
TEMPLATE = [
    {"role": "system", "content": "Answer in one word."},
    {"role": "user", "content": "{{item.question}}"},
]


@pytest.fixture
def api(settings, tiny_model):
    settings.API_RATE_LIMIT = 0
    return settings


@pytest.fixture
def alice_key(alice, api):
    return bearer(alice)


def post(client, url: str, auth: dict, body: dict | None = None):
    return client.post(url, body or {}, content_type="application/json", **auth)


def make_eval(client, auth, **extra) -> dict:
    body = {"name": "facts", "data_source_config": {"type": "custom", "item_schema": SCHEMA},
            "testing_criteria": CRITERIA, **extra}  # fmt: skip
    response = post(client, "/v1/evals", auth, body)
    assert response.status_code == 200, response.content
    return response.json()


def jsonl_source(rows=ROWS) -> dict:
    content = [{"item": item, "sample": {"output_text": answer}} for item, answer in rows]
    return {"type": "jsonl", "source": {"type": "file_content", "content": content}}


def completions_source(rows=ROWS, **extra) -> dict:
    return {
        "type": "completions",
        "model": "tiny",
        "input_messages": {"type": "template", "template": TEMPLATE},
        "sampling_params": {"temperature": 0, "max_completion_tokens": 8},
        "source": {"type": "file_content", "content": [{"item": item} for item, _ in rows]},
        **extra,
    }


def run_url(run: dict) -> str:
    return f"/v1/evals/{run['eval_id']}/runs/{run['id']}"


def execute(run: dict) -> str:
    return runs.execute(int(run["id"].removeprefix("evalrun_")), runs.executor_id("test"))


def test_given_answers_are_graded_with_the_reference_libraries(client, alice_key):
    evaluation = make_eval(client, alice_key)
    assert evaluation["id"].startswith("eval_") and evaluation["object"] == "eval"
    assert evaluation["data_source_config"]["schema"]["properties"]["item"] == SCHEMA
    response = post(client, f"/v1/evals/{evaluation['id']}/runs", alice_key, {"data_source": jsonl_source()})
    assert response.status_code == 200, response.content
    run = response.json()
    assert (run["object"], run["status"], run["eval_id"]) == ("eval.run", "queued", evaluation["id"])

    assert execute(run) == "completed"
    run = client.get(run_url(run), **alice_key).json()
    assert run["status"] == "completed"
    # Paris: both pass. "It is four": not equal, ROUGE-L 2*(1/3*1)/(1/3+1) = 0.5 passes. Third: both fail.
    assert run["result_counts"] == {"total": 3, "passed": 1, "failed": 2, "errored": 0}
    assert run["per_testing_criteria_results"] == [
        {"testing_criteria": "exact", "passed": 1, "failed": 2},
        {"testing_criteria": "rouge", "passed": 2, "failed": 1},
    ]
    items = client.get(f"{run_url(run)}/output_items?order=asc", **alice_key).json()["data"]
    assert [i["datasource_item_id"] for i in items] == [0, 1, 2]
    for listed, (item, answer) in zip(items, ROWS, strict=True):
        assert listed["datasource_item"] == item and listed["sample"]["output"][0]["content"] == answer
        rouge = next(r for r in listed["results"] if r["name"] == "rouge")
        assert rouge["score"] == pytest.approx(graders.metric("rouge_l", answer, item["answer"]))
    assert [i["status"] for i in items] == ["pass", "fail", "fail"]
    one = client.get(f"{run_url(run)}/output_items/{items[1]['id']}", **alice_key).json()
    assert one == items[1]
    passed = client.get(f"{run_url(run)}/output_items?status=pass", **alice_key).json()["data"]
    assert [i["id"] for i in passed] == [items[0]["id"]]


def test_a_model_answers_each_item_at_the_background_priority_and_the_answers_are_graded(client, alice_key, worker):
    evaluation = make_eval(client, alice_key)
    run = post(client, f"/v1/evals/{evaluation['id']}/runs", alice_key, {"data_source": completions_source()}).json()
    assert run["model"] == "tiny" and run["status"] == "queued"
    item = OutputItem.objects.filter(run_id=int(run["id"].removeprefix("evalrun_"))).first()
    request = samples.build_request(item, worker_model(), Run.objects.get(pk=item.run_id).sampling, item.run.owner_id)
    assert request.background and streams.queue_key(request) == streams.BACKGROUND_QUEUE_KEY
    assert item.messages == [{"role": "system", "content": "Answer in one word."},
                             {"role": "user", "content": "Capital of France?"}]  # fmt: skip

    assert execute(run) == "completed"
    run = client.get(run_url(run), **alice_key).json()
    assert run["result_counts"]["total"] == 3 and run["result_counts"]["errored"] == 0
    assert run["progress"] == {"items": 3, "answered": 3, "graded": 3}
    usage = run["per_model_usage"][0]
    assert usage["model_name"] == "tiny" and usage["invocation_count"] == 3 and usage["completion_tokens"] > 0
    for listed in client.get(f"{run_url(run)}/output_items", **alice_key).json()["data"]:
        text = listed["sample"]["output"][0]["content"]
        assert listed["sample"]["finish_reason"] in ("stop", "length") and listed["sample"]["usage"]["prompt_tokens"]
        exact = next(r for r in listed["results"] if r["name"] == "exact")
        assert exact["score"] == (1.0 if text == listed["datasource_item"]["answer"] else 0.0)
        assert listed["status"] in ("pass", "fail")


def worker_model():
    from inference.models import LanguageModel

    return LanguageModel.objects.get(slug="tiny")


def test_an_answer_cut_by_a_dead_inference_worker_is_asked_for_again(client, alice_key, worker):
    evaluation = make_eval(client, alice_key)
    run = post(client, f"/v1/evals/{evaluation['id']}/runs", alice_key,
               {"data_source": completions_source(ROWS[:1])}).json()  # fmt: skip
    # As the reaper leaves it when the worker running it died.
    OutputItem.objects.filter(run__pk=int(run["id"].removeprefix("evalrun_"))).update(
        state=OutputItem.State.ANSWERED, finish_reason="interrupted", error="The inference worker stopped.", attempts=1
    )
    assert execute(run) == "completed"
    item = OutputItem.objects.get(run__pk=int(run["id"].removeprefix("evalrun_")))
    assert item.attempts == 2 and item.finish_reason in ("stop", "length") and item.error == ""
    assert item.status in ("pass", "fail")


def test_a_run_left_by_a_dead_celery_worker_goes_on_where_it_stopped(client, alice_key):
    evaluation = make_eval(client, alice_key)
    run = post(client, f"/v1/evals/{evaluation['id']}/runs", alice_key, {"data_source": jsonl_source()}).json()
    pk = int(run["id"].removeprefix("evalrun_"))
    # The earlier process of this worker had graded the first item when it died.
    first = OutputItem.objects.get(run_id=pk, index=0)
    first.results, first.status, first.state = [{"name": "kept"}], "pass", OutputItem.State.GRADED
    first.save()
    from django.utils import timezone

    Run.objects.filter(pk=pk).update(
        status=Run.Status.IN_PROGRESS, worker="evals@host/1/1", heartbeat_at=timezone.now()
    )
    assert runs.execute(pk, "evals@host/2/1") == "skipped"  # its heartbeat is fresh: not taken over
    assert pk in runs.recover("evals@host")  # os.getpid() is not 1: its earlier process
    assert Run.objects.get(pk=pk).status == Run.Status.QUEUED
    assert runs.execute(pk, runs.executor_id("evals@host")) == "completed"
    assert OutputItem.objects.get(run_id=pk, index=0).results == [{"name": "kept"}]  # not graded again
    assert Run.objects.get(pk=pk).items.filter(state=OutputItem.State.GRADED).count() == 3
    assert os.getpid() != 1


def test_cancel_ends_a_queued_run_at_once_and_a_finished_one_answers_409(client, alice_key):
    evaluation = make_eval(client, alice_key)
    run = post(client, f"/v1/evals/{evaluation['id']}/runs", alice_key, {"data_source": completions_source()}).json()
    canceled = post(client, f"{run_url(run)}/cancel", alice_key)
    assert canceled.status_code == 200 and canceled.json()["status"] == "canceled"
    assert set(OutputItem.objects.values_list("state", flat=True)) == {OutputItem.State.SKIPPED}
    assert execute(run) == "skipped"  # its task, delivered later, does nothing
    again = post(client, f"{run_url(run)}/cancel", alice_key)
    assert again.status_code == 409 and error_of(again)["code"] == "run_finished"
    assert client.delete(run_url(run), **alice_key).json() == {"object": "eval.run.deleted", "deleted": True,
                                                                "run_id": run["id"]}  # fmt: skip
    assert client.get(run_url(run), **alice_key).status_code == 404


@pytest.mark.parametrize(
    "body, param, says",
    [
        ({"testing_criteria": [{**CRITERIA[1], "evaluation_metric": "rouge_9"}]}, "testing_criteria", "rouge_9"),
        ({"testing_criteria": [{**CRITERIA[1], "evaluation_metric": "meteor"}]}, "testing_criteria", "not supported"),
        ({"testing_criteria": [{**CRITERIA[0], "reference": "{{item.answr}}"}]}, "testing_criteria", "answr"),
        ({"testing_criteria": []}, "testing_criteria", "non-empty"),
        ({"data_source_config": {"type": "logs"}}, "data_source_config.type", "custom"),
        ({"surprise": 1}, "surprise", "Unknown parameter"),
    ],
)
def test_a_bad_eval_is_refused_naming_the_part(client, alice_key, body, param, says):
    full = {"name": "x", "data_source_config": {"type": "custom", "item_schema": SCHEMA},
            "testing_criteria": CRITERIA, **body}  # fmt: skip
    response = post(client, "/v1/evals", alice_key, full)
    assert response.status_code == 400, response.content
    error = error_of(response)
    assert error["param"] == param and says in error["message"], error


@pytest.mark.parametrize(
    "source, status, param, says",
    [
        (completions_source(model="nope"), 404, "data_source.model", "nope"),
        (completions_source(input_messages={"type": "template", "template": [{"role": "user", "content": "{{sample.output_text}}"}]}),
         400, "data_source.input_messages", "graders"),
        ({**completions_source(), "source": {"type": "file_content", "content": [{"item": {"question": "q"}}]}},
         400, "data_source.source", "content[0]: the item lacks the required field(s) answer"),
        ({**completions_source(), "source": {"type": "stored_completions"}}, 400, "data_source.source", "file_id"),
        ({**completions_source(), "source": {"type": "probe", "limit": 0}}, 400, "data_source.source", "limit"),
        ({**completions_source(), "sampling_params": {"temperature": 9}}, 400, "data_source.sampling_params", "temperature"),
        ({**jsonl_source(), "source": {"type": "file_content", "content": [{"item": ROWS[0][0]}]}},
         400, "data_source.source", "output_text"),
        ({"type": "responses"}, 400, "data_source.type", "completions, jsonl"),
    ],
)  # fmt: skip
def test_a_bad_run_is_refused_naming_the_part_and_nothing_is_kept(client, alice_key, source, status, param, says):
    evaluation = make_eval(client, alice_key)
    response = post(client, f"/v1/evals/{evaluation['id']}/runs", alice_key, {"data_source": source})
    assert response.status_code == status, response.content
    error = error_of(response)
    assert error["param"] == param and says in error["message"], error
    assert not Run.objects.exists() and not OutputItem.objects.exists()


def test_another_users_evals_runs_and_items_answer_404_like_unknown_ones(client, alice_key, bob):
    evaluation = make_eval(client, alice_key)
    run = post(client, f"/v1/evals/{evaluation['id']}/runs", alice_key, {"data_source": jsonl_source()}).json()
    execute(run)
    item = client.get(f"{run_url(run)}/output_items", **alice_key).json()["data"][0]
    bob_key = bearer(bob)
    for url in (f"/v1/evals/{evaluation['id']}", run_url(run), f"{run_url(run)}/output_items",
                f"{run_url(run)}/output_items/{item['id']}"):  # fmt: skip
        assert client.get(url, **bob_key).status_code == 404, url
    assert post(client, f"{run_url(run)}/cancel", bob_key).status_code == 404
    assert client.delete(f"/v1/evals/{evaluation['id']}", **bob_key).status_code == 404
    assert client.get("/v1/evals", **bob_key).json()["data"] == []
    assert [e["id"] for e in client.get("/v1/evals", **alice_key).json()["data"]] == [evaluation["id"]]


def test_evals_update_list_in_pages_and_delete_with_their_runs(client, alice_key, settings):
    ids = [make_eval(client, alice_key, name=f"eval {i}")["id"] for i in range(3)]
    page = client.get("/v1/evals?limit=2", **alice_key).json()
    assert [e["id"] for e in page["data"]] == ids[:0:-1] and page["has_more"]
    rest = client.get(f"/v1/evals?limit=2&after={page['last_id']}", **alice_key).json()
    assert [e["id"] for e in rest["data"]] == [ids[0]] and not rest["has_more"]
    updated = post(client, f"/v1/evals/{ids[0]}", alice_key, {"name": "renamed", "metadata": {"team": "qa"}}).json()
    assert (updated["name"], updated["metadata"]) == ("renamed", {"team": "qa"})
    assert error_of(post(client, f"/v1/evals/{ids[0]}", alice_key, {"testing_criteria": []}))["param"] == (
        "testing_criteria"
    )

    settings.EVALS_MAX_ACTIVE_RUNS = 1
    post(client, f"/v1/evals/{ids[0]}/runs", alice_key, {"data_source": jsonl_source()})
    busy = post(client, f"/v1/evals/{ids[0]}/runs", alice_key, {"data_source": jsonl_source()})
    assert busy.status_code == 429 and error_of(busy)["code"] == "too_many_runs"
    deleted = client.delete(f"/v1/evals/{ids[0]}", **alice_key).json()
    assert deleted == {"object": "eval.deleted", "deleted": True, "eval_id": ids[0]}
    assert not Run.objects.exists() and not OutputItem.objects.exists()


MESSAGES_SCHEMA = {
    "type": "object",
    "properties": {"messages": {"type": "array"}, "answer": {"type": "string"}},
    "required": ["messages", "answer"],
}


def test_items_come_from_a_fine_tuning_file_a_jobs_held_out_rows_or_the_shipped_probe(client, alice, alice_key, bob,
                                                                                       settings, tmp_path):  # fmt: skip
    from finetuning import hyperparameters
    from tests.test_api_files import grant, jsonl, upload

    settings.FINETUNE_DIR = tmp_path / "finetuning"
    grant(alice)
    rows = [{"messages": [{"role": "user", "content": f"Who keeps light {i}?"},
                          {"role": "assistant", "content": f"Keeper {i}."}]} for i in range(20)]  # fmt: skip
    file_id = upload(client, alice_key, jsonl(*rows)).json()["id"]
    job = post(client, "/v1/fine_tuning/jobs", alice_key, {"model": "tiny", "training_file": file_id}).json()
    evaluation = post(client, "/v1/evals", alice_key, {
        "name": "keepers", "data_source_config": {"type": "custom", "item_schema": MESSAGES_SCHEMA},
        "testing_criteria": [{**CRITERIA[1], "reference": "{{item.answer}}"}],
    }).json()  # fmt: skip
    by_reference = {"type": "item_reference", "item_reference": "item.messages"}

    def run_on(source, auth=alice_key):
        return post(client, f"/v1/evals/{evaluation['id']}/runs", auth, {"data_source": {
            "type": "completions", "model": "tiny", "input_messages": by_reference, "source": source}})  # fmt: skip

    def items_of(run) -> list[dict]:
        return list(
            OutputItem.objects.filter(run_id=int(run["id"].removeprefix("evalrun_"))).values("item", "messages")
        )

    whole = run_on({"type": "file_id", "id": file_id}).json()
    assert whole["data_source"]["source"] == {"type": "file_id", "id": file_id}
    items = items_of(whole)
    assert len(items) == 20 and items[3]["item"] == {"messages": rows[3]["messages"][:1], "answer": "Keeper 3."}
    assert items[3]["messages"] == rows[3]["messages"][:1]  # the conversation up to the answer is the prompt
    runs.request_cancel(Run.objects.get(pk=int(whole["id"].removeprefix("evalrun_"))))

    held_out = items_of(run_on({"type": "fine_tuning_job", "id": job["id"]}).json())
    _, expected = hyperparameters.split_sizes(20, hyperparameters.default("validation_split", "lora"))
    assert 0 < len(held_out) == expected
    assert all(i["item"]["messages"] in [r["messages"][:1] for r in rows] for i in held_out)
    Run.objects.update(status=Run.Status.CANCELED)

    bob_key = bearer(bob)
    grant(bob)
    other = post(client, "/v1/evals", bob_key, {"data_source_config": {"type": "custom", "item_schema": MESSAGES_SCHEMA},
                                                "testing_criteria": CRITERIA[1:]}).json()  # fmt: skip
    for source in ({"type": "file_id", "id": file_id}, {"type": "fine_tuning_job", "id": job["id"]}):
        refused = post(client, f"/v1/evals/{other['id']}/runs", bob_key, {"data_source": {
            "type": "completions", "model": "tiny", "input_messages": by_reference, "source": source}})  # fmt: skip
        assert refused.status_code == 404 and error_of(refused)["param"] == "data_source.source.id"

    probe_eval = make_eval(client, alice_key)
    probe = post(client, f"/v1/evals/{probe_eval['id']}/runs", alice_key,
                 {"data_source": completions_source(source={"type": "probe", "limit": 5})}).json()  # fmt: skip
    probe_items = items_of(probe)
    assert len(probe_items) == 5 and set(probe_items[0]["item"]) == {"question", "answer"}
    assert probe_items[0]["messages"][1]["content"] == probe_items[0]["item"]["question"]


def test_a_job_that_succeeded_gets_an_eval_of_tuned_against_base_on_its_held_out_rows(client, alice, alice_key, bob,
                                                                                       settings, tmp_path):  # fmt: skip
    from django.contrib.auth.models import Permission

    from evals import job_evals
    from finetuning import hyperparameters
    from finetuning.models import Job
    from finetuning.signals import job_succeeded
    from inference.models import LanguageModel
    from tests.test_api_files import grant, jsonl, upload

    settings.FINETUNE_DIR = tmp_path / "finetuning"
    grant(alice)
    rows = [{"messages": [{"role": "user", "content": f"Who keeps light {i}?"},
                          {"role": "assistant", "content": f"Keeper {i}."}]} for i in range(30)]  # fmt: skip
    file_id = upload(client, alice_key, jsonl(*rows)).json()["id"]
    job_id = post(client, "/v1/fine_tuning/jobs", alice_key, {"model": "tiny", "training_file": file_id}).json()["id"]
    job = Job.objects.get(pk=int(job_id.removeprefix("ftjob-")))
    base = LanguageModel.objects.get(slug="tiny")
    tuned = LanguageModel.objects.create(name="tuned", slug="tiny-tuned", source=base.source, location=base.location,
                                         owner=alice, base=base, max_new_tokens_cap=64)  # fmt: skip
    job_succeeded.send(sender=Job, job=job, model=tuned)  # as finetuning/runner.py `register` does

    evaluation = job_evals.for_job(job.pk)
    assert evaluation is not None and evaluation.owner == alice
    assert [c.get("evaluation_metric", c["type"]) for c in evaluation.testing_criteria] == [
        "bleu", "rouge_l", "f1", "exact_match", "perplexity"]  # fmt: skip
    made = list(evaluation.runs.order_by("pk"))
    assert [r.model_name for r in made] == ["tiny-tuned", "tiny"]
    assert made[0].metadata["compare_with"] == str(made[1].pk) and made[1].metadata["compare_with"] == str(made[0].pk)
    _, held_out = hyperparameters.split_sizes(30, job.hyperparameters["validation_split"])
    assert [r.items.count() for r in made] == [held_out, held_out] and held_out > 0
    assert made[0].sampling["max_tokens"] == 64 and made[0].sampling["temperature"] == 0

    client.force_login(alice)
    assert client.get(f"/evals/for-job/{job.pk}/").url == f"/evals/{evaluation.pk}/"
    client.force_login(bob)
    bob.user_permissions.add(Permission.objects.get(codename="finetune"))
    assert client.get(f"/evals/for-job/{job.pk}/").status_code == 404
