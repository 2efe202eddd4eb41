"""Start, find and stop the dev environment's own server processes, by pid file.

`kakehashi dev down` must stop only what `dev up` started: a pid is trusted only while
`/proc/<pid>/exe` still resolves to the binary that was started, so a recycled pid is never
signalled.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on `host` right now (the OS picks it; the caller binds it next). The one
    helper for the dev stack, the tests and the benchmarks."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def pid_alive(pid: int, binary: Path | None = None) -> bool:
    """True if `pid` runs and (when given) is an instance of `binary`."""
    try:
        exe = Path(os.readlink(f"/proc/{pid}/exe"))
    except (FileNotFoundError, PermissionError, ProcessLookupError):
        return False
    if _is_zombie(pid):
        return False
    if binary is None:
        return True
    return exe.name.removesuffix(" (deleted)") == binary.resolve().name


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def terminate(pid: int, grace_s: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after `grace_s`; returns once the process is gone."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            _reap(pid)
            return
        time.sleep(0.1)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    while pid_alive(pid):
        time.sleep(0.05)
    _reap(pid)


def wait_gone(pids: list[int], timeout_s: float = 30.0) -> None:
    """Wait until no process (not even a zombie) has these pids.

    An orphan killed here lingers as a zombie until init reaps it (about a second on these
    machines), and tools that probe with kill(pid, 0), kwokctl among them, take a zombie for
    a running component and skip starting it.
    """
    deadline = time.monotonic() + timeout_s
    for pid in pids:
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            _reap(pid)
            time.sleep(0.05)


def _reap(pid: int) -> None:
    # Our own children become zombies until waited for.
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


@dataclass
class Service:
    """A long-running server process owned by the dev environment."""

    name: str
    binary: Path
    args: Sequence[str]
    run_dir: Path
    health_url: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    ready_timeout_s: float = 120.0
    launcher: Sequence[str] = ()
    """Commands that exec `binary` in other namespaces (nsenter, unshare): the pid stays
    the binary's, since each of them execs the next."""
    health_check: Callable[[], bool] | None = None
    """Readiness other than `health_url` (a socket that answers, say)."""

    @property
    def pid_file(self) -> Path:
        return self.run_dir / "pids" / f"{self.name}.pid"

    @property
    def log_file(self) -> Path:
        return self.run_dir / "logs" / f"{self.name}.log"

    def _recorded_pid(self) -> int | None:
        try:
            return int(self.pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    def pid(self) -> int | None:
        pid = self._recorded_pid()
        return pid if pid is not None and pid_alive(pid, self.binary) else None

    def healthy(self) -> bool:
        if self.pid() is None:
            return False
        if self.health_check is not None:
            return self.health_check()
        if self.health_url is None:
            return True
        try:
            return httpx.get(self.health_url, timeout=2.0, verify=False).status_code < 300
        except httpx.HTTPError:
            return False

    def _runs_as_configured(self, pid: int) -> bool:
        # During exec the kernel points /proc/PID/exe at the new binary before it lays out the
        # new arguments: an empty cmdline there is a process still starting, not another one.
        deadline = time.monotonic() + 2.0
        while True:
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:-1]
            except OSError:
                return False
            if cmdline or time.monotonic() > deadline:
                return [arg.decode() for arg in cmdline] == [str(self.binary), *self.args]
            time.sleep(0.01)

    def start(self, wait: bool = True) -> int:
        """Start unless already running as configured (a process started with other
        arguments, by an older version say, is restarted); wait until healthy. Returns the
        pid."""
        pid = self.pid()
        if pid is not None and not self._runs_as_configured(pid):
            self.stop()
            pid = None
        if pid is None:
            self.pid_file.parent.mkdir(parents=True, exist_ok=True)
            self.log_file.parent.mkdir(parents=True, exist_ok=True)
            with self.log_file.open("ab") as log:
                proc = subprocess.Popen(
                    [*self.launcher, str(self.binary), *self.args],
                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    env={**os.environ, **self.env},
                    # Its own session: Ctrl-C in the shell that ran `dev up` leaves it running.
                    start_new_session=True,
                )
            pid = proc.pid
            self.pid_file.write_text(f"{pid}\n")
        if wait:
            self.wait_healthy()
        return pid

    def wait_healthy(self) -> None:
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            if self.healthy():
                return
            recorded = self._recorded_pid()
            # (A launcher may not have exec'd the binary yet: only a gone process failed.)
            if recorded is None or not pid_alive(recorded):
                raise RuntimeError(f"{self.name} exited during start-up:\n{self.log_tail()}")
            time.sleep(0.25)
        raise RuntimeError(f"{self.name} not healthy after {self.ready_timeout_s:.0f}s "
                           f"({self.health_url}):\n{self.log_tail()}")

    def stop(self) -> None:
        pid = self.pid()
        if pid is not None:
            terminate(pid)
        self.pid_file.unlink(missing_ok=True)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"
