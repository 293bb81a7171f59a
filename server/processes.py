"""Starting and stopping Flower's processes (SuperLink, SuperNodes, ``flwr``) by PID.

Flower's helpers (SuperExec, the simulation, Ray's workers, ClientApp processes) start their own
sessions and may outlive their parents, so a process is stopped with everything it started: the
process tree is read from /proc first, then every process of the tree, or of a session the tree
opened, gets SIGTERM, and SIGKILL if it is still there. Nothing is ever stopped by name.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

# Environment for every Flower process crossrec starts (added to the caller's).
FLOWER_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
}


def flower_env(flwr_home: Path, **extra: str) -> dict[str, str]:
    """The caller's environment plus an isolated ``FLWR_HOME``; the venv's bin first on PATH
    (Flower starts its other executables, ``flower-superexec`` and others, by name)."""
    return {
        **os.environ,
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
        "FLWR_HOME": str(flwr_home),
        **FLOWER_ENV,
        **extra,
    }


def executable(name: str) -> str:
    """A Flower executable of this Python's environment (else from PATH)."""
    here = Path(sys.executable).parent / name
    return str(here) if here.exists() else (shutil.which(name) or name)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, proc: subprocess.Popen, *, timeout: float, what: str, log: Path) -> None:
    """Wait until ``port`` on loopback accepts connections; raise if ``proc`` exits or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode}; see {log}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"{what} did not listen on port {port} within {timeout:.0f} s; see {log}")


def start_listening(cmd: list[str], *, env: dict[str, str], log: Path, port: int, what: str,
                    cwd: Path | None = None, timeout: float = 60) -> subprocess.Popen:
    """Start ``cmd`` in its own session, output appended to ``log``, and wait until it listens on
    ``port``; if it exits or time runs out, stop what it started and raise RuntimeError."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=cwd)
    try:
        wait_for_port(port, proc, timeout=timeout, what=what, log=log)
    except RuntimeError:
        stop_tree(proc)
        raise
    return proc


def all_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _stat(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return None


def session_of(pid: int) -> int | None:
    fields = _stat(pid)
    return int(fields[3]) if fields else None


def descendants(root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for pid in all_pids():
        fields = _stat(pid)
        if fields:
            children.setdefault(int(fields[1]), []).append(pid)
    found, stack = set(), [root]
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in found:
                found.add(child)
                stack.append(child)
    return found


def send_signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def stop_tree(proc: subprocess.Popen | None, *, grace: float = 15.0, sig: int = signal.SIGTERM) -> None:
    """Stop ``proc`` and every process it started (see the module docstring), by PID."""
    if proc is None:
        return
    tree = descendants(proc.pid) | {proc.pid}
    own_session = os.getsid(0)
    sessions = {sid for sid in map(session_of, tree) if sid is not None and sid != own_session}
    for pid in tree:
        send_signal(pid, sig)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass
    time.sleep(1.0 if sig != signal.SIGKILL else 0.2)
    leftovers = {p for p in all_pids() if p in tree or session_of(p) in sessions}
    leftovers.discard(os.getpid())
    for pid in leftovers:
        send_signal(pid, signal.SIGKILL)
    if proc.poll() is None:
        proc.wait(timeout=5)


def connection_toml(name: str, address: str, ca_cert: Path | None) -> str:
    """A ``$FLWR_HOME/config.toml`` whose default connection ``name`` lets the ``flwr`` CLI reach the
    SuperLink at ``address`` (TLS verified against ``ca_cert``; without one, insecure)."""
    tls = f'root-certificates = "{ca_cert}"' if ca_cert is not None else "insecure = true"
    return f'[superlink]\ndefault = "{name}"\n\n[superlink.{name}]\naddress = "{address}"\n{tls}\n'


def config_args(values: dict) -> str:
    """``key=value`` pairs as Flower's ``--run-config`` / ``--node-config`` read them (TOML values)."""
    import json

    def toml(value) -> str:
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, (int, float)):
            return repr(value)
        return json.dumps(str(value))  # a TOML basic string

    return " ".join(f"{k}={toml(v)}" for k, v in values.items())
