"""The ASGI application served by Daphne: HTTP (REST, SSE, admin, sample page) and WebSocket."""

from __future__ import annotations

import os
from typing import Any

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")

from django.core.asgi import get_asgi_application

django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.conf import settings  # noqa: E402

from realtime import daphne_ext  # noqa: E402
from realtime.routing import websocket_urlpatterns  # noqa: E402

daphne_ext.install()


def with_static_files(app: Any) -> Any:
    """`app`, with STATIC_URL (the admin's CSS and JS) answered from the apps' static folders.

    In every mode, DEBUG or not: without it the admin was unstyled (/static/admin/... 404).
    Unknown files get the JSON 404 of every other URL. `collectstatic` (the Dockerfile runs
    it) copies the same files to STATIC_ROOT for a proxy that prefers to serve them itself.
    """
    from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler

    return ASGIStaticFilesHandler(app)


class Service:
    """Routes by protocol; in the embedded default, starts the in-process worker on first use.

    Daphne has no lifespan events, so start-up happens on the first connection, on the
    server's own event loop: the in-memory channel layer must be used from that loop.
    """

    def __init__(self) -> None:
        self._router = ProtocolTypeRouter(
            {
                "http": with_static_files(django_asgi_app),
                "websocket": URLRouter(websocket_urlpatterns),
            }
        )
        self._booted = False

    async def _boot(self) -> None:
        self._booted = True
        if settings.DISTRIBUTED:
            from realtime.live import keep_live_receivers_listening

            keep_live_receivers_listening()
        if not settings.DISTRIBUTED:
            from jobs.embedded import start_embedded_consumer
            from jobs.writer import live_sender

            await live_sender().bind_running_loop()
            start_embedded_consumer()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if not self._booted:
            await self._boot()
        await self._router(scope, receive, send)


application = Service()
