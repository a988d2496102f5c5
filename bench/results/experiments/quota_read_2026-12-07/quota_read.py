"""The daily quota's two reads (core.selectors.usage_now and quota_left_today, each under the
user's row lock, as a create and a claim take them) against MySQL, for one user whose day
holds N finished generations. Run in a checkout, from its root, with this file's path:

    PYTHONPATH=. .venv/bin/python .../quota_read.py 100 2000 20000

It uses (and replaces) the database `llm_quota_read` on the local server and Redis db 13.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from types import SimpleNamespace

from tests.tier_env import BASE_ENV

os.environ.update(BASE_ENV)
os.environ["DATABASE_URL"] = "mysql://root@127.0.0.1:3306/llm_quota_read"
os.environ["REDIS_URL"] = "redis://127.0.0.1:6379/13"
os.environ["DJANGO_SETTINGS_MODULE"] = "project.settings"
os.environ["VAR_DIR"] = "/tmp/llm_quota_read"

import MySQLdb

server = MySQLdb.connect(host="127.0.0.1", user="root", passwd="", port=3306)
server.cursor().execute("DROP DATABASE IF EXISTS llm_quota_read")
server.cursor().execute("CREATE DATABASE llm_quota_read CHARACTER SET utf8mb4")
server.close()

import django  # noqa: E402

django.setup()

from django.apps import apps  # noqa: E402
from django.contrib.auth import get_user_model  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connection, transaction  # noqa: E402

from core import models  # noqa: E402
from core.selectors import quota_left_today, usage_now  # noqa: E402

call_command("migrate", "-v0")
user = get_user_model().objects.create(username="heavy")
settled = getattr(models, "SettledUsage", None)


def timed(read, runs: int = 200) -> float:  # type: ignore[no-untyped-def]
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        with transaction.atomic():
            read()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples) * 1000


have = 0
print(f"code: {'settled usage' if settled else 'sum of the day'}")
print("| finished generations today | usage_now p50 ms | quota_left_today p50 ms |")
print("|---|---|---|")
for wanted in (int(arg) for arg in sys.argv[1:]):
    models.Generation.objects.bulk_create(
        (
            models.Generation(
                user=user,
                model="m",
                prompt="p",
                max_tokens=10,
                status="completed",
                completion_tokens=10,
            )
            for _ in range(wanted - have)
        ),
        batch_size=2000,
    )
    have = wanted
    if settled is not None:
        # What the final writes would have added: the migration's fill does the same sum.
        settled.objects.all().delete()
        fill = __import__("core.migrations.0005_settled_usage", fromlist=["settle_finished"])
        fill.settle_finished(apps, SimpleNamespace(connection=connection))
    assert usage_now(user.pk).tokens_today == 10 * have
    usage = timed(lambda: usage_now(user.pk, lock=True))
    left = timed(lambda: quota_left_today(user.pk, excluding="gen_none", lock=True))
    print(f"| {have} | {usage:.3f} | {left:.3f} |")
