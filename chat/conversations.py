"""Conversation queries and settings changes for the HTTP views (ownership is checked here)."""

import math
from dataclasses import dataclass

from django.conf import settings
from django.db.models import Q, QuerySet
from django.http import Http404
from django.utils import timezone

from chatsite.ids import parse_id, parse_signed
from inference import sampling, streams
from moderation import checks as moderation_checks

from . import branches, feedback, replies
from .models import Conversation, LanguageModel, Message


def conversations_for(user, query: str = "") -> QuerySet[Conversation]:
    """The user's conversations, newest first; `query` matches titles and message text."""
    qs = Conversation.objects.on_chat_page().filter(user=user)
    query = query.replace("\x00", "").strip()
    if query:
        # One filter() call: the text and "not replaced" must hold for the same message.
        in_messages = Q(messages__content__icontains=query, messages__replaced_at__isnull=True)
        qs = qs.filter(Q(title__icontains=query) | in_messages).distinct()
    return qs.order_by("-updated_at")


def get_owned_conversation(user, conversation_id) -> Conversation:
    """The conversation if it exists and belongs to `user`; 404 otherwise (same answer for both)."""
    number = parse_id(conversation_id)
    conversation = (
        Conversation.objects.on_chat_page().select_related("model").filter(pk=number, user=user).first()
        if number is not None
        else None
    )
    if conversation is None:
        raise Http404("No such conversation.")
    return conversation


def visible_messages(conversation: Conversation) -> QuerySet[Message]:
    return conversation.messages.filter(replaced_at__isnull=True).select_related("model").order_by("created_at", "id")


@dataclass
class SettingsResult:
    conversation: Conversation
    errors: dict[str, str]


def _optional_setting(raw, name: str, errors: dict):
    """A sampling setting from the settings form: empty means "the model's default"."""
    if raw in (None, ""):
        return None
    try:
        value = float(raw) if isinstance(raw, str) else raw
        if isinstance(value, float) and not math.isfinite(value):
            raise TypeError  # NaN passes every bounds check; infinity is no setting either
        return sampling.check_setting(name, value)
    except (TypeError, ValueError) as exc:
        errors[name] = exc.message if isinstance(exc, sampling.SettingsError) else f"{name} must be a number."
        return None


def _whole_number(raw) -> int | None:
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int):
        return raw
    return parse_signed(raw)


def update_conversation(conversation: Conversation, data) -> SettingsResult:
    """Validate and apply title, model, system prompt and sampling settings; all or nothing."""
    errors: dict[str, str] = {}
    changes: dict = {}
    if "title" in data:
        title = data["title"].strip() if isinstance(data["title"], str) else ""
        if not title:
            errors["title"] = "The title cannot be empty."
        elif "\x00" in title:
            errors["title"] = "The title contains a NUL character (\\x00)."
        elif len(title) > settings.CHAT_MAX_TITLE_CHARS:
            errors["title"] = f"The title is longer than {settings.CHAT_MAX_TITLE_CHARS} characters."
        else:
            changes["title"] = title
            changes["title_source"] = Conversation.TitleSource.USER  # a model title never overwrites it
    if "system_prompt" in data:
        prompt = data["system_prompt"] if isinstance(data["system_prompt"], str) else ""
        if data["system_prompt"] is not None and not isinstance(data["system_prompt"], str):
            errors["system_prompt"] = "The system prompt must be text."
        elif "\x00" in prompt:
            errors["system_prompt"] = "The system prompt contains a NUL character (\\x00)."
        elif len(prompt) > settings.CHAT_MAX_SYSTEM_PROMPT_CHARS:
            errors["system_prompt"] = (
                f"The system prompt is longer than {settings.CHAT_MAX_SYSTEM_PROMPT_CHARS} characters."
            )
        else:
            outcome = moderation_checks.screen(prompt, source="chat", user=conversation.user, conversation=conversation)
            if outcome.block is not None:
                errors["system_prompt"] = outcome.refusal.replace("This message", "This system prompt")
            else:
                changes["system_prompt"] = outcome.text
    for name in sampling.SAMPLING_FIELDS:
        if name in data:
            changes[name] = _optional_setting(data[name], name, errors)
    if "model" in data:
        model = LanguageModel.objects.usable_by(conversation.user).filter(slug=str(data["model"])).first()
        if model is None:
            errors["model"] = "No enabled model with that name."
        else:
            changes["model"] = model
    model = changes.get("model") or conversation.model or LanguageModel.default()
    if "max_tokens" in data:
        raw = data["max_tokens"]
        if raw in (None, ""):
            changes["max_tokens"] = None
        else:
            cap = model.max_new_tokens_cap if model else 4096
            value = _whole_number(raw)
            if value is None or not 1 <= value <= cap:
                errors["max_tokens"] = f"max_tokens must be a whole number from 1 to {cap}."
            else:
                changes["max_tokens"] = value
    if "model" in changes and "max_tokens" not in changes and conversation.max_tokens is not None:
        # A model with a lower cap must not leave the conversation asking for more than it allows.
        changes["max_tokens"] = min(conversation.max_tokens, changes["model"].max_new_tokens_cap)
    if errors:
        return SettingsResult(conversation, errors)
    for field, value in changes.items():
        setattr(conversation, field, value)
    if changes:
        conversation.save(update_fields=[*changes.keys(), "updated_at"])
    return SettingsResult(conversation, {})


