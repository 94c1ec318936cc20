"""Feedback in the admin: the list (reply, comment, filters) and the action that turns thumbs-up
replies and edited answers into a fine-tuning dataset, checked and saved like an upload, that a
fine-tuning job then trains on."""

from __future__ import annotations

import html
import json
import shutil
from pathlib import Path
from unittest import mock

import pytest
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.auth.models import Permission
from django.contrib.messages import get_messages
from django.test import Client
from django.urls import reverse

from chat import branches, feedback_datasets, replies, turns
from chat.models import Conversation, Feedback, LanguageModel, Message
from chat.rendering import render_markdown
from finetuning import jobs, runner
from finetuning.models import Dataset, Job
from inference.protocol import Done

pytestmark = pytest.mark.django_db

FEEDBACK = reverse("admin:chat_feedback_changelist")


@pytest.fixture(autouse=True)
def _datasets_in_tmp(settings, tmp_path):
    settings.FINETUNE_DIR = tmp_path / "finetuning"


@pytest.fixture
def root(django_user_model):
    return django_user_model.objects.create_superuser("root", "root@example.com", "root-pass-123")


def logged_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def say(conversation, role, content, **fields) -> Message:
    """Add a message after the last one shown (as the chat page does)."""
    fields.setdefault("parent", branches.leaf(conversation))
    return Message.objects.create(
        conversation=conversation, role=role, content=content, html=render_markdown(content), **fields
    )


@pytest.fixture
def rated(alice, tiny_model):
    """Three rated replies: a thumbs up after a regenerate (the first answer replaced), a thumbs
    down with the answer Alice wanted, and a thumbs down without one."""
    lighthouse = Conversation.objects.create(
        user=alice, title="Lighthouses", model=tiny_model, system_prompt="Answer like a sailor."
    )
    say(lighthouse, "user", "What is a lighthouse?")
    say(lighthouse, "assistant", "A tower with a light.", model=tiny_model)
    say(lighthouse, "user", "Who keeps it?")
    dull = say(lighthouse, "assistant", "Someone.", model=tiny_model, finish_reason="stop")
    turn = turns.regenerate(alice, dull.pk)
    turns.drop_replaced(turn)
    replies.end(turn.reply.pk, content="The keeper, aye.", done=Done("stop"))
    up = Feedback.objects.create(
        message_id=turn.reply.pk, user=alice, rating=Feedback.Rating.UP, comment="Great **voice**"
    )
    tides = Conversation.objects.create(user=alice, title="Tides", model=tiny_model)
    say(tides, "user", "Why are there tides?")
    wrong = say(tides, "assistant", "Because of the wind.", model=tiny_model)
    edited = Feedback.objects.create(
        message=wrong,
        user=alice,
        rating=Feedback.Rating.DOWN,
        comment="Wrong",
        edited_content="The Moon pulls the sea.",
    )
    say(tides, "user", "Thanks")
    meh = say(tides, "assistant", "Anytime.", model=tiny_model)
    down = Feedback.objects.create(message=meh, user=alice, rating=Feedback.Rating.DOWN, comment="Too short")
    return {"up": up, "edited": edited, "down": down}


def build(client, feedback) -> object:
    data = {"action": "build_dataset", ACTION_CHECKBOX_NAME: [f.pk for f in feedback]}
    return client.post(FEEDBACK, data, follow=True)


def notices(response) -> list[str]:
    return [str(m) for m in get_messages(response.wsgi_request)]


def rows_of(dataset: Dataset) -> list[list[dict]]:
    return [json.loads(line)["messages"] for line in dataset.path.read_text().splitlines()]


# --- the list ------------------------------------------------------------------------------------
def test_the_feedback_list_shows_the_reply_its_model_and_the_comment(root, rated):
    page = logged_in(root).get(FEEDBACK).content.decode()
    assert "The keeper, aye." in page and "Great **voice**" in page and "Because of the wind." in page
    assert page.count('<td class="field-reply_model">tiny</td>') == 3


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({"rating__exact": "1"}, {"up"}),
        ({"rating__exact": "-1"}, {"edited", "down"}),
        ({"edited": "yes"}, {"edited"}),
        ({"edited": "no"}, {"up", "down"}),
    ],
)
def test_the_feedback_filters_pick_the_right_feedback(root, rated, query, expected):
    response = logged_in(root).get(FEEDBACK, query)
    assert {f.pk for f in response.context["cl"].result_list} == {rated[name].pk for name in expected}


def test_the_feedback_list_filters_by_the_replys_model(root, rated, tiny_model):
    other = LanguageModel.objects.create(name="Other", slug="other", location="/models/other")
    Message.objects.filter(pk=rated["down"].message_id).update(model=other)
    response = logged_in(root).get(FEEDBACK, {"message__model__id__exact": other.pk})
    assert [f.pk for f in response.context["cl"].result_list] == [rated["down"].pk]


