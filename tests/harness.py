"""Real processes for black-box tests: the fake LLM server, Daphne, Huey workers.

A ``Service`` is started the way PROTOCOL §7 says an operator starts it (``manage.py migrate``,
``daphne -b HOST -p PORT project.asgi:application``, ``manage.py run_huey``), on the test run's
tier, with its own database and Redis database.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt

from tests.tier_env import (
    BASE_ENV,
    JWT_SECRET,
    MYSQL_SERVER_URL,
    REDIS_SERVER_URL,
    RUN_DIR,
    TIER,
    free_port,
)
from tests.wire import check_sse_frame

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
DAPHNE = str(Path(PYTHON).with_name("daphne"))
_instance_numbers = itertools.count(1)
# Redis database 0 is left to developers and 14 is the in-process tests'; each service takes
# one of the others for its life, under a file lock, so that two test runs on one machine
# never share a Huey queue (a worker would take the other run's tasks) or flush each other.
_REDIS_DBS = [15, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1]
# Every process a test or benchmark starts carries the pid of the run that started it, so that
# a later run can find the children of a run that was killed (pytest's own SIGKILL, a timeout,
# a closed terminal) and end them: a leftover worker would take tasks from the Redis database
# that the next run reserves once the dead run's lock is gone.
OWNER_ENV = "LLM_TEST_OWNER_PID"


def _default_sigint() -> None:
    # A run started in the background by a shell without job control (`./dev test &` in a
    # script) has SIGINT ignored, and its children inherit that: Daphne (Twisted) then keeps
    # ignoring the SIGINT a shutdown test sends it. The child gets the default back.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def spawn(
    args: list[str], *, env: dict[str, str] | None = None, **kwargs: Any
) -> subprocess.Popen[bytes]:
    """`subprocess.Popen`, marked as this run's child (see OWNER_ENV), with SIGINT's default
    action whatever this process does with it."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        kwargs.setdefault("preexec_fn", _default_sigint)
    child_env = dict(os.environ if env is None else env)
    child_env[OWNER_ENV] = str(os.getpid())
    return subprocess.Popen(args, env=child_env, **kwargs)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def reap_orphans() -> list[int]:
    """Kill the processes left running by test or benchmark runs that have died."""
    marker = f"{OWNER_ENV}=".encode()
    killed: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue  # gone meanwhile, or not ours to read
        for variable in environ.split(b"\0"):
            if variable.startswith(marker):
                owner = int(variable[len(marker) :] or 0)
                if owner and not _alive(owner):
                    try:
                        os.kill(int(entry.name), signal.SIGKILL)
                        killed.append(int(entry.name))
                    except ProcessLookupError:
                        pass
                break
    return killed


def _reserve_redis_db() -> tuple[int, Any]:
    import fcntl

    reap_orphans()
    deadline = time.monotonic() + 300
    while True:
        for db in _REDIS_DBS:
            handle = open(f"/tmp/llm-tests-redis-db-{db}.lock", "w")  # noqa: SIM115
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return db, handle
            except BlockingIOError:
                handle.close()
        if time.monotonic() > deadline:
            raise TimeoutError("no free Redis database for a test service")
        time.sleep(0.5)


def wait_until(predicate: Any, timeout_s: float = 10.0, interval_s: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout_s}s")
        time.sleep(interval_s)


def make_token(username: str, *, ttl_s: int = 3600, **claims: Any) -> str:
    now = int(time.time())
    payload = {"sub": username, "iat": now, "exp": now + ttl_s, **claims}
    return jwt.encode(payload, JWT_SECRET, algorithm="HS256")


