"""Capacity: concurrent streaming generations, side by side with two baselines, in one run.

    .venv/bin/python -m bench.capacity [--steps 50,100,200,300,500] [--tokens 750]
        [--client-procs 2] [--quick] [--results bench/results]

Systems, each stepped up through the same stream counts until delivery lags:

- ``ours``: the service as PROTOCOL §7 runs it, 2 Daphne + 2 ``manage.py run_huey`` on MySQL +
  Redis (tests.harness.Service), the fake provider at 50 tokens/s with ``stamp=1``; 80% of
  clients on WebSocket, 20% on SSE, spread over both Daphne ports;
- ``streams``: bench/baselines/streams_sse.py, XADD per token, XREAD per SSE client;
- ``naive``: bench/baselines/naive.py, the seed's design (PUBLISH per token, row written at
  the end, subscribe after reading the row).

Also in the same run: the channel layer alone (bench.channel_layers), Redis round trips
alone, rows written per generation (ours, naive, and naive writing per token), and lost
characters under reconnects (50 SSE clients, 3 cuts each, ours next to naive).

CPU is read from /proc/<pid>/stat (utime + stime) of each process group before and after a
step. Redis and MariaDB are the machine's shared servers: their CPU deltas include anything
else that used them during the step (other test runs), which the report states.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("TEST_TIER", "distributed")

import httpx
import MySQLdb
import redis

from bench import loadgen, procstat
from bench.latency_report import percentile
from bench.procstat import mysql
from tests.harness import PYTHON, ROOT, FakeLLM, Service, _reserve_redis_db, spawn, wait_until
from tests.tier_env import JWT_SECRET, REDIS_SERVER_URL, RUN_DIR, free_port

NAME = "capacity"
RATE_TOK_S = 50.0
# The fake provider's wait before the first token: a hosted model's usual TTFT. It also
# gives the naive baseline's subscriber time to subscribe before the first PUBLISH.
TTFT_MS = 200
# A step lags when the steady-state delivered rate falls below this share of the offered
# rate, or p99 exceeds LAG_P99_S (past TARGET_STREAMS, the next step is then not run).
LAG_DELIVERED_SHARE = 0.95
LAG_P99_S = 1.0
SSE_SHARE = 0.2
# The target: this many concurrent streams with p99 below 150 ms.
TARGET_STREAMS = 200
# Huey threads per worker process: each running generation holds one thread, so two
# workers need at least half the largest step each (the service's default is 64).
HUEY_WORKERS = 260
# The embedded default is one process for everything (PROTOCOL §7): it is stepped up to here.
EMBEDDED_MAX_STREAMS = 100
MYSQL_MAX_CONNECTIONS = 1200

SYSTEMS = {
    "ours": "service (2 Daphne + 2 run_huey)",
    "embedded": "service, embedded default (1 Daphne running its generations itself, SQLite)",
    "streams": "minimal Redis-streams SSE server",
    "naive": "naive seed design",
}


def db_counts(schema: str) -> dict[str, int]:
    """Rows changed per table of one database (MariaDB's userstat TABLE_STATISTICS, exact per
    schema), and the server-wide statement counters (which include other clients)."""
    rows = mysql(
        "SELECT TABLE_NAME, ROWS_CHANGED FROM information_schema.TABLE_STATISTICS "
        f"WHERE TABLE_SCHEMA = '{schema}'"
    )
    counts = {f"rows_changed.{table}": int(changed) for table, changed in rows}
    for name, value in mysql("SHOW GLOBAL STATUS"):
        if name in ("Com_insert", "Com_update", "Com_select"):
            counts[f"global.{name}"] = int(value)
    return counts


@dataclass
class System:
    name: str
    ports: list[int]
    cpu_groups: dict[str, list[int]]
    schema: str = ""
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    service: Service | None = None
    redis_lock: Any = None

    def stop(self) -> None:
        if self.service is not None:
            self.service.stop()
        for process in self.processes:
            process.kill()
            process.wait()
        if self.redis_lock is not None:
            self.redis_lock.close()
        if self.name == "naive" and self.schema:
            mysql(f"DROP DATABASE IF EXISTS {self.schema}")


def service_pids() -> dict[str, list[int]]:
    return {"redis": procstat.redis_pids(), "mysql": procstat.mysql_pids()}


# Before its first step, each system serves this many short streams, unmeasured: its
# processes load what they load on first use (Django's URL patterns and schemas, the SDK's
# client, connection pools), a one-off cost the first step's CPU and latency carried.
WARM_UP_STREAMS = 10
WARM_UP_TOKENS = 50


def start_system(name: str, fake: FakeLLM) -> System:
    """The system, up and warmed up."""
    system = _start_system(name, fake)
    try:
        plan = make_plan(name, system.ports, WARM_UP_STREAMS, WARM_UP_TOKENS, 0.5, seed=1000)
        loadgen.run(plan, 1)
    except BaseException:
        system.stop()
        raise
    return system


def _start_system(name: str, fake: FakeLLM) -> System:
    if name == "ours":
        return _start_service(
            "ours",
            fake,
            webs=2,
            workers=2,
            tier="distributed",
            worker_metrics=True,
            env={"REDIS_MAX_CONNECTIONS": "1000"},
        )
    if name == "embedded":
        return _start_service("embedded", fake, webs=1, workers=0, tier="embedded", env={})
    if name == "streams":
        return start_streams()
    return start_naive(fake)


def _start_service(name: str, fake: FakeLLM, *, env: dict[str, str], **options: Any) -> System:
    service = Service(
        fake,
        env={"HUEY_WORKERS": str(HUEY_WORKERS), "MAX_OUTPUT_TOKENS": "100000", **env},
        **options,
    ).start()
    # The workers are up when each has connected to the queue; give them a moment.
    time.sleep(2)
    groups = {
        "daphne": [p.pid for p in service.webs if p is not None],
        "worker": [p.pid for p in service.workers if p is not None],
    }
    if service.tier == "distributed":
        groups.update(service_pids())
    else:
        del groups["worker"]  # the embedded default runs its generations in Daphne
    return System(name, service.ports, groups, schema=service.db_name, service=service)


def _start_baseline(
    name: str,
    module: str,
    roles: Callable[[str, int], dict[str, list[str]]],
    groups: dict[str, list[int]],
    schema: str = "",
) -> System:
    """A baseline's processes, one per role (its arguments, given the Redis URL and port),
    on a Redis database of its own; up once the port listens."""
    db, lock = _reserve_redis_db()
    url = f"{REDIS_SERVER_URL}/{db}"
    redis.Redis.from_url(url).flushdb()
    port = free_port()
    processes = {}
    for role, args in roles(url, port).items():
        # The child writes to its own copy of the descriptor.
        with open(Path(RUN_DIR) / f"{name}-{role}.log", "ab") as log:
            processes[role] = spawn(
                [PYTHON, "-m", f"bench.baselines.{module}", role, *args],
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(os.environ),
            )

    def listening() -> bool:
        with socket.socket() as sock:
            return sock.connect_ex(("127.0.0.1", port)) == 0

    wait_until(listening, timeout_s=20)
    return System(
        name,
        [port],
        {**{role: [process.pid] for role, process in processes.items()}, **groups},
        schema=schema,
        processes=list(processes.values()),
        redis_lock=lock,
    )


def start_streams() -> System:
    def roles(url: str, port: int) -> dict[str, list[str]]:
        return {"server": ["--port", str(port), "--redis", url], "producer": ["--redis", url]}

    return _start_baseline("streams", "streams_sse", roles, {"redis": procstat.redis_pids()})


def start_naive(fake: FakeLLM, *, write_per_token: bool = False) -> System:
    from bench.baselines.naive import create_schema

    schema = f"bench_naive_{os.getpid()}_{int(write_per_token)}"
    mysql(f"DROP DATABASE IF EXISTS {schema}")
    create_schema(schema)
    extra = ["--write-per-token"] if write_per_token else []

    def roles(url: str, port: int) -> dict[str, list[str]]:
        common = ["--redis", url, "--database", schema]
        return {
            "web": ["--port", str(port), *common],
            "worker": [*common, "--provider", fake.url + "/v1", *extra],
        }

    return _start_baseline("naive", "naive", roles, service_pids(), schema)


def make_plan(
    system: str,
    ports: list[int],
    streams: int,
    tokens: int,
    ramp_s: float,
    seed: int,
    *,
    cuts: int = 0,
    sse_share: float | None = None,
) -> loadgen.Plan:
    """A step's streams, starting in 3 s; the service's clients are SSE_SHARE on SSE, the
    baselines' all on SSE, unless `sse_share` says."""
    if sse_share is None:
        sse_share = SSE_SHARE if system in loadgen.SERVICE_SYSTEMS else 1.0
    return loadgen.Plan(
        system=system,
        host="127.0.0.1",
        ports=ports,
        indices=list(range(streams)),
        streams=streams,
        tokens=tokens,
        rate=RATE_TOK_S,
        ttft_ms=TTFT_MS,
        ramp_s=ramp_s,
        start_at=time.time() + 3,
        sse_share=sse_share,
        cuts=cuts,
        jwt_secret=JWT_SECRET,
        seed=seed,
    )


