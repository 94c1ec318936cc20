"""Feedback on replies: only on the user's own finished replies, upserted, within limits."""

import json

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from chat.models import Conversation, Feedback, Message

pytestmark = pytest.mark.django_db


def client_for(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def make_reply(user, status=Message.Status.COMPLETE) -> Message:
    conversation = Conversation.objects.create(user=user, title="Chat")
    Message.objects.create(conversation=conversation, role=Message.Role.USER, content="hi")
    return Message.objects.create(
        conversation=conversation, role=Message.Role.ASSISTANT, content="hello", status=status, worker="w1"
    )


def post(client: Client, message: Message, body) -> tuple[int, dict]:
    url = reverse("chat:message_feedback", args=[message.pk])
    response = client.post(url, json.dumps(body), content_type="application/json")
    return response.status_code, response.json()


def test_feedback_only_on_replies_the_model_generated_in_a_chat_conversation(alice):
    """Issue 24, finding 6: an API client types its own assistant turns; liked, a forged answer
    would reach a training dataset."""
    reply = make_reply(alice)
    typed = Message.objects.create(conversation=reply.conversation, role=Message.Role.ASSISTANT, content="forged")
    api_reply = make_reply(alice)
    Conversation.objects.filter(pk=api_reply.conversation_id).update(source=Conversation.Source.API)
    client = client_for(alice)
    for message in (typed, api_reply):
        status, body = post(client, message, {"rating": 1})
        assert status == 400 and "generated in a chat conversation" in body["errors"]["message"]
    assert post(client, reply, {"rating": 1})[0] == 200
    assert Feedback.objects.count() == 1


def test_a_thumbs_up_is_stored_and_returned(alice):
    reply = make_reply(alice)
    status, data = post(client_for(alice), reply, {"rating": 1})
    assert status == 200
    assert data == {"message": reply.pk, "feedback": {"rating": 1, "comment": "", "edited_content": ""}}
    feedback = Feedback.objects.get(message=reply)
    assert (feedback.user, feedback.rating) == (alice, 1)


def test_later_feedback_updates_the_same_row_and_keeps_fields_not_sent(alice):
    reply = make_reply(alice)
    client = client_for(alice)
    post(client, reply, {"rating": -1, "comment": "Too vague."})
    status, data = post(client, reply, {"edited_content": "The precise answer."})
    assert status == 200
    assert data["feedback"] == {"rating": -1, "comment": "Too vague.", "edited_content": "The precise answer."}
    status, data = post(client, reply, {"rating": 0})
    assert data["feedback"]["rating"] == 0 and data["feedback"]["comment"] == "Too vague."
    assert Feedback.objects.filter(message=reply).count() == 1


def test_another_users_reply_is_not_found_and_nothing_is_stored(alice, bob):
    reply = make_reply(alice)
    status, data = post(client_for(bob), reply, {"rating": -1})
    assert status == 404
    assert "no such message" in data["errors"]["message"]
    assert not Feedback.objects.exists()


def test_a_reply_in_a_deleted_conversation_is_not_found(alice):
    reply = make_reply(alice)
    Conversation.objects.filter(pk=reply.conversation_id).update(deleted_at=timezone.now())
    status, _ = post(client_for(alice), reply, {"rating": 1})
    assert status == 404
    assert not Feedback.objects.exists()


def test_a_missing_message_is_not_found(alice):
    response = client_for(alice).post(
        reverse("chat:message_feedback", args=[99999]), json.dumps({"rating": 1}), content_type="application/json"
    )
    assert response.status_code == 404


def test_the_users_own_message_cannot_be_rated(alice):
    reply = make_reply(alice)
    own = reply.conversation.messages.get(role=Message.Role.USER)
    status, data = post(client_for(alice), own, {"rating": 1})
    assert status == 400 and "assistant" in data["errors"]["message"]


def test_a_reply_still_generating_cannot_be_rated_yet(alice):
    reply = make_reply(alice, status=Message.Status.GENERATING)
    status, data = post(client_for(alice), reply, {"rating": 1})
    assert status == 409 and "still being generated" in data["errors"]["message"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"rating": 2}, "rating"),
        ({"rating": True}, "rating"),
        ({"rating": "1"}, "rating"),
        ({"comment": 5}, "comment"),
        ({"comment": "a\x00b"}, "comment"),
        ({"surprise": 1}, "__all__"),
        ({}, "__all__"),
        ([1], "__all__"),
    ],
)
def test_invalid_feedback_is_refused_naming_the_field(alice, body, field):
    reply = make_reply(alice)
    status, data = post(client_for(alice), reply, body)
    assert status == 400 and field in data["errors"]
    assert not Feedback.objects.exists()


def test_a_comment_or_edit_over_the_limit_is_refused_with_the_limit(alice, settings):
    settings.CHAT_FEEDBACK_MAX_COMMENT_CHARS = 10
    settings.CHAT_FEEDBACK_MAX_EDIT_CHARS = 20
    reply = make_reply(alice)
    client = client_for(alice)
    status, data = post(client, reply, {"comment": "x" * 11})
    assert status == 400 and "the limit is 10" in data["errors"]["comment"]
    status, data = post(client, reply, {"edited_content": "x" * 21})
    assert status == 400 and "the limit is 20" in data["errors"]["edited_content"]
    assert post(client, reply, {"comment": "x" * 10, "edited_content": "y" * 20})[0] == 200


def test_feedback_needs_a_login_and_a_csrf_token(alice):
    reply = make_reply(alice)
    url = reverse("chat:message_feedback", args=[reply.pk])
    assert Client().post(url, "{}", content_type="application/json").status_code == 302
    strict = Client(enforce_csrf_checks=True)
    strict.force_login(alice)
    assert strict.post(url, json.dumps({"rating": 1}), content_type="application/json").status_code == 403
    assert strict.get(url).status_code == 405
    assert not Feedback.objects.exists()


def test_the_chat_page_carries_the_stored_feedback_of_its_replies(alice):
    reply = make_reply(alice)
    Feedback.objects.create(message=reply, user=alice, rating=-1, comment="meh", edited_content="better")
    response = client_for(alice).get(reply.conversation.get_absolute_url())
    config = json.loads(response.context["chat_config"] and json.dumps(response.context["chat_config"]))
    assert config["feedback"] == {str(reply.pk): {"rating": -1, "comment": "meh", "edited_content": "better"}}
    assert config["feedbackLimits"]["maxComment"] > 0
