from __future__ import annotations

from typing import Any

from django.urls import path

from realtime.consumers import StreamConsumer

websocket_urlpatterns: list[Any] = [path("ws/v1", StreamConsumer.as_asgi())]
