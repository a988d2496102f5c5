"""Cancel: a queued generation is ended here at once (no worker holds it); a running one is
flagged, in the row and in the event log, for its worker, which sees the flag between chunks,
closes the provider's stream and ends the generation itself."""

from __future__ import annotations

import time

from core.models import FinishReason, Generation, Status
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
    """
    if generation.is_terminal:
        return generation
    if cancel_queued(generation):
        generation.refresh_from_db()
        return generation
    Generation.objects.filter(pk=generation.pk, status=Status.RUNNING).update(cancel_requested=True)
    event_log().request_cancel(generation.pk)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        generation.refresh_from_db()
        if generation.is_terminal:
            break
        # A worker handed it back to the queue meanwhile: no worker holds it now.
        if generation.status == Status.QUEUED and cancel_queued(generation):
            generation.refresh_from_db()
            break
        time.sleep(CANCEL_POLL_S)
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
