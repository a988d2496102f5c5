"""Serves frontend-sample/ (the sample chat page and its client) from the service itself."""

from __future__ import annotations

from pathlib import Path

from django.conf import settings
from django.http import FileResponse, Http404, HttpRequest

SAMPLE_DIR = Path(settings.BASE_DIR) / "frontend-sample"
_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css", ".ts": "text/plain"}


def sample_file(request: HttpRequest, name: str = "index.html") -> FileResponse:
    path = (SAMPLE_DIR / name).resolve()
    if path.parent != SAMPLE_DIR.resolve() or path.suffix not in _TYPES or not path.is_file():
        raise Http404(name)
    response = FileResponse(path.open("rb"), content_type=_TYPES[path.suffix] + "; charset=utf-8")
    response["Cache-Control"] = "no-cache"
    return response
