"""Retention: delete generations older than N days, with their replay buffers.

    python manage.py purge_generations --older-than-days 90 [--dry-run]

Only finished generations (completed, failed, cancelled) are deleted: a queued or running one
is still someone's work, whatever its age. Rows go in batches, so the table is never locked
for long; run it daily from cron or a Kubernetes CronJob (docs/deployment.md). The settled
usage of the days before the cutoff's goes too (core.models.SettledUsage: the daily quota
reads only today's).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser
from django.utils import timezone

from core.models import TERMINAL_STATUSES, Generation, SettledUsage

# Rows per DELETE: small enough that one statement holds its locks for milliseconds.
BATCH_ROWS = 500


def discard_replay_buffers(generation_ids: list[str]) -> None:
    """Delete the Redis keys of these generations (event log, fence, cancel flag).

    In the embedded default the buffer lives in the web process's memory and expires by
    itself (10 minutes after `done`); this command, another process, cannot reach it.
    """
    if not settings.DISTRIBUTED or not generation_ids:
        return
    from core.redis import sync_client
    from jobs.eventlog import RedisEventLog

    key_of = (RedisEventLog._stream_key, RedisEventLog._fence_key, RedisEventLog._cancel_key)
    sync_client().delete(
        *(key(generation_id) for generation_id in generation_ids for key in key_of)
    )


class Command(BaseCommand):
    help = "Delete finished generations older than N days, with their replay buffers."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--older-than-days", type=int, required=True, metavar="N")
        parser.add_argument(
            "--dry-run", action="store_true", help="count what would be deleted, delete nothing"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        days: int = options["older_than_days"]
        if days < 1:
            # Today's rows count toward TOKENS_PER_DAY: never delete them.
            self.stderr.write("--older-than-days must be at least 1")
            raise SystemExit(2)
        cutoff = timezone.now() - timedelta(days=days)
        old = Generation.objects.filter(created_at__lt=cutoff, status__in=TERMINAL_STATUSES)
        old_usage = SettledUsage.objects.filter(day__lt=cutoff.date())
        if options["dry_run"]:
            self.stdout.write(
                f"would delete {old.count()} generations created before {cutoff},"
                f" and {old_usage.count()} days of users' settled usage"
            )
            return
        deleted = 0
        while True:
            batch = list(old.order_by("created_at").values_list("id", flat=True)[:BATCH_ROWS])
            if not batch:
                break
            Generation.objects.filter(id__in=batch).delete()
            discard_replay_buffers(batch)
            deleted += len(batch)
        days_deleted, _ = old_usage.delete()
        self.stdout.write(
            f"deleted {deleted} generations created before {cutoff},"
            f" and {days_deleted} days of users' settled usage"
        )
