"""CPU seconds of processes from /proc, and the machine and versions a report names."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of `pid` (all its threads) so far; 0 if it has gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    # The command name (field 2) may hold spaces: split after its closing parenthesis.
    fields = stat.rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS_PER_S


def pids_named(*names: str) -> list[int]:
    """Pids whose command name (/proc/PID/comm) is one of `names`."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() in names:
                    found.append(int(entry.name))
            except OSError:
                continue
    return sorted(found)


def _redis_server() -> dict[str, Any]:
    """INFO server of the machine's Redis (a test's private redis-server is not it)."""
    import redis

    info: dict[str, Any] = redis.Redis.from_url("redis://127.0.0.1:6379/0").info("server")  # type: ignore[assignment]
    return info


def redis_pids() -> list[int]:
    return [int(_redis_server()["process_id"])]


def mysql(sql: str) -> list[tuple[Any, ...]]:
    """The rows of one statement on the MariaDB server at 127.0.0.1:3306."""
    import MySQLdb

    conn = MySQLdb.connect(host="127.0.0.1", user="root", passwd="", port=3306)
    try:
        cursor = conn.cursor()
        cursor.execute(sql)
        return list(cursor.fetchall())
    finally:
        conn.close()


def mysql_pids() -> list[int]:
    """The MariaDB server at 127.0.0.1:3306, from its pid file."""
    rows = mysql("SELECT @@GLOBAL.pid_file")
    try:
        return [int(Path(str(rows[0][0])).read_text().strip())] if rows else []
    except (OSError, ValueError):
        return pids_named("mariadbd", "mysqld")


def cpu_meter(groups: dict[str, list[int]]) -> Callable[[], dict[str, float]]:
    """Starts metering named groups of processes: the function returned gives the CPU
    seconds each group has used since."""
    start = {pid: cpu_s(pid) for pids in groups.values() for pid in pids}

    def used() -> dict[str, float]:
        end = {pid: cpu_s(pid) for pid in start}
        # A process that ended meanwhile reads 0: it counts for nothing, not for minus.
        return {
            name: sum(max(0.0, end[pid] - start[pid]) for pid in pids)
            for name, pids in groups.items()
        }

    return used


def loadavg() -> str:
    """The 1, 5 and 15 minute load averages."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def machine() -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = next(
        (line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if "model name" in line),
        platform.processor() or "unknown",
    )
    meminfo = Path("/proc/meminfo").read_text().splitlines()
    total_kb = int(next(line for line in meminfo if line.startswith("MemTotal")).split()[1])
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "ram_gib": round(total_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
    }


def _version(module: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(module)
    except PackageNotFoundError:
        return "not installed"


def versions() -> dict[str, str]:
    import MySQLdb
    import redis

    found = {"python": sys.version.split()[0]}
    for package in ("django", "channels", "channels-redis", "redis", "daphne", "huey", "twisted"):
        found[package] = _version(package)
    try:
        found["redis-server"] = str(_redis_server()["redis_version"])
    except redis.RedisError as error:
        found["redis-server"] = f"unreachable ({error})"
    try:
        found["mariadb"] = str(mysql("SELECT VERSION()")[0][0])
    except MySQLdb.Error as error:
        found["mariadb"] = f"unreachable ({error})"
    return found
