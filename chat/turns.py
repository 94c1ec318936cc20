"""Starting, regenerating, stopping and resuming replies: "check" (ownership, validation) then
"do" (write rows, build the inference request). Used by the websocket consumer; synchronous code."""

from __future__ import annotations

from dataclasses import dataclass

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import transaction
from django.utils import timezone

from chatsite.ids import parse_id
from inference import sampling
from inference.protocol import Request
from moderation import checks as moderation_checks
from moderation import events as moderation_events
from presets import prompts, templating

from . import branches, limits, replies, titles
from .models import Conversation, LanguageModel, Message
from .rendering import render_markdown


class TurnError(Exception):
    """A refused request; `code` and `message` go to the client in a chat.error frame."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class Turn:
    conversation: Conversation
    user_message: Message
    reply: Message
    request: Request
    # Regenerate and edit: the first message of the branch the new one takes the place of (the
    # old reply, the edited message), hidden with what follows it once the new reply is queued.
    replaces: int | None = None
    edited: bool = False
    versions: dict[int, list[int]] | None = None  # see chat.branches.versions
    masked: bool = False  # the stored message differs from what was sent (a moderation mask)

    @property
    def new_messages(self) -> tuple[int, ...]:
        return (self.user_message.pk, self.reply.pk) if self.edited else (self.reply.pk,)

    def started_frame(self) -> dict:
        frame = {
            "type": "chat.started",
            "conversation": self.conversation.pk,
            "user_message": self.user_message.pk,
            "message": self.reply.pk,
            "model": self.request.model,
            "title": self.conversation.title,
            "replaces": self.replaces,
            # Each message of the turn with more than one version: the ids, oldest first.
            "versions": self.versions or {},
        }
        if self.edited or self.masked:  # the page shows what was stored (its own edit box; a mask)
            frame["user_content"] = self.user_message.content
        if self.user_message.params.get("template"):
            # Filled on the server from a prompt template: the page shows what was sent.
            frame["user_content"] = self.user_message.content
            frame["template"] = self.user_message.params["template"]
        return frame


# --- check -----------------------------------------------------------------------------------
def _check_content(content) -> str:
    if not isinstance(content, str):
        raise TurnError("invalid_field", "content must be a string.")
    if not content.strip():
        raise TurnError("empty_message", "The message is empty: type something to send.")
    if "\x00" in content:
        raise TurnError("invalid_field", "The message contains a NUL character (\\x00); remove it and send again.")
    if len(content) > settings.CHAT_MAX_MESSAGE_CHARS:
        raise TurnError(
            "message_too_long",
            f"The message is {len(content)} characters; the limit is {settings.CHAT_MAX_MESSAGE_CHARS}. "
            "Shorten it or split it into several messages.",
        )
    return content


def _check_id(value, name: str) -> int:
    if not isinstance(value, int) or not parse_id(value):  # parse_id: not a bool, below 10**18
        raise TurnError("invalid_field", f"{name} must be a positive integer id.")
    return value


def _check_model(user, slug, conversation: Conversation | None, *, switch_disabled: bool = True) -> LanguageModel:
    """The model a reply uses: the one named, else the conversation's, else the default. A
    conversation whose model was disabled falls back to the default only with `switch_disabled`
    (a regenerate); a new message is refused instead, so the person sees the switch and agrees."""
    if slug is not None:
        if not isinstance(slug, str):
            raise TurnError("invalid_field", "model must be a model name (slug) string.")
        model = LanguageModel.objects.filter(slug=slug).first()
        if model is None or not model.visible_to(user):  # another user's model: as if it did not exist
            raise TurnError("unknown_model", f"There is no model called {slug!r}. Pick one from the list.")
        if not model.enabled:
            raise TurnError("model_disabled", f"The model {slug!r} is disabled by an administrator. Pick another.")
        return model
    if conversation is not None and conversation.model is not None and conversation.model.enabled:
        if conversation.model.visible_to(user):
            return conversation.model
    model = LanguageModel.default()
    if model is None:
        raise TurnError("no_model", "No model is enabled. An administrator must enable one in the admin.")
    disabled = conversation.model if conversation is not None and conversation.model is not None else None
    if not switch_disabled and disabled is not None and not disabled.enabled and disabled.visible_to(user):
        raise TurnError(
            "model_disabled",
            f"This conversation's model {disabled.slug!r} was disabled by an administrator. "
            f"Send the message with another model (the default is {model.slug!r}).",
        )
    return model


def _check_prompt_length(content: str, system_prompt: str, model: LanguageModel) -> None:
    """Refuse, before anything is stored, a message that cannot fit the model's input limit
    (counted exactly near the limit: chat/limits.py)."""
    tokens = limits.prompt_tokens_checked(content, system_prompt, model)
    if tokens > model.max_input_tokens:
        raise TurnError(
            "message_too_long",
            f"The message is {tokens} tokens with the system prompt; the model {model.slug!r} accepts "
            f"at most {model.max_input_tokens}. Shorten it or split it into several messages.",
        )


def _check_params(params, model: LanguageModel, conversation: Conversation | None) -> dict:
    """The request's settings: what the frame asks, else the conversation's, else the model's."""
    try:
        return sampling.resolve(
            {} if params is None else params,
            *([conversation] if conversation is not None else []),
            model,
            cap=model.max_new_tokens_cap,
        )
    except sampling.SettingsError as exc:
        raise TurnError("invalid_field", exc.message) from exc


