"""The auth-flood bench's phases, their figures and the report it prints and writes
(bench/auth_flood.py runs the phases)."""

from __future__ import annotations

import argparse
import os
import platform
import statistics
from collections import Counter
from dataclasses import dataclass, field

from app.auth import refused_keys

CONTROL_PATH = "/healthz"
FORGED_PATH = "/v1/fine_tuning/jobs"


@dataclass(frozen=True)
class Flood:
    """What a phase sends besides the tenant's writes: ``rate`` requests a second to ``path``
    with forged keys, from ``addresses`` addresses (1: all from one)."""

    path: str
    addresses: int
    rate: float
    max_in_flight: int

    @property
    def forged(self) -> bool:
        return self.path != CONTROL_PATH


@dataclass
class FloodResult:
    due: int = 0  # requests the schedule asked for
    skipped: int = 0  # due while max_in_flight were in flight: not sent
    statuses: Counter[int] = field(default_factory=Counter)  # 0: no answer (a client error)

    @property
    def sent(self) -> int:
        return self.due - self.skipped


@dataclass
class Phase:
    name: str
    flood: Flood | None
    latencies_s: list[float] = field(default_factory=list)  # the tenant's successful uploads
    tenant_errors: Counter[int] = field(default_factory=Counter)  # 0: no answer
    result: FloodResult = field(default_factory=FloodResult)
    started: float = 0.0  # time.time(): the refusals are counted per minute of the server's clock
    ended: float = 0.0

    @property
    def attempts(self) -> int:
        return len(self.latencies_s) + sum(self.tenant_errors.values())

    def ms(self, q: float) -> float:
        return 1000 * quantile(self.latencies_s, q)

    def row(self, seconds: float) -> str:
        sent = self.result.sent
        statuses = ", ".join(f"{k}: {v}" for k, v in sorted(self.result.statuses.items())) or "-"
        flood = "-" if self.flood is None else f"{self.flood.path}, {self.flood.addresses}"
        return (
            f"| {self.name} | {len(self.latencies_s)}/{self.attempts} | {self.ms(0.5):.1f} | "
            f"{self.ms(0.95):.1f} | {self.ms(0.99):.1f} | {flood} | "
            f"{sent} ({sent / seconds:.0f}/s) | {self.result.skipped} | {statuses} |"
        )


def quantile(values: list[float], q: float) -> float:
    """The ``q`` quantile (nearest rank); the median for 0.5; 0 when there are none."""
    if not values:
        return 0.0
    if q == 0.5:
        return statistics.median(values)
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


@dataclass(frozen=True)
class AuditCount:
    refused: int  # 401s the forged floods received
    records: int  # api_key.authentication_failed records in the chain
    counted: int  # the refusals those records count
    bound: int  # the most records the aggregation allows for the minutes the floods ran
    total: int  # audit records of every kind


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b > 0 else "n/a"


def report(
    args: argparse.Namespace,
    phases: list[Phase],
    client_limit: int,
    audit: AuditCount,
    load_before: tuple[float, float, float],
) -> None:
    quiet, control, *forged = phases
    attempts = sum(p.attempts for p in phases)
    successes = sum(len(p.latencies_s) for p in phases)
    lines = [
        "# Forged-key flood while a tenant writes",
        "",
        "`python -m bench.auth_flood` (bench/auth_flood.py): one uvicorn process on PostgreSQL, "
        f"rate limits in Redis (the defaults: {client_limit} requests per address and 600 per "
        f"tenant per 60 s), {args.seconds:g} s per phase, each flood {args.flood_rate:g} "
        f"requests a second (at most {args.flooders} in flight), the tenant uploading "
        f"{args.tenant_rate:g} files a second (after {args.warmup:g} s of uploads not "
        f"reported, while the new server process warms up). Machine: {platform.machine()}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}; the flood's client and the "
        "tenant's run on the same cores as the server. Load average before the run (1, 5, "
        f"15 min): {load_before[0]:.2f}, {load_before[1]:.2f}, {load_before[2]:.2f}.",
        "",
        "The tenant uploads 10-example files (each a `files` row and a chained `file.created` "
        "audit record) from its own address. Latencies are of its successful uploads, in ms. "
        "The control flood sends the forged flood's requests (same rate, same headers) to "
        "`/healthz`, which reads neither; the difference between the control and a forged "
        "flood is what the authentication path costs, the difference between no flood and the "
        "control is the flood's share of the cores.",
        "",
        "| phase | tenant uploads ok/all | median | p95 | p99 | flood (path, addresses) | "
        "flood sent | not sent (in flight cap) | flood statuses |",
        "|---|---|---|---|---|---|---|---|---|",
        *(p.row(args.seconds) for p in phases),
        "",
        f"Tenant uploads: {successes} of {attempts} succeeded over the four phases.",
        "",
        "Tenant upload latency (median, p95):",
        "",
        f"- control flood / no flood: {ratio(control.ms(0.5), quiet.ms(0.5))}, "
        f"{ratio(control.ms(0.95), quiet.ms(0.95))} (contention for the cores)",
        *(
            f"- {p.name} / control flood: {ratio(p.ms(0.5), control.ms(0.5))}, "
            f"{ratio(p.ms(0.95), control.ms(0.95))} (the authentication path)"
            for p in forged
        ),
        "",
        f"The forged floods' {audit.refused} refused keys (401) left **{audit.records}** "
        f"`{refused_keys.ACTION}` records in the audit chain, counting {audit.counted} "
        f"refusals. The aggregation allows at most {audit.bound} for the minutes the forged "
        f"floods ran ({refused_keys.MAX_UNKNOWN_PREFIXES} unknown prefixes a minute with a "
        f"record of their own, the rest under `{refused_keys.OTHER_PREFIXES}`): "
        f"{'within' if audit.records <= audit.bound else 'OVER'} the bound. The chain holds "
        f"{audit.total} records in all.",
        "",
    ]
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))
