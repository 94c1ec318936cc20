"""Files of purpose `evals` (evals/files.py) through /v1/files and a run's `file_id` source:
checked line by line (a bad file refused whole, naming its lines; nothing kept), stored
normalized, usable by anyone with a key (no fine-tuning permission needed), and never taken by
training. Django's test client; the run is graded with `runs.execute` (answers given, jsonl)."""

from __future__ import annotations

import json

import pytest

from finetuning.models import Dataset
from tests.test_api_files import bearer, error_of, grant, jsonl, streamed, upload
from tests.test_evals import CRITERIA, SCHEMA, execute, make_eval, post, run_url

pytestmark = pytest.mark.django_db

ROWS = [
    {"item": {"question": "Capital of France?", "answer": "Paris"}, "sample": {"output_text": "Paris"}},
    {"question": "Two plus two?", "answer": "four"},  # a bare object is the item
]


@pytest.fixture
def bob_key(bob, settings, tmp_path, tiny_model):
    settings.FINETUNE_DIR = tmp_path / "finetuning"
    settings.API_RATE_LIMIT = 0
    return bearer(bob)  # no fine-tuning permission


def test_an_evals_file_is_stored_normalized_and_listed_by_purpose(client, bob_key):
    response = upload(client, bob_key, jsonl(*ROWS), name="facts.jsonl", purpose="evals")
    assert response.status_code == 200, response.content
    made = response.json()
    assert made["purpose"] == "evals" and made["filename"] == "facts.jsonl" and made["status"] == "processed"
    stored = Dataset.objects.get()
    assert stored.purpose == "evals" and stored.rows == 2 and stored.owner.username == "bob"
    content = client.get(f"/v1/files/{made['id']}/content", **bob_key)
    lines = [json.loads(line) for line in streamed(content).decode().splitlines()]
    assert lines == [ROWS[0], {"item": ROWS[1]}]
    assert [f["id"] for f in client.get("/v1/files?purpose=evals", **bob_key).json()["data"]] == [made["id"]]
    assert client.get("/v1/files?purpose=fine-tune", **bob_key).json()["data"] == []
    assert client.delete(f"/v1/files/{made['id']}", **bob_key).json()["deleted"] is True
    assert not Dataset.objects.exists() and not list(stored.path.parent.glob("*.jsonl"))


@pytest.mark.parametrize(
    "lines, says",
    [
        (['{"question": "ok"}', "{broken", "[1, 2]", '{"item": {"q": 1}, "sample": "x"}'],
         '3 of 4 rows cannot be used. line 2: not valid JSON'),
        (["", "  "], "The file has no rows"),
    ],
)  # fmt: skip
def test_a_bad_evals_file_is_refused_whole_naming_its_lines(client, bob_key, lines, says):
    response = upload(client, bob_key, jsonl(*lines), purpose="evals")
    assert response.status_code == 400
    error = error_of(response)
    assert says in error["message"] and error["param"] == "file" and error["code"] == "invalid_file"
    if "3 of 4" in says:
        assert "line 3: it must be a JSON object" in error["message"] and 'line 4: "sample" must be' in error["message"]
    assert not Dataset.objects.exists()


def test_over_the_item_limit_the_file_is_refused(client, bob_key, settings):
    settings.EVALS_MAX_ITEMS = 3
    response = upload(client, bob_key, jsonl(*[{"q": str(i)} for i in range(4)]), purpose="evals")
    assert response.status_code == 400 and "more than 3 rows" in error_of(response)["message"]
    assert not Dataset.objects.exists()


def test_a_run_takes_its_items_from_an_evals_file_and_training_refuses_it(client, bob, bob_key):
    file_id = upload(client, bob_key, jsonl(*ROWS[:1], {"item": ROWS[1], "sample": {"output_text": "five"}}),
                     purpose="evals").json()["id"]  # fmt: skip
    evaluation = make_eval(client, bob_key)
    source = {"type": "jsonl", "source": {"type": "file_id", "id": file_id}}
    response = post(client, f"/v1/evals/{evaluation['id']}/runs", bob_key, {"data_source": source})
    assert response.status_code == 200, response.content
    run = response.json()
    assert execute(run) == "completed"
    assert client.get(run_url(run), **bob_key).json()["per_testing_criteria_results"][0] == {
        "testing_criteria": CRITERIA[0]["name"], "passed": 1, "failed": 1}  # fmt: skip
    bad = post(client, f"/v1/evals/{evaluation['id']}/runs", bob_key,
               {"data_source": {"type": "jsonl", "source": {"type": "file_id", "id": "file-999"}}})  # fmt: skip
    assert bad.status_code == 404 and error_of(bad)["param"] == "data_source.source.id"

    grant(bob)
    refused = post(client, "/v1/fine_tuning/jobs", bob_key, {"model": "tiny", "training_file": file_id})
    assert refused.status_code == 400
    assert error_of(refused)["param"] == "training_file" and "purpose 'evals'" in error_of(refused)["message"]
    assert SCHEMA["required"] == ["question", "answer"]
