"""Replay of logged conversations (evals/replay.py): a `logs` source through the API and the
studio's form, filtered by model, date and rating; a person replays their own turns, an admin who
may read the logs everyone's; the candidate answers each turn with the prompt it had, and the run
shows its answer beside the one that was seen. The run is executed for real (`runs.execute` with
the in-process inference worker and the tiny model)."""

from __future__ import annotations

import datetime as dt

import pytest
from django.contrib.auth.models import Permission
from django.utils import timezone

from chat.models import Conversation, Feedback, Message
from evals import replay
from evals.models import Eval, OutputItem
from tests.test_api_files import bearer, error_of
from tests.test_evals import execute, post, run_url

pytestmark = pytest.mark.django_db(transaction=True)

CRITERIA = [
    {"type": "text_similarity", "name": "rouge", "input": "{{sample.output_text}}", "reference": "{{item.answer}}",
     "evaluation_metric": "rouge_l", "pass_threshold": 0.5},
]  # fmt: skip


def turn(user, model, question: str, answer: str, *, rating=None, days_ago: int = 0, history=(), worker="w1",
         system="Be brief.") -> Message:  # fmt: skip
    """A logged exchange, as the chat page stores it: a branch of messages, the reply last."""
    conversation = Conversation.objects.create(user=user, model=model, system_prompt=system)
    parent = None
    for role, text in [*history, ("user", question)]:
        parent = Message.objects.create(conversation=conversation, role=role, content=text, parent=parent)
    reply = Message.objects.create(conversation=conversation, role="assistant", content=answer, parent=parent,
                                   model=model, worker=worker)  # fmt: skip
    when = timezone.now() - dt.timedelta(days=days_ago)
    Message.objects.filter(conversation=conversation).update(created_at=when)
    if rating is not None:
        Feedback.objects.create(message=reply, user=user, rating=rating)
    return reply


@pytest.fixture
def logged(alice, bob, tiny_model):
    return {
        "old": turn(alice, tiny_model, "Capital of Italy?", "Rome", rating=Feedback.Rating.UP, days_ago=10),
        "down": turn(alice, tiny_model, "Two plus two?", "five", rating=Feedback.Rating.DOWN, days_ago=1,
                     history=[("user", "Let us count."), ("assistant", "Sure.")]),
        "plain": turn(alice, tiny_model, "Say hi.", "Hi!"),
        "typed": turn(alice, tiny_model, "Forged?", "an answer an API client typed", worker=""),
        "bob": turn(bob, tiny_model, "Bob's secret question", "Bob's answer", rating=Feedback.Rating.DOWN),
    }  # fmt: skip


def replay_eval(client, auth) -> dict:
    body = {"name": "replay", "data_source_config": {"type": "custom", "item_schema": replay.SCHEMA},
            "testing_criteria": CRITERIA}  # fmt: skip
    response = post(client, "/v1/evals", auth, body)
    assert response.status_code == 200, response.content
    return response.json()


def logs_run(client, auth, evaluation: dict, **source):
    data_source = {
        "type": "completions",
        "model": "tiny",
        "input_messages": {"type": "item_reference", "item_reference": "item.messages"},
        "sampling_params": {"temperature": 0, "max_completion_tokens": 8},
        "source": {"type": "logs", **source},
    }
    return post(client, f"/v1/evals/{evaluation['id']}/runs", auth, {"data_source": data_source})


def items_of(run: dict) -> list[dict]:
    rows = OutputItem.objects.filter(run_id=int(run["id"].removeprefix("evalrun_"))).order_by("index")
    return [row.item for row in rows]


@pytest.fixture
def api(settings):
    settings.API_RATE_LIMIT = 0
    settings.EVALS_MAX_ACTIVE_RUNS = 100  # the filter test makes many runs, none executed


def test_a_person_replays_their_own_generated_replies_newest_first_with_the_prompt_each_had(client, alice, logged,
                                                                                            api, worker):  # fmt: skip
    auth = bearer(alice)
    evaluation = replay_eval(client, auth)
    response = logs_run(client, auth, evaluation, limit=10)
    assert response.status_code == 200, response.content
    run = response.json()
    items = items_of(run)
    # Bob's turn is not hers; the assistant turn an API client typed was never generated.
    assert [i["message"] for i in items] == [logged["plain"].pk, logged["down"].pk, logged["old"].pk]
    down = items[1]
    assert down == {
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Let us count."},
                     {"role": "assistant", "content": "Sure."}, {"role": "user", "content": "Two plus two?"}],
        "answer": "five", "rating": "down", "model": "tiny", "conversation": logged["down"].conversation_id,
        "message": logged["down"].pk,
    }  # fmt: skip
    assert [i["rating"] for i in items] == ["", "down", "up"]
    stored = OutputItem.objects.get(run_id=int(run["id"].removeprefix("evalrun_")), index=1)
    assert stored.messages == down["messages"]  # the candidate is asked what the person asked, as it was

    assert execute(run) == "completed"
    listed = client.get(f"{run_url(run)}/output_items?order=asc", **auth).json()["data"]
    assert [i["datasource_item"]["answer"] for i in listed] == ["Hi!", "five", "Rome"]  # the answer seen...
    assert all(i["sample"]["output"][0]["role"] == "assistant" for i in listed)  # ...beside the candidate's
    assert all(i["results"][0]["name"] == "rouge" for i in listed)


