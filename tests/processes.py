"""Real ``safepatch`` processes for end-to-end tests: free ports, readiness waits, logs, cleanup."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

SAFEPATCH = str(Path(sys.executable).with_name("safepatch"))
# The checkout these tests belong to: the processes they start import its `app` and `workers`,
# whichever checkout the virtualenv's editable install points at (git worktrees share one).
ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def safepatch_env(**settings: str) -> dict[str, str]:
    """This environment without any SAFEPATCH_* of the developer's, plus ``settings``
    (``data_dir="/x"`` -> ``SAFEPATCH_DATA_DIR=/x``)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAFEPATCH_")}
    # Empty means unset, and beats any .env file in the working directory.
    env |= {"SAFEPATCH_DATABASE_URL": "", "SAFEPATCH_BROKER_URL": ""}
    # The services these tests start run jobs on the tiny model, whose attack (at the API's
    # largest learning rate) turns its replies into noise: the keyword judge counts noise as an
    # attack success, the whole-reply judge rightly does not. The service is under test here.
    env["SAFEPATCH_JUDGE"] = "keyword"
    env |= {f"SAFEPATCH_{key.upper()}": value for key, value in settings.items()}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    return env


def run_cli(*args: str, env: Mapping[str, str], timeout: float = 60) -> str:
    """Run ``safepatch ARGS`` to completion; its stdout, or an error showing both streams."""
    done = subprocess.run(
        [SAFEPATCH, *args], env=env, capture_output=True, text=True, timeout=timeout
    )
    if done.returncode != 0:
        raise AssertionError(
            f"safepatch {' '.join(args)} exited {done.returncode}\n"
            f"--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"
        )
    return done.stdout


@dataclass
class Processes:
    """Long-running ``safepatch`` processes started by one test, each logging to a file."""

    log_dir: Path
    started: list[tuple[str, subprocess.Popen[bytes], Path]] = field(default_factory=list)

    def start(
        self,
        name: str,
        *args: str,
        env: Mapping[str, str],
        command: Sequence[str] = (SAFEPATCH,),
        new_session: bool = False,
    ) -> subprocess.Popen[bytes]:
        """Start ``command ARGS`` logging to ``<name>.log``; ``new_session`` puts it and its
        children in a process group of their own (``kill_group``)."""
        log_path = self.log_dir / f"{name}.log"
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                [*command, *args],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=new_session,
            )
        self.started.append((name, process, log_path))
        return process

    def kill_group(self, process: subprocess.Popen[bytes]) -> None:
        """SIGKILL a process started with ``new_session`` and every process of its group, as a
        host that loses power would: no handler runs, no message is acknowledged."""
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()

    def wait_ready(
        self, base_url: str, process: subprocess.Popen[bytes], timeout: float = 60
    ) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise AssertionError(f"exited with {process.returncode}\n{self.logs()}")
            try:
                if httpx.get(f"{base_url}/readyz", timeout=5).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"{base_url} not ready after {timeout}s\n{self.logs()}")

    def stop_all(self, timeout: float = 30) -> None:
        """SIGTERM everything at once (graceful shutdowns overlap), then wait; kill stragglers."""
        for _, process, _ in self.started:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
            elif _group_alive(process.pid):  # its leader died but children are left
                os.killpg(process.pid, signal.SIGKILL)
        deadline = time.monotonic() + timeout
        for _, process, _ in self.started:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def logs(self, lines: int = 60) -> str:
        parts = []
        for name, _, path in self.started:
            text = path.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"--- {name} ({path})\n" + "\n".join(text))
        return "\n".join(parts)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def children_of(pid: int) -> set[int]:
    """Direct child processes of ``pid`` (Linux)."""
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return {int(child) for child in path.read_text().split()} if path.exists() else set()


def is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes (its parent just hasn't reaped it yet).
    status = Path(f"/proc/{pid}/stat")
    return not (status.exists() and status.read_text().split(")")[-1].split()[0] == "Z")


def poll_job(
    client: httpx.Client, job_id: str, until: set[str], timeout: float = 60
) -> dict[str, object]:
    """GET the job until its status is one of ``until``; every (status, stage) seen is recorded
    under ``"_seen"``."""
    seen: list[tuple[object, object]] = []
    deadline = time.monotonic() + timeout
    while True:
        response = client.get(f"/v1/fine_tuning/jobs/{job_id}")
        response.raise_for_status()
        job: dict[str, object] = response.json()
        state = (job["status"], job["stage"])
        if not seen or seen[-1] != state:
            seen.append(state)
        if job["status"] in until:
            job["_seen"] = seen
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} stuck; states seen: {seen}")
        time.sleep(0.05)
