from django.apps import AppConfig


class CoreConfig(AppConfig):
    """The EduPulse site's own pages."""

    default_auto_field = "django.db.models.BigAutoField"
    name = "core"
