"""The generations admin on a large table: queries and time of each list page.

    .venv/bin/python -m bench.admin_scale [--rows 200000] [--keep]

Creates a MySQL database of its own (``llm_admin_scale``), migrates it, bulk-inserts
``--rows`` generations for 1,000 users over the last 60 days, then loads the admin's list
page, unfiltered, with each filter and with each kind of search, as a logged-in superuser
through Django's test client. Prints, per page: the number of queries, the time, the slowest
query and MySQL's EXPLAIN of it. Not part of the test suite (it takes a minute or two).
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from datetime import timedelta
from typing import Any

from bench.procstat import mysql

DATABASE = "llm_admin_scale"
USERS = 1_000
BATCH = 5_000


def _setup_django() -> None:
    os.environ["DATABASE_URL"] = f"mysql://root:@127.0.0.1:3306/{DATABASE}"
    os.environ.pop("REDIS_URL", None)
    os.environ.setdefault("SECRET_KEY", "bench-admin-scale-0123456789abcdef0123456789")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    mysql(f"CREATE DATABASE IF NOT EXISTS {DATABASE} CHARACTER SET utf8mb4")
    import django

    django.setup()


def _fill(rows: int) -> None:
    from django.contrib.auth import get_user_model
    from django.utils import timezone

    from core.models import Generation

    user_model = get_user_model()
    # Resumable: a run that was cut off goes on from the rows already there.
    have = Generation.objects.count()
    if have >= rows:
        return
    rows -= have
    existing = set(user_model.objects.values_list("username", flat=True))
    user_model.objects.bulk_create(
        [user_model(username=f"user{i}") for i in range(USERS) if f"user{i}" not in existing]
    )
    user_ids = list(user_model.objects.values_list("pk", flat=True))
    statuses = ["completed"] * 90 + ["failed"] * 5 + ["cancelled"] * 4 + ["queued"]
    models = ["gpt-4o-mini", "gpt-4o", "gpt-4.1-mini", "gpt-4.1"]
    now = timezone.now()
    rng = random.Random(7)
    started = time.monotonic()
    for offset in range(0, rows, BATCH):
        batch = []
        for _ in range(min(BATCH, rows - offset)):
            batch.append(
                Generation(
                    user_id=rng.choice(user_ids),
                    status=rng.choice(statuses),
                    model=rng.choice(models),
                    prompt=f"question {rng.randrange(10**9)} about "
                    + rng.choice(["otters", "the sky", "databases", "streams", "tea"]),
                    max_tokens=1024,
                    output="word " * 50,
                    completion_tokens=50,
                )
            )
        Generation.objects.bulk_create(batch)
        print(f"  {offset + len(batch)} rows, {time.monotonic() - started:.0f} s", flush=True)
    # Spread over 60 days: auto_now_add gave every row "now".
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE api_generation SET created_at = %s - INTERVAL (CRC32(id) %% 86400) MINUTE",
            [now - timedelta(seconds=1)],
        )


def _measure(pages: list[tuple[str, str]]) -> list[dict[str, Any]]:
    from django.contrib.auth import get_user_model
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext, setup_test_environment

    setup_test_environment()  # the test client then returns each page's context
    admin_user, _ = get_user_model().objects.get_or_create(
        username="bench-admin", defaults={"is_staff": True, "is_superuser": True}
    )
    client = Client()
    client.force_login(admin_user)
    results = []
    for name, query in pages:
        client.get("/admin/api/generation/" + query)  # warm the caches once
        with CaptureQueriesContext(connection) as queries:
            started = time.monotonic()
            response = client.get("/admin/api/generation/" + query)
            elapsed_ms = (time.monotonic() - started) * 1000
        assert response.status_code == 200, (name, response.status_code)
        slowest = max(queries.captured_queries, key=lambda q: float(q["time"]))
        with connection.cursor() as cursor:
            cursor.execute("EXPLAIN " + slowest["sql"])
            plan = cursor.fetchall()
        results.append(
            {
                "page": name,
                "queries": len(queries.captured_queries),
                "ms": elapsed_ms,
                "slowest_ms": float(slowest["time"]) * 1000,
                "slowest": slowest["sql"][:300],
                "plan": [(row[2], row[3], row[5], row[8], row[9]) for row in plan],
                "result_count": response.context["cl"].result_count,
            }
        )
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    args = parser.parse_args(argv)
    _setup_django()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    _fill(args.rows)
    from core.models import Generation

    some = Generation.objects.order_by("-created_at").values_list("id", flat=True).first()
    pages = [
        ("unfiltered", ""),
        ("status=failed", "?status=failed"),
        ("model=gpt-4o", "?model=gpt-4o"),
        ("user=user42", "?user=user42"),
        ("past 7 days", "?created_at__gte=" + _days_ago(7)),
        ("search by id", f"?q={some}"),
        ("search by username", "?q=user42"),
        ("search in prompts (common word)", "?q=otters"),
        ("search in prompts (no match)", "?q=zebras"),
        ("page 100", "?p=100"),
    ]
    total = Generation.objects.count()
    print(f"\n{total} generations\n")
    print("| page | queries | time (ms) | slowest query (ms) | counted | plan of the slowest |")
    print("|---|---|---|---|---|---|")
    for result in _measure(pages):
        plan = "; ".join(
            f"{table}: {kind}, key {key}, ~{rows} rows, {extra}"
            for table, kind, key, rows, extra in result["plan"]
        )
        print(
            f"| {result['page']} | {result['queries']} | {result['ms']:.0f} | "
            f"{result['slowest_ms']:.0f} | {result['result_count']} | {plan} |"
        )
    if not args.keep:
        from django.db import connection

        connection.close()
        mysql(f"DROP DATABASE IF EXISTS {DATABASE}")


def _days_ago(days: int) -> str:
    from urllib.parse import quote

    from django.utils import timezone

    start = timezone.now().replace(hour=0, minute=0, second=0, microsecond=0)
    return quote(str(start - timedelta(days=days)))


if __name__ == "__main__":
    main(sys.argv[1:])
