"""Markdown tables and PNG plots of the capacity run (bench/capacity.py's JSON)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.capacity import LAG_DELIVERED_SHARE, LAG_P99_S, SYSTEMS, TARGET_STREAMS

# Targets of the issue, for the verdict lines.
TARGET_P99_MS = 150.0
STRETCH_STREAMS = 500
TARGET_WRITE_RATIO = 100


def _n(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _cpu_split(row: dict[str, Any]) -> str:
    return ", ".join(f"{name} {seconds:.1f}" for name, seconds in row["cpu_s"].items())


def _row(steps: list[dict[str, Any]], system: str, streams: int) -> dict[str, Any] | None:
    return next((r for r in steps if r["system"] == system and r["streams"] == streams), None)


def _generations(row: dict[str, Any]) -> int:
    """The generations a step's rows changed are divided by: those checked, else started."""
    checked: int = row["streams_checked"] or row["streams"]
    return checked


def _writes_per_generation(row: dict[str, Any], table: str) -> float | None:
    changed = row["db"].get(f"rows_changed.{table}")
    return None if changed is None else changed / _generations(row)


def _all_writes_per_generation(row: dict[str, Any]) -> float:
    """Rows changed per generation in every table of the system's own (Django's and the
    benchmark's users excepted): ours' conversation and settled usage with the generation."""
    skipped = ("rows_changed.auth_", "rows_changed.django_")
    changed: float = sum(
        value
        for name, value in row["db"].items()
        if name.startswith("rows_changed.") and not name.startswith(skipped)
    )
    return changed / _generations(row)


