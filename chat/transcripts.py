"""A user's own conversation as a file they can keep: Markdown to read, JSON to process. Only
what the user sees (no replaced replies), with each reply's model and settings."""

from __future__ import annotations

import json

from django.utils.text import slugify

from .conversations import visible_messages
from .models import Conversation, Message


def filename(conversation: Conversation, extension: str) -> str:
    return f"{slugify(conversation.title)[:60] or 'conversation'}-{conversation.pk}.{extension}"


def as_json(conversation: Conversation) -> str:
    messages = []
    for message in visible_messages(conversation):
        item = {"role": message.role, "content": message.content, "created_at": message.created_at.isoformat()}
        if message.role == Message.Role.ASSISTANT:
            item |= {
                "model": message.model.slug if message.model else None,
                "status": message.status,
                "finish_reason": message.finish_reason,
                "settings": message.params,
                "usage": {"prompt_tokens": message.prompt_tokens, "completion_tokens": message.completion_tokens},
            }
        messages.append(item)
    data = {
        "id": conversation.pk,
        "title": conversation.title,
        "model": conversation.model.slug if conversation.model else None,
        "system_prompt": conversation.system_prompt,
        "created_at": conversation.created_at.isoformat(),
        "messages": messages,
    }
    return json.dumps(data, ensure_ascii=False, indent=2)


def as_markdown(conversation: Conversation) -> str:
    lines = [f"# {conversation.title}", ""]
    model = conversation.model.name if conversation.model else "no model"
    lines += [f"*{model}, started {conversation.created_at:%Y-%m-%d %H:%M} UTC*", ""]
    if conversation.system_prompt:
        lines += ["**System prompt**", "", conversation.system_prompt, ""]
    for message in visible_messages(conversation):
        if message.role == Message.Role.USER:
            lines += ["## You", "", message.content, ""]
        else:
            who = message.model.name if message.model else "Assistant"
            note = "" if message.status == Message.Status.COMPLETE else f" ({message.status})"
            lines += [f"## {who}{note}", "", message.content, ""]
    return "\n".join(lines)


FORMATS = {"md": ("text/markdown; charset=utf-8", as_markdown), "json": ("application/json", as_json)}
