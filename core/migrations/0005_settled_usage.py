"""The daily quota's settled usage (core.models.SettledUsage), filled from the generations that
have finished."""

from datetime import UTC

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models
from django.db.models.functions import TruncDate

BATCH = 1000
# core.models.TERMINAL_STATUSES, as they are stored.
FINISHED = ("completed", "failed", "cancelled")


def settle_finished(apps, schema_editor):  # type: ignore[no-untyped-def]
    """Each user's finished generations, summed by the UTC day they were created on. A
    generation that a worker of the previous version finishes after this has run is not
    added: its tokens are missing from its day's quota (see docs/deployment.md, upgrades)."""
    database = schema_editor.connection.alias
    generation = apps.get_model("api", "Generation")
    settled = apps.get_model("api", "SettledUsage")
    totals = (
        generation.objects.using(database)
        .filter(status__in=FINISHED, completion_tokens__gt=0)
        .annotate(day=TruncDate("created_at", tzinfo=UTC))
        .values("user_id", "day")
        .annotate(tokens=models.Sum("completion_tokens"))
        .order_by()
    )
    settled.objects.using(database).bulk_create(
        (
            settled(user_id=row["user_id"], day=row["day"], completion_tokens=row["tokens"])
            for row in totals.iterator()
        ),
        batch_size=BATCH,
    )


class Migration(migrations.Migration):
    dependencies = [
        ("api", "0004_conversations"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.CreateModel(
            name="SettledUsage",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("day", models.DateField()),
                ("completion_tokens", models.PositiveBigIntegerField(default=0)),
                (
                    "user",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="settled_usage",
                        to=settings.AUTH_USER_MODEL,
                    ),
                ),
            ],
            options={
                "constraints": [
                    models.UniqueConstraint(fields=("user", "day"), name="settled_usage_user_day")
                ],
            },
        ),
        migrations.RunPython(settle_finished, migrations.RunPython.noop),
    ]