class FakeLLM:
    """The fake OpenAI-compatible server, in its own process."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = open(Path(RUN_DIR) / f"fake-llm-{self.port}.log", "ab")  # noqa: SIM115
        reap_orphans()
        self.process = spawn(
            [PYTHON, "-m", "tests.fake_openai", "--port", str(self.port)],
            cwd=ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        wait_until(self._up, timeout_s=20)

    def _up(self) -> bool:
        try:
            return httpx.get(self.url + "/_requests", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def requests(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = httpx.get(self.url + "/_requests").json()
        return result

    def clear(self) -> None:
        httpx.delete(self.url + "/_requests")

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()
        self._log.close()


class Service:
    def __init__(
        self,
        fake: FakeLLM | None = None,
        *,
        env: dict[str, str] | None = None,
        webs: int = 1,
        workers: int = 1,
        tier: str = TIER,
        redis_url: str | None = None,
        database_address: str | None = None,
        worker_metrics: bool = False,
    ) -> None:
        """`fake`: the provider; without one, the service starts a fake of its own and stops it
        with itself. `redis_url`: a Redis of the test's own (that it may restart) instead of a
        database of the shared server. `database_address`: "host:port" the service reaches MySQL at
        (a proxy the test can cut); the database itself is created on the shared server.
        `worker_metrics`: each worker process serves its metrics on a port of its own
        (`worker_metrics_ports`), as several workers on one host do."""
        self.own_fake = fake is None
        self.fake = FakeLLM() if fake is None else fake
        self.number = next(_instance_numbers)
        self.tier = tier
        self.dir = Path(RUN_DIR) / f"service-{self.number}"
        self.dir.mkdir(parents=True)
        self.env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
        self.env.update(BASE_ENV)
        self.env.update(
            {
                "OPENAI_BASE_URL": self.fake.url + "/v1",
                "VAR_DIR": str(self.dir / "var"),
                "PYTHONUNBUFFERED": "1",
            }
        )
        if tier == "embedded":
            self.env["DATABASE_URL"] = f"sqlite:///{self.dir}/db.sqlite3"
            self.db_name = ""
        else:
            self.db_name = f"llmtest_{os.getpid()}_{self.number}"
            server = MYSQL_SERVER_URL
            if database_address is not None:
                # The same credentials, another address.
                credentials = server.split("://", 1)[1].rpartition("@")[0]
                server = f"mysql://{credentials}@{database_address}"
            self.env["DATABASE_URL"] = f"{server}/{self.db_name}"
            self._redis_lock: Any = None
            if redis_url is None:
                self.redis_db, self._redis_lock = _reserve_redis_db()
                self.env["REDIS_URL"] = f"{REDIS_SERVER_URL}/{self.redis_db}"
            else:
                self.redis_db = int(redis_url.rsplit("/", 1)[1]) if redis_url.count("/") > 2 else 0
                self.env["REDIS_URL"] = redis_url
        self.env.update(env or {})
        self.ports = [free_port() for _ in range(webs)]
        self.webs: list[subprocess.Popen[bytes] | None] = [None] * webs
        self.workers: list[subprocess.Popen[bytes] | None] = [None] * (
            workers if tier == "distributed" else 0
        )
        self._logs: list[Any] = []
        self.worker_metrics_ports = [free_port() for _ in self.workers] if worker_metrics else []
        # Where each worker's log (one per worker, across its restarts) ended when it was
        # last started: what follows is its newest process's.
        self.worker_log_offsets = [0] * len(self.workers)

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> Service:
        if self.tier == "distributed":
            import MySQLdb
            import redis

            conn = MySQLdb.connect(host="127.0.0.1", user="root", passwd="", port=3306)
            conn.cursor().execute(f"DROP DATABASE IF EXISTS {self.db_name}")
            conn.cursor().execute(f"CREATE DATABASE {self.db_name} CHARACTER SET utf8mb4")
            conn.close()
            redis.Redis.from_url(self.env["REDIS_URL"]).flushdb()
        self.manage("migrate", "-v0")
        for index in range(len(self.webs)):
            self.start_web(index)
        for index in range(len(self.workers)):
            self.start_worker(index)
        return self

    def __enter__(self) -> Service:
        """Started, and stopped when the block ends (also when starting failed part-way)."""
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stored_row(self, generation_id: str) -> dict[str, Any]:
        """The generation's row as the database holds it: its last checkpoint, where a REST
        read of a running generation folds in the text logged after it."""
        sql = "SELECT status, seq, output FROM api_generation WHERE id = %s"
        connection: Any
        if self.tier == "distributed":
            import MySQLdb

            connection = MySQLdb.connect(
                host="127.0.0.1", user="root", passwd="", port=3306, db=self.db_name
            )
        else:
            import sqlite3

            connection = sqlite3.connect(self.dir / "db.sqlite3")
            sql = sql.replace("%s", "?")
        try:
            cursor = connection.cursor()
            cursor.execute(sql, (generation_id,))
            status, seq, output = cursor.fetchone()
        finally:
            connection.close()
        return {"status": status, "seq": seq, "output": output}

    def _spawn(
        self, name: str, args: list[str], env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        log = open(self.dir / f"{name}.log", "ab")  # noqa: SIM115 (closed in stop)
        self._logs.append(log)
        return spawn(args, cwd=ROOT, env=env or self.env, stdout=log, stderr=subprocess.STDOUT)

    def start_web(self, index: int = 0, *, wait: bool = True) -> None:
        port = self.ports[index]
        self.webs[index] = self._spawn(
            f"web{index}", [DAPHNE, "-b", "127.0.0.1", "-p", str(port), "project.asgi:application"]
        )
        if wait:
            wait_until(lambda: self._healthy(port), timeout_s=30)

    def start_worker(self, index: int = 0) -> None:
        env = self.env
        if self.worker_metrics_ports:
            env = {**env, "WORKER_METRICS_PORT": str(self.worker_metrics_ports[index])}
        log = self.dir / f"worker{index}.log"
        self.worker_log_offsets[index] = log.stat().st_size if log.exists() else 0
        self.workers[index] = self._spawn(
            f"worker{index}", [PYTHON, "manage.py", "run_huey"], env=env
        )

    def _healthy(self, port: int) -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def stop_process(
        self, process: subprocess.Popen[bytes] | None, sig: int = signal.SIGKILL
    ) -> None:
        if process is not None and process.poll() is None:
            process.send_signal(sig)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def stop(self) -> None:
        for process in [*self.webs, *self.workers]:
            self.stop_process(process, signal.SIGKILL)
        for log in self._logs:
            log.close()
        if self.own_fake:
            self.fake.stop()
        if self.tier == "distributed":
            import MySQLdb

            conn = MySQLdb.connect(host="127.0.0.1", user="root", passwd="", port=3306)
            conn.cursor().execute(f"DROP DATABASE IF EXISTS {self.db_name}")
            conn.close()
            if self._redis_lock is not None:
                self._redis_lock.close()

    def logs(self) -> str:
        return "\n".join(
            f"== {path.name}\n{path.read_text(errors='replace')[-5000:]}"
            for path in sorted(self.dir.glob("*.log"))
        )

    # -- helpers -----------------------------------------------------------------------

    def manage(self, *args: str, env: dict[str, str] | None = None) -> str:
        result = subprocess.run(
            [PYTHON, "manage.py", *args],
            cwd=ROOT,
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=120,
        )
        if result.returncode != 0:
            raise RuntimeError(f"manage.py {' '.join(args)} failed:\n{result.stderr}")
        return result.stdout

    def django(self, code: str) -> str:
        """Run Python in the service's Django environment (e.g. to set up users)."""
        return self.manage("shell", "-c", code)

    def url(self, path: str = "", web: int = 0) -> str:
        return f"http://127.0.0.1:{self.ports[web]}{path}"

    def client(self, username: str | None = "alice", web: int = 0, **kwargs: Any) -> httpx.Client:
        headers = {"Authorization": f"Bearer {make_token(username)}"} if username else {}
        return httpx.Client(base_url=self.url(web=web), headers=headers, timeout=30, **kwargs)


