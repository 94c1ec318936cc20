"""The admin's conversation logs: staff only, search and every filter, the whole thread rendered
(sanitized HTML, replaced replies marked), each reply's reproducibility record, and exports that
stream one chunk at a time."""

from __future__ import annotations

import csv
import io
import json

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.auth.models import Permission
from django.db import connection
from django.http import StreamingHttpResponse
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from chat import branches, conversations, export, replies, turns
from chat.models import Conversation, Feedback, LanguageModel, Message
from chat.rendering import render_markdown
from inference.protocol import Done
from moderation.models import Event
from tests.test_api_files import streamed

pytestmark = pytest.mark.django_db

CONVERSATIONS = reverse("admin:chat_conversation_changelist")
MESSAGES = reverse("admin:chat_message_changelist")


@pytest.fixture
def root(django_user_model):
    return django_user_model.objects.create_superuser("root", "root@example.com", "root-pass-123")


@pytest.fixture
def admin_client(root) -> Client:
    client = Client()
    client.force_login(root)
    return client


@pytest.fixture
def small(db):
    return LanguageModel.objects.create(
        name="Small", slug="small", location="/models/small", is_default=True, system_prompt="Be brief."
    )


@pytest.fixture
def large(db):
    return LanguageModel.objects.create(name="Large", slug="large", location="/models/large")


def say(conversation, role, content, **fields) -> Message:
    """Add a message after the last one shown (as the chat page does)."""
    fields.setdefault("parent", branches.leaf(conversation))
    return Message.objects.create(
        conversation=conversation, role=role, content=content, html=render_markdown(content), **fields
    )


@pytest.fixture
def logs(alice, bob, small, large):
    """Alice's chat (Markdown, a regenerated reply, thumbs up, a moderation flag) and Bob's
    deleted API conversation on another model."""
    paris = Conversation.objects.create(user=alice, title="Trip to Paris", model=small)
    say(paris, "user", "Plan a **weekend** <script>alert(1)</script>")
    first = say(paris, "assistant", "Start at the *Louvre*.", model=small, finish_reason="stop")
    turn = turns.regenerate(alice, first.pk)
    turns.drop_replaced(turn)
    replies.end(
        turn.reply.pk,
        content="Visit **Orsay** first.",
        done=Done("stop", prompt_tokens=21, completion_tokens=5, ttft_ms=38.5, tokens_per_s=51.2),
    )
    Message.objects.filter(pk=turn.reply.pk).update(worker="host-1-0")
    second = Message.objects.get(pk=turn.reply.pk)
    first.refresh_from_db()
    Feedback.objects.create(message=second, user=alice, rating=Feedback.Rating.UP, comment="Lovely")
    Event.objects.create(stage="output", action="flag", rule_name="museums", message=second, conversation=paris)
    api = Conversation.objects.create(user=bob, title="Invoice help", model=large, source=Conversation.Source.API)
    say(api, "user", "Summarise invoice 42")
    say(api, "assistant", "Invoice 42 is paid.", model=large)
    Feedback.objects.create(message=api.messages.last(), user=bob, rating=Feedback.Rating.DOWN)
    conversations.delete_conversation(api)
    return {"paris": paris, "first": first, "second": second, "api": api}


def titles(response) -> set[str]:
    return {c.title for c in response.context["cl"].result_list}


def message_ids(response) -> set[int]:
    return {m.pk for m in response.context["cl"].result_list}


# --- who gets in ---------------------------------------------------------------------------------
@pytest.mark.parametrize("url", [CONVERSATIONS, MESSAGES, reverse("admin:chat_feedback_changelist")])
def test_the_logs_are_closed_to_anonymous_visitors_and_non_staff_users(alice, url):
    assert Client().get(url).status_code == 302
    client = Client()
    client.force_login(alice)
    response = client.get(url)
    assert response.status_code == 302 and "/admin/login/" in response["Location"]


def test_staff_without_the_view_permission_are_refused_and_with_it_may_read(django_user_model, logs):
    staff = django_user_model.objects.create_user("staff", password="staff-pass-123", is_staff=True)
    client = Client()
    client.force_login(staff)
    assert client.get(CONVERSATIONS).status_code == 403
    staff.user_permissions.add(Permission.objects.get(codename="view_conversation"))
    assert client.get(CONVERSATIONS).status_code == 200
    assert client.get(reverse("admin:chat_conversation_change", args=[logs["paris"].pk])).status_code == 200


def test_nothing_in_the_logs_can_be_deleted_from_the_admin(admin_client, logs):
    url = reverse("admin:chat_conversation_delete", args=[logs["paris"].pk])
    assert admin_client.post(url, {"post": "yes"}).status_code == 403
    assert Conversation.objects.filter(pk=logs["paris"].pk).exists()


