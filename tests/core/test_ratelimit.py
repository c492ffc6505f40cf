"""The per-tenant rate limiter (GCRA), in memory and in the real Redis (tests/databases.py:
``RATE_LIMIT_REDIS_URL``, database 15, a key prefix per test).

Both limiters run on a clock the test sets (``FakeClock``): the Redis one passes its reading to
the script in place of Redis's TIME, so the same GCRA runs in the real Redis with exact
expectations and no sleeps. What Redis still does on its own clock is expire keys (one whole
budget after the last request): the windows here are a minute long, so no key expires during a
test however slow the machine. One test keeps Redis's own clock, the production path.
"""

from __future__ import annotations

import logging
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator

import pytest
import redis

from app.core.ratelimit import (
    REDIS_BACKOFF_S,
    REDIS_TIMEOUT_S,
    LocalRateLimiter,
    RateLimiter,
    RedisRateLimiter,
    gcra,
)
from app.core.settings import Settings
from tests.databases import RATE_LIMIT_REDIS_URL
from tests.waiting import SCHEDULING_MARGIN_S, wait_until

WINDOW_S = 60.0
FALLBACK_WARNING = "rate limit counted in this process for 1 s, Redis unavailable"


@pytest.fixture
def key_prefix() -> Iterator[str]:
    prefix = f"safepatch-test:{uuid.uuid4().hex}:"
    yield prefix
    client = redis.Redis.from_url(RATE_LIMIT_REDIS_URL)
    keys = list(client.scan_iter(f"{prefix}*"))
    if keys:
        client.delete(*keys)
    client.close()


class FakeClock:
    """The limiters' clock, moved by the test, plus a microsecond per reading, as a real clock
    never reads the same twice in a row. (Frozen, it would find GCRA's floating-point edge: at
    1000.0 five intervals of 0.2 s add up to a hair over the window, and the fifth request of a
    burst at one instant is refused.) Several limiters may share one, from several threads."""

    TICK_S = 1e-6

    def __init__(self) -> None:
        self.now = 1000.0
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            self.now += self.TICK_S
            return self.now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.now += seconds


def make_limiter(
    kind: str, limit: int, prefix: str, clock: FakeClock, window_s: float = WINDOW_S
) -> RateLimiter:
    """The in-memory or the Redis limiter, on ``clock``."""
    if kind == "memory":
        return LocalRateLimiter(limit, window_s, clock=clock)
    return RedisRateLimiter(
        RATE_LIMIT_REDIS_URL, limit=limit, window_s=window_s, key_prefix=prefix, clock=clock
    )


def fallback_warnings(caplog: pytest.LogCaptureFixture) -> int:
    """How often the limiter asked Redis and fell back (it logs each failure once)."""
    return sum(FALLBACK_WARNING in record.getMessage() for record in caplog.records)


@pytest.mark.parametrize("kind", ["memory", "redis"])
def test_a_burst_of_the_limit_passes_then_one_interval_must_pass(
    kind: str, key_prefix: str
) -> None:
    clock = FakeClock()
    limiter = make_limiter(kind, 5, key_prefix, clock)  # one request per 12 s, bursts of 5
    decisions = [limiter.hit("org-a") for _ in range(5)]
    assert [d.allowed for d in decisions] == [True] * 5
    assert [d.remaining for d in decisions] == [4, 3, 2, 1, 0]

    refused = limiter.hit("org-a")
    assert not refused.allowed
    assert refused.retry_after_s == pytest.approx(12.0, abs=1e-4)  # one interval (60 s / 5)
    assert limiter.hit("org-b").allowed  # another tenant's budget is its own

    clock.advance(refused.retry_after_s - 1e-3)
    assert not limiter.hit("org-a").allowed  # a millisecond early
    clock.advance(1e-3)
    assert limiter.hit("org-a").allowed
    assert not limiter.hit("org-a").allowed  # one interval bought one request, not a burst


@pytest.mark.parametrize("kind", ["memory", "redis"])
def test_a_steady_rate_at_the_limit_is_never_refused(kind: str, key_prefix: str) -> None:
    clock = FakeClock()
    limiter = make_limiter(kind, 10, key_prefix, clock)  # one request per 6 s
    for _ in range(10):
        limiter.hit("org-a")
    allowed = 0
    for _ in range(6):
        clock.advance(6.0)  # exactly the rate
        allowed += limiter.hit("org-a").allowed
    assert allowed == 6
    assert not limiter.hit("org-a").allowed  # and not a request more


