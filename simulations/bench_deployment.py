"""Benchmark: the same federated run on Flower's Deployment Engine (a SuperLink with TLS and SuperNode
authentication, one SuperNode per silo, on loopback) and in simulation; wall times side by side.

    python simulations/bench_deployment.py [--experiment simulations/quick.toml] [-c key=value ...]

Deployed: everything (credentials, SuperLink, SuperNodes) is set up first, then only ``flwr run`` is
timed. Simulated: ``python -m server.simulate --variants dp --no-baselines`` is timed whole (it
starts its own SuperLink), and the ServerApp's own wall time of each run is given too. The test
metrics of both runs are printed: with ``-c secure-noise=false`` (DP randomness from the run seed)
they agree exactly; by default each silo's noise is fresh, so they differ a little.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from client.keys import write_key_pair  # noqa: E402
from crossrec_core.config import PROJECT_ROOT, load_config, parse_override  # noqa: E402
from crossrec_core.scenario import resolve_data_dir  # noqa: E402
from server.credentials import CA_CERT, write_certificates  # noqa: E402
from server.deployment import Superlink, Supernode  # noqa: E402
from server.simulate import read_experiment  # noqa: E402


def deployed(overrides: dict, work: Path) -> tuple[float, dict]:
    config = resolve_data_dir(load_config(overrides), PROJECT_ROOT)
    write_certificates(work / "certificates", ["127.0.0.1", "localhost"])
    nodes = []
    with Superlink(work, work / "certificates") as link:
        try:
            for silo in config.node_silos:
                key, public = write_key_pair(work / "keys" / silo)
                link.register(public, name=silo)
                node_config = {"silo": silo, "data-dir": config.data_dir, "state-dir": str(work / "state" / silo)}
                nodes.append(Supernode(silo, link.address, node_config, work, ca_cert=work / "certificates" / CA_CERT,
                                       private_key=key).start())
            link.wait_online(len(nodes))
            start = time.perf_counter()
            result = link.run(overrides, work / "run", work / "flwr-run.log", timeout=7200)
            return time.perf_counter() - start, result
        finally:
            for node in nodes:
                node.stop()


def simulated(args: list[str], output: Path) -> tuple[float, dict]:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "server.simulate", "--variants", "dp", "--no-baselines", "--quiet",
                           "-c", f"output-dir={json.dumps(str(output))}", *args],
                          cwd=PROJECT_ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"simulation failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
    top = Path(next(l for l in done.stdout.splitlines() if l.startswith("run folder: ")).split(": ", 1)[1])
    return seconds, json.loads((top / "federated-dp" / "federated.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiment", default="simulations/quick.toml")
    parser.add_argument("-c", "--run-config", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    overrides = read_experiment(args.experiment)
    overrides.update(dict(parse_override(o) for o in args.run_config))
    passthrough = ["--experiment", args.experiment] + [a for o in args.run_config for a in ("-c", o)]
    with tempfile.TemporaryDirectory(prefix="crossrec-bench-deploy-") as tmp:
        d_seconds, d_result = deployed(overrides, Path(tmp) / "deployed")
        s_seconds, s_result = simulated(passthrough, Path(tmp) / "simulated")
    print(f"experiment {args.experiment} {' '.join(args.run_config)}: the federation with DP")
    print("| engine | flwr run wall s | ServerApp wall s | cold NDCG@10 | all NDCG@10 | max ε |")
    print("|---|---|---|---|---|---|")
    for name, seconds, result in (("deployment (TLS + auth)", d_seconds, d_result),
                                  ("simulation (whole command)", s_seconds, s_result)):
        test = result["test"]
        print(f"| {name} | {seconds:.1f} | {result['wall_seconds']:.1f} | {test['cold-start'].get('ndcg@10', float('nan')):.4f} "
              f"| {test['all']['ndcg@10']:.4f} | {max(result['epsilon_by_silo'].values()):.3f} |")


if __name__ == "__main__":
    main()
