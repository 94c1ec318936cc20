"""A user's own conversations: export one as Markdown or JSON, delete them all at once."""

from __future__ import annotations

import json

import pytest

from chat.models import Conversation, Message

pytestmark = pytest.mark.django_db


@pytest.fixture
def conversation(alice, tiny_model):
    c = Conversation.objects.create(user=alice, title="Lighthouse facts", model=tiny_model, system_prompt="Be brief.")
    Message.objects.create(conversation=c, role="user", content="Who keeps the **light**?")
    old = Message.objects.create(conversation=c, role="assistant", content="An old answer", model=tiny_model)
    new = Message.objects.create(
        conversation=c, role="assistant", content="Marta.", model=tiny_model, params={"temperature": 0},
        prompt_tokens=12, completion_tokens=3, finish_reason="stop",
    )  # fmt: skip
    Message.objects.filter(pk=old.pk).update(replaced_at=new.created_at, replaced_by=new)
    return c


def test_a_conversation_exports_as_markdown_and_json_without_replaced_replies(client, alice, conversation):
    client.force_login(alice)
    md = client.get(f"/c/{conversation.pk}/export.md")
    assert md["Content-Disposition"] == f'attachment; filename="lighthouse-facts-{conversation.pk}.md"'
    text = md.content.decode()
    assert text.startswith("# Lighthouse facts") and "Who keeps the **light**?" in text and "Marta." in text
    assert "An old answer" not in text and "Be brief." in text
    data = json.loads(client.get(f"/c/{conversation.pk}/export.json").content)
    assert [m["role"] for m in data["messages"]] == ["user", "assistant"]
    assert data["messages"][1]["usage"] == {"prompt_tokens": 12, "completion_tokens": 3}
    assert data["messages"][1]["settings"] == {"temperature": 0} and data["system_prompt"] == "Be brief."


def test_another_user_s_conversation_and_unknown_formats_are_404(client, bob, alice, conversation):
    client.force_login(bob)
    assert client.get(f"/c/{conversation.pk}/export.md").status_code == 404
    client.force_login(alice)
    assert client.get(f"/c/{conversation.pk}/export.exe").status_code == 404


def test_delete_all_hides_every_chat_conversation_but_keeps_them_for_the_logs(client, alice, bob, conversation):
    Conversation.objects.create(user=alice, title="second")
    theirs = Conversation.objects.create(user=bob, title="bob's")
    client.force_login(alice)
    assert client.get("/api/conversations/delete-all/").status_code == 405
    assert client.post("/api/conversations/delete-all/").json() == {"deleted": 2}
    assert client.get("/api/conversations/").json()["conversations"] == []
    assert Conversation.objects.filter(user=alice, deleted_at__isnull=False).count() == 2
    assert Conversation.objects.get(pk=theirs.pk).deleted_at is None


@pytest.mark.parametrize(
    "content, title",
    [
        (
            "Use a code block to show me a Python function that reverses a string, please",
            "Use a code block to show me a Python function that reverses…",
        ),
        ("short question", "short question"),
        ("  spaced   out\nlines  ", "spaced out lines"),
        ("x" * 80, "x" * 59 + "…"),
    ],
)
def test_a_new_conversation_s_title_is_its_first_message_cut_at_a_word(content, title):
    from chat.titles import TITLE_CHARS
    from chat.titles import cut as initial_title

    assert initial_title(content) == title and len(title) <= TITLE_CHARS
