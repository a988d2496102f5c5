"""/healthz (the process answers) and /readyz (its dependencies answer)."""

from __future__ import annotations

from django.conf import settings
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse

from core.errors import ApiError, error_response


def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


def readyz(request: HttpRequest) -> HttpResponse:
    checks: dict[str, str] = {}
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"error: {type(exc).__name__}"
    if settings.DISTRIBUTED:
        from core.redis import sync_client

        try:
            sync_client().ping()
            checks["redis"] = "ok"
        except Exception as exc:
            checks["redis"] = f"error: {type(exc).__name__}"
        try:
            from huey.contrib.djhuey import HUEY

            HUEY.pending_count()
            checks["queue"] = "ok"
        except Exception as exc:
            checks["queue"] = f"error: {type(exc).__name__}"
    else:
        from jobs.embedded import embedded_worker_alive

        checks["worker"] = "ok" if embedded_worker_alive() else "error: not running"
    failed = [name for name, value in checks.items() if value != "ok"]
    if failed:
        return error_response(
            ApiError("unavailable", "Not ready: " + ", ".join(failed), details=checks)
        )
    return JsonResponse({"status": "ok", "checks": checks})
