"""Edit and resend (a fork), reply versions and showing another version (chat/branches.py):
what the model is given, what the page shows, what stays for the logs, and every refusal.
Replies are finished by hand (`replies.end`) as a worker would: no model runs here."""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse

from chat import branches, conversations, replies, turns
from chat.models import Conversation, LanguageModel, Message
from inference.protocol import Done


@pytest.fixture
def model(db):
    return LanguageModel.objects.create(
        name="Small", slug="small", location="/models/small", max_tokens=64, max_new_tokens_cap=128, is_default=True
    )


def answered(turn: turns.Turn, text: str) -> turns.Turn:
    """Queue the turn as the socket does (the replaced branch hidden), then finish its reply."""
    turns.drop_replaced(turn)
    replies.end(turn.reply.pk, content=text, done=Done("stop"))
    return turn


def send(user, conversation_id, content, text) -> turns.Turn:
    return answered(turns.start_turn(user, conversation_id, content, None, None), text)


def shown(conversation_id) -> list[str]:
    return [m.content for m in conversations.visible_messages(Conversation.objects.get(pk=conversation_id))]


def chat(user) -> tuple[int, turns.Turn, turns.Turn]:
    first = send(user, None, "Name a dog", "Rex")
    second = send(user, first.conversation.pk, "Name a cat", "Tom")
    return first.conversation.pk, first, second


@pytest.mark.django_db
def test_editing_a_message_forks_the_conversation_and_the_model_sees_only_the_new_branch(alice, model):
    cid, first, second = chat(alice)

    edited = turns.edit(alice, second.user_message.pk, "Name a bird")
    assert [m["content"] for m in edited.request.messages] == ["Name a dog", "Rex", "Name a bird"]
    answered(edited, "Tweety")

    assert shown(cid) == ["Name a dog", "Rex", "Name a bird", "Tweety"]
    # The old branch is kept, hidden, as a version of the edited message.
    old = Message.objects.get(pk=second.user_message.pk)
    assert old.replaced_at is not None and old.replaced_by_id == edited.user_message.pk
    assert Message.objects.get(pk=second.reply.pk).replaced_at is not None
    assert edited.versions[edited.user_message.pk] == [second.user_message.pk, edited.user_message.pk]
    assert edited.started_frame()["replaces"] == second.user_message.pk


@pytest.mark.django_db
def test_editing_the_first_message_starts_a_new_root_version(alice, model):
    cid, first, _second = chat(alice)
    edited = answered(turns.edit(alice, first.user_message.pk, "Name a horse"), "Spirit")
    assert edited.request.messages == [{"role": "user", "content": "Name a horse"}]
    assert shown(cid) == ["Name a horse", "Spirit"]
    conversation = Conversation.objects.get(pk=cid)
    messages = list(conversations.visible_messages(conversation))
    assert branches.versions(conversation, messages) == {
        edited.user_message.pk: [first.user_message.pk, edited.user_message.pk]
    }


@pytest.mark.django_db
def test_showing_an_older_version_brings_back_its_whole_branch_and_back_again(alice, model):
    cid, first, second = chat(alice)
    third = send(alice, cid, "Name a fish", "Nemo")
    edited = answered(turns.edit(alice, second.user_message.pk, "Name a bird"), "Tweety")

    branches.show(alice, second.user_message.pk)
    assert shown(cid) == ["Name a dog", "Rex", "Name a cat", "Tom", "Name a fish", "Nemo"]
    # A message sent now follows the branch shown.
    fourth = turns.start_turn(alice, cid, "Name a cow", None, None)
    assert fourth.user_message.parent_id == third.reply.pk
    answered(fourth, "Daisy")

    branches.show(alice, edited.user_message.pk)
    assert shown(cid) == ["Name a dog", "Rex", "Name a bird", "Tweety"]
    branches.show(alice, second.user_message.pk)  # the branch shown last below it comes back
    assert shown(cid) == ["Name a dog", "Rex", "Name a cat", "Tom", "Name a fish", "Nemo", "Name a cow", "Daisy"]


