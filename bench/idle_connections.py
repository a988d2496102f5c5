"""Idle WebSocket connections: memory per authenticated connection held open by one Daphne
process, and the time to accept 1,000 connections (connect + ``auth`` -> ``auth.ok``).

    .venv/bin/python -m bench.idle_connections [--connections 5000] [--tier ...|both]

The load generator is several processes of asyncio + websockets clients (a process holds a
share of the sockets; the fd limit and one event loop's speed both favour a few). Users:
``USERS`` of them, each with ``connections / USERS`` connections, under
``MAX_CONNECTIONS_PER_USER`` raised by env to that share, so the per-user cap (default 10)
is not what is measured; each user is created (its first auth) before anything is timed.

Memory: VmRSS of the Daphne process (/proc/<pid>/status) once the service has served one
connection, and again with every connection open, authenticated and idle; the difference
divided by the connections. Also the Daphne process's CPU while they sit idle.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import pathlib
import time
from multiprocessing.connection import Connection
from typing import Any

import websockets

from bench.latency_report import command, parser, section, table, tiers_for, write_tiers
from bench.loadgen import ws_auth
from bench.procstat import cpu_s
from tests.harness import Service, make_token
from tests.tier_env import TIER

NAME = "idle_connections"
TARGET_KB_PER_CONNECTION = 50.0
ACCEPT_CONNECTIONS = 1000
FULL_CONNECTIONS = 5000
QUICK_CONNECTIONS = 200
USERS = 50
CLIENT_PROCESSES = 4
# Connections a client process has in flight at once while opening (connect + auth).
IN_FLIGHT = 100
IDLE_CPU_WINDOW_S = 10.0
SETTLE_S = 3.0
QUICK_IDLE_S = 1.0


def vm_rss_kb(pid: int) -> int:
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


# -- the client processes ------------------------------------------------------------------


async def _client_main(
    pipe: Connection, url: str, tokens: list[str], index: int, processes: int
) -> None:
    sockets: list[Any] = []
    loop = asyncio.get_running_loop()
    # Connection k of this process is connection index + k * processes of the whole run,
    # which goes to user (that number) % users: every user gets its share, whatever the split.
    opened_here = 0

    async def open_one(semaphore: asyncio.Semaphore, token: str) -> float:
        async with semaphore:
            ws = await websockets.connect(url, open_timeout=120, ping_interval=None)
            await ws_auth(ws, token, 120)
            sockets.append(ws)
            return time.time()

    while True:
        message = await loop.run_in_executor(None, pipe.recv)
        kind = message[0]
        if kind == "open":
            _, count, start_at = message
            await asyncio.sleep(max(0.0, start_at - time.time()))
            semaphore = asyncio.Semaphore(IN_FLIGHT)
            batch = []
            for _ in range(count):
                number = index + opened_here * processes
                batch.append(open_one(semaphore, tokens[number % len(tokens)]))
                opened_here += 1
            outcomes = await asyncio.gather(*batch, return_exceptions=True)
            done = [o for o in outcomes if isinstance(o, float)]
            errors = [repr(o) for o in outcomes if not isinstance(o, float)]
            pipe.send(("opened", max(done) if done else None, len(done), errors[:5], len(errors)))
        elif kind == "check":
            # Every connection still open and answering: a ping frame gets its pong.
            alive = 0
            for ws in sockets:
                try:
                    await asyncio.wait_for(await ws.ping(), 60)
                    alive += 1
                except Exception:
                    pass
            pipe.send(("alive", alive))
        elif kind == "close":
            await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
            pipe.send(("closed",))
            return


def _client_process(
    pipe: Connection, url: str, tokens: list[str], index: int, processes: int
) -> None:
    asyncio.run(_client_main(pipe, url, tokens, index, processes))


class Clients:
    def __init__(self, url: str, tokens: list[str], processes: int) -> None:
        context = multiprocessing.get_context("spawn")
        self.pipes: list[Connection] = []
        self.processes = []
        for index in range(processes):
            parent, child = context.Pipe()
            process = context.Process(
                target=_client_process, args=(child, url, tokens, index, processes)
            )
            process.start()
            self.pipes.append(parent)
            self.processes.append(process)

    def open(self, total: int) -> tuple[float, int, list[str]]:
        """Open `total` connections across the processes at once; (seconds from the common
        start to the last auth.ok, connections opened, errors)."""
        start_at = time.time() + 1.0
        shares = len(self.pipes)
        for index, pipe in enumerate(self.pipes):
            pipe.send(("open", total // shares + (index < total % shares), start_at))
        last = start_at
        opened = 0
        errors: list[str] = []
        for pipe in self.pipes:
            _, finished_at, done, sample, failed = pipe.recv()
            if finished_at is not None:
                last = max(last, finished_at)
            opened += done
            if failed:
                errors += [f"{failed} failed, e.g. {sample[0]}"]
        return last - start_at, opened, errors

    def alive(self) -> int:
        """The connections, in every process, that answered a ping."""
        for pipe in self.pipes:
            pipe.send(("check",))
        return sum(pipe.recv()[1] for pipe in self.pipes)

    def close(self) -> None:
        for pipe in self.pipes:
            try:
                pipe.send(("close",))
                pipe.recv()
            except (EOFError, OSError):
                pass
        for process in self.processes:
            process.join(timeout=60)
            if process.is_alive():
                process.kill()


# -- the measurement ------------------------------------------------------------------------


def _warm_users(url: str, tokens: list[str]) -> None:
    """Each user's first auth creates it: done before anything is timed."""

    async def go() -> None:
        for token in tokens:
            async with websockets.connect(url, ping_interval=None) as ws:
                await ws_auth(ws, token, 120)

    asyncio.run(go())


