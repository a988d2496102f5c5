"""LLM providers: one small interface, a registry by name, one error type, one retry policy."""

from jobs.providers.base import (
    Chunk,
    Provider,
    ProviderError,
    ProviderRequest,
    astream_with_retry,
    get_provider,
)

__all__ = [
    "Chunk",
    "Provider",
    "ProviderError",
    "ProviderRequest",
    "astream_with_retry",
    "get_provider",
]
