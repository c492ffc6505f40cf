"""The per-tenant rate limiter (GCRA), in memory and in the real Redis (tests/databases.py:
``RATE_LIMIT_REDIS_URL``, database 15, a key prefix per test)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator

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
from tests.waiting import SCHEDULING_MARGIN_S


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
    """The in-memory limiter's clock, moved by the test, plus a microsecond per reading, as a
    real clock never reads the same twice in a row. (Frozen, it would find GCRA's floating-point
    edge: at 1000.0 five intervals of 0.2 s add up to a hair over the window, and the fifth
    request of a burst at one instant is refused.)"""

    TICK_S = 1e-6

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        self.now += self.TICK_S
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make_limiter(
    kind: str, limit: int, window_s: float, prefix: str
) -> tuple[RateLimiter, Callable[[float], None]]:
    """The limiter, and how to let time pass for it: the in-memory one runs on a fake clock
    (exact, however slow the machine); Redis on its own clock, so real seconds must pass (a
    sleep only ever overshoots, which the Redis cases' assertions allow for)."""
    if kind == "memory":
        clock = FakeClock()
        return LocalRateLimiter(limit, window_s, clock=clock), clock.advance
    limiter = RedisRateLimiter(
        RATE_LIMIT_REDIS_URL, limit=limit, window_s=window_s, key_prefix=prefix
    )
    return limiter, time.sleep


@pytest.mark.parametrize("kind", ["memory", "redis"])
def test_a_burst_of_the_limit_passes_then_one_interval_must_pass(
    kind: str, key_prefix: str
) -> None:
    limiter, wait = make_limiter(kind, 5, 1.0, key_prefix)
    decisions = [limiter.hit("org-a") for _ in range(5)]
    assert [d.allowed for d in decisions] == [True] * 5
    assert [d.remaining for d in decisions] == [4, 3, 2, 1, 0]

    refused = limiter.hit("org-a")
    assert not refused.allowed
    if kind == "memory":
        assert refused.retry_after_s == pytest.approx(0.2, abs=1e-4)  # one interval (1 s / 5)
    else:  # one interval, less the real time the hits took
        assert 0 < refused.retry_after_s <= 0.2
    assert limiter.hit("org-b").allowed  # another tenant's budget is its own

    wait(refused.retry_after_s + 0.02)
    assert limiter.hit("org-a").allowed
    assert not limiter.hit("org-a").allowed  # one interval bought one request, not a burst


@pytest.mark.parametrize("kind", ["memory", "redis"])
def test_a_steady_rate_at_the_limit_is_never_refused(kind: str, key_prefix: str) -> None:
    limiter, wait = make_limiter(kind, 10, 0.5, key_prefix)  # one request per 50 ms
    for _ in range(10):
        limiter.hit("org-a")
    allowed = 0
    for _ in range(6):
        wait(0.05 if kind == "memory" else 0.055)  # exactly the rate; Redis: a little under
        allowed += limiter.hit("org-a").allowed
    assert allowed == 6


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
    the limit passes (the check and the update are one atomic script)."""
    limit, processes, hits_each = 100, 8, 25
    allowed: list[int] = []

    def one_process() -> None:
        limiter, _ = make_limiter("redis", limit, 60.0, key_prefix)
        allowed.append(sum(limiter.hit("org-a").allowed for _ in range(hits_each)))
        limiter.close()

    threads = [threading.Thread(target=one_process) for _ in range(processes)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(allowed) == limit


def test_a_key_expires_once_its_budget_is_whole_again(key_prefix: str) -> None:
    limiter, _ = make_limiter("redis", 5, 1.0, key_prefix)
    limiter.hit("org-a")
    ttl_ms = redis.Redis.from_url(RATE_LIMIT_REDIS_URL).pttl(f"{key_prefix}org-a")
    assert 0 < ttl_ms <= 200  # one interval: after it, the tenant has its whole burst back


def test_redis_away_still_limits_in_this_process(caplog: pytest.LogCaptureFixture) -> None:
    """An unreachable Redis (nothing listens on port 1) must not open the gate: the limit is
    counted in this process meanwhile, and answers at once."""
    limiter = RedisRateLimiter(
        "redis://127.0.0.1:1/0", limit=2, window_s=60, key_prefix="safepatch-test:"
    )
    started = time.monotonic()
    assert [limiter.hit("org-a").allowed for _ in range(4)] == [True, True, False, False]
    assert limiter.hit("org-b").allowed  # per key, as in Redis
    assert time.monotonic() - started < 1.0
    assert "rate limit counted in this process for 1 s, Redis unavailable" in caplog.text


def test_a_stopped_redis_falls_back_and_comes_back(key_prefix: str) -> None:
    """A real Redis that stops (a server started for the test, then shut down): the limiter
    keeps refusing past the limit from memory, and uses Redis again once it is back."""
    server = RedisServer()
    try:
        url = f"redis://127.0.0.1:{server.port}/0"
        limiter = RedisRateLimiter(url, limit=3, window_s=60, key_prefix=key_prefix)
        assert limiter.hit("org-a").allowed  # counted in Redis
        server.stop()
        assert [limiter.hit("org-b").allowed for _ in range(4)] == [True] * 3 + [False]
        server.start()
        time.sleep(REDIS_BACKOFF_S + 0.1)
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
        for _ in range(100):
            try:
                client.ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

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


def test_a_redis_that_does_not_answer_costs_one_timeout_a_second() -> None:
    silent = socket.socket()  # accepts connections, never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(64)
    try:
        port = silent.getsockname()[1]
        limiter = RedisRateLimiter(
            f"redis://127.0.0.1:{port}/0", limit=100, window_s=60, key_prefix="safepatch-test:"
        )
        timings = []
        for _ in range(20):
            started = time.monotonic()
            assert limiter.hit("org-a").allowed
            timings.append(time.monotonic() - started)
        asked = connections_waiting(silent)
    finally:
        silent.close()
    # Within the second after a failure, Redis is not asked: one connection for 20 requests
    # (counted, not timed), and only the first request waited for it ...
    assert asked == 1
    # ... for the timeout (the lower bound is exact; the upper one allows for a busy machine),
    assert REDIS_TIMEOUT_S <= timings[0] < REDIS_TIMEOUT_S + SCHEDULING_MARGIN_S
    # ... while the other 19 together took less than one timeout: none of them waited for one.
    assert sum(timings[1:]) < REDIS_TIMEOUT_S


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
    urls = {"database_url": "postgresql+psycopg://app:s3cret@db/safepatch"}
    with pytest.raises(ValueError, match="needs Redis for the rate limit"):
        Settings(env="prod", broker_url="amqp://app:s3cret@rabbit//", **urls)
    with pytest.raises(ValueError, match="needs Redis for the rate limit"):  # per address too
        Settings(env="prod", broker_url="amqp://app:s3cret@rabbit//", rate_limit_requests=0, **urls)
    Settings(
        env="prod",
        broker_url="amqp://app:s3cret@rabbit//",
        rate_limit_requests=0,
        client_rate_limit_requests=0,
        **urls,
    )
    Settings(env="prod", broker_url="redis://:s3cret@redis:6379/0", **urls)
