"""docker-compose.yml and the README stay in step with the process commands of PROTOCOL §7.

No Docker engine runs here, so the file is checked as data: it parses, and each role runs
exactly the documented command with the settings the distributed mode needs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent


def _compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


def test_compose_file_defines_the_distributed_mode() -> None:
    services = _compose()["services"]
    assert {"mysql", "redis", "migrate", "web", "worker"} <= set(services)


def test_compose_roles_run_the_documented_commands() -> None:
    services = _compose()["services"]
    assert services["migrate"]["command"] == ["python", "manage.py", "migrate"]
    assert services["web"]["command"][:1] == ["daphne"]
    assert services["web"]["command"][-1] == "project.asgi:application"
    assert "-b" in services["web"]["command"] and "-p" in services["web"]["command"]
    assert services["worker"]["command"] == ["python", "manage.py", "run_huey"]


def test_worker_stops_gracefully_on_sigint() -> None:
    # Huey's graceful signal is SIGINT; SIGTERM would interrupt running generations.
    assert _compose()["services"]["worker"]["stop_signal"] == "SIGINT"


def test_web_and_worker_share_the_distributed_settings() -> None:
    services = _compose()["services"]
    for role in ("web", "worker", "migrate"):
        env = services[role]["environment"]
        assert env["DATABASE_URL"].startswith("mysql://")
        assert env["REDIS_URL"].startswith("redis://")
    assert services["web"]["depends_on"]["migrate"]["condition"] == (
        "service_completed_successfully"
    )


def test_readme_shows_the_process_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    for command in (
        "python manage.py migrate",
        "daphne -b",
        "project.asgi:application",
        "python manage.py run_huey",
        "./dev run",
        "./dev test",
    ):
        assert command in readme, command