@pytest.mark.parametrize("kind", ["memory", "redis"])
def test_an_idle_key_has_its_whole_burst_back(kind: str, key_prefix: str) -> None:
    clock = FakeClock()
    limiter = make_limiter(kind, 5, key_prefix, clock)
    assert sum(limiter.hit("org-a").allowed for _ in range(7)) == 5
    clock.advance(WINDOW_S)  # Redis still holds the key (its TTL runs in real time) ...
    # ... but a TAT in the past counts as now: the whole burst, and no more.
    assert [limiter.hit("org-a").allowed for _ in range(6)] == [True] * 5 + [False]


def test_the_arithmetic_never_lets_twice_the_limit_through_around_a_window_edge() -> None:
    # A fixed window counter lets `limit` through at the end of one window and `limit` more at
    # the start of the next; GCRA lets through `limit` in any window.
    tat, passed = None, []
    for now in [0.99] * 10 + [1.01] * 10:
        tat_after, allowed = gcra(tat, now, interval=0.1, window=1.0)
        tat = tat_after
        passed.append(allowed)
    assert sum(passed) == 10


def test_api_processes_share_one_budget_in_redis(key_prefix: str) -> None:
    """Eight API processes, each with its own connection, hammering one tenant at once: exactly
    the limit passes (the check and the update are one atomic script). They share one clock, as
    they share Redis's."""
    limit, processes, hits_each = 100, 8, 25
    clock = FakeClock()
    allowed: list[int] = []

    def one_process() -> None:
        limiter = make_limiter("redis", limit, key_prefix, clock)
        allowed.append(sum(limiter.hit("org-a").allowed for _ in range(hits_each)))
        limiter.close()

    threads = [threading.Thread(target=one_process) for _ in range(processes)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(allowed) == limit


def test_a_key_expires_once_its_budget_is_whole_again(key_prefix: str) -> None:
    clock = FakeClock()
    limiter = make_limiter("redis", 5, key_prefix, clock)  # one interval is 12 s
    client = redis.Redis.from_url(RATE_LIMIT_REDIS_URL)
    limiter.hit("org-a")
    # Redis counts the TTL down in real time: the upper bounds are exact, and the lower ones
    # leave a whole interval (12 s) for the round trips between the SET and the PTTL.
    assert 0 < client.pttl(f"{key_prefix}org-a") <= 12_000  # after one interval: whole again
    for _ in range(4):
        limiter.hit("org-a")
    assert 48_000 < client.pttl(f"{key_prefix}org-a") <= 60_000  # a whole burst: the window
    client.close()


def test_on_redis_s_own_clock_a_burst_passes_then_one_is_refused(key_prefix: str) -> None:
    """Without a clock the windows are Redis's TIME (production). No time is set, so the wait
    is only bounded: at most one interval, less what the hits took."""
    limiter = RedisRateLimiter(
        RATE_LIMIT_REDIS_URL, limit=5, window_s=WINDOW_S, key_prefix=key_prefix
    )
    assert [limiter.hit("org-a").allowed for _ in range(6)] == [True] * 5 + [False]
    refused = limiter.hit("org-a")
    assert not refused.allowed and 0 < refused.retry_after_s <= 12.0
    limiter.close()


def test_redis_away_still_limits_in_this_process(caplog: pytest.LogCaptureFixture) -> None:
    """An unreachable Redis (nothing listens on port 1) must not open the gate: the limit is
    counted in this process meanwhile, and Redis is asked again only after the backoff."""
    caplog.set_level(logging.WARNING, logger="app.core.ratelimit")
    clock = FakeClock()
    limiter = RedisRateLimiter(
        "redis://127.0.0.1:1/0",
        limit=2,
        window_s=WINDOW_S,
        key_prefix="safepatch-test:",
        clock=clock,
    )
    assert [limiter.hit("org-a").allowed for _ in range(4)] == [True, True, False, False]
    assert limiter.hit("org-b").allowed  # per key, as in Redis
    assert fallback_warnings(caplog) == 1  # Redis was asked once, by the first request

    clock.advance(REDIS_BACKOFF_S)
    assert not limiter.hit("org-a").allowed  # asked again, still away: still counted here
    assert fallback_warnings(caplog) == 2


def test_a_stopped_redis_falls_back_and_comes_back(key_prefix: str) -> None:
    """A real Redis that stops (a server started for the test, then shut down): the limiter
    keeps refusing past the limit from memory, and uses Redis again once it is back."""
    server = RedisServer()
    try:
        url = f"redis://127.0.0.1:{server.port}/0"
        clock = FakeClock()
        limiter = RedisRateLimiter(
            url, limit=3, window_s=WINDOW_S, key_prefix=key_prefix, clock=clock
        )
        assert limiter.hit("org-a").allowed  # counted in Redis
        server.stop()
        assert [limiter.hit("org-b").allowed for _ in range(4)] == [True] * 3 + [False]
        server.start()
        assert not limiter.hit("org-b").allowed  # within the backoff: still in memory
        clock.advance(REDIS_BACKOFF_S)
        # The restarted server lost its counts (no persistence): a whole burst, in Redis again.
        assert [limiter.hit("org-a").allowed for _ in range(4)] == [True] * 3 + [False]
        assert redis.Redis(port=server.port).exists(f"{key_prefix}org-a")
        limiter.close()
    finally:
        server.stop()


class RedisServer:
    """A throwaway ``redis-server`` on a free port, with no persistence."""

    def __init__(self) -> None:
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("redis-server is not installed")
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port)

        def answers() -> bool:
            try:
                return bool(client.ping())
            except redis.ConnectionError:
                return False

        wait_until(answers, what=f"redis-server on port {self.port}")
        client.close()

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None