def delete_conversation(conversation: Conversation) -> None:
    """Delete a conversation for its user: it is hidden from them at once and kept for the
    admins' logs until LOGS_RETENTION_DAYS have passed (chat.retention purges it). A reply still
    generating is stopped first, so its worker frees the batch row instead of generating for
    nobody."""
    for message_id in conversation.messages.filter(status__in=Message.ACTIVE_STATUSES).values_list("pk", flat=True):
        streams.request_stop_sync(replies.request_id(message_id))
    conversation.deleted_at = timezone.now()
    conversation.save(update_fields=["deleted_at"])


def delete_all(user) -> int:
    """Delete every conversation of the user's chat page (kept for the logs, like one)."""
    count = 0
    for conversation in Conversation.objects.on_chat_page().filter(user=user):
        delete_conversation(conversation)
        count += 1
    return count


def conversation_json(conversation: Conversation) -> dict:
    return {
        "id": conversation.pk,
        "title": conversation.title,
        "url": conversation.get_absolute_url(),
        "updated_at": conversation.updated_at.isoformat(),
        "model": conversation.model.slug if conversation.model else None,
        "system_prompt": conversation.system_prompt,
        **{name: getattr(conversation, name) for name in sampling.SAMPLING_FIELDS},
        "max_tokens": conversation.max_tokens,
    }


# --- the settings panel -------------------------------------------------------------------------
# Which settings sit under "More settings"; the rest (and max_tokens) show at once.
MORE_SETTINGS = ("top_k", "min_p", "repetition_penalty", "frequency_penalty", "presence_penalty", "seed")
MAX_TOKENS_HELP = "The longest reply, in tokens; each model has its own upper limit."
SEED_HELP = (
    "Makes replies repeatable: the same seed, prompt, settings and model pick the same tokens. "
    "Not saved with the conversation: it goes with each message sent from this page. Empty: random."
)


def _number_text(value) -> str:
    """A number as an <input type=number> reads it (no locale, no exponent for whole numbers)."""
    if value is None:
        return ""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def settings_fields(conversation: Conversation | None = None) -> list[dict]:
    """Every number the chat page's settings panel offers, in order: bounds and help from
    inference.sampling (so the page, this module and the socket agree) and the conversation's
    saved value as text ("" = the model's default). `saved` is False for the seed, which is sent
    with each message instead of stored."""

    def field(name, lo, hi, help_text, *, integer, lo_open=False, saved=True, placeholder=""):
        value = getattr(conversation, name, None) if conversation is not None and saved else None
        return {
            "name": name,
            "id": name.replace("_", "-"),
            "label": name.replace("_", " ").capitalize(),
            "help": help_text,
            "min": _number_text(lo),
            "max": _number_text(hi),
            "loOpen": lo_open,
            "integer": integer,
            "step": "1" if integer else "0.01",
            "saved": saved,
            "placeholder": placeholder,
            "more": name in MORE_SETTINGS,
            "value": _number_text(value),
        }

    rules = [(name, sampling.RULES[name]) for name in sampling.SAMPLING_FIELDS]
    return [
        *(field(name, r.lo, r.hi, r.help, integer=r.integer, lo_open=r.lo_open) for name, r in rules),
        # max_tokens' upper bound depends on the model: the page sets it from the model's cap.
        field("max_tokens", 1, None, MAX_TOKENS_HELP, integer=True),
        field("seed", 0, sampling.MAX_SEED, SEED_HELP, integer=True, saved=False, placeholder="random"),
    ]


def settings_groups(fields: list[dict]) -> list[dict]:
    """The panel's two rows: the main settings, then "More settings" (open when one is set)."""
    more = [f for f in fields if f["more"]]
    return [
        {"more": False, "open": True, "fields": [f for f in fields if not f["more"]]},
        {"more": True, "open": any(f["value"] for f in more), "fields": more},
    ]


def model_settings_json(model: LanguageModel) -> dict:
    """A model as the chat page needs it: its name, its default for every setting (what an empty
    field in the settings panel means) and its cap on max_tokens."""
    return {
        "slug": model.slug,
        "name": model.name,
        "defaults": {
            **{name: getattr(model, name) for name in sampling.SAMPLING_FIELDS},
            "max_tokens": model.max_tokens,
        },
        "maxTokensCap": model.max_new_tokens_cap,
    }


def thread_json(user, conversation: Conversation) -> dict:
    """The branch shown, as the page's script reads it: messages, their versions, feedback."""
    messages = list(visible_messages(conversation))
    return {
        "messages": [message_json(m) for m in messages],
        "versions": branches.versions(conversation, messages),
        "feedback": feedback.for_messages(user, messages),
    }


def message_json(message: Message) -> dict:
    return {
        "id": message.pk,
        "role": message.role,
        "content": message.content,
        "html": message.html,
        "status": message.status,
        "finish_reason": message.finish_reason,
        "error": message.error,
        "model": message.model.slug if message.model else None,
        "usage": {"prompt_tokens": message.prompt_tokens, "completion_tokens": message.completion_tokens},
        "timing": {"ttft_ms": message.ttft_ms, "tokens_per_s": message.tokens_per_s},
    }
