"""A flood of bad API keys while a tenant uploads files: are the tenant's writes unaffected?

    .venv/bin/python -m bench.auth_flood [--seconds 30] [--out docs/auth-flood-bench.md]

Starts the API (uvicorn, one process) on a scratch PostgreSQL database, with the rate limits in
the local Redis (database 15, a private key prefix), and creates one tenant. Then three phases of
``--seconds`` each, in one run on the same server:

- ``baseline``: the tenant alone uploads small files (``POST /v1/files``: a row and a chained
  audit record each), from its own address, one at a time;
- ``flood, one address``: the same, while ``--flooders`` concurrent connections send
  well-formed unknown keys (``sp-`` + 48 random characters) from one address;
- ``flood, many addresses``: the same, the flood spread over ``--addresses`` addresses, so that
  no address reaches its limit and every bad key is looked up (the database's worst case).

Addresses are set with ``X-Forwarded-For``, which uvicorn takes from a proxy on 127.0.0.1. For
each phase: the tenant's uploads, their latency (median, p95, p99) and errors; the flood's
requests and their statuses. At the end, after the server's shutdown flush: how many
``api_key.authentication_failed`` records the flood left in the audit chain, and how many
refusals they count. Results go to ``--out`` as Markdown.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import random
import socket
import statistics
import string
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import redis
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.auth import service as auth_service
from app.core.db import create_db_engine
from app.db import migrate
from app.db.models import AuditRecord
from tests.databases import scratch_postgres

REDIS_URL = "redis://127.0.0.1:6379/15"
TENANT_ADDRESS = "198.51.100.1"
ALPHABET = string.ascii_letters + string.digits


@dataclass
class Phase:
    name: str
    latencies_s: list[float] = field(default_factory=list)
    tenant_errors: Counter[int] = field(default_factory=Counter)
    flood_statuses: Counter[int] = field(default_factory=Counter)

    def row(self, seconds: float) -> str:
        lat = sorted(self.latencies_s) or [0.0]
        ms = [1000 * lat[min(len(lat) - 1, int(len(lat) * q))] for q in (0.95, 0.99)]
        errors = sum(self.tenant_errors.values())
        flood = sum(self.flood_statuses.values())
        statuses = ", ".join(f"{k}: {v}" for k, v in sorted(self.flood_statuses.items())) or "-"
        return (
            f"| {self.name} | {len(self.latencies_s)} | {1000 * statistics.median(lat):.1f} | "
            f"{ms[0]:.1f} | {ms[1]:.1f} | {errors} | {flood} ({flood / seconds:.0f}/s) | "
            f"{statuses} |"
        )


def quantile(phase: Phase, q: float) -> float:
    lat = sorted(phase.latencies_s) or [0.0]
    return lat[min(len(lat) - 1, int(len(lat) * q))]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def training_file(n: int) -> bytes:
    lines = [
        json.dumps(
            {
                "messages": [
                    {"role": "user", "content": f"Upload {n}, question {i}?"},
                    {"role": "assistant", "content": f"Answer {i}."},
                ]
            }
        )
        for i in range(10)
    ]
    return ("\n".join(lines) + "\n").encode()


def tenant_writes(
    base: str, key: str, phase: Phase, stop: threading.Event, rate: float, first: int
) -> None:
    """Uploads at ``rate`` per second (an open loop: a slow answer does not lower the rate
    asked for, it shows in the latency)."""
    headers = {"Authorization": f"Bearer {key}", "X-Forwarded-For": TENANT_ADDRESS}
    with httpx.Client(base_url=base, timeout=30) as client:
        n = first
        next_at = time.monotonic()
        while not stop.is_set():
            time.sleep(max(0.0, next_at - time.monotonic()))
            next_at += 1 / rate
            n += 1
            files = {"file": (f"t{n}.jsonl", training_file(n))}
            started = time.perf_counter()
            response = client.post(
                "/v1/files", files=files, data={"purpose": "fine-tune"}, headers=headers
            )
            elapsed = time.perf_counter() - started
            if response.status_code == 200:
                phase.latencies_s.append(elapsed)
            else:
                phase.tenant_errors[response.status_code] += 1


async def flood(base: str, addresses: int, connections: int, phase: Phase, seconds: float) -> None:
    deadline = time.monotonic() + seconds

    async def one(client: httpx.AsyncClient, index: int) -> None:
        sent = 0
        while time.monotonic() < deadline:
            key = "sp-" + "".join(random.choices(ALPHABET, k=48))
            address = f"10.{index % 250}.{(sent // 250) % 250}.{sent % 250}"
            if addresses == 1:
                address = "203.0.113.66"
            sent += 1
            headers = {"Authorization": f"Bearer {key}", "X-Forwarded-For": address}
            try:
                response = await client.get("/v1/fine_tuning/jobs", headers=headers)
                phase.flood_statuses[response.status_code] += 1
            except httpx.HTTPError:
                phase.flood_statuses[0] += 1

    limits = httpx.Limits(max_connections=connections)
    async with httpx.AsyncClient(base_url=base, timeout=30, limits=limits) as client:
        await asyncio.gather(*(one(client, i) for i in range(connections)))


def flood_process(
    base: str,
    addresses: int,
    connections: int,
    seconds: float,
    statuses: multiprocessing.Queue[Counter[int]],
) -> None:
    phase = Phase("flood")
    asyncio.run(flood(base, addresses, connections, phase, seconds))
    statuses.put(phase.flood_statuses)


def run_phase(
    base: str, key: str, name: str, args: argparse.Namespace, addresses: int, first: int
) -> Phase:
    phase = Phase(name)
    stop = threading.Event()
    writer = threading.Thread(
        target=tenant_writes, args=(base, key, phase, stop, args.tenant_rate, first)
    )
    seconds, connections = args.seconds, args.flooders
    writer.start()
    try:
        if addresses:
            # In a process of its own: in this one, the flood's client would hold the GIL and
            # its delays would count as the tenant's latency.
            statuses: multiprocessing.Queue[Counter[int]] = multiprocessing.Queue()
            flooder = multiprocessing.Process(
                target=flood_process, args=(base, addresses, connections, seconds, statuses)
            )
            flooder.start()
            phase.flood_statuses = statuses.get()
            flooder.join()
        else:
            time.sleep(seconds)
    finally:
        stop.set()
        writer.join()
    print(phase.row(seconds), flush=True)
    return phase


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--flooders", type=int, default=32, help="concurrent flood connections")
    parser.add_argument("--addresses", type=int, default=10_000)
    parser.add_argument("--tenant-rate", type=float, default=5.0, help="uploads per second")
    parser.add_argument("--out", type=Path, default=Path("docs/auth-flood-bench.md"))
    args = parser.parse_args()
    prefix = f"safepatch-bench:{uuid.uuid4().hex}:"
    with scratch_postgres() as url, tempfile.TemporaryDirectory() as data_dir:
        migrate.upgrade(url)
        engine = create_db_engine(url)
        with Session(engine) as session:
            _, _, key = auth_service.create_tenant(session, name="bench", actor="bench")
            session.commit()
        port = free_port()
        env = os.environ | {
            "SAFEPATCH_DATABASE_URL": url,
            "SAFEPATCH_DATA_DIR": data_dir,
            "SAFEPATCH_RATE_LIMIT_REDIS_URL": REDIS_URL,
            "SAFEPATCH_RATE_LIMIT_KEY_PREFIX": prefix,
            "SAFEPATCH_UPLOAD_MIN_EXAMPLES": "1",
            "SAFEPATCH_LOG_LEVEL": "WARNING",
        }
        command = [sys.executable, "-m", "uvicorn", "app.main:create_app", "--factory"]
        server = subprocess.Popen(
            [*command, "--port", str(port), "--log-level", "warning", "--no-access-log"], env=env
        )
        base = f"http://127.0.0.1:{port}"
        try:
            for _ in range(300):
                try:
                    if httpx.get(f"{base}/healthz").status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.1)
            client_limit = int(env.get("SAFEPATCH_CLIENT_RATE_LIMIT_REQUESTS", "1200"))
            phases = [
                run_phase(base, key, "baseline (no flood)", args, 0, 0),
                run_phase(base, key, "flood, one address", args, 1, 100_000),
                run_phase(base, key, "flood, many addresses", args, args.addresses, 200_000),
            ]
        finally:
            server.terminate()  # the shutdown flush writes the last minute's counts
            server.wait(timeout=60)
            client = redis.Redis.from_url(REDIS_URL)
            for stale in client.scan_iter(f"{prefix}*"):
                client.delete(stale)
        with Session(engine) as session:
            failed = select(AuditRecord).where(
                AuditRecord.action == "api_key.authentication_failed"
            )
            records = list(session.scalars(failed))
            total = session.scalar(select(func.count()).select_from(AuditRecord))
        engine.dispose()
    refused = sum(p.flood_statuses[401] for p in phases)
    counted = sum(int(r.payload["count"]) for r in records)
    report(args, phases, client_limit, refused, len(records), counted, total or 0)


def report(
    args: argparse.Namespace,
    phases: list[Phase],
    client_limit: int,
    refused: int,
    records: int,
    counted: int,
    total: int,
) -> None:
    lines = [
        "# Bad-key flood while a tenant writes",
        "",
        "`python -m bench.auth_flood` (bench/auth_flood.py): one uvicorn process on PostgreSQL, "
        f"rate limits in Redis (the defaults: {client_limit} requests per address and 600 per "
        f"tenant per 60 s), {args.seconds:g} s per phase, {args.flooders} flood connections, "
        f"the tenant uploading {args.tenant_rate:g} files a second. Machine: {platform.machine()}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}; the load generators share "
        "the cores with the server (on the machine of the figures below, so did a long model "
        "run in the background).",
        "",
        "The tenant uploads 10-example files (each a `files` row and a chained `file.created` "
        "audit record) from its own address. Latencies are of its successful uploads, in ms.",
        "",
        "| phase | tenant uploads | median | p95 | p99 | tenant errors | flood requests | "
        "flood statuses |",
        "|---|---|---|---|---|---|---|---|",
        *(p.row(args.seconds) for p in phases),
        "",
        f"The flood's {refused} refused keys (401) left **{records}** "
        f"`api_key.authentication_failed` records in the audit chain, counting {counted} "
        f"refusals (one record per prefix and minute, at most 20 unknown prefixes a minute and "
        f"the rest under `*`); the chain holds {total} records in all. Before this change each "
        f"401 was one chained record: {refused} inserts competing for the chain head.",
        "",
        "Tenant upload latency under the flood, relative to the baseline (median, p95): "
        + ", ".join(
            f"{p.name}: {quantile(p, 0.5) / quantile(phases[0], 0.5):.2f}x, "
            f"{quantile(p, 0.95) / quantile(phases[0], 0.95):.2f}x"
            for p in phases[1:]
        )
        + f"; tenant errors in all: {sum(sum(p.tenant_errors.values()) for p in phases)}. "
        "The flood's requests are as many as one API process answers here (up to "
        f"{max(sum(p.flood_statuses.values()) for p in phases) / args.seconds:.0f} a "
        "second): the tenant's uploads wait their turn behind them for the same threads and "
        "cores, and that wait is what the latency under the flood shows. Nothing that the "
        "flood makes the server write competes with them any more. A "
        "flood from one address is refused with 429 before its keys are looked up once the "
        "address's burst is spent; a flood spread over many addresses is the worst case: "
        "each key is looked up (one indexed SELECT) and counted in memory, and nothing is "
        "written for it until the minute's flush.",
        "",
    ]
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
