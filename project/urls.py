from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest, HttpResponse
from django.urls import include, path
from django.views.decorators.csrf import csrf_exempt

from api.http import json_method_not_allowed
from api.login_throttle import throttled_admin_login
from api.views import api
from core import metrics
from core.errors import ApiError, error_response
from project import health, sample
from realtime import asyncapi
from realtime.sse import generation_events

_api_patterns, _app, _namespace = api.urls

urlpatterns = [
    # A plain async view (Server-Sent Events), ahead of the API's routes: the API only
    # describes it in its OpenAPI document.
    # Token-authenticated like the rest of the API, so CSRF does not apply; without the
    # exemption a POST here got Django's HTML 403 page instead of the JSON 405.
    path("api/v1/generations/<str:generation_id>/events", csrf_exempt(generation_events)),
    # The AsyncAPI document of the WebSocket and SSE protocol (realtime.asyncapi).
    path("api/v1/asyncapi.json", asyncapi.asyncapi_view),
    # REST (api.views, django-ninja), its OpenAPI document at api/v1/schema and docs at
    # api/v1/docs.
    path("api/v1/", include((json_method_not_allowed(_api_patterns), _app), namespace=_namespace)),
    path("healthz", health.healthz),
    path("readyz", health.readyz),
    path("metrics", metrics.metrics_view),
    # Before admin.site.urls, which has its own login/: failed sign-ins are throttled.
    path("admin/login/", throttled_admin_login(admin.site.login)),
    path("admin/", admin.site.urls),
    path("", sample.sample_file),
    # <path:...>: the vendored libraries sit in frontend-sample/vendor/ (sample.py checks it).
    path("sample/<path:name>", sample.sample_file),
]


def handler404(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    return error_response(ApiError("not_found", "No such resource."))


def handler500(request: HttpRequest) -> HttpResponse:
    return error_response(ApiError("internal_error", "Something went wrong."))
