"""/healthz (the process answers) and /readyz (its dependencies answer)."""

from __future__ import annotations

from collections.abc import Callable

from django.conf import settings
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse

from core.errors import ApiError, error_response


def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


def _probe(check: Callable[[], object]) -> str:
    try:
        check()
    except Exception as exc:
        return f"error: {type(exc).__name__}"
    return "ok"


def _select_one() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")


def _queue_length() -> None:
    from huey.contrib.djhuey import HUEY

    HUEY.pending_count()


def readyz(request: HttpRequest) -> HttpResponse:
    checks = {"database": _probe(_select_one)}
    if settings.DISTRIBUTED:
        from core.redis import sync_client

        checks["redis"] = _probe(lambda: sync_client().ping())
        checks["queue"] = _probe(_queue_length)
    else:
        from jobs.embedded import embedded_worker_alive

        checks["worker"] = "ok" if embedded_worker_alive() else "error: not running"
    failed = [name for name, value in checks.items() if value != "ok"]
    if failed:
        return error_response(
            ApiError("unavailable", "Not ready: " + ", ".join(failed), details=checks)
        )
    return JsonResponse({"status": "ok", "checks": checks})
