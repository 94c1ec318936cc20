"""The `perplexity` grader (an extension): its config checks, its measure against transformers'
own loss on the tiny model, and a run graded by it end to end (`runs.execute` with the in-process
inference worker answering, the Celery task's code measuring the references)."""

from __future__ import annotations

import math

import pytest

from evals import graders, perplexity, reports
from evals.models import OutputItem, Run
from finetuning.encoding import IGNORE, encode_chat
from tests.test_api_files import bearer, error_of
from tests.test_evals import SCHEMA, TEMPLATE, completions_source, execute, jsonl_source, post, run_url

PERPLEXITY = {"type": "perplexity", "name": "ppl", "reference": "{{item.answer}}", "pass_threshold": 1e9}


@pytest.mark.parametrize(
    "change, says",
    [
        ({"pass_threshold": 0.5}, "a perplexity of 1 or more"),
        ({"pass_threshold": "low"}, "a perplexity of 1 or more"),
        ({"pass_threshold": None}, "'pass_threshold' is required"),
        ({"reference": "{{item.nothing}}"}, "nothing"),
    ],
)
def test_a_bad_perplexity_grader_is_refused_naming_the_field(change, says):
    with pytest.raises(graders.GraderError) as refused:
        graders.validate({**PERPLEXITY, **change}, item_schema=SCHEMA)
    assert says in str(refused.value)


def test_the_grader_passes_at_or_below_its_threshold_and_lower_wins():
    grader = graders.validate({**PERPLEXITY, "pass_threshold": 10}, item_schema=SCHEMA)
    assert "input" not in grader
    item = {"question": "q", "answer": "a"}
    assert graders.grade(grader, item, {"perplexity": {"ppl": 9.5}})["passed"] is True
    assert graders.grade(grader, item, {"perplexity": {"ppl": 10.5}})["passed"] is False
    missing = graders.grade(grader, item, {"output_text": "a"})
    assert missing["passed"] is False and "needs a run whose model answered" in missing["error"]
    assert reports.winner(3.0, 7.0, lower_is_better=True) == "a"
    assert reports.winner(3.0, 7.0) == "b"


@pytest.mark.django_db
def test_the_measure_is_transformers_own_loss_on_the_reference_tokens_only(tiny_model):
    import torch

    prompt = [{"role": "system", "content": "Answer."}, {"role": "user", "content": "Who keeps the lighthouse?"},
              {"role": "assistant", "content": "Earlier turn."}, {"role": "user", "content": "And now?"}]  # fmt: skip
    reference = "Marta keeps it."
    measured = perplexity.perplexities(tiny_model, [(prompt, reference), (prompt, "  ")])
    assert measured[1] == "the reference is empty: there is nothing to score"

    model, tokenizer = perplexity._model(tiny_model)
    input_ids, labels = encode_chat([*prompt, {"role": "assistant", "content": reference}], tokenizer)
    labels = perplexity.last_answer_only(labels)
    scored = [t for t, label in zip(input_ids, labels, strict=True) if label != IGNORE]
    assert tokenizer.decode(scored).startswith(reference)  # the reference (and its end-of-turn), not "Earlier turn."
    with torch.inference_mode():
        out = model(input_ids=torch.tensor([input_ids]), labels=torch.tensor([labels]))
    assert measured[0] == pytest.approx(math.exp(float(out.loss)), rel=1e-4)
    perplexity.release()
    assert not perplexity._held


@pytest.mark.django_db(transaction=True)
def test_a_run_is_graded_by_the_perplexity_of_each_reference_under_its_model(client, alice, tiny_model, settings,
                                                                            worker):  # fmt: skip
    settings.API_RATE_LIMIT = 0
    auth = bearer(alice)
    criteria = [PERPLEXITY]
    response = post(client, "/v1/evals", auth, {"name": "ppl", "testing_criteria": criteria,
                                                "data_source_config": {"type": "custom", "item_schema": SCHEMA}})  # fmt: skip
    assert response.status_code == 200, response.content
    evaluation = response.json()
    refused = post(client, f"/v1/evals/{evaluation['id']}/runs", auth, {"data_source": jsonl_source()})
    assert refused.status_code == 400 and "perplexity grader" in error_of(refused)["message"]

    run = post(client, f"/v1/evals/{evaluation['id']}/runs", auth, {"data_source": completions_source()}).json()
    assert execute(run) == "completed"
    listed = client.get(f"{run_url(run)}/output_items?order=asc", **auth).json()["data"]
    stored = Run.objects.get(pk=int(run["id"].removeprefix("evalrun_")))
    first = OutputItem.objects.get(run=stored, index=0)
    expected = perplexity.perplexities(tiny_model, [(first.messages, "Paris")])[0]
    assert listed[0]["results"][0]["score"] == pytest.approx(expected, rel=1e-4)
    assert all(r["results"][0]["score"] > 1 and r["results"][0]["passed"] for r in listed)
    assert [m["content"] for m in first.messages] == [TEMPLATE[0]["content"], "Capital of France?"]
    perplexity.release()