def capacity_markdown(result: dict[str, Any]) -> str:
    config = result["config"]
    steps = result["steps"]
    lines = [
        "# Capacity",
        "",
        f"Command: `{result['command']}`. Each stream is one generation of "
        f"{config['tokens_per_stream']} tokens at {config['rate_tok_s']:g} tokens/s "
        f"(fake provider, TTFT {config['ttft_ms']} ms, `stamp=1`), streams started evenly over "
        f"{config['ramp_s']:g} s; {config['client_processes']} load generator process(es). "
        f"Ours: 2 Daphne + 2 `run_huey` (HUEY_WORKERS={config['huey_workers_per_process']} "
        f"each), MySQL + Redis, {int(100 * (1 - config['sse_share_ours']))}% WebSocket / "
        f"{int(100 * config['sse_share_ours'])}% SSE clients. Embedded: the embedded default (one "
        "Daphne that runs its generations itself, SQLite, in-memory log and layer; no Redis or "
        "MariaDB), the same clients, stepped up to 100 streams. Baselines: SSE clients only. "
        f"Each system first serves {config.get('warm_up_streams', 0)} streams of "
        f"{config.get('warm_up_tokens', 0)} tokens, unmeasured (what its processes load on "
        "first use is not a cost per token). Ours and the minimal streams server are up "
        "together and take their steps in turn, ours first at each stream count, so that a "
        "change in the machine's speed between minutes falls on both alike; the embedded "
        "default and the naive design run after them.",
        "",
        "Latency is client receipt minus the provider's send time of a token (written into "
        "the token by the fake provider, `stamp=1`; the minimal streams server's producer "
        "stamps at its XADD). *Event* latency uses the newest token of each event: an upper "
        "bound on worker publish -> client receipt, which also holds the provider -> worker "
        "hop. *Token* latency is over every token, so for ours it adds the coalescing wait "
        "(at most 40 ms, widening to 80 ms on a busy worker). Delivered tokens/s is "
        "measured over the steady window in which "
        "every stream of the step was live. CPU-s per 1,000 tokens: the system's processes "
        "(ours: Daphne + worker + Redis + MariaDB; streams: server + producer + Redis; naive: "
        "web + worker + Redis + MariaDB) over the whole step, divided by tokens delivered. "
        "Redis and MariaDB are the machine's shared servers: their CPU includes whatever else "
        "used them meanwhile. The fake provider's and the load generator's CPU are shown "
        "apart and not counted.",
        "",
        f"A step lags when delivered < {LAG_DELIVERED_SHARE:.0%} of offered, p99 > "
        f"{LAG_P99_S * 1000:.0f} ms, or a stream fails; past {TARGET_STREAMS} streams the next "
        "step is then not run.",
        "",
        "| system | streams | offered tok/s | delivered tok/s | event p50 / p99 ms "
        "| token p50 / p99 ms | CPU-s per 1k tok | CPU-s by process | provider CPU-s "
        "| load gen CPU-s (per wall s) | lost / dup chars | failed | lagged |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    # By system (in the order they first ran), then stream count.
    first = {row["system"]: index for index, row in reversed(list(enumerate(steps)))}
    for row in sorted(steps, key=lambda row: (first[row["system"]], row["streams"])):
        per_wall = row["loadgen_cpu_s"] / max(row["wall_s"], 1e-9)
        lines.append(
            f"| {row['system']} | {row['streams']} | {row['offered_tok_s']:.0f} "
            f"| {row['delivered_tok_s']:.0f} | {_n(row['event_p50_ms'])} / "
            f"{_n(row['event_p99_ms'])} | {_n(row['token_p50_ms'])} / {_n(row['token_p99_ms'])} "
            f"| {_n(row['cpu_s_per_1k_tokens'], 3)} | {_cpu_split(row)} "
            f"| {row['cpu_s'].get('provider', 0):.1f} "
            f"| {row['loadgen_cpu_s']:.1f} ({per_wall:.2f}) "
            f"| {row['lost_chars']} / {row['duplicated_chars']} | {row['streams_failed']} "
            f"| {'yes' if row['lagged'] else 'no'} |"
        )
    errors = [(r["system"], r["streams"], e) for r in steps for e in r["errors"]]
    if errors:
        lines += ["", "Errors seen (first of each step):", ""]
        seen = set()
        for system, streams, error in errors:
            if (system, streams) not in seen:
                seen.add((system, streams))
                lines.append(f"- {system} at {streams}: `{error[:300]}`")
    lines += ["", "## Targets", ""]
    lines += _verdicts(result)
    idle = result.get("ours_idle")
    if idle:
        lines += [
            "",
            f"Ours with no client at all, over {idle['seconds']:g} s (the fixed cost: queue "
            "polling by the Huey threads, housekeeping): CPU-s per wall second "
            + ", ".join(f"{k} {v:.3f}" for k, v in idle["cpu_per_wall_s"].items())
            + ".",
        ]
    lines += ["", "## Raw ceiling: the parts alone", ""]
    rtt = result.get("redis_rtt", {})
    for name, row in rtt.items():
        lines.append(
            f"- Redis {name}, sequential from one client: p50 {row['p50_us']} µs, "
            f"p99 {row['p99_us']} µs ({row['count']} calls)."
        )
    lines += [
        "",
        "Channel layer alone (`channels_redis.pubsub.RedisPubSubChannelLayer`, "
        "bench/channel_layers.py: one receiver process holding one channel per group, one "
        "publisher process, 50 messages/s per group):",
        "",
        "| groups | sent | lost | delivered msg/s | p50 ms | p99 ms |",
        "|---|---|---|---|---|---|",
    ]
    for row in result.get("channel_layer", []):
        lines.append(
            f"| {row['groups']} | {row['sent']} | {row['lost']} "
            f"| {row['msgs_per_s']} | {_n(row['p50_ms'])} | {_n(row['p99_ms'])} |"
        )
    lines += ["", "Service next to the minimal streams server at the same stream counts:", ""]
    lines += [
        "| streams | ours event p99 ms | embedded event p99 ms | streams p99 ms "
        "| ours CPU-s/1k | embedded CPU-s/1k | streams CPU-s/1k | naive CPU-s/1k |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for streams in config["steps"]:
        rows = [_row(steps, s, streams) for s in ("ours", "embedded", "streams", "naive")]
        if any(rows):
            cells = [_n(row and row["event_p99_ms"]) for row in rows[:3]]
            cells += [_n(row and row["cpu_s_per_1k_tokens"], 3) for row in rows]
            lines.append(f"| {streams} | " + " | ".join(cells) + " |")
    lines += ["", "## Reconnects: lost characters", ""]
    lines += [
        "Each SSE client drops its connection at 3 random moments (one in each third of its "
        "stream), stays away for 1 s (the `retry: 1000` the service's SSE sends), and "
        "reconnects with `Last-Event-ID`. The naive server has no log: it reads the row "
        "(written only at the end), then subscribes.",
        "",
        "| system | clients | reconnects | expected chars | lost chars | lost share "
        "| duplicated chars | failed |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in result.get("reconnects", []):
        share = row["lost_chars"] / max(1, row["expected_chars"])
        lines.append(
            f"| {row['system']} | {row['streams']} | {row['reconnects']} "
            f"| {row['expected_chars']} | {row['lost_chars']} | {share:.1%} "
            f"| {row['duplicated_chars']} | {row['streams_failed']} |"
        )
    lines += ["", "## Database writes", ""]
    lines += _database(result)
    lines += [
        "",
        f"Load average before: {result['loadavg_before']}; after: {result['loadavg_after']}.",
        f"`uptime` before: `{result['uptime_before']}`; after: `{result['uptime_after']}`.",
        "",
        "Plots: [p99 latency](capacity_p99.png), [CPU per 1,000 tokens](capacity_cpu.png), "
        "[delivered tokens/s](capacity_throughput.png).",
        "",
    ]
    return "\n".join(lines)


def _verdicts(result: dict[str, Any]) -> list[str]:
    steps = result["steps"]
    lines = []
    ours = _row(steps, "ours", TARGET_STREAMS)
    if ours is None:
        why = (
            "an earlier step lagged"
            if TARGET_STREAMS in result["config"]["steps"]
            else "not among this run's steps"
        )
        lines.append(f"- {TARGET_STREAMS} streams: not run ({why}).")
    else:
        p99 = ours["event_p99_ms"]
        lost = ours["lost_chars"] + ours["duplicated_chars"] + ours["streams_failed"]
        verdict = "met" if p99 is not None and p99 < TARGET_P99_MS and lost == 0 else "NOT met"
        gap = "" if verdict == "met" or p99 is None else f" ({p99 - TARGET_P99_MS:+.0f} ms)"
        lines.append(
            f"- {TARGET_STREAMS} streams with event p99 < {TARGET_P99_MS:.0f} ms and nothing "
            f"lost: **{verdict}**: p99 {_n(p99)} ms{gap}, lost/dup chars "
            f"{ours['lost_chars']}/{ours['duplicated_chars']}, failed streams "
            f"{ours['streams_failed']}, delivered {ours['delivered_tok_s']:.0f} of "
            f"{ours['offered_tok_s']:.0f} tok/s."
        )
    ours_rows = [r for r in steps if r["system"] == "ours"]
    if ours_rows:
        clean = [r for r in ours_rows if not r["lagged"]]
        best = max((r["streams"] for r in clean), default=0)
        largest = f"{best} streams" if best else "none (the first step lagged)"
        tried = any(r["streams"] >= STRETCH_STREAMS for r in ours_rows)
        lines.append(
            f"- Stretch, {STRETCH_STREAMS} streams: **NOT met** ("
            + ("run" if tried else "not run: a smaller step lagged")
            + f"); largest step without lag: {largest}."
            if best < STRETCH_STREAMS
            else f"- Stretch, {STRETCH_STREAMS} streams: **met**."
        )
    for streams in result["config"]["steps"]:
        mine, naive = _row(steps, "ours", streams), _row(steps, "naive", streams)
        if mine and naive and mine["cpu_s_per_1k_tokens"] and naive["cpu_s_per_1k_tokens"]:
            lower = mine["cpu_s_per_1k_tokens"] < naive["cpu_s_per_1k_tokens"]
            lines.append(
                f"- CPU per delivered token below the naive baseline at {streams} streams: "
                f"**{'yes' if lower else 'no'}** ({mine['cpu_s_per_1k_tokens']:.3f} vs "
                f"{naive['cpu_s_per_1k_tokens']:.3f} CPU-s per 1,000 tokens)."
            )
    return lines


def _database(result: dict[str, Any]) -> list[str]:
    steps = result["steps"]
    lines = [
        "Rows changed per generation, from MariaDB's `information_schema.TABLE_STATISTICS` "
        "(userstat) for the system's own database, so other clients of the shared server do "
        "not count: in the generation's table, and in all of the system's tables (ours: with "
        "the conversation's row, inserted and given its current turn, and the user's settled "
        "usage of the day; the benchmark's users and Django's own tables not counted). The "
        "server-wide `Com_update` / `Com_insert` deltas are shown beside it (they include other "
        "clients; an INSERT ... SELECT is not a `Com_insert`).",
        "",
        "| run | generations | tokens each | rows changed per generation (its table / all) "
        "| Com_update Δ | Com_insert Δ | Com_select Δ | MariaDB CPU-s "
        "| MariaDB share of system CPU | peak Threads_connected |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    candidates = [r for r in steps if r["system"] in ("ours", "naive")]
    if result.get("write_per_token"):
        candidates.append(result["write_per_token"])
    per_gen: dict[str, float] = {}
    for row in candidates:
        table = "api_generation" if row["system"] == "ours" else "generation"
        writes = _writes_per_generation(row, table)
        if writes is None:
            continue
        per_gen.setdefault(f"{row['system']}:{row['tokens_per_stream']}", writes)
        db = row["db"]
        mysql_cpu = row["cpu_s"].get("mysql", 0.0)
        share = mysql_cpu / max(row["service_cpu_s"], 1e-9)
        lines.append(
            f"| {row['system']} at {row['streams']} streams | {row['streams_checked']} "
            f"| {row['tokens_per_stream']} | {writes:.1f} / {_all_writes_per_generation(row):.1f} "
            f"| {db.get('global.Com_update', 0)} "
            f"| {db.get('global.Com_insert', 0)} | {db.get('global.Com_select', 0)} "
            f"| {mysql_cpu:.1f} | {share:.0%} | {row.get('mysql_threads_connected_max', '-')} |"
        )
    ours = _row(steps, "ours", TARGET_STREAMS) or next(
        (r for r in steps if r["system"] == "ours"), None
    )
    per_token = result.get("write_per_token")
    if ours and per_token:
        mine = _writes_per_generation(ours, "api_generation")
        theirs_per_token = (_writes_per_generation(per_token, "generation") or 0) / max(
            1, per_token["tokens_per_stream"]
        )
        if mine:
            # The write-per-token design writes once per token: scale to ours' length.
            theirs = theirs_per_token * ours["tokens_per_stream"]
            ratio = theirs / mine
            verdict = "met" if ratio >= TARGET_WRITE_RATIO else "NOT met"
            everything = _all_writes_per_generation(ours)
            theirs_all = _all_writes_per_generation(per_token) / max(
                1, per_token["tokens_per_stream"]
            )
            ratio_all = theirs_all * ours["tokens_per_stream"] / everything
            verdict_all = "met" if ratio_all >= TARGET_WRITE_RATIO else "NOT met"
            lines += [
                "",
                f"- Rows written per {ours['tokens_per_stream']}-token generation: ours "
                f"{mine:.1f}, write-per-token {theirs:.0f} ({theirs_per_token:.2f} per token, "
                f"measured): {ratio:.0f}x fewer; target ≥ {TARGET_WRITE_RATIO}x: **{verdict}**.",
                f"- Counting every table, ours {everything:.1f} rows per generation (its "
                "conversation's two and its user's settled usage, which the write-per-token "
                f"design does not have) against {theirs_all * ours['tokens_per_stream']:.0f}: "
                f"{ratio_all:.0f}x fewer (≥ {TARGET_WRITE_RATIO}x: **{verdict_all}**).",
            ]
    return lines


def capacity_plots(result: dict[str, Any], results_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = result["steps"]
    charts = [
        ("capacity_p99.png", "event_p99_ms", "p99 latency, provider send -> client (ms)", True),
        ("capacity_cpu.png", "cpu_s_per_1k_tokens", "CPU-seconds per 1,000 tokens", False),
        ("capacity_throughput.png", "delivered_tok_s", "delivered tokens/s (steady)", False),
    ]
    for filename, key, label, log in charts:
        figure, axes = plt.subplots(figsize=(7, 4.5))
        for system, title in SYSTEMS.items():
            rows = [r for r in steps if r["system"] == system and r[key] is not None]
            if rows:
                axes.plot(
                    [r["streams"] for r in rows], [r[key] for r in rows], marker="o", label=title
                )
        if key == "delivered_tok_s":
            counts = sorted({r["streams"] for r in steps})
            axes.plot(
                counts,
                [c * result["config"]["rate_tok_s"] for c in counts],
                linestyle="--",
                color="grey",
                label="offered",
            )
        if key == "event_p99_ms":
            axes.axhline(TARGET_P99_MS, linestyle=":", color="red", label="target 150 ms")
        if log:
            axes.set_yscale("log")
        axes.set_xlabel("concurrent streams (50 tokens/s each)")
        axes.set_ylabel(label)
        axes.grid(True, alpha=0.3)
        axes.legend()
        figure.tight_layout()
        figure.savefig(results_dir / filename, dpi=110)
        plt.close(figure)