def check_capacity(user, wanted: int = 1) -> None:
    """The account's replies in flight (queued or generating, on the chat page and through every
    API key alike) plus `wanted` new ones stay within CHAT_MAX_ACTIVE_PER_USER. Inside a
    transaction, the user's row is locked first, so concurrent requests of one account count
    each other (PostgreSQL; SQLite's transactions are serialized already)."""
    limit = settings.CHAT_MAX_ACTIVE_PER_USER
    if transaction.get_connection().in_atomic_block:
        get_user_model().objects.select_for_update().filter(pk=user.pk).first()
    active = Message.objects.filter(conversation__user=user, status__in=Message.ACTIVE_STATUSES).count()
    if active + wanted > limit:
        more = f" and this asks for {wanted}" if wanted > 1 else ""
        raise TurnError(
            "too_many_replies",
            f"You already have {active} replies being generated{more} (the limit is {limit} at once, chat and API "
            "together). Wait for one to finish or stop one, then send again.",
        )


def _check_moderation(user, content: str, conversation_id) -> moderation_checks.InputOutcome:
    """Input rules: a block refuses the message (and waits in the review queue)."""
    outcome = moderation_checks.check_input(content)
    if outcome.block is not None:
        valid_id = isinstance(conversation_id, int) and not isinstance(conversation_id, bool)
        conversation = Conversation.objects.filter(pk=conversation_id, user=user).first() if valid_id else None
        moderation_events.record(outcome.records, source="chat", user=user, conversation=conversation)
        raise TurnError("moderated", outcome.refusal)
    return outcome


def owned_message(user, message_id) -> Message:
    message_id = _check_id(message_id, "message")
    message = (
        Message.objects.visible()
        .select_related("conversation", "model")
        .filter(pk=message_id, conversation__user=user)
        .first()
    )
    if message is None:
        raise TurnError("not_found", "There is no such message in your conversations.")
    return message


def _locked_owned_conversation(user, conversation_id) -> Conversation:
    conversation_id = _check_id(conversation_id, "conversation")
    conversation = (
        Conversation.objects.select_for_update(of=("self",))
        .select_related("model")
        .filter(pk=conversation_id, user=user, deleted_at__isnull=True, source=Conversation.Source.CHAT)
        .first()
    )
    if conversation is None:
        raise TurnError("not_found", "There is no such conversation in your account.")
    return conversation


def _check_not_busy(conversation: Conversation) -> None:
    if conversation.messages.filter(status__in=Message.ACTIVE_STATUSES).exists():
        raise TurnError("busy", "A reply is still being generated in this conversation: wait or stop it first.")


# --- do --------------------------------------------------------------------------------------
def build_request(reply: Message, messages: list[dict]) -> Request:
    """The inference request for a queued reply: `messages` (system prompt first, if any) and
    the reply's settings. The chat page's replies take their branch (`branches.history_before`);
    the API's take the messages of the call."""
    return Request(
        id=replies.request_id(reply.pk),
        model=reply.model.slug,
        messages=messages,
        sampling=reply.params,
        max_input_tokens=reply.model.max_input_tokens,
        sink=replies.SINK,
        user=str(reply.conversation.user_id),
    )


