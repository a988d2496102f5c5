"""The operators' admin: generations (find, inspect, cancel, retry) and per-user limits.

Built for a table of millions of generations: every list filter and the ordering have an index
(core.models), the list page counts at most COUNT_CAP_ROWS rows and never the whole table, and
no column costs a query per row. docs/operations.md describes each list, filter and action.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin.utils import quote
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import UserAdmin
from django.core.paginator import Paginator
from django.db.models import Count, IntegerField, OuterRef, QuerySet, Subquery, Sum
from django.db.models.functions import Coalesce
from django.http import HttpRequest
from django.urls import reverse
from django.utils.functional import cached_property
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from api import services
from api.auth import exact_user
from api.conversations import conversation_remove, conversation_view
from core.errors import ApiError
from core.ids import looks_like_conversation_id, looks_like_generation_id
from core.models import (
    ACTIVE_STATUSES,
    Conversation,
    Generation,
    SettledUsage,
    Status,
    UserLimits,
)
from core.selectors import start_of_day_utc, usage_now
from jobs.cancel import cancel
from jobs.eventlog import event_log

logger = logging.getLogger(__name__)

# The list page counts the matching rows up to this many, not all of them: a COUNT(*) of a
# million-row table takes seconds on every page view. Past it the page says "10000" and the
# page links stop there; filters and search narrow the list instead.
COUNT_CAP_ROWS = 10_000
# An action on "all N selected across pages" touches at most this many rows per run.
ACTION_MAX_ROWS = 1_000
# The per-user overrides, in the order every page shows them.
LIMIT_FIELDS = (
    "rate_limit_per_minute",
    "tokens_per_day",
    "max_active_generations",
    "max_connections",
)


class CappedCountPaginator(Paginator):  # type: ignore[type-arg]
    """A paginator whose count reads at most COUNT_CAP_ROWS rows of the filtered query."""

    @cached_property
    def count(self) -> int:
        # SELECT COUNT(*) FROM (SELECT ... LIMIT n): the database stops at n rows.
        rows: QuerySet[Any] = self.object_list  # type: ignore[assignment]
        return int(rows.order_by()[:COUNT_CAP_ROWS].count())


class StatusFilter(admin.SimpleListFilter):
    """The statuses from the model's choices: no SELECT DISTINCT over the table."""

    title = "status"
    parameter_name = "status"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(value, str(label)) for value, label in Status.choices]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        value = self.value()
        return queryset if value is None else queryset.filter(status=value)


class ModelFilter(admin.SimpleListFilter):
    """The configured models (ALLOWED_MODELS), not a SELECT DISTINCT over the table; a model
    since removed from the list is still reachable with ?model=<name>."""

    title = "model"
    parameter_name = "model"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        names = list(settings.ALLOWED_MODELS)
        value = self.value()
        if value and value not in names:
            names.append(value)
        return [(name, name) for name in names]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        value = self.value()
        return queryset if value is None else queryset.filter(model=value)


class UserFilter(admin.SimpleListFilter):
    """One user's generations, by username (?user=alice). Listing every user as a link would
    not scale; the user column of each row links here, and so does the user-limits page."""

    title = "user (click a user in the list)"
    parameter_name = "user"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        value = self.value()
        return [(value, value)] if value else []

    def has_output(self) -> bool:
        return True

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        value = self.value()
        if value is None:
            return queryset
        # Resolved first (one indexed lookup), so the list query needs no join; exactly,
        # because MySQL's collation also matches ALICE and alíce.
        user = exact_user(value)
        return queryset.filter(user_id__in=[] if user is None else [user.pk])


def _changelist_url(model_name: str = "generation", **params: str) -> str:
    # Encoded: a username may hold &, #, + or spaces, which would cut or change the query.
    return f"{reverse(f'admin:api_{model_name}_changelist')}?{urlencode(params)}"


def _change_url(generation_id: str) -> str:
    # Quoted as the admin's own links are: it reads "_2F", "_5F" and the like in a URL's id as
    # "/", "_", ..., which about one random generation id in 200 holds right after "gen_".
    return reverse("admin:api_generation_change", args=[quote(generation_id)])


class OwnedRowsAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    """The admin of rows that belong to a user, newest first, created through the API only.
    Its search: an id (`looks_like_id`) finds that row, an exact username that user's rows (an
    indexed lookup, then the list runs along the (user, created_at) index with no join), and
    any other text is looked for in `text_field` (no index serves that: newest first until the
    page is full, counted up to COUNT_CAP_ROWS)."""

    looks_like_id: staticmethod[[str], bool]
    text_field = ""
    ordering = ("-created_at", "-id")
    list_per_page = 50
    # The users of a page come in one second query (prefetch), not in a join: with a join,
    # MySQL drives the query from the small users table and sorts every generation of every
    # user (2-3 s at 200,000 rows, bench/admin_scale.py); alone, the generations table is
    # read newest first along an index and stops at the page's last row.
    list_select_related = False
    show_full_result_count = False  # no COUNT(*) of the whole table
    paginator = CappedCountPaginator

    # The query parameter that lists one user's rows: `q` (this search) unless a subclass has
    # a filter for it.
    user_query = "q"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # created through the API, with its validation

    @admin.display(description="user", ordering="user__username")
    def user_link(self, row: Any) -> SafeString:
        username = row.user.get_username()
        options = self.model._meta
        return format_html(
            '<a href="{}" title="This user\'s {}">{}</a>',
            _changelist_url(options.model_name, **{self.user_query: username}),
            options.verbose_name_plural,
            username,
        )

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        return super().get_queryset(request).prefetch_related("user")

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Any], search_term: str
    ) -> tuple[QuerySet[Any], bool]:
        term = search_term.strip()
        if not term:
            return queryset, False
        if self.looks_like_id(term):
            return queryset.filter(pk=term), False
        user_id = get_user_model().objects.filter(username=term).values_list("pk", flat=True)
        found = user_id.first()
        if found is not None:
            return queryset.filter(user_id=found), False
        return queryset.filter(**{f"{self.text_field}__icontains": term}), False