def run_step(
    system: System,
    streams: int,
    *,
    tokens: int,
    ramp_s: float,
    client_procs: int,
    fake: FakeLLM,
    cuts: int = 0,
    sse_share: float | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """One step: `streams` concurrent generations of `tokens` tokens at RATE_TOK_S."""
    plan = make_plan(
        system.name, system.ports, streams, tokens, ramp_s, seed, cuts=cuts, sse_share=sse_share
    )
    db_before = db_counts(system.schema) if system.schema else {}
    cpu_used = procstat.cpu_meter({**system.cpu_groups, "provider": [fake.process.pid]})
    started = time.time()
    with connections_peak() as connections:
        outcomes = loadgen.run(plan, client_procs)
    wall_s = time.time() - started
    used = cpu_used()
    db_after = db_counts(system.schema) if system.schema else {}
    db = {name: value - db_before.get(name, 0) for name, value in db_after.items()}
    row = summarise(system, plan, outcomes, used, wall_s, db)
    row["mysql_threads_connected_max"] = connections[0]
    return row


@contextlib.contextmanager
def connections_peak() -> Iterator[list[int]]:
    """The peak of MariaDB's Threads_connected (server-wide) while the block runs, read every
    second: the list's one item."""
    peak = [0]
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(1.0):
            try:
                rows = mysql("SHOW GLOBAL STATUS LIKE 'Threads_connected'")
                peak[0] = max(peak[0], int(rows[0][1]))
            except MySQLdb.Error:
                continue

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    yield peak
    stop.set()
    thread.join()


def summarise(
    system: System,
    plan: loadgen.Plan,
    outcomes: list[dict[str, Any]],
    used: dict[str, float],
    wall_s: float,
    db: dict[str, int],
) -> dict[str, Any]:
    event_lat = [v for o in outcomes for v in o["event_latency_s"]]
    token_lat = [v for o in outcomes for v in o["token_latency_s"]]
    firsts = [v for o in outcomes for v in o["first_token_at"]]
    lasts = [v for o in outcomes for v in o["last_token_at"]]
    slots: dict[int, int] = {}
    for outcome in outcomes:
        for slot, count in outcome["slots"].items():
            slots[int(slot)] = slots.get(int(slot), 0) + count
    tokens = sum(o["tokens"] for o in outcomes)
    # Steady state: from the moment the last stream had started delivering until the first
    # one finished, every stream was live; the offered rate is streams x RATE_TOK_S there.
    window_s = (min(lasts) - max(firsts)) if firsts else 0.0
    if window_s >= 2.0:
        first_slot = math.ceil(max(firsts) / loadgen.SLOT_S)
        last_slot = math.floor(min(lasts) / loadgen.SLOT_S)
        in_window = sum(c for s, c in slots.items() if first_slot <= s < last_slot)
        delivered = in_window / ((last_slot - first_slot) * loadgen.SLOT_S)
    elif firsts:
        window_s = max(lasts) - min(firsts)
        delivered = tokens / max(window_s, 1e-9)
    else:
        delivered = 0.0
    service_cpu = sum(used[g] for g in system.cpu_groups)
    loadgen_cpu = sum(o["cpu_s"] for o in outcomes)
    p99 = percentile(event_lat, 99) if event_lat else None
    failed = sum(o["failed"] for o in outcomes)
    offered = plan.streams * plan.rate
    lagged = (
        failed > 0 or delivered < LAG_DELIVERED_SHARE * offered or p99 is None or p99 > LAG_P99_S
    )
    return {
        "system": system.name,
        "streams": plan.streams,
        "sse_share": plan.sse_share,
        "tokens_per_stream": plan.tokens,
        "cuts_per_client": plan.cuts,
        "offered_tok_s": offered,
        "delivered_tok_s": round(delivered, 1),
        "steady_window_s": round(window_s, 2),
        "tokens_received": tokens,
        "events_received": sum(o["events"] for o in outcomes),
        "event_p50_ms": _ms(event_lat, 50),
        "event_p99_ms": _ms(event_lat, 99),
        "token_p50_ms": _ms(token_lat, 50),
        "token_p99_ms": _ms(token_lat, 99),
        "streams_checked": sum(o["streams"] for o in outcomes),
        "streams_failed": failed,
        "errors": [e for o in outcomes for e in o["errors"]][:10],
        "mismatched_streams": sum(o["mismatched"] for o in outcomes),
        "lost_chars": sum(o["lost_chars"] for o in outcomes),
        "duplicated_chars": sum(o["duplicated_chars"] for o in outcomes),
        "expected_chars": sum(o["expected_chars"] for o in outcomes),
        "reconnects": sum(o["reconnects"] for o in outcomes),
        "cpu_s": {name: round(value, 2) for name, value in used.items()},
        "service_cpu_s": round(service_cpu, 2),
        "cpu_s_per_1k_tokens": round(1000 * service_cpu / tokens, 3) if tokens else None,
        "loadgen_cpu_s": round(loadgen_cpu, 2),
        "loadgen_processes": len(outcomes),
        "wall_s": round(wall_s, 1),
        "db": db,
        "lagged": lagged,
    }


def _ms(values: list[float], q: float) -> float | None:
    return round(1000 * percentile(values, q), 1) if values else None


def redis_round_trips(count: int) -> dict[str, Any]:
    """Sequential PING and XADD from one client: the floor under every Redis hop."""
    client = redis.Redis.from_url(f"{REDIS_SERVER_URL}/0")
    client.ping()
    found: dict[str, Any] = {}

    def xadd() -> None:
        client.xadd("bench:rtt", {"d": "x" * 60}, maxlen=1000)

    for name, call in (("PING", client.ping), ("XADD", xadd)):
        samples = []
        for _ in range(count):
            started = time.perf_counter()
            call()
            samples.append(time.perf_counter() - started)
        found[name] = {
            "count": count,
            "p50_us": round(1e6 * percentile(samples, 50), 1),
            "p99_us": round(1e6 * percentile(samples, 99), 1),
        }
    client.delete("bench:rtt")
    return found


def channel_layer_alone(groups: list[int], messages: int) -> list[dict[str, Any]]:
    """The service's channel layer (pub/sub) at the stream counts, paced at 50 msg/s/group."""
    from bench.channel_layers import measure

    rows = []
    for count in groups:
        db, lock = _reserve_redis_db()
        try:
            row = measure("pubsub", f"{REDIS_SERVER_URL}/{db}", count, messages, RATE_TOK_S)
            rows.append({**row, "groups": count})
        finally:
            lock.close()
    return rows


def idle_cpu(system: System, fake: FakeLLM, seconds: float) -> dict[str, Any]:
    """The service's CPU with no client at all: its fixed cost (queue polling, housekeeping)."""
    cpu_used = procstat.cpu_meter({**system.cpu_groups, "provider": [fake.process.pid]})
    time.sleep(seconds)
    used = cpu_used()
    return {
        "seconds": seconds,
        "cpu_s": {name: round(value, 2) for name, value in used.items()},
        "cpu_per_wall_s": {name: round(value / seconds, 3) for name, value in used.items()},
    }


def run(results_dir: Path, quick: bool = False, argv: list[str] | None = None) -> dict[str, Any]:
    """The whole capacity benchmark; writes capacity.md, capacity.json and PNGs."""
    args = parse_args(argv or [], quick)
    results_dir.mkdir(parents=True, exist_ok=True)
    steps = [int(s) for s in args.steps.split(",")]
    # MariaDB's per-table row counters, for db_counts.
    restore_userstat = str(mysql("SELECT @@GLOBAL.userstat")[0][0])
    mysql("SET GLOBAL userstat = 1")
    restore_max_conn = int(mysql("SELECT @@GLOBAL.max_connections")[0][0])
    if restore_max_conn < MYSQL_MAX_CONNECTIONS:
        # Each running generation holds a database connection in its worker thread.
        mysql(f"SET GLOBAL max_connections = {MYSQL_MAX_CONNECTIONS}")
    result: dict[str, Any] = {
        "command": " ".join(["python -m bench.capacity", *(argv or [])]),
        "quick": quick,
        "config": {
            "steps": steps,
            "tokens_per_stream": args.tokens,
            "rate_tok_s": RATE_TOK_S,
            "ttft_ms": TTFT_MS,
            "ramp_s": args.ramp,
            "client_processes": args.client_procs,
            "huey_workers_per_process": HUEY_WORKERS,
            "mysql_max_connections": max(restore_max_conn, MYSQL_MAX_CONNECTIONS),
            "mysql_max_connections_before": restore_max_conn,
            "sse_share_ours": SSE_SHARE,
            "warm_up_streams": WARM_UP_STREAMS,
            "warm_up_tokens": WARM_UP_TOKENS,
        },
        "loadavg_before": procstat.loadavg(),
        "uptime_before": procstat.uptime(),
        "steps": [],
    }
    fake = FakeLLM()

    def short_step(system: System, streams: int, **options: Any) -> dict[str, Any]:
        """A step of the reconnect test's length, from one client process."""
        tokens = args.reconnect_tokens
        return run_step(
            system, streams, tokens=tokens, ramp_s=1.0, client_procs=1, fake=fake, **options
        )

    try:
        result["redis_rtt"] = redis_round_trips(200 if quick else 2000)
        print("redis round trips", result["redis_rtt"], flush=True)
        names = args.systems.split(",")
        # Ours and the minimal server run together, their steps in turn at each stream
        # count: the machine's speed moves by as much as half between minutes here, and a
        # step compared with one ten minutes later compared the machine as much as the code.
        paired = [name for name in ("ours", "streams") if name in names]
        groups = [paired] if len(paired) == 2 else []
        groups += [[name] for name in names if not any(name in group for group in groups)]
        for group in groups:
            systems: dict[str, System] = {}
            try:
                for name in group:
                    systems[name] = start_system(name, fake)
                    if name == "ours":
                        # Before the minimal server starts: the fixed cost of ours alone.
                        result["ours_idle"] = idle_cpu(systems[name], fake, 3.0 if quick else 10.0)
                done: set[str] = set()
                for index, streams in enumerate(steps):
                    for name, system in systems.items():
                        if name in done or (name == "embedded" and streams > EMBEDDED_MAX_STREAMS):
                            continue
                        row = run_step(
                            system,
                            streams,
                            tokens=args.tokens,
                            ramp_s=args.ramp,
                            client_procs=args.client_procs,
                            fake=fake,
                            seed=index,
                        )
                        result["steps"].append(row)
                        _print_row(row)
                        # Steps up to the target's count run even after a lag, so that the
                        # target is always measured; past it, the first lag ends the stepping.
                        if row["lagged"] and streams >= TARGET_STREAMS:
                            done.add(name)
                for name, system in systems.items():
                    if name in ("ours", "naive"):
                        row = short_step(
                            system, args.reconnect_clients, cuts=3, sse_share=1.0, seed=99
                        )
                        result.setdefault("reconnects", []).append(row)
                        _print_row(row, "reconnects")
                    if name == "ours" and system.service is not None:
                        save_metrics(system.service, results_dir / METRICS_SAMPLE)
            finally:
                for system in systems.values():
                    system.stop()
        # The design the row count is compared with: one UPDATE per token.
        system = start_naive(fake, write_per_token=True)
        try:
            row = short_step(system, args.per_token_streams, seed=77)
            row["system"] = "naive-write-per-token"
            result["write_per_token"] = row
        finally:
            system.stop()
        result["channel_layer"] = channel_layer_alone(
            [steps[0]] if quick else [s for s in steps if s in (200, 500)] or steps[-1:],
            args.layer_messages,
        )
        print("channel layer", result["channel_layer"], flush=True)
    finally:
        fake.stop()
        mysql(f"SET GLOBAL userstat = {restore_userstat}")
        if restore_max_conn < MYSQL_MAX_CONNECTIONS:
            mysql(f"SET GLOBAL max_connections = {restore_max_conn}")
    result["loadavg_after"] = procstat.loadavg()
    result["uptime_after"] = procstat.uptime()
    from bench import report

    (results_dir / f"{NAME}.json").write_text(json.dumps(result, indent=1))
    (results_dir / f"{NAME}.md").write_text(report.capacity_markdown(result))
    report.capacity_plots(result, results_dir)
    return result


def _print_row(row: dict[str, Any], *label: str) -> None:
    print(*label, json.dumps({k: v for k, v in row.items() if k != "db"}), flush=True)


# The service's own view of the run once the steps and the reconnect step of "ours" are over:
# GET /metrics of its first web process, then each worker's port (the llm_* series only).
METRICS_SAMPLE = "metrics_after_capacity.txt"


def save_metrics(service: Service, path: Path) -> None:
    urls = [
        service.url("/metrics"),
        *(f"http://127.0.0.1:{port}/metrics" for port in service.worker_metrics_ports),
    ]
    parts = []
    for url in urls:
        text = httpx.get(url, timeout=30).text
        parts += [f"# {url}", *(line for line in text.splitlines() if "llm_" in line)]
    path.write_text("\n".join(parts) + "\n")


def parse_args(argv: list[str], quick: bool) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="seconds long: the smoke run")
    parser.add_argument("--steps", help="concurrent streams per step, comma-separated")
    parser.add_argument("--tokens", type=int, help="tokens per generation (at 50 tokens/s)")
    parser.add_argument("--ramp", type=float, help="seconds over which a step's streams start")
    parser.add_argument("--client-procs", type=int, default=2)
    parser.add_argument("--systems", default=",".join(SYSTEMS), help="ours,embedded,streams,naive")
    parser.add_argument("--reconnect-clients", type=int)
    parser.add_argument("--reconnect-tokens", type=int)
    parser.add_argument("--per-token-streams", type=int)
    parser.add_argument("--layer-messages", type=int)
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args(argv)
    quick = quick or args.quick
    defaults = (
        {"steps": "5", "tokens": 150, "ramp": 0.5, "reconnect_clients": 5,
         "reconnect_tokens": 150, "per_token_streams": 3, "layer_messages": 50}
        if quick
        else {"steps": "50,100,200,300,500", "tokens": 750, "ramp": 3.0,
              "reconnect_clients": 50, "reconnect_tokens": 750, "per_token_streams": 20,
              "layer_messages": 250}
    )  # fmt: skip
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if quick:
        args.client_procs = 1
    args.quick = quick
    return args


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    # Unwind through every `finally` on SIGTERM too: processes stopped, settings restored.
    signal.signal(signal.SIGTERM, lambda number, _frame: sys.exit(128 + number))
    args = parse_args(argv, False)
    run(args.results, args.quick, argv)


if __name__ == "__main__":
    main()
