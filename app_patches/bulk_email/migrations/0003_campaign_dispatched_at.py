"""Campaign.dispatched_at: when the campaign was handed to its queue mode.

NULL means "held" (created or resumed while a queue mode switch was in
progress) and is what ``queue_switch dispatch-held`` looks for. Campaigns
that existed before this migration were all dispatched when they were
created, so they get dispatched_at = created_at here; otherwise the first
dispatch-held after the upgrade would hand every old campaign with a
pending delivery to the queue again.
"""
from django.db import migrations, models
from django.db.models import F


def mark_existing_dispatched(apps, schema_editor) -> None:
    """Existing campaigns were dispatched at creation: never count them as held."""
    Campaign = apps.get_model("bulk_email", "Campaign")
    Campaign.objects.using(schema_editor.connection.alias).filter(
        dispatched_at__isnull=True
    ).update(dispatched_at=F("created_at"))


class Migration(migrations.Migration):

    dependencies = [
        ("bulk_email", "0002_delivery_claim"),
    ]

    operations = [
        migrations.AddField(
            model_name="campaign",
            name="dispatched_at",
            field=models.DateTimeField(
                blank=True,
                null=True,
                help_text="When it was handed to its queue mode; empty while it is held.",
            ),
        ),
        migrations.RunPython(mark_existing_dispatched, migrations.RunPython.noop),
    ]