def _check_system_prompt(system_prompt) -> str | None:
    if system_prompt is None:
        return None
    if not isinstance(system_prompt, str):
        raise TurnError("invalid_field", "system_prompt must be a string.")
    if len(system_prompt) > settings.CHAT_MAX_SYSTEM_PROMPT_CHARS:
        raise TurnError(
            "invalid_field", f"system_prompt is longer than {settings.CHAT_MAX_SYSTEM_PROMPT_CHARS} characters."
        )
    if "\x00" in system_prompt:
        raise TurnError("invalid_field", "system_prompt contains a NUL character (\\x00).")
    return system_prompt


def _queue_reply(
    conversation: Conversation,
    user_message: Message,
    model: LanguageModel,
    params: dict,
    replaces: int | None = None,
    edited: bool = False,
) -> Turn:
    """Create the queued assistant reply (following `user_message`) and its inference request."""
    reply = Message.objects.create(
        conversation=conversation,
        parent=user_message,
        role=Message.Role.ASSISTANT,
        status=Message.Status.QUEUED,
        model=model,
        params=params,
        system_prompt=conversation.system_prompt or model.system_prompt,
        model_version=model_version(model),
    )
    request = build_request(reply, branches.history_before(reply))
    versions = branches.versions(conversation, [user_message, reply])
    return Turn(conversation, user_message, reply, request, replaces, edited, versions)


def model_version(model: LanguageModel) -> dict:
    """What identifies the model's weights at this moment, for the reply's reproducibility record."""
    return {
        "slug": model.slug,
        "source": model.source,
        "location": model.location,
        "backend": model.backend,
        "gguf_file": model.gguf_file,
        "adapter": model.adapter,
        "dtype": model.dtype,
        "base": model.base.slug if model.base_id and model.base else None,
        "lineage": model.lineage or {},
        "updated_at": model.updated_at.isoformat() if model.updated_at else None,
    }


def _fill_template(template) -> tuple[str, dict]:
    try:
        return prompts.fill_template(template)
    except templating.TemplateError as exc:
        raise TurnError("template_error", exc.message) from exc


def start_turn(user, conversation_id, content, model_slug, params, system_prompt=None, template=None,
               origin=None) -> Turn:  # fmt: skip
    """Store the user's message and a queued reply; returns the worker request to enqueue.
    `system_prompt`, when given, is saved on the conversation before the reply is built.
    `template` ({"id", "values"}), when given, is filled here and replaces `content`; its name
    and version are stored in the user message's params. `origin` "compare" (a new conversation
    of the studio's compare view) keeps it out of the chat list (Conversation.Source.COMPARE)."""
    if origin not in (None, "chat", "compare"):
        raise TurnError("invalid_field", 'origin must be "chat" or "compare".')
    source = Conversation.Source.COMPARE if origin == "compare" else Conversation.Source.CHAT
    used_template = None
    if template is not None:
        content, used_template = _fill_template(template)
    content = _check_content(content)
    system_prompt = _check_system_prompt(system_prompt)
    check_capacity(user)
    moderated = _check_moderation(user, content, conversation_id)
    content = moderated.text  # masked where a rule says so: the model never sees the match
    records = moderated.records
    if system_prompt:  # the client's text as well: the same rules
        prompt_checked = _check_moderation(user, system_prompt, conversation_id)
        system_prompt, records = prompt_checked.text, records + prompt_checked.records
    with transaction.atomic():
        # Race: two tabs sending in one conversation at once; the row lock serialises them so
        # the busy check sees the first one's queued reply.
        conversation = None if conversation_id is None else _locked_owned_conversation(user, conversation_id)
        model = _check_model(user, model_slug, conversation, switch_disabled=False)
        resolved = _check_params(params, model, conversation)
        saved_prompt = conversation.system_prompt if conversation is not None else ""
        in_force = (system_prompt if system_prompt is not None else saved_prompt) or model.system_prompt
        _check_prompt_length(content, in_force, model)
        parent = None
        if conversation is None:
            title = titles.cut(content)
            conversation = Conversation.objects.create(
                user=user, title=title, model=model, system_prompt=system_prompt or "", source=source
            )
        else:
            parent = branches.leaf(conversation)
            _check_not_busy(conversation)
            conversation.model = model
            if system_prompt is not None:
                conversation.system_prompt = system_prompt
            conversation.save(update_fields=["model", "system_prompt", "updated_at"])
        user_message = Message.objects.create(
            conversation=conversation,
            parent=parent,
            role=Message.Role.USER,
            content=content,
            html=render_markdown(content),
            params={"template": used_template} if used_template else {},
        )
        moderation_events.record(records, source="chat", user=user, conversation=conversation, message=user_message)
        turn = _queue_reply(conversation, user_message, model, resolved)
        turn.masked = any(r["action"] == "mask" and r["stage"] == "input" for r in moderated.records)
        return turn