def measure(
    tier: str, connections: int, accept: int, idle_s: float = IDLE_CPU_WINDOW_S
) -> dict[str, Any]:
    # Each user's share, and a little more: the split between the client processes can give
    # a user one connection above the even share.
    per_user = -(-connections // USERS) + CLIENT_PROCESSES
    env = {"MAX_CONNECTIONS_PER_USER": str(per_user), "LOG_LEVEL": "WARNING"}
    with Service(tier=tier, env=env) as service:
        web = service.webs[0]
        assert web is not None
        pid = web.pid
        url = f"ws://127.0.0.1:{service.ports[0]}/ws/v1"
        tokens = [make_token(f"idle-{index}", ttl_s=6 * 3600) for index in range(USERS)]
        _warm_users(url, tokens)
        clients = Clients(url, tokens, CLIENT_PROCESSES)
        try:
            time.sleep(SETTLE_S)
            rss_before_kb = vm_rss_kb(pid)
            accept_s, opened_first, errors = clients.open(accept)
            rest_s, opened_rest, more_errors = clients.open(connections - accept)
            errors += more_errors
            time.sleep(SETTLE_S)
            rss_after_kb = vm_rss_kb(pid)
            cpu_before = cpu_s(pid)
            time.sleep(idle_s)
            idle_cpu = (cpu_s(pid) - cpu_before) / idle_s
            alive = clients.alive()
        finally:
            clients.close()
    opened = opened_first + opened_rest
    return {
        "tier": tier,
        "connections": connections,
        "opened": opened,
        "alive_after_idle": alive,
        "errors": errors,
        "users": USERS,
        "max_connections_per_user": per_user,
        "client_processes": CLIENT_PROCESSES,
        "rss_before_kb": rss_before_kb,
        "rss_after_kb": rss_after_kb,
        "kb_per_connection": round((rss_after_kb - rss_before_kb) / max(1, opened), 2),
        "accept": {
            "connections": accept,
            "opened": opened_first,
            "seconds": round(accept_s, 3),
            "per_second": round(opened_first / accept_s, 1) if accept_s else None,
        },
        "rest_seconds": round(rest_s, 3),
        "idle_cpu_share_of_one_core": round(idle_cpu, 4),
    }


def markdown(results: list[dict[str, Any]], info: dict[str, Any], cmd: str) -> str:
    rows = []
    for result in results:
        met = "met" if result["kb_per_connection"] < TARGET_KB_PER_CONNECTION else "NOT met"
        accept = result["accept"]
        rows.append(
            [
                result["tier"],
                f"{result['opened']} / {result['connections']}",
                result["alive_after_idle"],
                f"{result['rss_before_kb'] / 1024:.0f} -> {result['rss_after_kb'] / 1024:.0f}",
                f"**{result['kb_per_connection']}**",
                f"< {TARGET_KB_PER_CONNECTION:g} ({met})",
                f"**{accept['seconds']}** ({accept['per_second']}/s)",
                f"{result['idle_cpu_share_of_one_core'] * 100:.1f}%",
            ]
        )
    first = results[0]
    return section(
        "Idle WebSocket connections",
        cmd,
        info,
        f"{first['client_processes']} client processes (asyncio + websockets) open "
        f"authenticated connections for {first['users']} users "
        f"(`MAX_CONNECTIONS_PER_USER={first['max_connections_per_user']}` by env, so the "
        "per-user cap is not what is measured), up to "
        f"{IN_FLIGHT} in flight per process. Memory is the Daphne process's VmRSS before "
        "and after; every connection was then checked with a ping.",
        table(
            [
                "tier",
                "connections open",
                "answering a ping after idling",
                "Daphne RSS (MB)",
                "KB per connection",
                "target (KB)",
                f"accept {ACCEPT_CONNECTIONS:,} (s)",
                "Daphne CPU while idle",
            ],
            rows,
        ),
    )


def write(results_dir: pathlib.Path | None, results: list[dict[str, Any]], cmd: str) -> str:
    return write_tiers(
        results_dir, NAME, markdown, results, cmd, target_kb_per_connection=TARGET_KB_PER_CONNECTION
    )


def run(results_dir: pathlib.Path, quick: bool) -> None:
    """Both tiers; `quick`: a couple of hundred connections on the TEST_TIER one only, with
    short idle windows, to see that it works."""
    connections = QUICK_CONNECTIONS if quick else FULL_CONNECTIONS
    accept = min(ACCEPT_CONNECTIONS, connections // 2 if quick else connections)
    tier = TIER if quick else "both"
    results = [
        measure(name, connections, accept, idle_s=QUICK_IDLE_S if quick else IDLE_CPU_WINDOW_S)
        for name in tiers_for(tier)
    ]
    cmd = command(f"bench.{NAME}", ["--tier", tier, "--connections", str(connections)])
    write(results_dir, results, cmd)


def main() -> None:
    args_parser = parser(__doc__, "also write the .md/.json here")
    args_parser.add_argument("--connections", type=int, default=FULL_CONNECTIONS)
    args = args_parser.parse_args()
    accept = min(ACCEPT_CONNECTIONS, args.connections)
    results = [measure(tier, args.connections, accept) for tier in tiers_for(args.tier)]
    print(write(args.results, results, command(f"bench.{NAME}")))
    for result in results:
        if result["errors"]:
            print(f"{result['tier']} errors:", result["errors"])


if __name__ == "__main__":
    main()