@pytest.mark.django_db
def test_regenerate_keeps_every_version_and_each_remembers_what_followed_it(alice, model):
    first = send(alice, None, "Name a dog", "Rex")
    cid = first.conversation.pk
    again = answered(turns.regenerate(alice, first.reply.pk), "Fido")
    assert again.versions[again.reply.pk] == [first.reply.pk, again.reply.pk]
    send(alice, cid, "Name a cat", "Tom")

    branches.show(alice, first.reply.pk)
    assert shown(cid) == ["Name a dog", "Rex"]
    conversation = Conversation.objects.get(pk=cid)
    assert branches.versions(conversation, list(conversations.visible_messages(conversation))) == {
        first.reply.pk: [first.reply.pk, again.reply.pk]
    }
    branches.show(alice, again.reply.pk)
    assert shown(cid) == ["Name a dog", "Fido", "Name a cat", "Tom"]
    # Regenerating a reply that has a conversation after it is still refused: edit instead.
    with pytest.raises(turns.TurnError) as refused:
        turns.regenerate(alice, again.reply.pk)
    assert refused.value.code == "not_regenerable"


@pytest.mark.django_db
def test_a_version_is_refused_while_a_reply_runs_and_for_another_user(alice, bob, model):
    cid, _first, second = chat(alice)
    edited = answered(turns.edit(alice, second.user_message.pk, "Name a bird"), "Tweety")
    running = turns.start_turn(alice, cid, "Name a fish", None, None)

    with pytest.raises(branches.BranchError) as busy:
        branches.show(alice, second.user_message.pk)
    assert busy.value.code == "busy"
    replies.end(running.reply.pk, content="Nemo", done=Done("stop"))

    with pytest.raises(branches.BranchError) as foreign:
        branches.show(bob, second.user_message.pk)
    assert foreign.value.code == "not_found"
    with pytest.raises(branches.BranchError) as hidden_parent:
        branches.show(alice, second.reply.pk)  # below a hidden version: show that one first
    assert hidden_parent.value.code == "not_shown"
    assert shown(cid) == ["Name a dog", "Rex", "Name a bird", "Tweety", "Name a fish", "Nemo"]
    assert edited.user_message.pk in [m.pk for m in conversations.visible_messages(Conversation.objects.get(pk=cid))]


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("who", "content", "code"),
    [
        ("reply", "Name a bird", "not_editable"),
        ("bob", "Name a bird", "not_found"),
        ("user", "   ", "empty_message"),
        ("user", "x" * 200, "message_too_long"),  # over the model's input limit (see below)
    ],
)
def test_a_refused_edit_stores_nothing(alice, bob, model, who, content, code):
    model.max_input_tokens = 40
    model.save()
    cid, _first, second = chat(alice)
    before = Message.objects.count()
    target = second.reply.pk if who == "reply" else second.user_message.pk
    with pytest.raises(turns.TurnError) as refused:
        turns.edit(bob if who == "bob" else alice, target, content)
    assert refused.value.code == code
    assert Message.objects.count() == before
    assert shown(cid) == ["Name a dog", "Rex", "Name a cat", "Tom"]


@pytest.mark.django_db
def test_an_edit_is_refused_while_a_reply_runs(alice, model):
    cid, _first, second = chat(alice)
    turns.start_turn(alice, cid, "Name a fish", None, None)
    with pytest.raises(turns.TurnError) as busy:
        turns.edit(alice, second.user_message.pk, "Name a bird")
    assert busy.value.code == "busy"


