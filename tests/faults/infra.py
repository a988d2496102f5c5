"""What the fault tests break: a Redis of their own, a cuttable path to MySQL, the processes.

The machine's shared Redis and MariaDB serve other test runs at the same time and are never
restarted or cut: the fault cluster talks to a ``redis-server`` started here (no persistence,
so a restart loses everything, as a crashed cache would) and to MariaDB through a TCP proxy
process that can drop every connection.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import redis

from tests.faults.tcp_proxy import ProxyControl
from tests.harness import ROOT, FakeLLM, Service, spawn, wait_until
from tests.tier_env import MYSQL_SERVER_URL, RUN_DIR, free_port

# Timings that make recovery happen within a test: a worker killed mid-generation is
# re-queued about HEARTBEAT_TIMEOUT_S + the reaper's interval (1 s) later.
FAULT_ENV = {
    "HEARTBEAT_TIMEOUT_S": "4",
    "CHECKPOINT_INTERVAL_S": "0.5",
    # Fault loops hit the same generation more than once; each hit costs an attempt.
    "MAX_ATTEMPTS": "6",
    "PROVIDER_CONNECT_TIMEOUT_S": "2",
    "PROVIDER_READ_TIMEOUT_S": "3",
    "PROVIDER_FIRST_BYTE_TIMEOUT_S": "3",
    "WORKER_SHUTDOWN_GRACE_S": "2",
    "HUEY_WORKERS": "16",
}


class RedisServer:
    """A redis-server on a free port, for this test only; restartable on the same port."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None
        self._log = open(Path(RUN_DIR) / f"redis-{self.port}.log", "ab")  # noqa: SIM115
        self.restarts = 0

    def start(self) -> RedisServer:
        self.process = spawn(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                # Enough for two web and two worker processes with their pools.
                "--maxclients",
                "4000",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        wait_until(self._up, timeout_s=10)
        return self

    def _up(self) -> bool:
        try:
            return bool(redis.Redis.from_url(self.url, socket_timeout=1).ping())
        except redis.RedisError:
            return False

    def stop(self, sig: int = signal.SIGKILL) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(timeout=10)
        self.process = None

    def restart(self, down_s: float = 1.0, sig: int = signal.SIGKILL) -> None:
        """Everything in it is lost: buffers, fences, the queue, cancel flags."""
        self.stop(sig)
        time.sleep(down_s)
        self.start()
        self.restarts += 1

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_timeout=5)

    def kill_clients(self) -> int:
        """CLIENT KILL every connection but ours: normal clients and pub/sub subscribers."""
        admin = self.client()
        killed = 0
        for kind in ("normal", "pubsub"):
            killed += int(
                admin.execute_command(  # type: ignore[no-untyped-call]
                    "CLIENT", "KILL", "TYPE", kind, "SKIPME", "yes"
                )
            )
        admin.close()
        return killed

    def close(self) -> None:
        self.stop()
        self._log.close()


class DatabaseProxy:
    """The MySQL server behind a proxy process that the test can cut."""

    def __init__(self) -> None:
        server = MYSQL_SERVER_URL.split("://", 1)[1].rpartition("@")[2]
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        control_port = free_port()
        self._log = open(Path(RUN_DIR) / f"db-proxy-{self.port}.log", "ab")  # noqa: SIM115
        self.process = spawn(
            [
                sys.executable,
                "-m",
                "tests.faults.tcp_proxy",
                "--listen-port",
                str(self.port),
                "--target",
                server,
                "--control-port",
                str(control_port),
            ],
            cwd=ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.control = ProxyControl(control_port)
        wait_until(self._up, timeout_s=10)
        self.cuts = 0

    def _up(self) -> bool:
        try:
            self.control.command("ping")
            return True
        except OSError:
            return False

    def cut(self) -> None:
        self.control.command("cut")
        self.cuts += 1

    def hang(self) -> None:
        """Unreachable the quiet way: connections are accepted and never answered."""
        self.control.command("hang")

    def restore(self) -> None:
        self.control.command("restore")

    def accepted(self) -> int:
        """How many connections the proxy has accepted so far."""
        return int(self.control.command("accepted"))

    def close(self) -> None:
        self.process.kill()
        self.process.wait()
        self._log.close()


def fault_cluster(
    fake: FakeLLM,
    redis_server: RedisServer,
    database: DatabaseProxy,
    *,
    webs: int = 2,
    workers: int = 2,
    env: dict[str, str] | None = None,
) -> Service:
    return Service(
        fake,
        webs=webs,
        workers=workers,
        env={**FAULT_ENV, **(env or {})},
        redis_url=redis_server.url,
        database_address=database.address,
    )


def alive(service: Service) -> dict[str, Any]:
    """Which processes of the service are running (None: not started or exited)."""
    return {
        "webs": [p is not None and p.poll() is None for p in service.webs],
        "workers": [p is not None and p.poll() is None for p in service.workers],
    }


def wait_workers_ready(service: Service, timeout_s: float = 60) -> None:
    """Until every worker process has started its consumer: its newest process logged the
    start (one stopped while still starting, a storm's signal during its imports, never
    will, and is not waited for)."""

    def ready() -> bool:
        for index, process in enumerate(service.workers):
            if process is None or process.poll() is not None:
                return False
            with (service.dir / f"worker{index}.log").open("rb") as log:
                log.seek(service.worker_log_offsets[index])
                if b"Huey consumer started" not in log.read():
                    return False
        return True

    wait_until(ready, timeout_s=timeout_s, interval_s=0.2)