def parse_sse(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    """SSE frames as dicts: {"id", "event", "data" (decoded JSON), "comment", "retry"}; each
    event is checked against its model (tests/wire.py)."""
    frame: dict[str, Any] = {}
    for line in lines:
        if line == "":
            if frame:
                if "data" in frame:
                    check_sse_frame(frame)
                yield frame
            frame = {}
            continue
        if line.startswith(":"):
            yield {"comment": line[1:].strip()}
            continue
        field, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "data":
            frame["data"] = json.loads(value)
        elif field in ("id", "event", "retry"):
            frame[field] = value


def stream_events(
    client: httpx.Client,
    generation_id: str,
    *,
    after: int | None = None,
    last_event_id: int | None = None,
    stop_after: int | None = None,
    timeout_s: float = 60,
) -> tuple[int, list[dict[str, Any]], httpx.Headers]:
    """Read the SSE endpoint; returns (status, frames with data, headers).

    With `stop_after`, disconnects after that many data frames (a client that goes away).
    """
    params = {} if after is None else {"after": str(after)}
    headers = {} if last_event_id is None else {"Last-Event-ID": str(last_event_id)}
    frames: list[dict[str, Any]] = []
    with client.stream(
        "GET",
        f"/api/v1/generations/{generation_id}/events",
        params=params,
        headers=headers,
        timeout=timeout_s,
    ) as response:
        if response.status_code != 200:
            response.read()
            return response.status_code, frames, response.headers
        for frame in parse_sse(response.iter_lines()):
            if "data" in frame:
                frames.append(frame)
                if stop_after is not None and len(frames) >= stop_after:
                    break
        return response.status_code, frames, response.headers


def messages(frames: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [frame["data"] for frame in frames]


class Background(threading.Thread):
    """Run a callable in a thread and keep its result or exception."""

    def __init__(self, target: Any, *args: Any) -> None:
        super().__init__(daemon=True)
        self._target_fn = target
        self._args = args
        self.result: Any = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = self._target_fn(*self._args)
        except BaseException as exc:
            self.error = exc

    def value(self, timeout_s: float = 60) -> Any:
        self.join(timeout_s)
        if self.error:
            raise self.error
        return self.result