def connections_waiting(listener: socket.socket) -> int:
    """Accept, without blocking, every connection the kernel completed on ``listener``."""
    listener.setblocking(False)
    accepted = []
    try:
        while True:
            accepted.append(listener.accept()[0])
    except BlockingIOError:
        pass
    for connection in accepted:
        connection.close()
    return len(accepted)


def test_a_redis_that_does_not_answer_costs_one_timeout_a_second(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="app.core.ratelimit")
    silent = socket.socket()  # accepts connections, never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(64)
    try:
        port = silent.getsockname()[1]
        clock = FakeClock()
        limiter = RedisRateLimiter(
            f"redis://127.0.0.1:{port}/0",
            limit=100,
            window_s=WINDOW_S,
            key_prefix="safepatch-test:",
            clock=clock,
        )
        started = time.monotonic()
        assert limiter.hit("org-a").allowed
        first_s = time.monotonic() - started
        assert all(limiter.hit("org-a").allowed for _ in range(19))
        asked = connections_waiting(silent)
        clock.advance(REDIS_BACKOFF_S)  # the backoff is over: Redis is asked again, once
        assert all(limiter.hit("org-a").allowed for _ in range(20))
        asked_again = connections_waiting(silent)
    finally:
        silent.close()
    # Within the backoff after a failure Redis is not asked: one connection for 20 requests,
    # counted, not timed (the other 19 waited for nothing), and one more after the backoff.
    assert (asked, asked_again) == (1, 1)
    assert fallback_warnings(caplog) == 2
    # The first request waited for the timeout, not longer: the one bound in real time, as the
    # timeout is what is under test (the lower bound is exact; the upper one allows for a busy
    # machine).
    assert REDIS_TIMEOUT_S <= first_s < REDIS_TIMEOUT_S + SCHEDULING_MARGIN_S


def test_redis_is_used_when_the_broker_is_redis() -> None:
    broker = "redis://127.0.0.1:6379/0"
    assert Settings(broker_url=broker).effective_rate_limit_redis_url == broker
    assert Settings(broker_url="amqp://rabbit//").effective_rate_limit_redis_url is None
    own = "redis://127.0.0.1:6379/3"
    assert (
        Settings(broker_url=broker, rate_limit_redis_url=own).effective_rate_limit_redis_url == own
    )
    assert Settings(database_url=None, broker_url=None).effective_rate_limit_redis_url is None


def test_production_refuses_a_limit_counted_per_process() -> None:
    db = "postgresql+psycopg://app:s3cret@db/safepatch"
    with pytest.raises(ValueError, match="needs Redis for the rate limit"):
        Settings(env="prod", broker_url="amqp://app:s3cret@rabbit//", database_url=db)
    with pytest.raises(ValueError, match="needs Redis for the rate limit"):  # per address too
        Settings(
            env="prod",
            broker_url="amqp://app:s3cret@rabbit//",
            rate_limit_requests=0,
            database_url=db,
        )
    Settings(
        env="prod",
        broker_url="amqp://app:s3cret@rabbit//",
        rate_limit_requests=0,
        client_rate_limit_requests=0,
        database_url=db,
    )
    Settings(env="prod", broker_url="redis://:s3cret@redis:6379/0", database_url=db)
