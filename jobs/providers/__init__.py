"""LLM providers: one small interface, a registry by name, one error type, one retry policy."""
