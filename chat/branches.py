"""A conversation is a tree: each message points to the one it follows (`Message.parent`).
Editing a sent message adds a sibling user message (a fork); regenerating a reply adds a sibling
reply. The page shows one branch, root to leaf: the messages not hidden (`replaced_at` empty).
Siblings are the "versions" the page lets a person page through ("2 / 3"); showing another one
hides the branch below the current sibling and shows the chosen sibling's branch, down the path
that was shown last. Nothing is deleted: every version stays for the person and the admins' logs.
"""

from __future__ import annotations

from collections import defaultdict

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from .models import Conversation, Message


class BranchError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def leaf(conversation: Conversation) -> Message | None:
    """The last message of the branch shown: a new message follows it."""
    return conversation.messages.filter(replaced_at__isnull=True).order_by("-id").first()


def history_before(message: Message) -> list[dict]:
    """What the model is given before `message`: the system prompt recorded on it (else the
    conversation's, else its model's) and the branch above it, root first. Failed replies (no
    text) are left out: the model never wrote them."""
    conversation = message.conversation
    model = message.model or conversation.model
    system = message.system_prompt or conversation.system_prompt or (model.system_prompt if model else "")
    rows = {
        pk: (parent, role, content)
        for pk, parent, role, content in conversation.messages.filter(id__lt=message.pk).values_list(
            "id", "parent_id", "role", "content"
        )
    }
    path = []
    node = message.parent_id
    while node is not None and node in rows:
        parent, role, content = rows[node]
        if not (role == Message.Role.ASSISTANT and not content):
            path.append({"role": role, "content": content})
        node = parent
    path.reverse()
    return ([{"role": "system", "content": system}] if system.strip() else []) + path


def versions(conversation: Conversation, messages: list[Message]) -> dict[int, list[int]]:
    """For each message shown, the ids of its versions (itself and its siblings, oldest
    first); only messages that have more than one are listed."""
    if not messages:
        return {}
    parents = {m.parent_id for m in messages if m.parent_id is not None}
    siblings = conversation.messages.filter(Q(parent_id__in=parents) | Q(parent__isnull=True, role=Message.Role.USER))
    groups: dict[tuple, list[int]] = defaultdict(list)
    for pk, parent, role in siblings.order_by("id").values_list("id", "parent_id", "role"):
        groups[(parent, role)].append(pk)
    found = {}
    for message in messages:
        ids = groups.get((message.parent_id, message.role), [])
        if len(ids) > 1:
            found[message.pk] = ids
    return found


def hide_from(conversation: Conversation, first: Message, keep: tuple[int, ...] = (), replaced_by=None) -> None:
    """Hide the shown branch from `first` down (its descendants on the branch have larger ids:
    a message is always created after the one it follows), except the ids in `keep`."""
    shown = conversation.messages.filter(replaced_at__isnull=True, id__gte=first.pk).exclude(pk__in=keep)
    changes = {"replaced_at": timezone.now()}
    if replaced_by is not None:
        changes["replaced_by"] = replaced_by
    shown.update(**changes)


def show(user, message_id) -> Conversation:
    """Show the version `message_id` in place of its shown sibling, with the branch below it
    that was shown last. Refused while a reply is being generated in the conversation."""
    if isinstance(message_id, bool) or not isinstance(message_id, int) or message_id < 1:
        raise BranchError("invalid_field", "message must be a positive integer id.")
    with transaction.atomic():
        target = (
            Message.objects.select_related("conversation")
            .filter(
                pk=message_id,
                conversation__user=user,
                conversation__deleted_at__isnull=True,
                conversation__source=Conversation.Source.CHAT,
            )
            .first()
        )
        if target is None:
            raise BranchError("not_found", "There is no such message in your conversations.")
        conversation = Conversation.objects.select_for_update().get(pk=target.conversation_id)
        if target.replaced_at is None:
            return conversation
        rows = list(conversation.messages.values_list("id", "parent_id", "role", "replaced_at", "status"))
        if any(status in Message.ACTIVE_STATUSES for *_, status in rows):
            raise BranchError("busy", "A reply is still being generated in this conversation: wait or stop it first.")
        by_id = {pk: (parent, role, hidden) for pk, parent, role, hidden, _status in rows}
        if target.parent_id is not None and by_id[target.parent_id][2] is not None:
            raise BranchError("not_shown", "That version's branch is not shown: show the message above it first.")
        current = next(
            (
                pk
                for pk, (parent, role, hidden) in by_id.items()
                if parent == target.parent_id and role == target.role and hidden is None
            ),
            None,
        )
        if current is not None:
            hide_from(conversation, Message(pk=current))
        children = defaultdict(list)
        for pk, (parent, _role, hidden) in by_id.items():
            children[parent].append((hidden or timezone.now(), pk))
        path = [target.pk]
        while children.get(path[-1]):
            # The child shown last was hidden last (with the rest of its branch).
            path.append(max(children[path[-1]])[1])
        conversation.messages.filter(pk__in=path).update(replaced_at=None)
        conversation.save(update_fields=["updated_at"])
        return conversation
