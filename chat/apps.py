from django.apps import AppConfig


class ChatConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "chat"

    def ready(self) -> None:
        from inference import sinks

        from . import titles
        from .replies import SINK, ChatSink

        sinks.register(SINK, ChatSink())
        sinks.register(titles.SINK, titles.TitleSink())
