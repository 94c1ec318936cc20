"""Conversation logs keep what happened: a conversation its user deletes and a reply that
regenerate replaced stay in the database for the admins, hidden from the user everywhere (page,
sidebar, search, JSON endpoints, rename, the socket), until LOGS_RETENTION_DAYS purge them."""

from __future__ import annotations

from datetime import timedelta
from io import StringIO

import pytest
from channels.db import database_sync_to_async
from django.core.management import CommandError, call_command
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from chat import conversations, replies, retention, tasks, turns
from chat.models import Conversation, Feedback, LanguageModel, Message
from chat.rendering import render_markdown
from inference.protocol import Done
from moderation.models import Event

from .socket_client import connect, receive, send


@pytest.fixture
def small_model():
    return LanguageModel.objects.create(
        name="Small", slug="small", location="/models/small", max_tokens=64, max_new_tokens_cap=128, is_default=True
    )


def make_chat(user, model, title="Trip to Paris", question="Plan a weekend", answer="Start at the Louvre"):
    conversation = Conversation.objects.create(user=user, title=title, model=model)
    asked = Message.objects.create(
        conversation=conversation, role=Message.Role.USER, content=question, html=render_markdown(question)
    )
    answered = Message.objects.create(
        conversation=conversation,
        parent=asked,
        role=Message.Role.ASSISTANT,
        content=answer,
        html=render_markdown(answer),
        model=model,
        finish_reason="stop",
        params={"temperature": 0.7, "max_tokens": 32},
    )
    return conversation, asked, answered


