"""Cancel: a queued generation is ended here at once (no worker holds it); a running one is
flagged, in the row and in the event log, for its worker, which sees the flag between chunks,
closes the provider's stream and ends the generation itself."""

from __future__ import annotations

import time

from core.models import TERMINAL_STATUSES, FinishReason, Generation, Status
from core.selectors import generation_status
from jobs.eventlog import event_log
from jobs.writer import terminate_without_worker

# How long a cancel request waits for the worker to stop, so the reply usually shows the
# final state; the worker reads the flag between chunks, well within this.
CANCEL_WAIT_S = 2.0
# How often the wait reads the row: a fraction of the worker's own reaction time.
CANCEL_POLL_S = 0.05


def cancel(generation: Generation, *, wait_s: float = CANCEL_WAIT_S) -> Generation:
    """Stop `generation`; idempotent. Returns it, usually already cancelled.

    Waits up to `wait_s` for the worker to stop, so that a REST reply shows the final state;
    the WebSocket passes 0 and its client learns the end from the `done` event.

    The wait reads the status alone, and the whole row once at the end: a cancel reads it
    every CANCEL_POLL_S while the worker finishes its chunk, and through the ORM each read
    cost ten times the statement's round trip (docs/scaling.md, "A cancel's reads").
    """
    if generation.is_terminal:
        return generation
    # Only a generation that was queued when read can be one that no worker holds: for a
    # running one this would fence and read its log for nothing. One handed back to the
    # queue since is found by the wait below.
    if generation.status == Status.QUEUED and cancel_queued(generation):
        generation.refresh_from_db()
        return generation
    flagged = Generation.objects.filter(pk=generation.pk, status=Status.RUNNING).update(
        cancel_requested=True
    )
    event_log().request_cancel(generation.pk)
    if wait_s <= 0:
        return generation
    deadline = time.monotonic() + wait_s
    if flagged:
        # The worker reads the flag between chunks: it has not stopped already.
        time.sleep(CANCEL_POLL_S)
    while True:
        status = generation_status(generation.pk)
        if status is None:  # deleted meanwhile (an operator): nothing more to read
            return generation
        if status in TERMINAL_STATUSES:
            break
        # A worker handed it back to the queue meanwhile: no worker holds it now.
        if status == Status.QUEUED:
            generation.refresh_from_db()
            if cancel_queued(generation):
                break
        if time.monotonic() >= deadline:
            break
        time.sleep(CANCEL_POLL_S)
    generation.refresh_from_db()
    return generation


def cancel_queued(generation: Generation) -> bool:
    """Cancel a generation no worker holds; it then never starts. False if one does."""
    return terminate_without_worker(
        Generation.objects.filter(
            pk=generation.pk, status=Status.QUEUED, attempt=generation.attempt
        ),
        generation.pk,
        generation.attempt,
        # No worker has claimed this attempt; fencing the log to it shuts out earlier ones.
        log_owner=generation.attempt,
        row_output=generation.output,
        row_reasoning=generation.reasoning,
        row_seq=generation.seq,
        status=Status.CANCELLED,
        finish_reason=FinishReason.CANCELLED,
        error=None,
    )
