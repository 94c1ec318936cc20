"""/v1/models: the models this key's user may use (tuned ones included)."""

from __future__ import annotations

from django.http import JsonResponse

from inference.models import LanguageModel

from .auth import api_view
from .errors import not_found


def model_object(model: LanguageModel) -> dict:
    return {
        "id": model.slug,
        "object": "model",
        "created": int(model.created_at.timestamp()),
        "owned_by": model.owner.get_username() if model.owner_id else "system",
    }


def usable_model(user, model_id) -> LanguageModel:
    """A model the user may use, else the same 404 whether it does not exist, is disabled or is
    another user's."""
    model = LanguageModel.objects.usable_by(user).select_related("owner").filter(slug=str(model_id)).first()
    if model is None:
        raise not_found("model", model_id, param="model")
    return model


@api_view("GET", scope="chat")
def list_models(request):
    rows = LanguageModel.objects.usable_by(request.user).select_related("owner").order_by("created_at", "pk")
    return JsonResponse({"object": "list", "data": [model_object(m) for m in rows]})


@api_view("GET", scope="chat")
def retrieve_model(request, model_id: str):
    return JsonResponse(model_object(usable_model(request.user, model_id)))