# --- search and filters --------------------------------------------------------------------------
def test_conversations_are_found_by_message_text_title_and_user(admin_client, logs):
    assert titles(admin_client.get(CONVERSATIONS, {"q": "Louvre"})) == {"Trip to Paris"}  # a replaced reply
    assert titles(admin_client.get(CONVERSATIONS, {"q": "invoice"})) == {"Invoice help"}
    assert titles(admin_client.get(CONVERSATIONS, {"q": "bob"})) == {"Invoice help"}


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({}, {"Trip to Paris", "Invoice help"}),
        ({"flagged": "yes"}, {"Trip to Paris"}),
        ({"flagged": "no"}, {"Invoice help"}),
        ({"rating": "up"}, {"Trip to Paris"}),
        ({"rating": "down"}, {"Invoice help"}),
        ({"rating": "none"}, set()),
        ({"source__exact": "api"}, {"Invoice help"}),
        ({"source__exact": "chat"}, {"Trip to Paris"}),
        ({"deleted": "yes"}, {"Invoice help"}),
        ({"deleted": "no"}, {"Trip to Paris"}),
    ],
)
def test_the_conversation_filters_pick_the_right_conversations(admin_client, logs, query, expected):
    response = admin_client.get(CONVERSATIONS, query)
    assert response.status_code == 200
    assert titles(response) == expected


def test_the_conversation_list_filters_by_user_and_model(admin_client, logs, alice, large):
    assert titles(admin_client.get(CONVERSATIONS, {"user__id__exact": alice.pk})) == {"Trip to Paris"}
    assert titles(admin_client.get(CONVERSATIONS, {"model__id__exact": large.pk})) == {"Invoice help"}


def test_the_message_filters_pick_replaced_deleted_flagged_and_rated_messages(admin_client, logs, bob):
    api_ids = set(logs["api"].messages.values_list("pk", flat=True))
    assert message_ids(admin_client.get(MESSAGES, {"hidden": "replaced"})) == {logs["first"].pk}
    assert message_ids(admin_client.get(MESSAGES, {"hidden": "deleted"})) == api_ids
    assert message_ids(admin_client.get(MESSAGES, {"flagged": "yes"})) == {logs["second"].pk}
    assert message_ids(admin_client.get(MESSAGES, {"rating": "up"})) == {logs["second"].pk}
    assert message_ids(admin_client.get(MESSAGES, {"conversation__user__id__exact": bob.pk})) == api_ids
    assert message_ids(admin_client.get(MESSAGES, {"conversation__source__exact": "api"})) == api_ids
    assert message_ids(admin_client.get(MESSAGES, {"q": "Orsay"})) == {logs["second"].pk}


def test_the_message_list_shows_the_user_and_an_excerpt_of_the_content(admin_client, logs):
    page = admin_client.get(MESSAGES).content.decode()
    assert '<td class="field-user">alice</td>' in page and '<td class="field-user">bob</td>' in page
    assert "Visit Orsay first." in page and "**" not in page  # the excerpt: rendered, as plain text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page  # and escaped


def test_the_lists_do_not_query_once_per_row(admin_client, logs, alice, small, django_assert_max_num_queries):
    for i in range(30):
        chat = Conversation.objects.create(user=alice, title=f"Chat {i}", model=small)
        say(chat, "assistant", f"Reply {i}", model=small)
    with django_assert_max_num_queries(12):
        admin_client.get(MESSAGES)
    with django_assert_max_num_queries(12):
        admin_client.get(CONVERSATIONS)


# --- the thread and the record ---------------------------------------------------------------------
def test_the_conversation_page_shows_the_thread_rendered_with_replaced_replies_marked(admin_client, logs):
    page = admin_client.get(reverse("admin:chat_conversation_change", args=[logs["paris"].pk])).content.decode()
    assert "<strong>weekend</strong>" in page and "<strong>Orsay</strong>" in page and "<em>Louvre</em>" in page
    assert "**" not in page
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    replaced_at = timezone.localtime(logs["first"].replaced_at)
    assert f"replaced {replaced_at:%Y-%m-%d %H:%M} by #{logs['second'].pk}" in page
    assert "flagged by moderation" in page and "thumbs up" in page and "Feedback: Lovely" in page
    assert page.count('data-testid="thread-message"') == 3
    assert "viewsitelink" not in page  # the chat page would show it to its owner only


def test_each_reply_shows_its_reproducibility_record(admin_client, logs):
    page = admin_client.get(reverse("admin:chat_message_change", args=[logs["second"].pk])).content.decode()
    for expected in (
        "small",
        "/models/small",
        "Be brief.",
        "temperature=",
        "random (none set)",
        "21 in, 5 out",
        "38 ms",
        "51.2 tokens/s",
        "host-1-0",
        "a base model (not fine-tuned here)",
    ):
        assert expected in page, expected
    assert "<strong>Orsay</strong>" in page and "**" not in page