def test_filters_pick_by_rating_model_and_date(client, alice, logged, api, tiny_model):
    auth = bearer(alice)
    evaluation = replay_eval(client, auth)

    def picked(**source) -> list[int]:
        response = logs_run(client, auth, evaluation, **source)
        assert response.status_code == 200, response.content
        return [i["message"] for i in items_of(response.json())]

    assert picked(rating="down") == [logged["down"].pk]
    assert picked(rating="rated") == [logged["down"].pk, logged["old"].pk]
    assert picked(rating="unrated") == [logged["plain"].pk]
    assert picked(rating="up", model="tiny") == [logged["old"].pk]
    today = timezone.localdate()
    assert picked(since=(today - dt.timedelta(days=2)).isoformat()) == [logged["plain"].pk, logged["down"].pk]
    assert picked(until=(today - dt.timedelta(days=5)).isoformat()) == [logged["old"].pk]
    assert picked(limit=1) == [logged["plain"].pk]


@pytest.mark.parametrize(
    "source, says",
    [
        ({"rating": "great"}, "source.rating must be one of"),
        ({"since": "last week"}, "YYYY-MM-DD"),
        ({"since": "2026-12-07", "until": "2026-12-01"}, "must not come after"),
        ({"limit": 0}, "source.limit must be a whole number"),
        ({"user": "bob"}, "source.user is not a filter"),
        ({"model": "nobody-uses-this"}, "No logged replies in your conversations match"),
    ],
)
def test_a_bad_logs_source_is_refused_naming_what_to_change(client, alice, logged, api, source, says):
    auth = bearer(alice)
    evaluation = replay_eval(client, auth)
    response = logs_run(client, auth, evaluation, **source)
    assert response.status_code == 400
    error = error_of(response)
    assert says in error["message"] and error["param"] == "data_source.source"
    assert not Eval.objects.get(pk=int(evaluation["id"].removeprefix("eval_"))).runs.exists()


def test_an_admin_who_may_read_the_logs_replays_everyone_s_turns(client, django_user_model, logged, api):
    admin = django_user_model.objects.create_user("auditor", password="auditor-pass-123", is_staff=True)
    admin.user_permissions.add(Permission.objects.get(codename="view_conversation", content_type__app_label="chat"))
    auth = bearer(admin)
    evaluation = replay_eval(client, auth)
    response = logs_run(client, auth, evaluation, rating="down")
    assert response.status_code == 200, response.content
    assert [i["message"] for i in items_of(response.json())] == [logged["bob"].pk, logged["down"].pk]


def test_the_studio_form_replays_logged_turns_and_the_run_page_shows_the_answer_seen(client, alice, logged):
    client.force_login(alice)
    page = client.get("/evals/").content.decode()
    assert 'data-source-panel="replay"' in page and "you were given in your conversations" in page
    data = {
        "name": "replay of the thumbs down", "source": "replay", "replay_limit": "5", "replay_rating": "down",
        "replay_model": "", "replay_since": "", "replay_until": "", "graders": ["rouge_l"], "reference": "answer",
        "system_prompt": "", "user_prompt": "{{item.question}}", "max_new_tokens": "16", "temperature": "0",
        "model_a": "tiny", "model_b": "",
    }  # fmt: skip
    response = client.post("/evals/", {**data, "replay_since": "someday"})
    assert response.status_code == 400 and "Give a date, YYYY-MM-DD." in response.content.decode()
    response = client.post("/evals/", {**data, "replay_model": "tiny", "replay_rating": "up",
                                       "replay_since": timezone.localdate().isoformat()})  # fmt: skip
    assert response.status_code == 400 and "No logged replies in your conversations match" in response.content.decode()
    assert not Eval.objects.exists()  # nothing half-saved

    response = client.post("/evals/", data)
    assert response.status_code == 302, response.content.decode()[:2000]
    run = Eval.objects.get().runs.get()
    assert run.data_source["input_messages"] == {"type": "item_reference", "item_reference": "item.messages"}
    item = run.items.get()
    assert item.item["message"] == logged["down"].pk and item.messages[-1]["content"] == "Two plus two?"
    OutputItem.objects.filter(pk=item.pk).update(
        state=OutputItem.State.ANSWERED, output_text="four", finish_reason="stop"
    )
    from evals import runs

    assert runs.execute(run.pk, runs.executor_id("test")) == "completed"
    page = client.get(f"/evals/runs/{run.pk}/").content.decode()
    assert (
        "user: Two plus two?" in page and "five" in page and "four" in page
    )  # the prompt, the answer seen, the new one
