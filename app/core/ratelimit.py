"""Request rate limits: per tenant, and per client address before authentication. GCRA, in
Redis when there is one, else in this process.

GCRA (the generic cell rate algorithm) keeps one number per tenant, the theoretical arrival time
(TAT) of its next request. ``limit`` requests per ``window_s`` means one request every
``window_s / limit`` seconds on average, with bursts of up to ``limit`` at once. A request at
``now`` is allowed if ``max(TAT, now) + interval - window <= now``; then the TAT moves on by one
interval. Unlike a fixed window counter it never lets through twice the limit around a window's
edge, unlike a log of timestamps it needs one value per tenant, and the time until the next
request is allowed (``Retry-After``) falls out of the same arithmetic.

Production runs several API processes, so the count must be shared: the check and the update
run as one Lua script in Redis (atomic, one round trip), on Redis's own clock so that hosts
whose clocks disagree still agree on the limit. Both limiters take a clock instead (``clock``),
so tests set the time rather than wait for it; the Redis one then passes its reading to the
script in place of Redis's. Embedded mode runs one API process (``safepatch
serve``) and has no Redis, so the same arithmetic runs in memory under a lock. A SQL table
would also be shared, but it would add a write to every request, and on SQLite every write
takes the one database lock the worker needs.

The per-address limit is the same limiter under its own key prefix. It is checked before the
key is looked up, so a client that floods bad keys is refused without a database query; it counts
every request that presents a key, so it must stay above what one tenant may send
(``client_rate_limit_requests``, twice the tenant's limit by default).

If Redis is unreachable the limiter falls back to counting in this process (and logs it): the
limit still holds per API process (at most N times the limit with N processes), so a flood is
still refused, while the API stays up without Redis (jobs need only the database). Failing open
would hand a flood the whole service exactly when Redis is down; failing closed would take every
tenant down with Redis. After a failure the limiter does not ask Redis again for a second, so a
Redis that hangs costs one request a timeout per second, not every request.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import redis

from app.core.errors import RateLimited
from app.core.settings import Settings

log = logging.getLogger(__name__)

# A down Redis must not stall every request: connection refused is immediate, a host that
# does not answer is given this long, and after a failure Redis is left alone for a while.
REDIS_TIMEOUT_S = 0.25
REDIS_BACKOFF_S = 1.0


@dataclass(frozen=True)
class Decision:
    allowed: bool
    remaining: int  # requests that would be allowed right after this one
    retry_after_s: float  # 0 when allowed


class RateLimiter(Protocol):
    limit: int
    window_s: float

    def hit(self, key: str) -> Decision: ...

    def close(self) -> None: ...


def check(limiter: RateLimiter | None, key: str, *, who: str = "your organization") -> None:
    """Count one request under ``key`` (a tenant, or a client address); ``RateLimited`` (429,
    Retry-After) past its limit. ``who`` names the key in the message."""
    if limiter is None:
        return
    decision = limiter.hit(key)
    if not decision.allowed:
        wait_s = max(1, math.ceil(decision.retry_after_s))  # Retry-After is whole seconds
        raise RateLimited(
            f"Rate limit reached for requests: {limiter.limit} per {limiter.window_s:g} s for "
            f"{who}. Please try again in {wait_s} s.",
            retry_after_s=wait_s,
        )


def gcra(tat: float | None, now: float, *, interval: float, window: float) -> tuple[float, bool]:
    """The key's TAT after a request at ``now``, and whether the request is allowed (the TAT
    moves only when it is)."""
    new_tat = max(tat if tat is not None else now, now) + interval
    allow_at = new_tat - window
    if now < allow_at:
        return (tat if tat is not None else now), False
    return new_tat, True


class LocalRateLimiter:
    """GCRA in this process's memory: exact for one API process (embedded mode)."""

    def __init__(
        self, limit: int, window_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limit = limit
        self.window_s = window_s
        self._interval = window_s / limit
        self._clock = clock
        self._tats: dict[str, float] = {}
        self._lock = threading.Lock()  # sync endpoints run in a thread pool

    def hit(self, key: str) -> Decision:
        with self._lock:
            now = self._clock()
            tat, allowed = gcra(
                self._tats.get(key), now, interval=self._interval, window=self.window_s
            )
            self._tats[key] = tat
            if len(self._tats) > 10_000:  # forget tenants that are idle: their TAT has passed
                self._tats = {k: t for k, t in self._tats.items() if t > now}
        return _decision(tat - now, allowed, interval=self._interval, window=self.window_s)

    def close(self) -> None:
        pass


# The same arithmetic as gcra(), in microseconds (integers survive Lua's doubles exactly).
# ``now`` is Redis's TIME, or ARGV[3] when the limiter has a clock of its own (tests).
# TIME makes the script non-deterministic: replicate_commands() (a no-op from Redis 7 on)
# lets it write anyway on Redis 5 and 6.
_GCRA_SCRIPT = """
redis.replicate_commands()
local now = tonumber(ARGV[3])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local interval = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local new_tat = tat + interval
if now < new_tat - window then
  return {0, tat - now}
end
redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', math.ceil((new_tat - now) / 1000))
return {1, new_tat - now}
"""


class RedisRateLimiter:
    """GCRA in Redis, shared by every API process; counts in this process while Redis is away.

    Without ``clock``, the windows are on Redis's clock and the backoff and the fallback on
    this host's ``time.monotonic``. With one (seconds, set by a test), all three are on it.
    """

    def __init__(
        self,
        url: str,
        *,
        limit: int,
        window_s: float,
        key_prefix: str,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.limit = limit
        self.window_s = window_s
        self._interval_us = max(1, round(window_s * 1e6 / limit))
        self._window_us = round(window_s * 1e6)
        self._prefix = key_prefix
        self._client = redis.Redis.from_url(
            url, socket_timeout=REDIS_TIMEOUT_S, socket_connect_timeout=REDIS_TIMEOUT_S
        )
        self._script = self._client.register_script(_GCRA_SCRIPT)
        self._clock = clock  # None: Redis's TIME
        self._local_clock = clock or time.monotonic
        self._retry_at = -math.inf  # the local clock's time before which Redis is not asked
        # While Redis is away: the same limit, counted in this process.
        self._fallback = LocalRateLimiter(limit, window_s, clock=self._local_clock)

    def hit(self, key: str) -> Decision:
        if self._local_clock() < self._retry_at:
            return self._fallback.hit(key)
        args = [self._interval_us, self._window_us]
        if self._clock is not None:
            args.append(round(self._clock() * 1e6))
        try:
            allowed, ahead_us = self._script(keys=[self._prefix + key], args=args)
        except redis.RedisError as error:
            self._retry_at = self._local_clock() + REDIS_BACKOFF_S
            log.warning(
                "rate limit counted in this process for %.0f s, Redis unavailable: %s",
                REDIS_BACKOFF_S,
                error,
            )
            return self._fallback.hit(key)
        return _decision(
            ahead_us / 1e6, bool(allowed), interval=self._interval_us / 1e6, window=self.window_s
        )

    def close(self) -> None:
        self._client.close()


def _decision(ahead_s: float, allowed: bool, *, interval: float, window: float) -> Decision:
    """From how far the key's TAT is ahead of now: what is left, or how long to wait."""
    if allowed:  # (the epsilon: 0.8 / 0.2 is 3.9999999999999996 in floating point)
        return Decision(True, max(0, math.floor((window - ahead_s) / interval + 1e-9)), 0.0)
    # The next request fits once the TAT is within the window again.
    return Decision(False, 0, max(0.0, ahead_s + interval - window))


# Under the tenants' prefix; tenant ids ("org-...") never start with it.
CLIENT_KEY_PREFIX = "client:"


def _create(settings: Settings, limit: int, key_prefix: str) -> RateLimiter | None:
    if limit == 0:
        return None
    url = settings.effective_rate_limit_redis_url
    if url is None:
        return LocalRateLimiter(limit, settings.rate_limit_window_s)
    return RedisRateLimiter(
        url, limit=limit, window_s=settings.rate_limit_window_s, key_prefix=key_prefix
    )


def create_rate_limiter(settings: Settings) -> RateLimiter | None:
    """The per-tenant limit: Redis when a Redis URL is configured, else in memory; None when
    the limit is off."""
    return _create(settings, settings.rate_limit_requests, settings.rate_limit_key_prefix)


def create_client_rate_limiter(settings: Settings) -> RateLimiter | None:
    """The per-address limit, checked before authentication; as ``create_rate_limiter``."""
    return _create(
        settings,
        settings.client_rate_limit_requests,
        settings.rate_limit_key_prefix + CLIENT_KEY_PREFIX,
    )