# --- export ----------------------------------------------------------------------------------------
def run_action(client, action: str, conversations) -> StreamingHttpResponse:
    data = {"action": action, ACTION_CHECKBOX_NAME: [c.pk for c in conversations]}
    return client.post(CONVERSATIONS, data)


def test_the_jsonl_export_streams_each_conversation_with_its_whole_thread(admin_client, logs):
    response = run_action(admin_client, "export_jsonl", [logs["paris"], logs["api"]])
    assert response.status_code == 200 and response.streaming
    assert response["Content-Type"].startswith("application/x-ndjson")
    assert response["Content-Disposition"].startswith('attachment; filename="conversations-')
    lines = [json.loads(line) for line in streamed(response).decode().splitlines()]
    by_title = {line["title"]: line for line in lines}
    assert set(by_title) == {"Trip to Paris", "Invoice help"}
    paris = by_title["Trip to Paris"]
    assert paris["user"] == "alice" and paris["source"] == "chat" and paris["deleted_at"] is None
    assert [m["content"] for m in paris["messages"]] == [
        "Plan a **weekend** <script>alert(1)</script>",
        "Start at the *Louvre*.",
        "Visit **Orsay** first.",
    ]
    first, second = paris["messages"][1:]
    assert first["replaced_by"] == second["id"] and first["replaced_at"]
    assert second["feedback"] == {"rating": 1, "comment": "Lovely", "edited_content": ""}
    assert second["usage"] == {"prompt_tokens": 21, "completion_tokens": 5} and second["worker"] == "host-1-0"
    assert by_title["Invoice help"]["deleted_at"] and by_title["Invoice help"]["source"] == "api"


def test_the_csv_export_has_one_row_per_message_and_defuses_formulas(admin_client, logs, alice):
    sheet = Conversation.objects.create(user=alice, title="=HYPERLINK(1)")
    say(sheet, "user", "=1+1, and a comma")
    empty = Conversation.objects.create(user=alice, title="Nothing said")
    response = run_action(admin_client, "export_csv", [logs["paris"], sheet, empty])
    assert response.streaming and response["Content-Type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(streamed(response).decode())))
    assert [r["message_id"] for r in rows if r["conversation_id"] == str(logs["paris"].pk)] == [
        str(m.pk) for m in logs["paris"].messages.order_by("id")
    ]
    sheet_row = next(r for r in rows if r["conversation_id"] == str(sheet.pk))
    assert (sheet_row["conversation_title"], sheet_row["content"]) == ("'=HYPERLINK(1)", "'=1+1, and a comma")
    empty_row = next(r for r in rows if r["conversation_id"] == str(empty.pk))
    assert empty_row["message_id"] == "" and empty_row["conversation_title"] == "Nothing said"
    rated = next(r for r in rows if r["message_id"] == str(logs["second"].pk))
    assert (rated["rating"], rated["feedback_comment"], rated["replaced_at"]) == ("1", "Lovely", "")


def test_an_export_reads_one_chunk_at_a_time_while_it_is_sent(logs, alice, monkeypatch):
    monkeypatch.setattr(export, "CHUNK", 2)
    monkeypatch.setattr(export, "BATCH_BYTES", 1)  # each line sent as soon as it is made
    for i in range(5):
        say(Conversation.objects.create(user=alice, title=f"Chat {i}"), "user", f"Message {i}")
    response = export.response(Conversation.objects.all(), "jsonl")  # 7 conversations
    assert response.is_async  # under ASGI a synchronous body would be read whole before it is sent

    async def read(queries) -> tuple[dict, int, int]:
        stream = response.streaming_content.__aiter__()
        first = json.loads(await stream.__anext__())
        reads_then = await sync_to_async(  # counted on the sync thread's connection, where the export reads
            lambda: len([q for q in queries.captured_queries if 'FROM "chat_message"' in q["sql"]])
        )()
        rest = [part async for part in stream]
        return first, reads_then, len(rest)

    with CaptureQueriesContext(connection) as queries:
        first, reads_then, rest = async_to_sync(read)(queries)
        message_reads = [q for q in queries.captured_queries if 'FROM "chat_message"' in q["sql"]]
    assert first["id"] == Conversation.objects.order_by("pk").first().pk
    assert reads_then == 1  # only the first chunk's messages when the first line left
    assert rest == 6
    assert len(message_reads) == 4  # ceil(7 / 2) chunks, one prefetch each


def test_an_unknown_export_format_is_refused():
    with pytest.raises(ValueError, match="Unknown export format 'xml'"):
        export.response(Conversation.objects.none(), "xml")
