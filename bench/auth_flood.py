"""A flood of forged API keys while a tenant uploads files: are the tenant's writes unaffected?

    .venv/bin/python -m bench.auth_flood [--seconds 30] [--flood-rate 100] [--out FILE]

Starts the API (uvicorn, one process) on a scratch PostgreSQL database, with the rate limits in
the local Redis (database 15, a private key prefix), and creates one tenant. The tenant uploads
small files (``POST /v1/files``: a row and a chained audit record each) from its own address at
``--tenant-rate`` a second, through four phases of ``--seconds`` each, in one run on the same
server:

- ``no flood``: the tenant alone;
- ``control flood``: ``--flood-rate`` requests a second to ``/healthz``, which authenticates
  nothing and reads nothing, with the same headers as the forged flood's. The flood's client
  runs on the same cores as the server (a 2-core machine has no others), so this phase measures
  what a flood of that rate costs the tenant through CPU contention alone;
- ``forged keys, one address``: the same rate of well-formed unknown keys (``sp-`` + 48 random
  characters) to ``GET /v1/fine_tuning/jobs`` from one address (refused with 429 once the
  address's burst is spent, before the key is looked up);
- ``forged keys, many addresses``: the same, spread over ``--addresses`` addresses, so that no
  address reaches its limit and every key is looked up (the database's worst case).

The floods are open loops: a request is due every ``1 / --flood-rate`` s whatever the answers,
with at most ``--flooders`` in flight; a request due while that many are in flight is not sent
(counted), so a server that cannot keep up shows as a lower rate sent, not as a pile-up in the
client. The forged phases' latency relative to the control's is what the authentication path
costs the tenant beyond contention for the cores.

Addresses are set with ``X-Forwarded-For``, which uvicorn takes from a proxy on 127.0.0.1. For
each phase: the tenant's uploads (successes of all attempted), their latency (median, p95, p99);
the flood's requests and their statuses. At the end, after the server's shutdown flush: how many
``api_key.authentication_failed`` records the forged keys left in the audit chain, the refusals
they count, and the bound the aggregation sets on them (``MAX_UNKNOWN_PREFIXES`` + 1 records per
minute in which forged keys arrived). Results go to ``--out`` as Markdown.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import random
import socket
import string
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import httpx
import redis
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.auth import refused_keys
from app.auth import service as auth_service
from app.core.db import create_db_engine
from app.db import migrate
from app.db.models import AuditRecord
from bench.auth_flood_report import (
    CONTROL_PATH,
    FORGED_PATH,
    AuditCount,
    Flood,
    FloodResult,
    Phase,
    report,
)
from tests.databases import scratch_postgres

REDIS_URL = "redis://127.0.0.1:6379/15"
TENANT_ADDRESS = "198.51.100.1"
FLOOD_ADDRESS = "203.0.113.66"
ALPHABET = string.ascii_letters + string.digits


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
            try:
                response = client.post(
                    "/v1/files", files=files, data={"purpose": "fine-tune"}, headers=headers
                )
            except httpx.HTTPError:
                phase.tenant_errors[0] += 1
                continue
            elapsed = time.perf_counter() - started
            if response.status_code == 200:
                phase.latencies_s.append(elapsed)
            else:
                phase.tenant_errors[response.status_code] += 1


def flood_address(flood: Flood, index: int) -> str:
    if flood.addresses == 1:
        return FLOOD_ADDRESS
    i = index % flood.addresses
    return f"10.{(i // 62_500) % 250}.{(i // 250) % 250}.{i % 250}"


async def send_flood(base: str, flood: Flood, seconds: float) -> FloodResult:
    """``flood.rate`` requests a second for ``seconds``, each with a new forged key."""
    result = FloodResult()
    in_flight = 0
    tasks: set[asyncio.Task[None]] = set()

    async def one(client: httpx.AsyncClient, headers: dict[str, str]) -> None:
        nonlocal in_flight
        try:
            response = await client.get(flood.path, headers=headers)
            result.statuses[response.status_code] += 1
        except httpx.HTTPError:
            result.statuses[0] += 1
        finally:
            in_flight -= 1

    limits = httpx.Limits(
        max_connections=flood.max_in_flight, max_keepalive_connections=flood.max_in_flight
    )
    async with httpx.AsyncClient(base_url=base, timeout=30, limits=limits) as client:
        start = time.monotonic()
        for index in range(round(seconds * flood.rate)):
            delay = start + index / flood.rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            result.due += 1
            if in_flight >= flood.max_in_flight:
                result.skipped += 1
                continue
            key = "sp-" + "".join(random.choices(ALPHABET, k=48))
            headers = {
                "Authorization": f"Bearer {key}",
                "X-Forwarded-For": flood_address(flood, index),
            }
            in_flight += 1
            task = asyncio.create_task(one(client, headers))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        await asyncio.gather(*tasks)
    return result


def flood_process(
    base: str, flood: Flood, seconds: float, results: multiprocessing.Queue[FloodResult]
) -> None:
    results.put(asyncio.run(send_flood(base, flood, seconds)))


def run_phase(
    base: str, key: str, phase: Phase, seconds: float, tenant_rate: float, first: int
) -> Phase:
    stop = threading.Event()
    writer = threading.Thread(
        target=tenant_writes, args=(base, key, phase, stop, tenant_rate, first)
    )
    phase.started = time.time()
    writer.start()
    try:
        if phase.flood is not None:
            # In a process of its own: in this one, the flood's client would hold the GIL and
            # its delays would count as the tenant's latency.
            results: multiprocessing.Queue[FloodResult] = multiprocessing.Queue()
            flooder = multiprocessing.Process(
                target=flood_process, args=(base, phase.flood, seconds, results)
            )
            flooder.start()
            phase.result = results.get()
            flooder.join()
        else:
            time.sleep(seconds)
    finally:
        stop.set()
        writer.join()
        phase.ended = time.time()
    print(phase.row(seconds), flush=True)
    return phase


def minutes_spanned(phases: list[Phase]) -> int:
    """The minutes (of the wall clock, as the server counts refusals) in which the forged
    floods ran: they run back to back, so from the first one's start to the last one's end."""
    forged = [p for p in phases if p.flood is not None and p.flood.forged]
    first = int(forged[0].started) // refused_keys.MINUTE_S
    last = int(forged[-1].ended) // refused_keys.MINUTE_S
    return last - first + 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each phase")
    parser.add_argument(
        "--flood-rate", type=float, default=100.0, help="flood requests a second, every flood"
    )
    parser.add_argument("--flooders", type=int, default=32, help="flood requests in flight at most")
    parser.add_argument(
        "--addresses", type=int, default=10_000, help="addresses of the many-address flood"
    )
    parser.add_argument("--tenant-rate", type=float, default=5.0, help="uploads per second")
    parser.add_argument(
        "--warmup", type=float, default=5.0, help="seconds of tenant uploads before the phases"
    )
    parser.add_argument("--out", type=Path, default=Path("docs/auth-flood-bench.md"))
    args = parser.parse_args()
    load_before = os.getloadavg()
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

        def flood(path: str, addresses: int) -> Flood:
            return Flood(path, addresses, args.flood_rate, args.flooders)

        phases = [
            Phase("no flood", None),
            Phase("control flood (/healthz)", flood(CONTROL_PATH, args.addresses)),
            Phase("forged keys, one address", flood(FORGED_PATH, 1)),
            Phase("forged keys, many addresses", flood(FORGED_PATH, args.addresses)),
        ]
        try:
            for _ in range(300):
                try:
                    if httpx.get(f"{base}/healthz").status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.1)
            client_limit = int(env.get("SAFEPATCH_CLIENT_RATE_LIMIT_REQUESTS", "1200"))
            # Not reported: the first requests of a new process are slower (imports, pools).
            run_phase(base, key, Phase("warm-up", None), args.warmup, args.tenant_rate, 0)
            for number, phase in enumerate(phases, start=1):
                run_phase(base, key, phase, args.seconds, args.tenant_rate, 100_000 * number)
        finally:
            server.terminate()  # the shutdown flush writes the last minute's counts
            server.wait(timeout=60)
            client = redis.Redis.from_url(REDIS_URL)
            for stale in client.scan_iter(f"{prefix}*"):
                client.delete(stale)
        with Session(engine) as session:
            failed = select(AuditRecord).where(AuditRecord.action == refused_keys.ACTION)
            records = list(session.scalars(failed))
            total = session.scalar(select(func.count()).select_from(AuditRecord))
        engine.dispose()
    audit = AuditCount(
        refused=sum(p.result.statuses[401] for p in phases),
        records=len(records),
        counted=sum(int(r.payload["count"]) for r in records),
        bound=(refused_keys.MAX_UNKNOWN_PREFIXES + 1) * minutes_spanned(phases),
        total=total or 0,
    )
    report(args, phases, client_limit, audit, load_before)


if __name__ == "__main__":
    main()
