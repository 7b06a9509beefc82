"""`zimsend bench [--quick] [--json PATH] [--scenarios ...]`: start the stack, run, report.

Order matters and is fixed: the ceiling first (it needs the machine to itself), the accept
path over gRPC then REST (they leave only far-future scheduled messages behind, which nothing
dispatches), the pipeline scenarios (their phones, worker and receiver are stopped after them;
the overload's backlog then waits for phones that never return), and last the streams, on a
fresh server process: 10,000 phones connecting write ~20,000 presence events, which would
otherwise sit in the worker's outbox ahead of the pipeline's webhooks. The webhook stage alone
(`webhooks`: one worker, its own receiver) runs before the pipeline, while the outbox holds
nothing else. The table keeps the issue's numbering. Each scenario runs for a bounded time; one
that fails is reported as an error and the others still run.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ALL = ["ceiling", "grpc", "rest", "e2e", "streams", "overload", "webhooks", "postgres"]
#: Run only when named: `soak` takes 10 minutes (memory of every process under steady load).
OPT_IN = ["soak"]


@dataclass(frozen=True)
class Plan:
    """Durations and sizes: the full run, or `--quick` (under 3 minutes)."""

    rpc_seconds: float
    warmup: float
    concurrency: int
    streams_phones: int
    streams_batch: int
    e2e_phones: int
    e2e_rate: float
    e2e_seconds: float
    drain_seconds: float
    overload_seconds: float
    overload_concurrency: int
    webhook_events: int


FULL = Plan(
    rpc_seconds=10,
    warmup=2,
    concurrency=64,
    streams_phones=10_000,
    streams_batch=100,
    e2e_phones=100,
    e2e_rate=1000,
    e2e_seconds=20,
    drain_seconds=60,
    overload_seconds=60,
    overload_concurrency=256,
    webhook_events=30_000,
)
QUICK = Plan(
    rpc_seconds=3,
    warmup=1,
    concurrency=64,
    streams_phones=1_000,
    streams_batch=100,
    e2e_phones=50,
    e2e_rate=1000,
    e2e_seconds=6,
    drain_seconds=20,
    overload_seconds=10,
    overload_concurrency=256,
    webhook_events=6_000,
)


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "bench", help="benchmark the stack on loopback (prints a table, writes JSON)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="short runs and 1,000 phones (under 3 minutes)"
    )
    parser.add_argument(
        "--json",
        type=Path,
        default=Path("bench-results.json"),
        help="where to write every number (default bench-results.json)",
    )
    parser.add_argument(
        "--scenarios",
        default=",".join(ALL),
        help=f"comma-separated subset of {','.join(ALL)}; or soak (10 minutes "
        "of steady REST load: does any process's memory keep growing?)",
    )
    parser.add_argument(
        "--seconds",
        type=float,
        default=None,
        help="override every scenario's measured duration (smoke tests)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    parser.set_defaults(handler=_handler)


def _handler(args: argparse.Namespace) -> int:
    chosen = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in ALL + OPT_IN]
    if unknown:
        print(
            f"zimsend bench: unknown scenario(s) {', '.join(unknown)}; choose from "
            f"{', '.join(ALL + OPT_IN)}",
            file=sys.stderr,
        )
        return 2
    if "soak" in chosen:
        if chosen != ["soak"]:
            print("zimsend bench: run the soak alone (--scenarios soak)", file=sys.stderr)
            return 2
        return _soak(args)
    plan = QUICK if args.quick else FULL
    if args.seconds is not None:
        s = args.seconds
        plan = Plan(
            **{
                **plan.__dict__,
                "rpc_seconds": s,
                "warmup": min(plan.warmup, s),
                "e2e_seconds": s,
                "overload_seconds": s,
                "drain_seconds": 2 * s + 5,
                "webhook_events": min(plan.webhook_events, max(100, round(200 * s))),
            }
        )
    root = Path(tempfile.mkdtemp(prefix="zimsend-bench-"))
    started = time.monotonic()
    results = run(plan, [s for s in ALL if s in chosen], root)
    from zimsend.server.bench.report import details, table

    document = {
        "machine": machine(),
        "quick": args.quick,
        "plan": plan.__dict__,
        "command": " ".join(["zimsend", *sys.argv[1:]]),
        "seconds": round(time.monotonic() - started, 1),
        "results": results,
    }
    args.json.write_text(json.dumps(document, indent=2))
    print(table(results, ALL))
    print()
    print(details(results))
    print(
        f"\n{document['seconds']} s; every number in {args.json}"
        + (f"; files in {root}" if args.keep else "")
    )
    if not args.keep:
        import shutil

        shutil.rmtree(root, ignore_errors=True)
    return 1 if any("error" in r for r in results.values()) else 0


def _soak(args: argparse.Namespace) -> int:
    """`--scenarios soak`: its own stack, its own report (see soak.py)."""
    from zimsend.server.bench import soak
    from zimsend.server.bench.stack import Stack

    seconds = args.seconds if args.seconds is not None else soak.SECONDS
    root = Path(tempfile.mkdtemp(prefix="zimsend-soak-"))
    stack = Stack(root)
    print(
        f"zimsend bench: soak, {seconds:g} s of REST load at {soak.RATE:g}/s, RSS every "
        f"{soak.SAMPLE_EVERY_S:g} s (files in {root})",
        file=sys.stderr,
        flush=True,
    )
    try:
        tenant = stack.provision("bench-soak", soak.AGENTS)
        stack.start_server()
        result = soak.soak(
            stack,
            tenant,
            seconds=seconds,
            log=lambda line: print(line, file=sys.stderr, flush=True),
        )
    finally:
        stack.close()
    document = {
        "machine": machine(),
        "command": " ".join(["zimsend", *sys.argv[1:]]),
        "results": {"soak": result},
    }
    args.json.write_text(json.dumps(document, indent=2))
    print(soak.table(result))
    print(f"\nevery sample's verdict in {args.json}" + (f"; files in {root}" if args.keep else ""))
    if not args.keep:
        import shutil

        shutil.rmtree(root, ignore_errors=True)
    return 1 if soak.failed(result) else 0


def run(plan: Plan, chosen: list[str], root: Path) -> dict[str, dict[str, Any]]:
    from zimsend.server.bench import rpc, streams
    from zimsend.server.bench.stack import Stack

    stack = Stack(root)
    results: dict[str, dict[str, Any]] = {}

    def attempt(name: str, fn: Any, **kw: Any) -> None:
        if name not in chosen:
            return
        print(f"zimsend bench: {name}…", file=sys.stderr, flush=True)
        try:
            results[name] = fn(**kw)
        except Exception as exc:  # noqa: BLE001 - reported in the table, others still run
            traceback.print_exc()
            results[name] = {"error": f"{type(exc).__name__}: {exc}"}

    def rps(name: str) -> float | None:
        return results.get(name, {}).get("rps")

    p = plan
    try:
        accept = stack.provision("bench-accept", 0)
        e2e_tenant = (
            stack.provision("bench-e2e", p.e2e_phones)
            if {"e2e", "overload"} & set(chosen)
            else None
        )
        stream_tenant = (
            stack.provision("bench-streams", p.streams_phones) if "streams" in chosen else None
        )
        rpc_kw = {"concurrency": p.concurrency, "duration": p.rpc_seconds, "warmup": p.warmup}
        attempt("ceiling", rpc.ceiling, stack=stack, tenant=accept, **rpc_kw)
        stack.start_server()
        attempt(
            "grpc", rpc.grpc_send, stack=stack, tenant=accept, ceiling_rps=rps("ceiling"), **rpc_kw
        )
        if "rest" in chosen:
            base_url = stack.start_envoy()
            attempt(
                "rest",
                rpc.rest_send,
                stack=stack,
                tenant=accept,
                base_url=base_url,
                grpc_rps=rps("grpc"),
                **rpc_kw,
            )
        if "webhooks" in chosen:
            from zimsend.server.bench.webhooks import webhooks

            attempt(
                "webhooks",
                webhooks,
                stack=stack,
                events=p.webhook_events,
                timeout=max(60.0, p.webhook_events / 50),
            )
        if e2e_tenant is not None:
            try:
                _pipeline(stack, e2e_tenant, p, attempt, results)
            except Exception as exc:  # noqa: BLE001 - setup failed: both scenarios say so
                traceback.print_exc()
                for name in ("e2e", "overload"):
                    results.setdefault(name, {"error": f"setup: {type(exc).__name__}: {exc}"})
        if stream_tenant is not None:
            attempt(
                "streams",
                streams.streams,
                stack=stack,
                tenant=stream_tenant,
                timeout=max(60.0, 3.0 * p.streams_phones / p.streams_batch),
                batch=p.streams_batch,
            )
    finally:
        stack.close()
    # Last, on its own stack and PostgreSQL: the SQLite numbers above are its comparison.
    from zimsend.server.bench import postgres

    attempt(
        "postgres",
        postgres.topology,
        root=root / "postgres",
        phones=p.e2e_phones,
        rate=p.e2e_rate,
        concurrency=p.concurrency,
        rpc_seconds=p.rpc_seconds,
        e2e_seconds=p.e2e_seconds,
        warmup=p.warmup,
        drain=p.drain_seconds,
        sqlite=results,
    )
    return results


def _pipeline(
    stack: Any, tenant: Any, p: Plan, attempt: Any, results: dict[str, dict[str, Any]]
) -> None:
    from zimsend.server.bench import pipeline

    receiver, receiver_url = stack.start_receiver()
    worker = stack.start_worker()
    phones = None
    try:
        stack.configure(tenant, webhook_url=receiver_url, unpaced=True)
        phones = stack.start_phones(tenant, "e2e-phones", send_delay=0.01, delivery_delay=0.05)
        phones.wait_connected(len(tenant.devices), 60)
        common = {
            "stack": stack,
            "tenant": tenant,
            "phones": phones,
            "receiver_url": receiver_url,
            "warmup": p.warmup,
        }
        attempt(
            "e2e",
            pipeline.e2e,
            rate=p.e2e_rate,
            concurrency=p.concurrency,
            duration=p.e2e_seconds,
            drain=p.drain_seconds,
            **common,
        )
        sustainable = results.get("e2e", {}).get("e2e_rps")
        attempt(
            "overload",
            pipeline.overload,
            concurrency=p.overload_concurrency,
            duration=p.overload_seconds,
            sustainable_rps=sustainable,
            **common,
        )
    finally:
        for program in (phones.program if phones else None, worker, receiver):
            stack.stop(program)


def machine() -> dict[str, Any]:
    import os

    import grpc

    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        mem_kb = 0
    from google.protobuf.internal import api_implementation

    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "memory_gb": round(mem_kb / 2**20, 1),
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "protobuf_backend": api_implementation.Type(),
        "platform": platform.platform(),
    }
