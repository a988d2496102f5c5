"""Serves frontend-sample/ (the sample chat page, its client and vendored libraries)."""

from __future__ import annotations

from pathlib import Path

from django.conf import settings
from django.http import FileResponse, Http404, HttpRequest

SAMPLE_DIR = (Path(settings.BASE_DIR) / "frontend-sample").resolve()
# The only folders served: the page's own files and the vendored libraries (never
# node_modules/ or anything a path with ".." resolves to).
_SERVED_DIRS = frozenset({SAMPLE_DIR, SAMPLE_DIR / "vendor"})
_TYPES = {
    ".html": "text/html",
    ".js": "text/javascript",
    ".mjs": "text/javascript",
    ".css": "text/css",
    ".ts": "text/plain",  # client.d.ts, for readers
    ".svg": "image/svg+xml",
}
# The page renders model output, which is untrusted. DOMPurify removes scripts, handlers and
# javascript: links; this policy is the second wall should it ever miss one: no inline script
# or handler runs, nothing loads from elsewhere, no plugin, no <base> hijack, no framing.
# connect-src: this origin only ('self', and its WebSocket URLs spelled out for browsers whose
# 'self' does not cover ws:/wss:); "ws: wss:" let injected script reach any host.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self' {websocket_origins}; object-src 'none'; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'"
)


def content_security_policy(request: HttpRequest) -> str:
    host = request.get_host()
    return CONTENT_SECURITY_POLICY.format(websocket_origins=f"ws://{host} wss://{host}")


def sample_file(request: HttpRequest, name: str = "index.html") -> FileResponse:
    path = (SAMPLE_DIR / name).resolve()
    if path.parent not in _SERVED_DIRS or path.suffix not in _TYPES or not path.is_file():
        raise Http404(name)
    response = FileResponse(path.open("rb"), content_type=_TYPES[path.suffix] + "; charset=utf-8")
    response["Cache-Control"] = "no-cache"
    response["X-Content-Type-Options"] = "nosniff"
    if path.suffix == ".html":
        response["Content-Security-Policy"] = content_security_policy(request)
        response["Referrer-Policy"] = "no-referrer"
    return response