def test_the_feedback_page_renders_the_reply_and_shows_the_edited_answer(root, rated):
    url = reverse("admin:chat_feedback_change", args=[rated["edited"].pk])
    page = logged_in(root).get(url).content.decode()
    assert "<p>Because of the wind.</p>" in page and "The Moon pulls the sea." in page and "Wrong" in page


# --- the dataset ---------------------------------------------------------------------------------
def test_thumbs_up_replies_and_edited_answers_become_rows_of_a_dataset_owned_by_the_admin(root, rated):
    response = build(logged_in(root), rated.values())
    dataset = Dataset.objects.get()
    assert dataset.owner == root and dataset.rows == 2 and dataset.format == "messages"
    [said] = notices(response)
    link = f'<a href="{reverse("finetuning:dataset", args=[dataset.pk])}">{dataset.name}</a>'
    assert said.startswith(f"Built the dataset {link} with 2 row(s).")
    assert dataset.name.startswith("Feedback ") and dataset.name.endswith("(2 rows)")
    assert "1 selected feedback had neither a thumbs up nor an edited answer" in said
    assert rows_of(dataset) == [
        [
            {"role": "system", "content": "Answer like a sailor."},
            {"role": "user", "content": "What is a lighthouse?"},
            {"role": "assistant", "content": "A tower with a light."},
            {"role": "user", "content": "Who keeps it?"},
            {"role": "assistant", "content": "The keeper, aye."},  # the replaced "Someone." is left out
        ],
        [
            {"role": "user", "content": "Why are there tides?"},
            {"role": "assistant", "content": "The Moon pulls the sea."},  # the edited answer in its place
        ],
    ]


def test_feedback_with_nothing_to_learn_builds_nothing_and_says_why(root, rated):
    response = build(logged_in(root), [rated["down"]])
    assert not Dataset.objects.exists()
    assert notices(response) == [
        "No dataset was built: None of the 1 selected feedback has a thumbs up or an edited answer, so there is "
        "nothing to learn from."
    ]


def test_rows_the_dataset_check_refuses_are_left_out_and_named(root, rated, alice, tiny_model):
    broken = Conversation.objects.create(user=alice, title="Broken", model=tiny_model)
    say(broken, "user", "First")
    say(broken, "user", "Second, after a reply that failed")
    reply = say(broken, "assistant", "Here.", model=tiny_model)
    bad = Feedback.objects.create(message=reply, user=alice, rating=Feedback.Rating.UP)
    response = build(logged_in(root), [rated["up"], bad])
    assert Dataset.objects.get().rows == 1
    [said] = notices(response)
    expected = "1 row(s) failed the dataset check (line 2: message 2 is from 'user' but 'assistant' was expected"
    assert expected in html.unescape(said)


def test_staff_who_may_not_add_datasets_cannot_build_one(django_user_model, rated):
    staff = django_user_model.objects.create_user("staff", password="staff-pass-123", is_staff=True)
    staff.user_permissions.add(Permission.objects.get(codename="view_feedback"))
    client = logged_in(staff)
    assert client.get(FEEDBACK).status_code == 200
    build(client, rated.values())
    assert not Dataset.objects.exists()
    staff.user_permissions.add(Permission.objects.get(codename="add_dataset"))
    build(logged_in(staff), rated.values())
    assert Dataset.objects.get().owner == staff


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)  # the job's heartbeat thread writes through its own connection
def test_a_dataset_built_from_feedback_trains_a_fine_tuning_job_to_success(root, rated, settings):
    built = feedback_datasets.build(root, Feedback.objects.all())
    with mock.patch.object(jobs, "enqueue") as enqueue:
        job = jobs.create(
            root,
            name="From feedback",
            base_model=LanguageModel.objects.get(slug="tiny"),
            dataset=built.dataset,
            method="lora",
            asked={"epochs": 2, "batch_size": 2, "validation_split": 0.0, "lora_rank": 4},
        )
    enqueue.assert_called_once_with(job.pk)
    try:
        assert runner.run(job.pk, worker="test") == Job.State.SUCCEEDED, list(
            job.events.values_list("message", flat=True)
        )
        job.refresh_from_db()
        assert job.dataset.rows == 2 and job.result_model is not None
        assert job.phase == {}  # every measuring phase ended
        from finetuning.models import BaseProbe

        assert BaseProbe.objects.filter(model__slug="tiny").count() == 1  # kept for the next job on this base
    finally:
        shutil.rmtree(Path(settings.MODEL_DIR) / "tuned" / runner.model_slug(job), ignore_errors=True)
