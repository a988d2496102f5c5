"""The reaper: generations whose worker stopped beating are re-queued (or failed on their last
attempt), and queued generations no worker has picked up are enqueued again. Each worker
process runs it from its housekeeping thread (jobs.runner)."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from django.db.models import Q
from django.utils import timezone

from core.models import FinishReason, Generation, Status
from jobs.writer import enqueue, fenced, generation_requeue, terminate_without_worker

logger = logging.getLogger(__name__)


def reap_stale(
    *, heartbeat_timeout_s: float, max_attempts: int, now: datetime | None = None
) -> int:
    """One round of the reaper (see above): how many generations it touched."""
    now = now or timezone.now()
    stale_before = now - timedelta(seconds=heartbeat_timeout_s)
    touched = 0
    stale = Generation.objects.filter(status=Status.RUNNING, heartbeat_at__lt=stale_before)
    for generation_id, attempt, seq, output, reasoning in stale.values_list(
        "id", "attempt", "seq", "output", "reasoning"
    )[:500]:
        if attempt < max_attempts:
            if generation_requeue(generation_id, attempt):
                logger.warning(
                    "generation %s: worker lost, re-queued as attempt %d",
                    generation_id,
                    attempt + 1,
                )
                touched += 1
        elif _fail_lost(generation_id, attempt, output=output, reasoning=reasoning, seq=seq):
            touched += 1
    # Queued rows whose task may have been lost (enqueue failed, or a queue restart):
    # enqueueing again is harmless, because only one claim can win.
    # A queued row's heartbeat_at is when it was last (re-)enqueued: each is re-enqueued at
    # most once per timeout, so a backlog that keeps every worker busy is not multiplied.
    waiting = Generation.objects.filter(status=Status.QUEUED).filter(
        Q(heartbeat_at__isnull=True, created_at__lt=stale_before) | Q(heartbeat_at__lt=stale_before)
    )
    for generation_id in waiting.values_list("id", flat=True)[:500]:
        if Generation.objects.filter(pk=generation_id, status=Status.QUEUED).update(
            heartbeat_at=now
        ):
            enqueue(generation_id)
            touched += 1
    return touched


def _fail_lost(generation_id: str, attempt: int, *, output: str, reasoning: str, seq: int) -> bool:
    logger.error(
        "generation %s: worker lost on the last attempt (%d); failed",
        generation_id,
        attempt,
    )
    return terminate_without_worker(
        fenced(generation_id, attempt),
        generation_id,
        attempt,
        # The worker may be alive but cut off from the database, still appending to the log:
        # fence it out. No worker gets attempt + 1, since only a running row is re-queued.
        log_owner=attempt + 1,
        row_output=output,
        row_reasoning=reasoning,
        row_seq=seq,
        status=Status.FAILED,
        finish_reason=FinishReason.ERROR,
        error={
            "code": "worker_lost",
            "message": "The worker running this generation stopped.",
        },
    )