@pytest.mark.django_db
def test_an_edit_that_could_not_be_queued_leaves_the_branch_shown_as_it_was(alice, model):
    cid, _first, second = chat(alice)
    turn = turns.edit(alice, second.user_message.pk, "Name a bird")
    replies.end(turn.reply.pk, content="", done=Done("error", error="could not be queued"))
    turns.abandon(turn)
    assert shown(cid) == ["Name a dog", "Rex", "Name a cat", "Tom"]
    assert Message.objects.get(pk=turn.user_message.pk).replaced_at is not None  # kept, as a version


@pytest.mark.django_db
def test_the_show_endpoint_returns_the_branch_and_tells_the_other_tabs(alice, bob, model):
    from chat import sync

    cid, _first, second = chat(alice)
    edited = answered(turns.edit(alice, second.user_message.pk, "Name a bird"), "Tweety")
    client = Client()
    client.force_login(alice)
    url = reverse("chat:message_show", args=[second.user_message.pk])

    assert client.get(url).status_code == 405
    response = client.post(url, content_type="application/json")
    assert response.status_code == 200
    data = response.json()
    assert [m["content"] for m in data["messages"]] == ["Name a dog", "Rex", "Name a cat", "Tom"]
    assert data["versions"] == {str(second.user_message.pk): [second.user_message.pk, edited.user_message.pk]}
    events = sync.streams.client().xrevrange(sync.key(alice.pk), count=1)
    assert b'"switched"' in events[0][1][b"data"]

    again = client.get(reverse("chat:conversation_messages", args=[cid])).json()
    assert again["messages"] == data["messages"]

    other = Client()
    other.force_login(bob)
    assert other.post(url, content_type="application/json").status_code == 404
    anonymous = Client().post(url)
    assert anonymous.status_code == 302  # to the login page


@pytest.mark.django_db
def test_the_chat_page_lists_the_versions_of_the_branch_shown(alice, model):
    cid, first, _second = chat(alice)
    again = answered(turns.regenerate(alice, turns.owned_message(alice, _second.reply.pk).pk), "Felix")
    client = Client()
    client.force_login(alice)
    page = client.get(reverse("chat:conversation", args=[cid]))
    assert page.context["chat_config"]["versions"] == {again.reply.pk: [_second.reply.pk, again.reply.pk]}


@pytest.mark.django_db
def test_the_migration_links_existing_linear_conversations_into_a_branch(alice):
    """chat 0006 gives rows made before trees their parents: a reply follows the user message
    before it, a user message the message shown before it; a regenerated reply is a version.
    (Its data step runs here on rows stored as before: no parents.)"""
    import importlib

    from django.apps import apps
    from django.utils import timezone

    conversation = Conversation.objects.create(user=alice, title="Old")
    other = Conversation.objects.create(user=alice, title="Other")

    def old_row(where, role, content):
        return Message.objects.create(conversation=where, role=role, content=content)

    u1 = old_row(conversation, "user", "Hi")
    a1 = old_row(conversation, "assistant", "Hello")
    elsewhere = old_row(other, "user", "Elsewhere")
    a1b = old_row(conversation, "assistant", "Hey")
    Message.objects.filter(pk=a1.pk).update(replaced_at=timezone.now(), replaced_by=a1b)
    u2 = old_row(conversation, "user", "How are you?")
    a2 = old_row(conversation, "assistant", "Fine")

    importlib.import_module("chat.migrations.0006_message_tree").link_parents(apps, None)

    parents = dict(Message.objects.values_list("pk", "parent_id"))
    assert parents[u1.pk] is None and parents[elsewhere.pk] is None
    assert parents[a1.pk] == u1.pk and parents[a1b.pk] == u1.pk
    assert parents[u2.pk] == a1b.pk and parents[a2.pk] == u2.pk
    assert branches.history_before(Message.objects.get(pk=a2.pk)) == [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hey"},
        {"role": "user", "content": "How are you?"},
    ]
    shown_now = list(conversations.visible_messages(conversation))
    assert branches.versions(conversation, shown_now) == {a1b.pk: [a1.pk, a1b.pk]}
