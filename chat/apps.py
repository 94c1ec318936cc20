from django.apps import AppConfig


class ChatConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "chat"

    def ready(self) -> None:
        from inference import sinks

        from .replies import SINK, ChatSink

        sinks.register(SINK, ChatSink())
