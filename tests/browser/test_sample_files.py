"""The service serves the sample page, its client and the vendored libraries, and nothing else
of frontend-sample/ (no browser needed)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.harness import ROOT, Service

SAMPLE = ROOT / "frontend-sample"


@pytest.fixture
def anonymous(site: Service) -> Iterator[httpx.Client]:
    """No token: the page and its files are public. (The browser tests' service.)"""
    with httpx.Client(base_url=site.url(), timeout=30) as client:
        yield client


@pytest.mark.parametrize(
    ("path", "content_type"),
    [
        ("/", "text/html"),
        ("/sample/app.js", "text/javascript"),
        ("/sample/client.js", "text/javascript"),
        ("/sample/client.d.ts", "text/plain"),
        ("/sample/style.css", "text/css"),
        ("/sample/vendor/marked.esm.js", "text/javascript"),
        ("/sample/vendor/purify.es.mjs", "text/javascript"),
    ],
)
def test_sample_files_are_served(anonymous: httpx.Client, path: str, content_type: str) -> None:
    response = anonymous.get(path)

    assert response.status_code == 200
    assert response.headers["content-type"] == f"{content_type}; charset=utf-8"
    assert response.headers["x-content-type-options"] == "nosniff"


def test_page_forbids_inline_script_and_has_none(anonymous: httpx.Client) -> None:
    response = anonymous.get("/")

    policy = response.headers["content-security-policy"]
    assert "script-src 'self';" in policy
    assert "object-src 'none'" in policy
    # Under that policy an inline script would not run: the page has none.
    assert re.findall(r"<script(?![^>]*\bsrc=)[^>]*>", response.text) == []


@pytest.mark.parametrize(
    "path",
    [
        "/sample/..%2fmanage.py",
        "/sample/vendor/..%2f..%2fmanage.py",
        "/sample/%2e%2e/README.md",
        "/sample/package.json",
        "/sample/update-vendor.mjs.bak",
        "/sample/node_modules/marked/lib/marked.esm.js",
        "/sample/vendor/marked.LICENSE.txt",
        "/sample/nested/vendor/marked.esm.js",
    ],
)
def test_nothing_else_is_served(anonymous: httpx.Client, path: str) -> None:
    assert anonymous.get(path).status_code == 404


def test_vendored_libraries_are_the_versions_in_package_json() -> None:
    wanted = json.loads((SAMPLE / "package.json").read_text())["devDependencies"]
    marked = (SAMPLE / "vendor" / "marked.esm.js").read_text()[:300]
    purify = (SAMPLE / "vendor" / "purify.es.mjs").read_text()[:300]

    assert f"marked v{wanted['marked']} " in marked
    assert f"DOMPurify {wanted['dompurify']} " in purify
    for licence in ("marked.LICENSE.txt", "dompurify.LICENSE.txt"):
        assert (SAMPLE / "vendor" / licence).stat().st_size > 1000


def test_client_types_compile_for_an_app(node_modules: Path) -> None:
    """tests/browser/typecheck.ts, an app using every part of the client, passes
    `tsc --strict` against frontend-sample/client.d.ts."""
    node = shutil.which("node")
    assert node, "node is needed for this test"
    completed = subprocess.run(
        [node, str(node_modules / "typescript" / "bin" / "tsc"), "-p", "tsconfig.json"],
        cwd=node_modules.parent,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert completed.returncode == 0, completed.stdout + completed.stderr
