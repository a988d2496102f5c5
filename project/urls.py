from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest, HttpResponse
from django.urls import path
from django.views.decorators.csrf import csrf_exempt

from api import openapi, views
from api.errors import ApiError, error_response
from api.login_throttle import throttled_admin_login
from project import health, metrics, sample
from realtime import asyncapi
from realtime.sse import generation_events

urlpatterns = [
    path("api/v1/auth/token", views.auth_token),
    path("api/v1/generations", views.generations),
    path("api/v1/generations/<str:generation_id>", views.generation_detail),
    path("api/v1/generations/<str:generation_id>/cancel", views.generation_cancel),
    path("api/v1/generations/<str:generation_id>/ticket", views.generation_ticket),
    # Token-authenticated like the rest of the API, so CSRF does not apply; without the
    # exemption a POST here got Django's HTML 403 page instead of the JSON 405.
    path("api/v1/generations/<str:generation_id>/events", csrf_exempt(generation_events)),
    path("api/v1/me", views.me),
    path("api/v1/conversations", views.conversation_collection),
    path("api/v1/conversations/<str:conversation_id>", views.conversation_detail),
    path("api/v1/schema", openapi.schema_view),
    path("api/v1/asyncapi.json", asyncapi.asyncapi_view),
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
