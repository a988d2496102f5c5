"""The ASGI application served by Daphne: HTTP (REST, SSE, admin, sample page) and WebSocket."""

from __future__ import annotations

import os
from typing import Any

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")

import django

django.setup(set_prefix=False)

from project.handler import Handler  # noqa: E402

django_asgi_app = Handler()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.conf import settings  # noqa: E402
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler  # noqa: E402

from core.heap import freeze_startup_heap  # noqa: E402
from realtime import daphne_ext  # noqa: E402
from realtime.routing import websocket_urlpatterns  # noqa: E402

daphne_ext.install()


class Service:
    """Routes by protocol; in the embedded default, starts the in-process worker on first use.

    Daphne has no lifespan events, so start-up happens on the first connection, on the
    server's own event loop: the in-memory channel layer must be used from that loop.
    """

    def __init__(self) -> None:
        self._router = ProtocolTypeRouter(
            {
                # STATIC_URL (the admin's CSS and JS) in every mode, DEBUG or not: without it
                # the admin was unstyled. Unknown files get the JSON 404 of every other URL;
                # `collectstatic` (the Dockerfile) copies them to STATIC_ROOT for a proxy.
                "http": ASGIStaticFilesHandler(django_asgi_app),
                "websocket": URLRouter(websocket_urlpatterns),
            }
        )
        self._booted = False

    async def _boot(self) -> None:
        self._booted = True
        if settings.DISTRIBUTED:
            from realtime.live import keep_live_receivers_listening

            keep_live_receivers_listening()
        else:
            from jobs.embedded import start_embedded_consumer
            from jobs.writer import live_sender

            await live_sender().bind_running_loop()
            start_embedded_consumer()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if not self._booted:
            await self._boot()
        await self._router(scope, receive, send)


application = Service()

# What start-up loaded stays for the life of the process: out of the collector's way (core.heap).
freeze_startup_heap("web")
