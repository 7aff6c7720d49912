"""LoginRefusal: a refused SMTP login, shared by all senders (see the model)."""
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("bulk_email", "0003_campaign_dispatched_at")]

    operations = [
        migrations.CreateModel(
            name="LoginRefusal",
            fields=[
                ("fingerprint", models.CharField(max_length=64, primary_key=True, serialize=False)),
                ("error", models.TextField()),
                ("refused_at", models.DateTimeField()),
            ],
        ),
    ]
