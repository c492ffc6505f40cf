"""Waiting in tests on a condition rather than for a guessed number of seconds.

A ``time.sleep(0.6)`` that "should be long enough" for another thread is either too short on a
loaded machine (a flaky failure) or longer than needed everywhere else. ``wait_until`` polls the
condition itself and gives up, failing the test with what it waited for, only at a deadline far
past anything a healthy run needs.
"""

from __future__ import annotations

import time
from collections.abc import Callable

# How late a thread may wake up on this project's test machines (2 cores, a model sometimes
# training beside the tests): added to a bound on elapsed time that is itself the property under
# test, so that the bound fails for a broken mechanism, not for a busy scheduler.
SCHEDULING_MARGIN_S = 3.0

# The deadline of a wait for something that should happen at once or within a heartbeat.
DEFAULT_TIMEOUT_S = 30.0


class Stopwatch:
    """Seconds since it was made (``time.monotonic``, which no clock adjustment moves)."""

    def __init__(self) -> None:
        self.started = time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.started


def wait_until(
    condition: Callable[[], bool],
    *,
    what: str,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    poll_s: float = 0.01,
) -> float:
    """Poll ``condition`` until it is true; the seconds that took. Fails the test (an
    ``AssertionError`` naming ``what``) if it is still false after ``timeout_s``."""
    watch = Stopwatch()
    while not condition():
        if watch.elapsed() > timeout_s:
            raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(poll_s)
    return watch.elapsed()


def work_silently(seconds: float, *, step_s: float = 0.01) -> None:
    """Stand in for a long computation that reports nothing (training steps, ranking patch
    candidates) for up to ``seconds``.

    Short sleeps, not one long wait: the heartbeat thread stops a pipeline by raising an
    exception in its thread, which Python delivers between bytecodes, never inside a blocking
    call (a ``threading.Event.wait`` would hold it off until the wait ended)."""
    watch = Stopwatch()
    while watch.elapsed() < seconds:
        time.sleep(step_s)
