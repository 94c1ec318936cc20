"""Feedback on replies: thumbs up or down, a comment, and the answer the person wanted.

"check" (the message is the user's own finished assistant reply; the values are valid) then
"do" (upsert the one Feedback row of the message).
"""

from __future__ import annotations

from dataclasses import dataclass

from django.conf import settings

from .models import Feedback, Message

FIELDS = ("rating", "comment", "edited_content")


class FeedbackError(Exception):
    """A refused feedback request; `status` is the HTTP status, `errors` maps field to message."""

    def __init__(self, status: int, errors: dict[str, str]) -> None:
        super().__init__("; ".join(errors.values()))
        self.status = status
        self.errors = errors


@dataclass(frozen=True)
class Change:
    """The fields a request sets (a field left out keeps its stored value)."""

    values: dict


def limits() -> dict:
    """The limits the page shows and checks (the server checks again)."""
    return {
        "maxComment": settings.CHAT_FEEDBACK_MAX_COMMENT_CHARS,
        "maxEdited": settings.CHAT_FEEDBACK_MAX_EDIT_CHARS,
    }


# --- check -----------------------------------------------------------------------------------
def owned_reply(user, message_id: int) -> Message:
    """The user's own assistant reply, finished; another user's message, or one the user deleted
    (or that regenerate replaced), is as if it did not exist."""
    message = Message.objects.visible().filter(pk=message_id, conversation__user=user).first()
    if message is None:
        raise FeedbackError(404, {"message": "There is no such message in your conversations."})
    if message.role != Message.Role.ASSISTANT:
        raise FeedbackError(400, {"message": "Feedback is for the assistant's replies, not your own messages."})
    if message.is_active:
        raise FeedbackError(409, {"message": "This reply is still being generated; rate it once it has finished."})
    return message


def _text(data: dict, name: str, limit: int, label: str, errors: dict) -> str | None:
    value = data[name]
    if not isinstance(value, str):
        errors[name] = f"{label} must be text."
        return None
    if "\x00" in value:
        errors[name] = f"{label} contains a NUL character (\\x00)."
        return None
    if len(value) > limit:
        errors[name] = f"{label} is {len(value)} characters; the limit is {limit}."
        return None
    return value


def check_change(data) -> Change:
    """Validate a request body: any of rating (-1, 0, 1), comment, edited_content."""
    if not isinstance(data, dict):
        raise FeedbackError(400, {"__all__": "The request body must be a JSON object."})
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise FeedbackError(400, {"__all__": f"Unknown fields: {', '.join(unknown)}. Known: {', '.join(FIELDS)}."})
    if not data:
        raise FeedbackError(400, {"__all__": "Send at least one of rating, comment, edited_content."})
    errors: dict[str, str] = {}
    values = {}
    if "rating" in data:
        rating = data["rating"]
        if isinstance(rating, bool) or rating not in Feedback.Rating.values:
            errors["rating"] = "rating must be 1 (thumbs up), -1 (thumbs down) or 0 (no rating)."
        else:
            values["rating"] = rating
    if "comment" in data:
        values["comment"] = _text(data, "comment", settings.CHAT_FEEDBACK_MAX_COMMENT_CHARS, "The comment", errors)
    if "edited_content" in data:
        values["edited_content"] = _text(
            data, "edited_content", settings.CHAT_FEEDBACK_MAX_EDIT_CHARS, "The edited answer", errors
        )
    if errors:
        raise FeedbackError(400, errors)
    return Change(values)


# --- do --------------------------------------------------------------------------------------
def save(user, message: Message, change: Change) -> Feedback:
    """Create or update the message's feedback with the changed fields."""
    # get_or_create retries its read when another tab created the row first (unique message).
    feedback, created = Feedback.objects.get_or_create(message=message, defaults={"user": user, **change.values})
    if not created:
        for name, value in change.values.items():
            setattr(feedback, name, value)
        feedback.save(update_fields=[*change.values, "updated_at"])
    return feedback


def give(user, message_id: int, data) -> Feedback:
    """Check then save: the one entry point for the view (and later the API)."""
    message = owned_reply(user, message_id)
    return save(user, message, check_change(data))


def feedback_json(feedback: Feedback | None) -> dict:
    if feedback is None:
        return {"rating": 0, "comment": "", "edited_content": ""}
    return {"rating": feedback.rating, "comment": feedback.comment, "edited_content": feedback.edited_content}


def for_messages(user, messages) -> dict[int, dict]:
    """The stored feedback of the user's replies among `messages`, by message id (one query)."""
    ids = [m.pk for m in messages if m.role == Message.Role.ASSISTANT]
    rows = Feedback.objects.filter(message_id__in=ids, message__conversation__user=user)
    return {row.message_id: feedback_json(row) for row in rows}