def client_for(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def regenerated(user, answer: Message) -> Message:
    """Regenerate `answer` as the socket does (queue, then drop the old one) and finish the new one."""
    turn = turns.regenerate(user, answer.pk)
    turns.drop_replaced(turn)
    replies.end(turn.reply.pk, content="Start at the Musée d'Orsay", done=Done("stop"))
    return Message.objects.get(pk=turn.reply.pk)


# --- deleted conversations -----------------------------------------------------------------------
@pytest.mark.django_db
def test_a_deleted_conversation_is_hidden_from_its_user_everywhere_and_kept_for_the_admins(alice, small_model):
    conversation, asked, answered = make_chat(alice, small_model)
    client = client_for(alice)
    base = f"/api/conversations/{conversation.pk}"
    assert client.post(f"{base}/delete/").json() == {"deleted": conversation.pk}

    assert b"Trip to Paris" not in client.get(reverse("chat:home")).content  # the sidebar
    assert client.get(reverse("chat:conversation_list"), {"q": "Louvre"}).json() == {"conversations": []}
    assert client.get(reverse("chat:conversation_list")).json() == {"conversations": []}
    assert client.get(conversation.get_absolute_url()).status_code == 404
    assert client.get(f"{base}/messages/").status_code == 404
    rename = client.post(f"{base}/", '{"title": "Renamed"}', content_type="application/json")
    assert rename.status_code == 404
    assert client.post(f"{base}/delete/").status_code == 404

    kept = Conversation.objects.get(pk=conversation.pk)
    assert kept.deleted_at is not None and kept.title == "Trip to Paris"
    assert set(kept.messages.values_list("pk", flat=True)) == {asked.pk, answered.pk}
    assert not Conversation.objects.visible().filter(pk=conversation.pk).exists()
    assert not Message.objects.visible().filter(conversation=conversation).exists()


@pytest.mark.django_db
def test_a_deleted_conversation_cannot_be_sent_into_or_regenerated(alice, small_model):
    conversation, _, answered = make_chat(alice, small_model)
    conversations.delete_conversation(conversation)
    with pytest.raises(turns.TurnError) as sent:
        turns.start_turn(alice, conversation.pk, "Are you there?", None, {})
    assert sent.value.code == "not_found"
    with pytest.raises(turns.TurnError) as again:
        turns.regenerate(alice, answered.pk)
    assert again.value.code == "not_found"
    assert Message.objects.filter(conversation=conversation).count() == 2  # nothing was added


# --- replaced replies ------------------------------------------------------------------------------
@pytest.mark.django_db
def test_regenerate_marks_the_old_reply_replaced_by_the_new_one_instead_of_deleting_it(alice, small_model):
    conversation, asked, answered = make_chat(alice, small_model)
    new = regenerated(alice, answered)
    answered.refresh_from_db()
    assert answered.replaced_by_id == new.pk and answered.replaced_at is not None
    assert answered.content == "Start at the Louvre"  # kept as it was, for the logs
    assert list(conversations.visible_messages(conversation)) == [asked, new]


@pytest.mark.django_db
def test_a_replaced_reply_is_hidden_from_the_page_the_json_history_and_search(alice, small_model):
    conversation, _, answered = make_chat(alice, small_model)
    regenerated(alice, answered)
    client = client_for(alice)
    page = client.get(conversation.get_absolute_url()).content.decode()
    assert "Louvre" not in page and "Orsay" in page
    history = client.get(f"/api/conversations/{conversation.pk}/messages/").json()["messages"]
    assert [m["content"] for m in history] == ["Plan a weekend", "Start at the Musée d'Orsay"]
    assert client.get(reverse("chat:conversation_list"), {"q": "Louvre"}).json() == {"conversations": []}
    found = client.get(reverse("chat:conversation_list"), {"q": "Orsay"}).json()["conversations"]
    assert [c["id"] for c in found] == [conversation.pk]


@pytest.mark.django_db
def test_the_model_never_sees_a_replaced_reply_in_later_turns(alice, small_model):
    conversation, _, answered = make_chat(alice, small_model)
    new = regenerated(alice, answered)
    turn = turns.start_turn(alice, conversation.pk, "And on Sunday?", None, {})
    assert [m["content"] for m in turn.request.messages] == ["Plan a weekend", new.content, "And on Sunday?"]


@pytest.mark.django_db
def test_a_replaced_reply_cannot_be_regenerated_again(alice, small_model):
    _, _, answered = make_chat(alice, small_model)
    regenerated(alice, answered)
    with pytest.raises(turns.TurnError) as refused:
        turns.regenerate(alice, answered.pk)
    assert refused.value.code == "not_found"


@pytest.mark.django_db(transaction=True)
async def test_the_socket_treats_replaced_replies_and_deleted_conversations_as_missing(alice, small_model):
    conversation, _, answered = await database_sync_to_async(make_chat)(alice, small_model)
    await database_sync_to_async(regenerated)(alice, answered)
    other, _, _ = await database_sync_to_async(make_chat)(alice, small_model, title="Other")
    await database_sync_to_async(conversations.delete_conversation)(other)
    ws, _ = await connect(alice)
    for frame in (
        {"type": "chat.resume", "message": answered.pk, "after": 0},
        {"type": "chat.stop", "message": answered.pk},
        {"type": "chat.regenerate", "message": answered.pk},
        {"type": "chat.send", "conversation": other.pk, "content": "Hello?"},
    ):
        await send(ws, frame)
        reply = await receive(ws, timeout=5)
        assert (reply["type"], reply["code"]) == ("chat.error", "not_found"), (frame, reply)
    await ws.disconnect()


@pytest.mark.django_db
def test_a_new_reply_records_its_system_prompt_and_the_models_version(alice, small_model):
    small_model.system_prompt = "You are terse."
    small_model.save()
    turn = turns.start_turn(alice, None, "Hello", None, {"seed": 7})
    reply = turn.reply
    assert reply.system_prompt == "You are terse."
    assert reply.model_version["slug"] == "small" and reply.model_version["location"] == "/models/small"
    assert reply.params["seed"] == 7


@pytest.mark.django_db
def test_a_conversation_comes_from_the_chat_page_unless_said_otherwise(alice, small_model):
    conversation, _, _ = make_chat(alice, small_model)
    assert conversation.source == Conversation.Source.CHAT


# --- retention -------------------------------------------------------------------------------------
def _hidden_long_ago(alice, model, days: int):
    """A deleted conversation and a regenerated reply's first version, both hidden `days` ago."""
    deleted, _, deleted_answer = make_chat(alice, model, title="Deleted")
    Feedback.objects.create(message=deleted_answer, user=alice, rating=Feedback.Rating.UP)
    conversations.delete_conversation(deleted)
    kept, _, answered = make_chat(alice, model, title="Kept")
    new = regenerated(alice, answered)
    event = Event.objects.create(
        stage=Event.Stage.OUTPUT, action="flag", rule_name="r", message=deleted_answer, conversation=deleted
    )
    past = timezone.now() - timedelta(days=days)
    Conversation.objects.filter(pk=deleted.pk).update(deleted_at=past)
    Message.objects.filter(pk=answered.pk).update(replaced_at=past)
    return deleted, kept, answered, new, event


@pytest.mark.django_db
def test_purge_deletes_what_was_hidden_longer_than_the_retention_and_keeps_the_rest(alice, small_model):
    deleted, kept, answered, new, event = _hidden_long_ago(alice, small_model, days=31)
    recent, _, _ = make_chat(alice, small_model, title="Deleted yesterday")
    conversations.delete_conversation(recent)

    purged = retention.purge(days=30)

    assert purged.conversations == 1
    assert not Conversation.objects.filter(pk=deleted.pk).exists()
    assert not Message.objects.filter(conversation_id=deleted.pk).exists()
    assert not Feedback.objects.filter(message__conversation_id=deleted.pk).exists()
    # A regenerated reply is a version the person can still show (chat.branches): it stays.
    assert Message.objects.filter(pk=answered.pk).exists()
    assert list(kept.messages.values_list("content", flat=True)) == ["Plan a weekend", answered.content, new.content]
    assert Conversation.objects.filter(pk=recent.pk).exists()  # hidden a day ago: still in the logs
    event.refresh_from_db()
    assert event.message_id is None and event.conversation_id is None  # the review queue keeps its row


@pytest.mark.django_db
def test_purge_keeps_everything_inside_the_retention(alice, small_model):
    _hidden_long_ago(alice, small_model, days=29)
    before = (Conversation.objects.count(), Message.objects.count())
    assert retention.purge(days=30).conversations == 0
    assert (Conversation.objects.count(), Message.objects.count()) == before


@pytest.mark.django_db
def test_purge_uses_the_retention_setting(alice, small_model, settings):
    _hidden_long_ago(alice, small_model, days=10)
    settings.LOGS_RETENTION_DAYS = 30
    assert str(retention.purge()) == "0 deleted conversation(s)"
    settings.LOGS_RETENTION_DAYS = 7
    assert str(retention.purge()) == "1 deleted conversation(s)"


def test_a_negative_retention_is_refused_with_a_clear_error():
    with pytest.raises(ValueError, match="0 or more"):
        retention.cutoff(-1)


@pytest.mark.django_db
def test_the_purgelogs_command_counts_on_a_dry_run_then_purges(alice, small_model):
    _hidden_long_ago(alice, small_model, days=3)
    out = StringIO()
    call_command("purgelogs", "--days", "2", "--dry-run", stdout=out)
    assert out.getvalue().strip() == "Would purge 1 deleted conversation(s)."
    assert Conversation.objects.count() == 2
    out = StringIO()
    call_command("purgelogs", "--days", "2", stdout=out)
    assert out.getvalue().strip() == "Purged 1 deleted conversation(s)."
    assert Conversation.objects.count() == 1
    with pytest.raises(CommandError, match="--days must be 0 or more"):
        call_command("purgelogs", "--days", "-1")


@pytest.mark.django_db
def test_the_periodic_task_purges_and_is_on_the_celery_beat_schedule(alice, small_model, settings):
    from chatsite.celery import app

    _hidden_long_ago(alice, small_model, days=3)
    settings.LOGS_RETENTION_DAYS = 1
    assert tasks.purge_logs() == "1 deleted conversation(s)"
    app.loader.import_default_modules()
    scheduled = app.conf.beat_schedule["purge-logs"]
    assert scheduled["task"] == tasks.purge_logs.name and scheduled["task"] in app.tasks
