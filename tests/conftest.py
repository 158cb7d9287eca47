"""Shared by the tests: offscreen rendering, and `server`, a robot server in its own process."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

# Offscreen rendering without a display; must be set before anything imports mujoco.
os.environ.setdefault("MUJOCO_GL", "egl")

ROOT = Path(__file__).resolve().parent.parent


PYTHON_SERVER = [sys.executable, "-m", "agent.cli", "robot-server"]
CPP_DIR = ROOT / "robot_bridge" / "cpp"


class Server:
    """`omniloop robot-server` (or the C++ server, as `program`) in its own process, on a free loopback port."""

    def __init__(self, tmp_path: Path, *args: str, bind: str = "tcp://127.0.0.1:0",
                 program: list[str] = PYTHON_SERVER) -> None:
        self.log = tmp_path / f"server-{time.monotonic_ns()}.jsonl"
        cmd = [*program, "--bind", bind, "--log", str(self.log), *args]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        found = re.search(r" at (tcp://\S+?): ", line)
        if not found:
            self.proc.kill()
            raise RuntimeError(f"the server did not start: {line}{self.proc.stderr.read()}")
        self.endpoint = found.group(1)

    def events(self, kind: str | None = None) -> list[dict]:
        if not self.log.exists():
            return []
        rows = [json.loads(line) for line in self.log.read_text().splitlines() if line.strip()]
        return [r for r in rows if kind is None or r["event"] == kind]

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.stdout.read() + self.proc.stderr.read()


@pytest.fixture
def server(tmp_path):
    servers = []

    def start(*args: str, **kwargs) -> Server:
        servers.append(Server(tmp_path, *args, **kwargs))
        return servers[-1]

    yield start
    for s in servers:
        s.stop()


@pytest.fixture(scope="session")
def cpp_server() -> Path:
    """The C++ robot server, built from robot_bridge/cpp (make rebuilds it only when a source changed)."""
    done = subprocess.run(["make", "-s", "-C", str(CPP_DIR)], capture_output=True, text=True)
    assert done.returncode == 0, f"building the C++ robot server failed:\n{done.stdout}{done.stderr}"
    return CPP_DIR / "build" / "omniloop-robot-server"
