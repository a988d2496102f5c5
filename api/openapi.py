"""The OpenAPI 3 description of the REST API, served at /api/v1/schema."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.http import HttpRequest, JsonResponse


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


def _json(
    schema_ref: str, description: str, headers: dict[str, Any] | None = None
) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema_ref}"}}},
    }
    if headers:
        response["headers"] = headers
    return response


_RETRY_AFTER = {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds"}}
_UNAUTHORIZED = {
    **_error("missing, invalid or expired token"),
    "headers": {"WWW-Authenticate": {"schema": {"type": "string"}}},
}
_COMMON = {
    "401": _UNAUTHORIZED,
    "405": _error("method not allowed"),
    "500": _error("internal error (never a stack trace)"),
}
# One Server-Sent Event (PROTOCOL §4): `id` is its seq, `data` the event object as JSON text.
_SSE_EVENT = {
    "type": "object",
    "required": ["id", "event", "data"],
    "properties": {
        "id": {"type": "string", "pattern": "^[0-9]+$"},
        "event": {"type": "string", "enum": ["snapshot", "delta", "reset", "done"]},
        "data": {"type": "string", "contentMediaType": "application/json"},
    },
}
_ID_PARAM = {
    "name": "generation_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string"},
}


def schema() -> dict[str, Any]:
    nullable_string = {"type": ["string", "null"]}
    usage = {
        "type": ["object", "null"],
        "properties": {
            "prompt_tokens": {"type": "integer"},
            "completion_tokens": {"type": "integer"},
            "total_tokens": {"type": "integer"},
        },
    }
    generation = {
        "type": "object",
        "required": [
            "id",
            "status",
            "model",
            "prompt",
            "system",
            "max_tokens",
            "temperature",
            "output",
            "reasoning",
            "provider",
            "seq",
            "attempt",
            "finish_reason",
            "usage",
            "error",
            "created_at",
            "started_at",
            "finished_at",
        ],
        "properties": {
            "id": {"type": "string", "pattern": "^gen_[0-9A-Za-z]{22}$"},
            "status": {"enum": ["queued", "running", "completed", "failed", "cancelled"]},
            "model": {"type": "string"},
            # PROTOCOL §7: `demo` marks the offline demo's made-up answers.
            "provider": {"enum": ["openai", "demo"]},
            "prompt": {"type": "string"},
            "system": nullable_string,
            "max_tokens": {"type": "integer"},
            "temperature": {"type": ["number", "null"]},
            "output": {"type": "string"},
            "reasoning": {"type": "string"},
            "seq": {"type": "integer", "minimum": 0},
            "attempt": {"type": "integer", "minimum": 1},
            "finish_reason": {
                "enum": [
                    "stop",
                    "length",
                    "content_filter",
                    "tool_calls",
                    "cancelled",
                    "error",
                    None,
                ]
            },
            "usage": usage,
            "error": {
                "type": ["object", "null"],
                "properties": {
                    "code": {"type": "string"},
                    "message": {"type": "string"},
                    "retry_after": {"type": "integer", "minimum": 1},
                },
            },
            "created_at": {"type": "string", "format": "date-time"},
            "started_at": {"type": ["string", "null"], "format": "date-time"},
            "finished_at": {"type": ["string", "null"], "format": "date-time"},
        },
    }
    create_body = {
        "type": "object",
        "additionalProperties": False,
        "required": ["prompt"],
        "properties": {
            "prompt": {"type": "string", "minLength": 1, "maxLength": settings.MAX_PROMPT_CHARS},
            "model": {"enum": list(settings.ALLOWED_MODELS)},
            "system": {"type": ["string", "null"], "maxLength": settings.MAX_SYSTEM_CHARS},
            "max_tokens": {"type": "integer", "minimum": 1, "maximum": settings.MAX_OUTPUT_TOKENS},
            "temperature": {"type": ["number", "null"], "minimum": 0, "maximum": 2},
        },
    }
    bearer: list[dict[str, list[str]]] = [{"bearer": []}]
    return {
        "openapi": "3.1.0",
        "info": {"title": "LLM stream backend", "version": "1"},
        "servers": [{"url": "/"}],
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
            },
            "schemas": {
                "Generation": generation,
                "GenerationCreate": create_body,
                "GenerationList": {
                    "type": "object",
                    "required": ["results", "next_cursor"],
                    "properties": {
                        "results": {
                            "type": "array",
                            "items": {"$ref": "#/components/schemas/Generation"},
                        },
                        "next_cursor": nullable_string,
                    },
                },
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {
                        "error": {
                            "type": "object",
                            "required": ["code", "message", "details"],
                            "properties": {
                                "code": {"type": "string"},
                                "message": {"type": "string"},
                                "details": {"type": "object"},
                            },
                        }
                    },
                },
                "Token": {
                    "type": "object",
                    "required": ["access_token", "token_type", "expires_in"],
                    "properties": {
                        "access_token": {"type": "string"},
                        "token_type": {"const": "Bearer"},
                        "expires_in": {"type": "integer"},
                    },
                },
                "Ticket": {
                    "type": "object",
                    "required": ["ticket", "expires_in"],
                    "properties": {"ticket": {"type": "string"}, "expires_in": {"type": "integer"}},
                },
                "Me": {
                    "type": "object",
                    "required": ["username", "usage"],
                    "properties": {
                        "username": {"type": "string"},
                        "usage": {
                            "type": "object",
                            "required": ["tokens_today", "tokens_per_day", "active", "max_active"],
                            "properties": {
                                "tokens_today": {"type": "integer"},
                                "tokens_per_day": {"type": "integer"},
                                "active": {"type": "integer"},
                                "max_active": {"type": "integer"},
                            },
                        },
                    },
                },
            },
        },
        "paths": {
            "/api/v1/auth/token": {
                "post": {
                    "summary": "Exchange a username and password for an access token",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "additionalProperties": False,
                                    "required": ["username", "password"],
                                    "properties": {
                                        "username": {"type": "string", "minLength": 1},
                                        "password": {"type": "string", "minLength": 1},
                                    },
                                }
                            }
                        },
                    },
                    "responses": {
                        "200": _json("Token", "a token"),
                        "400": _error("invalid body"),
                        **_COMMON,
                        "413": _error("body over 64 KiB"),
                        "415": _error("not application/json"),
                    },
                }
            },
            "/api/v1/generations": {
                "post": {
                    "summary": "Create a generation",
                    "security": bearer,
                    "parameters": [
                        {
                            "name": "Idempotency-Key",
                            "in": "header",
                            "schema": {"type": "string", "minLength": 1, "maxLength": 255},
                        }
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/GenerationCreate"}
                            }
                        },
                    },
                    "responses": {
                        "202": _json(
                            "Generation", "created", {"Location": {"schema": {"type": "string"}}}
                        ),
                        "200": _json("Generation", "an idempotent repeat"),
                        "400": _error("invalid_json, invalid_request or prompt_too_long"),
                        "409": _error("idempotency_conflict"),
                        "413": _error("body over 64 KiB"),
                        "415": _error("not application/json"),
                        "429": {
                            **_error("rate_limited, quota_exceeded, too_many_active"),
                            "headers": _RETRY_AFTER,
                        },
                        **_COMMON,
                    },
                },
                "get": {
                    "summary": "The user's generations, newest first",
                    "security": bearer,
                    "parameters": [
                        {
                            "name": "limit",
                            "in": "query",
                            "schema": {"type": "integer", "minimum": 1, "maximum": 100},
                        },
                        {"name": "cursor", "in": "query", "schema": {"type": "string"}},
                    ],
                    "responses": {
                        "200": _json("GenerationList", "a page"),
                        "400": _error("bad limit or cursor"),
                        **_COMMON,
                    },
                },
            },
            "/api/v1/generations/{generation_id}": {
                "get": {
                    "summary": "A generation",
                    "security": bearer,
                    "parameters": [_ID_PARAM],
                    "responses": {
                        "200": _json("Generation", "the generation"),
                        "404": _error("not found"),
                        **_COMMON,
                    },
                }
            },
            "/api/v1/generations/{generation_id}/cancel": {
                "post": {
                    "summary": "Stop a generation (idempotent)",
                    "security": bearer,
                    "parameters": [_ID_PARAM],
                    "responses": {
                        "200": _json("Generation", "the generation"),
                        "404": _error("not found"),
                        **_COMMON,
                    },
                }
            },
            "/api/v1/generations/{generation_id}/ticket": {
                "post": {
                    "summary": "A short-lived credential for this generation's events",
                    "security": bearer,
                    "parameters": [_ID_PARAM],
                    "responses": {
                        "200": _json("Ticket", "a ticket"),
                        "404": _error("not found"),
                        **_COMMON,
                    },
                }
            },
            "/api/v1/generations/{generation_id}/events": {
                "get": {
                    "summary": "The generation's events as Server-Sent Events",
                    "security": [*bearer, {}],
                    "parameters": [
                        _ID_PARAM,
                        {"name": "ticket", "in": "query", "schema": {"type": "string"}},
                        {
                            "name": "after",
                            "in": "query",
                            "schema": {"type": "integer", "minimum": 0},
                        },
                        {
                            "name": "Last-Event-ID",
                            "in": "header",
                            "schema": {"type": "integer", "minimum": 0},
                        },
                    ],
                    "responses": {
                        "200": {
                            "description": "the event stream",
                            # Before OpenAPI 3.2 (no itemSchema), `schema` describes each
                            # event of the stream, not the stream as one string.
                            "content": {"text/event-stream": {"schema": _SSE_EVENT}},
                        },
                        "204": {"description": "the position is at or after `done`"},
                        "400": _error("bad position"),
                        "404": _error("not found"),
                        **_COMMON,
                    },
                }
            },
            "/api/v1/me": {
                "get": {
                    "summary": "The user and their usage",
                    "security": bearer,
                    "responses": {"200": _json("Me", "the user"), **_COMMON},
                }
            },
        },
    }


def schema_view(request: HttpRequest) -> JsonResponse:
    return JsonResponse(schema())