def regenerate(user, message_id) -> Turn:
    """Queue a new reply in place of the latest finished assistant reply of a conversation. The
    old reply stays until the new one is queued (`Turn.replaces`; see `drop_replaced`)."""
    message = owned_message(user, message_id)
    check_capacity(user)
    with transaction.atomic():
        conversation = _locked_owned_conversation(user, message.conversation_id)
        shown = conversation.messages.filter(replaced_at__isnull=True)
        latest = shown.order_by("-id").first()
        if message.role != Message.Role.ASSISTANT or latest is None or latest.pk != message.pk or message.is_active:
            raise TurnError(
                "not_regenerable", "Only the latest assistant reply can be regenerated, once it has finished."
            )
        user_message = message.parent
        if user_message is None:
            raise TurnError("not_regenerable", "There is no user message to answer again.")
        model = (
            _check_model(user, None, conversation)
            if message.model is None or not message.model.enabled or not message.model.visible_to(user)
            else message.model
        )
        # The old reply's settings, checked again: the model's cap may have been lowered since.
        # Not its seed: the same seed would give the same reply again.
        old = {k: v for k, v in (message.params or {}).items() if k in {*sampling.SAMPLING_FIELDS, "stop"}}
        if isinstance((message.params or {}).get("max_tokens"), int):
            old["max_tokens"] = min(message.params["max_tokens"], model.max_new_tokens_cap)
        params = _check_params(old, model, conversation)
        conversation.save(update_fields=["updated_at"])
        return _queue_reply(conversation, user_message, model, params, replaces=message.pk)


def edit(user, message_id, content, model_slug=None, params=None) -> Turn:
    """Send an edited version of a sent user message: the conversation forks there. The new
    message follows the same message the edited one did and gets a new reply; the old branch
    stays (hidden once the reply is queued, see `drop_replaced`), reachable as a version."""
    content = _check_content(content)
    message = owned_message(user, message_id)
    if message.role != Message.Role.USER:
        raise TurnError("not_editable", "Only your own messages can be edited; regenerate a reply instead.")
    check_capacity(user)
    moderated = _check_moderation(user, content, message.conversation_id)
    content = moderated.text
    with transaction.atomic():
        conversation = _locked_owned_conversation(user, message.conversation_id)
        _check_not_busy(conversation)
        model = _check_model(user, model_slug, conversation, switch_disabled=False)
        resolved = _check_params(params, model, conversation)
        _check_prompt_length(content, conversation.system_prompt or model.system_prompt, model)
        conversation.model = model
        conversation.save(update_fields=["model", "updated_at"])
        user_message = Message.objects.create(
            conversation=conversation,
            parent_id=message.parent_id,
            role=Message.Role.USER,
            content=content,
            html=render_markdown(content),
        )
        moderation_events.record(
            moderated.records, source="chat", user=user, conversation=conversation, message=user_message
        )
        return _queue_reply(conversation, user_message, model, resolved, replaces=message.pk, edited=True)


def drop_replaced(turn: Turn) -> None:
    """After a regenerated or edited turn was queued: hide the branch it takes the place of. The
    rows are kept as versions the person can show again (chat.branches), and for the logs."""
    if turn.replaces is not None:
        replaced_by = turn.user_message if turn.edited else turn.reply
        branches.hide_from(turn.conversation, Message(pk=turn.replaces), turn.new_messages, replaced_by)


def abandon(turn: Turn) -> None:
    """The turn could not be queued: a regenerated or edited one leaves the branch shown as it
    was (its new messages stay, failed and hidden, as versions); a new message's failed reply
    stays in view with its error."""
    if turn.replaces is not None:
        Message.objects.filter(pk__in=turn.new_messages).update(replaced_at=timezone.now())
