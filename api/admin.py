from __future__ import annotations

from django.contrib import admin

from api.models import Generation, UserLimits


@admin.register(Generation)
class GenerationAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = (
        "id",
        "user",
        "status",
        "model",
        "attempt",
        "seq",
        "created_at",
        "finished_at",
    )
    list_filter = ("status", "model")
    search_fields = ("=id", "user__username")
    readonly_fields = [f.name for f in Generation._meta.fields]
    list_select_related = ("user",)
    show_full_result_count = False  # no full-table COUNT(*) on a large table

    def has_add_permission(self, request: object) -> bool:
        return False


@admin.register(UserLimits)
class UserLimitsAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = (
        "user",
        "rate_limit_per_minute",
        "tokens_per_day",
        "max_active_generations",
        "max_connections",
    )
    search_fields = ("user__username",)
    raw_id_fields = ("user",)
