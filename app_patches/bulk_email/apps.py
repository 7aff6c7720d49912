from django.apps import AppConfig


class BulkEmailConfig(AppConfig):
    """Queued, batched bulk email with a per-recipient delivery ledger."""

    default_auto_field = "django.db.models.BigAutoField"
    name = "bulk_email"
    verbose_name = "Bulk email"
