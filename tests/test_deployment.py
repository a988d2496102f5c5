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
    assert {"mariadb", "redis", "migrate", "web", "worker"} <= set(services)


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


# --- The operator's path (issue 14): one image, MariaDB, a fixed port, an env file -----------


def _readme_settings() -> list[str]:
    """The variable names of README.md's configuration table."""
    import re

    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("| variable | default | meaning |") :]
    table = table[: table.index("\n\n")]
    names: list[str] = []
    for line in table.splitlines()[2:]:
        names += re.findall(r"`([A-Z][A-Z0-9_]+)`", line.split("|")[1])
    return names


def test_compose_builds_one_image_for_every_role() -> None:
    services = _compose()["services"]
    roles = ("migrate", "web", "worker")
    images = {services[role]["image"] for role in roles}

    assert len(images) == 1
    assert [role for role in roles if "build" in services[role]] == ["migrate"]
    assert all(services[role]["pull_policy"] == "never" for role in ("web", "worker"))


def test_compose_runs_on_mariadb_with_the_collation_the_tests_use() -> None:
    database = _compose()["services"]["mariadb"]

    assert database["image"].startswith("mariadb:")
    assert "--collation-server=utf8mb4_unicode_ci" in database["command"]
    assert _compose()["services"]["web"]["environment"]["DATABASE_URL"].startswith("mysql://llm:")


def test_compose_publishes_a_fixed_web_port() -> None:
    assert _compose()["services"]["web"]["ports"] == ["${WEB_PORT:-8000}:8000"]


def test_every_setting_of_the_configuration_table_can_be_set_in_the_env_file() -> None:
    import re

    services = _compose()["services"]
    example = (ROOT / "docker.env.example").read_text()
    listed = set(re.findall(r"^#?([A-Z][A-Z0-9_]+)=", example, flags=re.MULTILINE))
    in_compose = set(services["web"]["environment"])

    assert all(services[role]["env_file"] == ".env" for role in ("migrate", "web", "worker"))
    missing = [name for name in _readme_settings() if name not in listed | in_compose]
    assert missing == []
    # The secrets must be given: compose stops with a message when they are not.
    assert services["web"]["environment"]["SECRET_KEY"].startswith("${SECRET_KEY:?")
    assert services["web"]["environment"]["JWT_SECRET"].startswith("${JWT_SECRET:?")


def test_dockerfile_collects_static_files_and_bakes_in_no_secret() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()

    assert "manage.py collectstatic --noinput" in dockerfile
    # The one-off key of the collect step is not kept, and no var/secret_key is left behind.
    assert "ENV SECRET_KEY" not in dockerfile and "rm -rf /app/var" in dockerfile
    assert "USER app" in dockerfile


def test_readme_distributed_steps_install_the_mysql_extra_in_an_activated_environment() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Running it for real") :]
    section = section[: section.index("\n## ", 5)]

    for step in (
        "python3 -m venv .venv",
        ". .venv/bin/activate",
        'pip install -e ".[mysql]"',
        "export DATABASE_URL=mysql://",
        "export REDIS_URL=redis://",
        "export SECRET_KEY=",
        "python manage.py migrate",
        "python manage.py createsuperuser",
        "python manage.py run_huey",
    ):
        assert step in section, step
    assert section.index(". .venv/bin/activate") < section.index("python manage.py migrate")


def test_the_documented_scrape_configuration_reaches_every_web_and_worker_container() -> None:
    """docs/metrics.md's prometheus.yml finds the compose services on the ports they serve."""
    doc = (ROOT / "docs" / "metrics.md").read_text()
    block = doc[doc.index("```yaml\nscrape_configs:") + len("```yaml\n") :]
    jobs = {
        job["job_name"]: job
        for job in yaml.safe_load(block[: block.index("```")])["scrape_configs"]
    }
    services = _compose()["services"]
    web_command = services["web"]["command"]
    worker_env = services["worker"]["environment"]

    (web,) = jobs["llm-web"]["dns_sd_configs"]
    (worker,) = jobs["llm-worker"]["dns_sd_configs"]
    assert (web["names"], web["port"]) == (["web"], int(web_command[web_command.index("-p") + 1]))
    assert (worker["names"], worker["port"]) == (["worker"], int(worker_env["WORKER_METRICS_PORT"]))
    # The worker still gets the distributed settings beside its port.
    assert worker_env["REDIS_URL"] == services["web"]["environment"]["REDIS_URL"]
    assert "WORKER_METRICS_PORT" not in services["web"]["environment"]
