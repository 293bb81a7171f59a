"""Flower's Deployment Engine for crossrec: a SuperLink with TLS and SuperNode authentication, one
SuperNode per silo, and ``flwr run`` against them; each process started here is stopped by PID.

These are the commands of the README's "Deploying one SuperNode per silo", wrapped for the tests,
the benchmark and a federation tried on one machine. On real machines each silo runs its own
``flower-supernode`` next to its data and the operator runs the SuperLink; the arguments are the same.
"""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crossrec_core.config import PROJECT_ROOT
from crossrec_core.errors import CrossrecError
from server.credentials import CA_CERT, SERVER_CERT, SERVER_KEY
from server.federation import finished_result
from server.processes import (
    config_args, connection_toml, executable, flower_env, free_port, start_listening, stop_tree,
)

CONNECTION = "crossrec-deploy"  # the operator's flwr connection name


class DeploymentError(CrossrecError):
    """A Flower process of the deployment did not start, or a deployed run did not complete."""


class Superlink:
    """A deployment SuperLink: TLS from ``certificates`` (``server.credentials``' files), SuperNode
    authentication on (only registered keys may join), runtime dependency installation off."""

    def __init__(self, workdir: Path, certificates: Path, *, port: int | None = None, auth: bool = True) -> None:
        self.workdir = workdir
        self.certificates = certificates
        self.port = port or free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.auth = auth
        self.home = workdir / "operator-flwr-home"
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "config.toml").write_text(connection_toml(CONNECTION, self.address, certificates / CA_CERT))
        self.log = workdir / "superlink.log"
        self.env = flower_env(self.home)
        self.proc: subprocess.Popen | None = None

    def command(self) -> list[str]:
        c = self.certificates
        return [
            executable("flower-superlink"),
            "--ssl-ca-certfile", str(c / CA_CERT), "--ssl-certfile", str(c / SERVER_CERT), "--ssl-keyfile", str(c / SERVER_KEY),
            *(["--enable-supernode-auth"] if self.auth else []),
            "--disable-runtime-dependency-installation",
            "--database", str(self.workdir / "superlink.db"),
            "--host", "127.0.0.1", "--port", str(self.port),
        ]

    def __enter__(self) -> "Superlink":
        try:
            self.proc = start_listening(self.command(), env=self.env, log=self.log, port=self.port,
                                        what="flower-superlink", cwd=self.workdir)
        except RuntimeError as exc:
            raise DeploymentError(str(exc)) from None
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def stop(self) -> None:
        stop_tree(self.proc)

    def _flwr(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run([executable("flwr"), *args], env=self.env, capture_output=True, text=True,
                              timeout=timeout, cwd=self.workdir)

    def register(self, public_key: Path, *, name: str = "") -> int:
        """Register a SuperNode's public key (``flwr supernode register``); its node id."""
        done = self._flwr("supernode", "register", str(public_key), CONNECTION, "--format", "json",
                          *(["--name", name] if name else []))
        try:
            return int(json.loads(done.stdout)["node-id"])
        except (ValueError, KeyError):
            raise DeploymentError(f"could not register {public_key}: {done.stdout.strip()} {done.stderr.strip()}") from None

    def nodes(self) -> list[dict[str, Any]]:
        """The SuperNodes the SuperLink knows, with their status (``flwr supernode list``)."""
        done = self._flwr("supernode", "list", CONNECTION, "--format", "json")
        try:
            return list(json.loads(done.stdout)["nodes"])
        except (ValueError, KeyError):
            raise DeploymentError(f"flwr supernode list failed: {done.stdout.strip()} {done.stderr.strip()}") from None

    def wait_online(self, count: int, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if sum(n.get("status") == "online" for n in self.nodes()) >= count:
                return
            time.sleep(1.0)
        raise DeploymentError(f"fewer than {count} SuperNode(s) online after {timeout:.0f} s: {self.nodes()}")

    def launch(self, run_config: dict[str, Any], log: Path) -> subprocess.Popen:
        """Start ``flwr run`` of this project on the SuperLink (returns at once)."""
        cmd = [executable("flwr"), "run", str(PROJECT_ROOT), CONNECTION, "--run-config", config_args(run_config), "--stream"]
        with open(log, "ab") as out:
            return subprocess.Popen(cmd, env=self.env, stdout=out, stderr=subprocess.STDOUT, cwd=PROJECT_ROOT,
                                    start_new_session=True)

    def run(self, run_config: dict[str, Any], run_dir: Path, log: Path, *, timeout: float = 3600) -> dict[str, Any]:
        """``flwr run`` with ``run-dir`` = ``run_dir``; the result once the run folder says it completed."""
        proc = self.launch({**run_config, "run-dir": str(run_dir)}, log)
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            stop_tree(proc)
            raise DeploymentError(f"flwr run did not finish within {timeout:.0f} s; see {log}") from None
        try:
            return finished_result(run_dir)
        except CrossrecError as exc:
            raise DeploymentError(f"{exc} (flwr run exit {code}); see {log}") from None


@dataclass
class Supernode:
    """One silo's SuperNode: its identity and data in ``node_config``, its own FLWR_HOME (where
    Flower installs the app for it), its own port for the ClientApp processes it starts."""

    name: str
    superlink: str
    node_config: dict[str, Any]
    workdir: Path
    ca_cert: Path | None = None
    private_key: Path | None = None
    max_retries: int | None = None
    proc: subprocess.Popen | None = None

    def __post_init__(self) -> None:
        self.home = self.workdir / f"node-{self.name}-flwr-home"
        self.home.mkdir(parents=True, exist_ok=True)
        self.log = self.workdir / f"supernode-{self.name}.log"
        self.port = free_port()

    def command(self) -> list[str]:
        cmd = [executable("flower-supernode"), "--superlink", self.superlink, "--port", str(self.port),
               "--node-config", config_args(self.node_config)]
        if self.ca_cert is not None:
            cmd += ["--root-certificates", str(self.ca_cert)]
        if self.private_key is not None:
            cmd += ["--auth-supernode-private-key", str(self.private_key)]
        if self.max_retries is not None:
            cmd += ["--max-retries", str(self.max_retries), "--max-wait-time", "30"]
        return cmd

    def start(self) -> "Supernode":
        with open(self.log, "ab") as log:
            # one math thread per ClientApp: several silos may share this machine's cores
            self.proc = subprocess.Popen(self.command(), env=flower_env(self.home, OMP_NUM_THREADS="1"), stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True, cwd=self.workdir)
        return self

    def stop(self) -> None:
        stop_tree(self.proc)

    def kill(self) -> None:
        """Kill the SuperNode and its ClientApp processes at once (SIGKILL), as a crashed machine would."""
        import signal

        stop_tree(self.proc, grace=5, sig=signal.SIGKILL)
