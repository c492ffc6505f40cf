"""What the per-tenant rate limit costs a request, and whether it holds across API processes.

    .venv/bin/python -m bench.ratelimit [--redis redis://127.0.0.1:6379/15] [--hits 5000]

Times ``hit()`` in memory and in Redis (one Lua script round trip), then starts 4 processes, each
with its own connection, that hit one tenant's key as fast as they can against a limit of 1,000
per hour: exactly 1,000 must pass, whatever the interleaving. Keys are made under a random
prefix and deleted afterwards.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import time
import uuid

import redis

from app.core.ratelimit import LocalRateLimiter, RateLimiter, RedisRateLimiter

PROCESSES, HITS_EACH, LIMIT = 4, 500, 1000


def latency_us(limiter: RateLimiter, hits: int) -> tuple[float, float]:
    """Median and 99th percentile of one ``hit()``, in microseconds."""
    times = []
    for i in range(hits):
        started = time.perf_counter()
        limiter.hit(f"org-{i % 50}")
        times.append((time.perf_counter() - started) * 1e6)
    times.sort()
    return statistics.median(times), times[int(len(times) * 0.99)]


def hammer(url: str, prefix: str, allowed: multiprocessing.Queue) -> None:
    limiter = RedisRateLimiter(url, limit=LIMIT, window_s=3600, key_prefix=prefix)
    allowed.put(sum(limiter.hit("org-shared").allowed for _ in range(HITS_EACH)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/15")
    parser.add_argument("--hits", type=int, default=5000)
    args = parser.parse_args()
    prefix = f"safepatch-bench:{uuid.uuid4().hex}:"
    try:
        limiters: list[tuple[str, RateLimiter]] = [
            ("memory", LocalRateLimiter(10**9, 1.0)),
            ("redis", RedisRateLimiter(args.redis, limit=10**9, window_s=1.0, key_prefix=prefix)),
        ]
        for name, limiter in limiters:
            median, p99 = latency_us(limiter, args.hits)
            print(f"{name}: hit() median {median:.0f} us, p99 {p99:.0f} us ({args.hits} hits)")
        allowed: multiprocessing.Queue = multiprocessing.Queue()
        workers = [
            multiprocessing.Process(target=hammer, args=(args.redis, prefix, allowed))
            for _ in range(PROCESSES)
        ]
        for worker in workers:
            worker.start()
        passed = sum(allowed.get() for _ in workers)
        for worker in workers:
            worker.join()
        print(
            f"{PROCESSES} processes x {HITS_EACH} hits, limit {LIMIT}: {passed} allowed "
            f"({'held' if passed == LIMIT else 'BROKEN'})"
        )
    finally:
        client = redis.Redis.from_url(args.redis)
        for key in client.scan_iter(f"{prefix}*"):
            client.delete(key)


if __name__ == "__main__":
    main()
