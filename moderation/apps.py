from django.apps import AppConfig


class ModerationConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "moderation"
    verbose_name = "Moderation"

    def ready(self) -> None:
        from django.db.models.signals import post_delete, post_save

        from .checks import forget_rules
        from .models import Rule

        post_save.connect(forget_rules, sender=Rule, dispatch_uid="moderation-rules-saved")
        post_delete.connect(forget_rules, sender=Rule, dispatch_uid="moderation-rules-deleted")
