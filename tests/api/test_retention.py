"""Retention (docs/deployment.md): `manage.py purge_generations --older-than-days N` deletes
finished generations older than N days with their replay buffers, and nothing else."""

from __future__ import annotations

import re

import httpx
import pytest

from tests.conftest import create, wait_terminal
from tests.harness import Service


def backdate(service: Service, generation_id: str, days: int) -> None:
    service.django(
        "from datetime import timedelta\n"
        "from django.utils import timezone\n"
        "from core.models import Generation\n"
        f"Generation.objects.filter(pk={generation_id!r})"
        f".update(created_at=timezone.now() - timedelta(days={days}))"
    )


def buffer_exists(service: Service, generation_id: str) -> bool:
    import redis

    client = redis.Redis.from_url(service.env["REDIS_URL"])
    return bool(client.exists(f"llm:log:{generation_id}"))


def test_purge_deletes_old_finished_generations_with_their_buffers_only(
    service: Service,
) -> None:
    with service.client("rita") as rita:
        old_done = create(rita, "old [fake tokens=3]")["id"]
        recent_done = create(rita, "recent [fake tokens=3]")["id"]
        old_running = create(rita, "still going [fake tokens=50 hang=1]")["id"]
        for generation_id in (old_done, recent_done):
            wait_terminal(rita, generation_id)
        backdate(service, old_done, 40)
        backdate(service, old_running, 40)
        if service.tier == "distributed":
            assert buffer_exists(service, old_done)

        dry = service.manage("purge_generations", "--older-than-days", "30", "--dry-run")
        assert "would delete 1 generations" in dry
        assert rita.get(f"/api/v1/generations/{old_done}").status_code == 200

        output = service.manage("purge_generations", "--older-than-days", "30")

        assert "deleted 1 generations" in output
        assert rita.get(f"/api/v1/generations/{old_done}").status_code == 404
        assert rita.get(f"/api/v1/generations/{old_done}/events").status_code == 404
        assert rita.get(f"/api/v1/generations/{recent_done}").status_code == 200
        # Queued or running work is kept whatever its age.
        assert rita.get(f"/api/v1/generations/{old_running}").json()["status"] in (
            "queued",
            "running",
        )
        listed = [g["id"] for g in rita.get("/api/v1/generations").json()["results"]]
        assert old_done not in listed and recent_done in listed
        if service.tier == "distributed":
            assert not buffer_exists(service, old_done)
        rita.post(f"/api/v1/generations/{old_running}/cancel")


def test_purge_refuses_to_delete_todays_generations(service: Service) -> None:
    with pytest.raises(RuntimeError, match="at least 1"):
        service.manage("purge_generations", "--older-than-days", "0")
    assert httpx.get(service.url("/healthz"), timeout=10).status_code == 200


def test_purge_deletes_the_settled_usage_of_days_before_the_cutoff_only(service: Service) -> None:
    with service.client("sam") as sam:
        done = create(sam, "counted [fake tokens=4]")["id"]
        wait_terminal(sam, done)
        assert sam.get("/api/v1/me").json()["usage"]["tokens_today"] == 4
        service.django(
            "from datetime import timedelta\n"
            "from django.contrib.auth import get_user_model\n"
            "from django.utils import timezone\n"
            "from core.models import SettledUsage\n"
            "sam = get_user_model().objects.get(username='sam')\n"
            "for days in (40, 29):\n"
            "    day = (timezone.now() - timedelta(days=days)).date()\n"
            "    SettledUsage.objects.create(user=sam, day=day, completion_tokens=days)\n"
        )

        output = service.manage("purge_generations", "--older-than-days", "30")

        assert re.search(r"and [1-9]\d* days of users' settled usage", output), output
        kept = service.django(
            "from core.models import SettledUsage\n"
            "print(sorted(SettledUsage.objects.filter(user__username='sam')"
            ".values_list('completion_tokens', flat=True)))"
        )
        # The day 40 days back went; the day 29 days back and today's (4 tokens) stay.
        assert kept.strip().splitlines()[-1] == "[4, 29]"
        assert sam.get("/api/v1/me").json()["usage"]["tokens_today"] == 4
