"""ASGI entry point: HTTP through Django, websockets through Channels (session auth, origin check).
Request bodies are bounded by path before anyone stores them (chatsite/bodylimit.py)."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.settings")
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack
from channels.routing import ProtocolTypeRouter, URLRouter
from channels.security.websocket import AllowedHostsOriginValidator
from django.conf import settings
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler

from chat.routing import websocket_urlpatterns as chat_sockets
from chatsite.bodylimit import BodyLimit, guard_daphne
from finetuning.routing import websocket_urlpatterns as finetuning_sockets

guard_daphne()  # daphne imports this module before it listens

application = ProtocolTypeRouter(
    {
        # daphne serves /static/ itself on a single machine; behind a proxy set SERVE_STATIC=0.
        "http": BodyLimit(ASGIStaticFilesHandler(django_asgi_app) if settings.SERVE_STATIC else django_asgi_app),
        "websocket": AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter(chat_sockets + finetuning_sockets))),
    }
)
