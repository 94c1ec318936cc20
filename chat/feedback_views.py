"""The JSON endpoint the chat page calls to rate a reply (chat.feedback does the work)."""

import json

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_POST

from . import feedback


@login_required
@require_POST
def message_feedback(request: HttpRequest, message_id: int) -> JsonResponse:
    """Set any of rating, comment and edited_content of the user's own reply (CSRF-protected)."""
    try:
        data = json.loads(request.body or b"null")
    except ValueError:
        data = None
    try:
        saved = feedback.give(request.user, message_id, data)
    except feedback.FeedbackError as exc:
        return JsonResponse({"errors": exc.errors}, status=exc.status)
    return JsonResponse({"message": message_id, "feedback": feedback.feedback_json(saved)})
