"""Fixtures of the browser tests: their npm packages, and a service whose provider can also
stream canned answers (tests/browser/fake_llm.py) and whose users can sign in."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import PYTHON, ROOT, FakeLLM, Service, spawn, wait_until
from tests.tier_env import RUN_DIR, free_port

HERE = Path(__file__).resolve().parent
PASSWORD = "correct horse battery staple"
# Users with a password, to sign in through the page's form; one per test, so that each
# screenshot's history shows that test's generations only.
USERS = ("ada", "ben", "cleo", "dev", "eve", "fay", "gus", "hal", "ida", "ivy", "jon")


@pytest.fixture(scope="session")
def node_modules() -> Path:
    """`npm ci` in tests/browser when node_modules is missing or older than the lock file."""
    installed = HERE / "node_modules" / ".package-lock.json"
    lock = HERE / "package-lock.json"
    if not installed.exists() or lock.stat().st_mtime > installed.stat().st_mtime:
        npm = shutil.which("npm")
        assert npm, "npm is needed for the browser tests"
        subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=HERE,
            check=True,
            timeout=300,
        )
    return HERE / "node_modules"


class BrowserFakeLLM(FakeLLM):
    """tests/browser/fake_llm.py (the fake provider plus canned answers) in its own process."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = open(Path(RUN_DIR) / f"browser-fake-llm-{self.port}.log", "ab")  # noqa: SIM115
        self.process = spawn(
            [PYTHON, "-m", "tests.browser.fake_llm", "--port", str(self.port)],
            cwd=ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        wait_until(self._up, timeout_s=20)


@pytest.fixture(scope="session")
def site() -> Iterator[Service]:
    fake = BrowserFakeLLM()
    service = Service(fake).start()
    creates = "; ".join(
        f"User.objects.create_user({name!r}, password={PASSWORD!r})" for name in USERS
    )
    service.django(f"from django.contrib.auth.models import User; {creates}")
    yield service
    service.stop()
    fake.stop()
