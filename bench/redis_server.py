"""A real ``redis-server`` for tests and benchmarks: a free loopback port, a temporary directory, AOF on.

Every acknowledged write is fsynced (``appendfsync always``), so a server killed with
SIGKILL and started again on the same directory has everything it acknowledged: what a
production Redis with AOF persistence promises (to within a second with ``everysec``).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

E_NO_REDIS = (
    "no redis-server on PATH; the online-store tests need a real Redis: install it with "
    "`bash deploy/redis/install.sh` (Debian's redis-server package; `make test` does this)"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def redis_binary() -> str | None:
    return shutil.which("redis-server")


@dataclass
class RedisServer:
    """One ``redis-server`` process; :meth:`kill` and :meth:`start` again keep its data (same dir and port)."""

    data_dir: Path
    port: int = 0
    appendfsync: str = "always"
    """``always`` for the tests (nothing acknowledged is lost to SIGKILL); benchmarks use ``everysec``,
    the usual production setting."""
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 20.0) -> RedisServer:
        binary = redis_binary()
        if binary is None:
            raise RuntimeError(E_NO_REDIS)
        if not self.port:
            self.port = free_port()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.data_dir / "redis.log", "ab")
        self.proc = subprocess.Popen(
            [
                binary,
                "--bind", "127.0.0.1",
                "--port", str(self.port),
                "--dir", str(self.data_dir),
                "--save", "",
                "--appendonly", "yes",
                "--appendfsync", self.appendfsync,
                "--protected-mode", "yes",
                "--daemonize", "no",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        log.close()
        deadline = time.monotonic() + timeout
        while not self.ping():
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server not answering on {self.port} after {timeout}s:\n{self.log()}")
            time.sleep(0.05)
        return self

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def log(self) -> str:
        path = self.data_dir / "redis.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def kill(self) -> None:
        """SIGKILL: no shutdown save, no goodbye to clients."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
