"""The one table `zimsend bench` prints (the JSON file holds every number behind it).

One row per scenario: the headline rate, caller latency, the ratio the goal is about, the goal,
and MET / MISSED. A scenario that failed to run shows its error instead of numbers: a bench
that hides a broken scenario behind an empty cell would be worse than none.
"""

from __future__ import annotations

from typing import Any

__all__ = ["table"]

_HEAD = ("#", "scenario", "throughput", "p50 ms", "p99 ms", "ratio", "goal", "")


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.1f}" if value >= 10 else f"{value:.3g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _met(row: dict[str, Any]) -> str:
    if "error" in row:
        return "ERROR"
    met = row.get("met")
    return "-" if met is None else ("MET" if met else "MISSED")


def _cells(n: int, name: str, row: dict[str, Any]) -> list[str]:
    if "error" in row:
        return [str(n), name, "error: " + str(row["error"])[:60], "", "", "", "", "ERROR"]
    if name == "ceiling":
        return [
            str(n),
            "ceiling (trivial grpc.aio)",
            f"{_fmt(row['rps'])} req/s",
            _fmt(row["p50_ms"]),
            _fmt(row["p99_ms"]),
            "1",
            "baseline",
            "",
        ]
    if name in ("grpc", "rest"):
        label = "SendSms gRPC (accept path)" if name == "grpc" else "SendSms REST via Envoy"
        return [
            str(n),
            label,
            f"{_fmt(row['rps'])} req/s",
            _fmt(row["p50_ms"]),
            _fmt(row["p99_ms"]),
            _fmt(row.get("ratio")),
            row["goal"],
            _met(row),
        ]
    if name == "streams":
        return [
            str(n),
            f"streams: {row['phones']:,} phones",
            f"{_fmt(row['rss_per_phone_kb'])} KB/phone",
            "",
            "",
            f"storm {_fmt(row['storm_all_online_s'])} s"
            if row["storm_all_online_s"] is not None
            else f"storm: {row['storm_online_at_timeout']:,} online after "
            f"{row['storm_timeout_s']:.0f} s",
            row["goal"],
            _met(row),
        ]
    if name == "e2e":
        lat = row["half_load"]["accept_to_phone"]
        return [
            str(n),
            "end to end (accept->webhook)",
            f"{_fmt(row['e2e_rps'])} msg/s",
            _fmt(lat["p50_ms"]),
            _fmt(lat["p99_ms"]),
            f"@{_fmt(row['half_load']['offered_rps'])}/s",
            row["goal"],
            _met(row),
        ]
    if name == "overload":
        lat = row["caller_latency"]
        return [
            str(n),
            "overload (closed loop)",
            f"{_fmt(row['e2e_rps'])} msg/s",
            _fmt(lat["p50_ms"]),
            _fmt(lat["p99_ms"]),
            _fmt(row.get("ratio")),
            row["goal"],
            _met(row),
        ]
    if name == "webhooks":
        return [
            str(n),
            "webhooks: one worker",
            f"{_fmt(row['rps'])} POSTs/s",
            "",
            "",
            f"{_fmt(row['cpu_share_of']['worker'])} core",
            row["goal"],
            _met(row),
        ]
    if name == "postgres":
        from zimsend.server.bench import postgres

        return postgres.cells(n, row, _fmt, _met(row))
    return [str(n), name, "", "", "", "", "", _met(row)]


def table(results: dict[str, dict[str, Any]], order: list[str]) -> str:
    rows = [list(_HEAD)] + [
        _cells(n, name, results[name]) for n, name in enumerate(order, 1) if name in results
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(_HEAD))]
    lines = []
    for i, r in enumerate(rows):
        lines.append(" | ".join(cell.ljust(widths[j]) for j, cell in enumerate(r)).rstrip())
        if i == 0:
            lines.append("-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def details(results: dict[str, dict[str, Any]]) -> str:
    """A few lines under the table: what each headline number rests on."""
    out: list[str] = []
    for name in ("ceiling", "grpc"):
        r = results.get(name)
        if r and "error" not in r:
            out.append(
                f"{name}: generator CPU {r['generator_cpu_share']} core, processes "
                f"{r['cpu_share_of']}; two generators: {_fmt(r['two_generators_rps'])}"
                f" req/s"
            )
    r = results.get("rest")
    if r and "error" not in r:
        out.append(
            f"rest: generator CPU {r['generator_cpu_share']} core, processes {r['cpu_share_of']}"
        )
    r = results.get("e2e")
    if r and "error" not in r:
        out.append(
            f"e2e: offered {_fmt(r['offered_rps'])}/s, stages/s {r['stages_rps']}, "
            f"drain {r['drain_s']} s (left {r['backlog_left']}), completed "
            f"{r['completed']}; CPU {r['cpu_share_of']}"
        )
        h = r["half_load"]
        out.append(
            f"e2e half load: stages/s {h['stages_rps']}, accept->phone {h['accept_to_phone']}"
        )
    r = results.get("overload")
    if r and "error" not in r:
        out.append(
            f"overload: accepted {_fmt(r['accepted_rps'])}/s, stages/s "
            f"{r['stages_rps']}, caller outcomes {r['caller_outcomes']}, backlog at end "
            f"{r['backlog_at_end']}; CPU {r['cpu_share_of']}"
        )
    r = results.get("webhooks")
    if r and "error" not in r:
        out.append(
            f"webhooks: {r['events']:,} events, {r['posts_in_window']:,} POSTs in "
            f"{r['window_s']} s, worker {r['worker_cpu_ms_per_post']} ms CPU/POST, "
            f"all outcomes written after {r['all_recorded_s']} s; received "
            f"{r['event_ids']} event_ids signed ({r['duplicates']} duplicates, "
            f"{r['bad_signatures']} bad signatures); CPU {r['cpu_share_of']}"
        )
    r = results.get("postgres")
    if r and "error" not in r:
        from zimsend.server.bench import postgres

        out.append(postgres.details(r, _fmt))
    r = results.get("streams")
    if r and "error" not in r:
        out.append(
            f"streams: RSS {r['server_rss_idle_mb']} -> {r['server_rss_loaded_mb']} MB, "
            f"connect {r['initial_connect_s']} s, server restart "
            f"{r['server_restart_s']} s, reconnect attempts {r['reconnect_attempts']}"
        )
    return "\n".join(out)