@admin.register(Generation)
class GenerationAdmin(OwnedRowsAdmin):
    list_display = (
        "id",
        "user_link",
        "status",
        "model",
        "attempt",
        "seq",
        "completion_tokens",
        "created_at",
        "finished_at",
        "retry_of_id",
    )
    list_filter = (StatusFilter, ModelFilter, UserFilter, ("created_at", admin.DateFieldListFilter))
    search_fields = ("=id", "=user__username", "prompt")  # see get_search_results
    search_help_text = (
        "A generation id finds that generation; a username, that user's generations; any "
        "other text is looked for in the prompts."
    )
    actions = ("cancel_generations", "retry_failed_generations")
    fieldsets = (
        (
            None,
            {
                "fields": (
                    "id",
                    "user",
                    "status",
                    "model",
                    "provider",
                    "created_at",
                    "retry_of",
                    "retries",
                )
            },
        ),
        ("Request", {"fields": ("prompt", "system", "max_tokens", "temperature")}),
        (
            "Result",
            {
                "fields": (
                    "output",
                    "reasoning",
                    "finish_reason",
                    "usage",
                    "error",
                    "completion_tokens",
                    "token_cap",
                    "started_at",
                    "finished_at",
                )
            },
        ),
        (
            "Events and attempts",
            {
                "fields": (
                    "seq",
                    "attempt",
                    "event_log_length",
                    "heartbeat_at",
                    "cancel_requested",
                )
            },
        ),
        ("Idempotency", {"fields": ("idempotency_key", "request_hash")}),
    )
    readonly_fields = (
        *(field.name for field in Generation._meta.fields),
        "event_log_length",
        "retries",
    )

    looks_like_id = staticmethod(looks_like_generation_id)
    text_field = "prompt"
    user_query = "user"  # the user filter (UserFilter) rather than a search

    @admin.display(description="events in the log")
    def event_log_length(self, generation: Generation) -> str:
        """The replay buffer's length, where it still exists; it expires after a while, and
        Redis may be down: neither stops the page from showing."""
        try:
            stored, exists = event_log().read_after_sync(generation.pk, 0)
        except Exception as error:
            logger.warning("generation %s: event log unreadable in the admin", generation.pk)
            return f"unavailable ({type(error).__name__}); the row above is the record"
        if not exists:
            return "no longer buffered (expired, or never written); the row above is the record"
        last = stored[-1].seq if stored else 0
        return f"{len(stored)} events, up to seq {last}"

    @admin.display(description="retried as")
    def retries(self, generation: Generation) -> SafeString | str:
        rows = Generation.objects.filter(retry_of_id=generation.pk).values_list("id", flat=True)
        links = format_html_join(
            ", ", '<a href="{}">{}</a>', ((_change_url(pk), pk) for pk in rows[:20])
        )
        return links or "-"

    # -- actions ---------------------------------------------------------------------------

    @admin.action(description="Cancel the selected generations (queued or running)")
    def cancel_generations(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        """As the API cancels (jobs.cancel): a queued one is cancelled at once, a running one's
        worker stops within a chunk, and every subscriber gets `done` with status cancelled."""
        active = queryset.filter(status__in=list(ACTIVE_STATUSES))
        cancelled: list[str] = []
        stopping: list[str] = []
        failed: list[str] = []
        for generation in active[:ACTION_MAX_ROWS]:
            try:
                # wait_s=0: the page does not wait on the workers; the list shows the outcome.
                result = cancel(generation, wait_s=0)
            except Exception:
                logger.exception("generation %s: cancel from the admin failed", generation.pk)
                failed.append(generation.pk)
                continue
            (cancelled if result.is_terminal else stopping).append(generation.pk)
        skipped = queryset.count() - len(cancelled) - len(stopping) - len(failed)
        if cancelled:
            self.message_user(request, f"Cancelled {len(cancelled)}.", messages.SUCCESS)
        if stopping:
            self.message_user(
                request,
                f"Asked the worker to stop {len(stopping)} running generation(s); they end as "
                "cancelled within a moment.",
                messages.SUCCESS,
            )
        if failed:
            self.message_user(
                request,
                f"Could not cancel {', '.join(failed)} (see the log); try again.",
                messages.ERROR,
            )
        if skipped > 0:
            self.message_user(
                request,
                f"Left {skipped} alone: already ended, or past the {ACTION_MAX_ROWS} rows one "
                "run of an action touches.",
                messages.INFO,
            )

    @admin.action(description="Retry the selected failed generations (as new generations)")
    def retry_failed_generations(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        """Each failed generation gets a new generation with the same request for the same
        user (services.generation_retry); the failed one stays as it is."""
        retried: list[tuple[str, str]] = []
        refused: list[str] = []
        candidates = queryset.filter(status=Status.FAILED).values_list("id", flat=True)
        for generation_id in candidates[:ACTION_MAX_ROWS]:
            try:
                retry, created = services.generation_retry(generation_id=generation_id)
            except ApiError as error:
                refused.append(f"{generation_id}: {error.code} ({error.message})")
                continue
            if created:
                retried.append((generation_id, retry.pk))
            else:
                refused.append(f"{generation_id}: already retried as {retry.pk}")
        if retried:
            self.message_user(
                request,
                format_html(
                    "Retried as new generations: {}",
                    format_html_join(
                        ", ",
                        '{} → <a href="{}">{}</a>',
                        ((old, _change_url(new), new) for old, new in retried),
                    ),
                ),
                messages.SUCCESS,
            )
        if refused:
            self.message_user(request, "Not retried: " + "; ".join(refused), messages.WARNING)
        not_failed = queryset.exclude(status=Status.FAILED).count()
        if not_failed:
            self.message_user(
                request, f"Left {not_failed} alone: only failed ones are retried.", messages.INFO
            )


def _usage_annotations() -> dict[str, Any]:
    """Today's completion tokens and the active count of each row's user, as subqueries of the
    list's one query (no query per row)."""
    mine = Generation.objects.filter(user_id=OuterRef("user_id")).order_by().values("user_id")
    running = mine.filter(status__in=list(ACTIVE_STATUSES))
    start = start_of_day_utc()
    # As core.selectors.usage_now: the day's settled usage and its active generations' tokens.
    tokens = running.filter(created_at__gte=start).annotate(total=Sum("completion_tokens"))
    settled = SettledUsage.objects.filter(user_id=OuterRef("user_id"), day=start.date())
    active = running.annotate(total=Count("pk"))
    return {
        "tokens_today": Coalesce(Subquery(tokens.values("total"), output_field=IntegerField()), 0)
        + Coalesce(
            Subquery(settled.values("completion_tokens")[:1], output_field=IntegerField()), 0
        ),
        "active_now": Coalesce(Subquery(active.values("total"), output_field=IntegerField()), 0),
    }


def _effective(override: int | None, default: int) -> str:
    return f"{default} (default)" if override is None else f"{override} (override)"


@admin.register(UserLimits)
class UserLimitsAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    """Per-user overrides of PROTOCOL §6's limits (a blank field uses the setting), with the
    user's usage today. A change takes effect on the user's next request."""

    list_display = ("user", *LIMIT_FIELDS, "tokens_today", "active_now", "generations_link")
    search_fields = ("user__username",)
    autocomplete_fields = ("user",)
    list_select_related = ("user",)
    show_full_result_count = False
    paginator = CappedCountPaginator
    ordering = ("user__username",)
    fields = ("user", *LIMIT_FIELDS, "usage")
    readonly_fields = ("usage",)

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        rows: QuerySet[Any] = super().get_queryset(request).annotate(**_usage_annotations())
        return rows

    @admin.display(description="completion tokens today", ordering="tokens_today")
    def tokens_today(self, limits: Any) -> int:
        return int(limits.tokens_today)

    @admin.display(description="active now", ordering="active_now")
    def active_now(self, limits: Any) -> int:
        return int(limits.active_now)

    @admin.display(description="generations")
    def generations_link(self, limits: UserLimits) -> SafeString:
        return format_html(
            '<a href="{}">list</a>', _changelist_url(user=limits.user.get_username())
        )

    @admin.display(description="usage and limits in effect")
    def usage(self, limits: UserLimits) -> SafeString | str:
        if limits.user_id is None:
            return "-"
        return _usage_html(limits.user_id)


def _usage_html(user_id: int) -> SafeString:
    override = UserLimits.objects.filter(user_id=user_id).first() or UserLimits()
    usage = usage_now(user_id)
    effective = usage.limits
    return format_html(
        "completion tokens today: {} of {}<br>active generations: {} of {}<br>"
        "generations per minute: {}<br>WebSocket connections: {}",
        usage.tokens_today,
        _effective(override.tokens_per_day, effective.tokens_per_day),
        usage.active,
        _effective(override.max_active_generations, effective.max_active_generations),
        _effective(override.rate_limit_per_minute, effective.rate_limit_per_minute),
        _effective(override.max_connections, effective.max_connections),
    )


class UserLimitsInline(admin.StackedInline):  # type: ignore[type-arg]
    model = UserLimits
    can_delete = True
    extra = 0
    max_num = 1
    fields = LIMIT_FIELDS


User = get_user_model()


class UserWithLimitsAdmin(UserAdmin):  # type: ignore[type-arg]
    """Django's user admin, with the user's limit overrides and usage on the same page."""

    inlines = (*UserAdmin.inlines, UserLimitsInline)
    readonly_fields = (*UserAdmin.readonly_fields, "usage")
    # The change page's; the add page has UserAdmin's add_fieldsets.
    fieldsets = (
        *UserAdmin.fieldsets,  # type: ignore[misc]
        ("Usage and limits in effect", {"fields": ("usage",)}),
    )

    @admin.display(description="usage")
    def usage(self, user: Any) -> SafeString:
        return format_html(
            '{}<br><a href="{}">generations</a>',
            _usage_html(user.pk),
            _changelist_url(user=user.get_username()),
        )


if admin.site.is_registered(User):
    admin.site.unregister(User)
admin.site.register(User, UserWithLimitsAdmin)


# --- Conversations (docs/protocol.md "Conversations") ---------------------------------------


@admin.register(Conversation)
class ConversationAdmin(OwnedRowsAdmin):
    """A user's conversations, each with its turns drawn as the tree they are: every branch,
    and the current one marked. Searchable by username (exact) and title (contains)."""

    list_display = ("id", "title", "user_link", "turn_count", "created_at", "updated_at")
    search_fields = ("=id", "=user__username", "title")  # see get_search_results
    search_help_text = (
        "A conversation id finds that conversation; a username, that user's conversations; any "
        "other text is looked for in the titles."
    )
    fields = (
        "id",
        "user",
        "title",
        "system",
        "turn_count",
        "current_turn",
        "created_at",
        "updated_at",
        "turn_tree",
    )
    readonly_fields = (*(field.name for field in Conversation._meta.fields), "turn_tree")
    looks_like_id = staticmethod(looks_like_conversation_id)
    text_field = "title"

    @admin.display(description="turns and branches")
    def turn_tree(self, conversation: Conversation) -> SafeString:
        """Every turn, indented under its parent, siblings (the branches) in creation order;
        the current branch in bold."""
        view = conversation_view(conversation)
        current = set(view["current_path"])
        children: dict[str | None, list[dict[str, Any]]] = {}
        for turn in view["turns"]:
            children.setdefault(turn["parent_id"], []).append(turn)

        def walk(parent_id: str | None, depth: int) -> Iterator[tuple[str, ...]]:
            siblings = children.get(parent_id, [])
            for number, turn in enumerate(siblings, start=1):
                branch = f"branch {number} of {len(siblings)} · " if len(siblings) > 1 else ""
                yield (
                    str(depth * 2),
                    "bold" if turn["id"] in current else "normal",
                    _change_url(turn["id"]),
                    turn["id"],
                    branch,
                    turn["status"],
                    turn["prompt"][:80],
                    turn["output"][:80],
                )
                yield from walk(turn["id"], depth + 1)

        lines = list(walk(None, 0))
        if not lines:
            return format_html("{}", "no turns yet")
        return format_html(
            "<div>{}</div>",
            format_html_join(
                "",
                '<div style="margin-left:{}em;font-weight:{}" class="turn">'
                '<a href="{}">{}</a> {}{}: <q>{}</q> → <q>{}</q></div>',
                lines,
            ),
        )

    def delete_model(self, request: HttpRequest, obj: Conversation) -> None:
        conversation_remove(obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        for conversation in queryset[:ACTION_MAX_ROWS]:
            conversation_remove(conversation)
