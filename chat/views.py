"""HTTP views: the chat page and the small JSON endpoints the page's script calls."""

import json

from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET, require_POST

from inference import sampling
from inference.models import LanguageModel
from presets import prompts

from . import branches, conversations, feedback, limits, replies, sync, transcripts
from .models import Message


@login_required
@require_GET
def chat_page(request: HttpRequest, conversation_id: int | None = None) -> HttpResponse:
    conversation = None
    messages = []
    versions = {}
    if conversation_id is not None:
        conversation = conversations.get_owned_conversation(request.user, conversation_id)
        replies.reap(conversation.messages.filter(status__in=Message.ACTIVE_STATUSES))
        messages = list(conversations.visible_messages(conversation))
        versions = branches.versions(conversation, messages)
    models = list(LanguageModel.objects.usable_by(request.user))
    default_model = LanguageModel.default()
    # A link such as the fine-tuning page's "Chat with it" may name the model (?model=slug).
    asked = next((m for m in models if m.slug == request.GET.get("model")), None)
    selected_model = (conversation.model if conversation and conversation.model_id else None) or asked or default_model
    # A model disabled since the conversation used it: the page says so and offers the default.
    disabled_model = selected_model if selected_model is not None and not selected_model.enabled else None
    if disabled_model is not None:
        selected_model = default_model
    active = next((m for m in messages if m.is_active), None)
    setting_fields = conversations.settings_fields(conversation)
    config = {
        "conversation": conversation.pk if conversation else None,
        "conversationSettings": conversations.conversation_json(conversation) if conversation else None,
        "models": [conversations.model_settings_json(m) for m in models],
        "settingFields": setting_fields,
        "defaultModel": default_model.slug if default_model else None,
        "activeMessage": active.pk if active else None,
        **limits.page_config(models),
        # The values in force where neither the conversation nor its model sets one.
        "samplingDefaults": sampling.DEFAULTS.to_dict(),
        "disabledModel": {"slug": disabled_model.slug, "name": disabled_model.name} if disabled_model else None,
        "wsPath": "/ws/chat/",
        "feedback": feedback.for_messages(request.user, messages),
        "versions": versions,
        "feedbackLimits": feedback.limits(),
        **prompts.page_config(),
    }
    return render(
        request,
        "chat/chat.html",
        {
            "conversation": conversation,
            "chat_messages": messages,
            "conversations": conversations.conversations_for(request.user)[:200],
            "models": models,
            "default_model": default_model,
            "selected_model": selected_model,
            "disabled_model": disabled_model,
            "setting_groups": conversations.settings_groups(setting_fields),
            "chat_config": config,
        },
    )


@login_required
@require_GET
def conversation_list(request: HttpRequest) -> JsonResponse:
    items = conversations.conversations_for(request.user, request.GET.get("q", ""))[:200]
    return JsonResponse({"conversations": [conversations.conversation_json(c) for c in items]})


def _request_data(request: HttpRequest):
    if request.content_type == "application/json":
        try:
            data = json.loads(request.body or b"{}")
        except ValueError:
            return None
        return data if isinstance(data, dict) else None
    return request.POST


@login_required
@require_POST
def conversation_update(request: HttpRequest, conversation_id: int) -> JsonResponse:
    conversation = conversations.get_owned_conversation(request.user, conversation_id)
    data = _request_data(request)
    if data is None:
        return JsonResponse({"errors": {"__all__": "The request body is not a JSON object."}}, status=400)
    result = conversations.update_conversation(conversation, data)
    if result.errors:
        return JsonResponse({"errors": result.errors}, status=400)
    if "title" in data:  # every tab's sidebar follows
        sync.publish(
            request.user.pk, {"event": "renamed", "conversation": conversation.pk, "title": result.conversation.title}
        )
    return JsonResponse({"conversation": conversations.conversation_json(result.conversation)})


@login_required
@require_POST
def conversation_delete(request: HttpRequest, conversation_id: int) -> JsonResponse:
    conversation = conversations.get_owned_conversation(request.user, conversation_id)
    conversations.delete_conversation(conversation)
    sync.publish(request.user.pk, {"event": "deleted", "conversation": conversation.pk})
    return JsonResponse({"deleted": conversation_id})


@login_required
@require_POST
def conversation_delete_all(request: HttpRequest) -> JsonResponse:
    count = conversations.delete_all(request.user)
    sync.publish(request.user.pk, {"event": "deleted_all"})
    return JsonResponse({"deleted": count})


@login_required
@require_GET
def conversation_export(request: HttpRequest, conversation_id: int, fmt: str) -> HttpResponse:
    conversation = conversations.get_owned_conversation(request.user, conversation_id)
    if fmt not in transcripts.FORMATS:
        raise Http404("Export as .md or .json.")
    content_type, render_as = transcripts.FORMATS[fmt]
    response = HttpResponse(render_as(conversation), content_type=content_type)
    response["Content-Disposition"] = f'attachment; filename="{transcripts.filename(conversation, fmt)}"'
    return response


@login_required
@require_GET
def conversation_messages(request: HttpRequest, conversation_id: int) -> JsonResponse:
    conversation = conversations.get_owned_conversation(request.user, conversation_id)
    replies.reap(conversation.messages.filter(status__in=Message.ACTIVE_STATUSES))
    return JsonResponse(conversations.thread_json(request.user, conversation))


@login_required
@require_POST
def message_show(request: HttpRequest, message_id: int) -> JsonResponse:
    """Show another version of a message ("2 / 3"): its branch replaces the one shown."""
    try:
        conversation = branches.show(request.user, message_id)
    except branches.BranchError as exc:
        return JsonResponse({"error": {"code": exc.code, "message": exc.message}}, status=_BRANCH_STATUS[exc.code])
    sync.publish(request.user.pk, {"event": "switched", "conversation": conversation.pk})
    return JsonResponse(conversations.thread_json(request.user, conversation))


_BRANCH_STATUS = {"invalid_field": 400, "not_found": 404, "busy": 409, "not_shown": 409}
