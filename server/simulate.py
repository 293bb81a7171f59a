"""The main job: the federation on the bundled data, as Flower simulation runs, with the baselines.

    python -m server.simulate [-c key=value ...] [--experiment simulations/quick.toml]

Runs, into one run folder (``runs/run-<time>/``): the centralized baselines (popularity, target-only,
pooled non-private) on the same splits and negatives; the federation without DP (``federated-nodp/``)
and with DP (``federated-dp/``), each a real ``flwr run`` against a simulation SuperLink this command
starts (runtime dependency installation disabled) and stops by PID. Then it writes and prints the
comparison table. Exits non-zero when any run failed (``flwr run`` itself exits 0 on failure).
"""

from __future__ import annotations

import argparse
import os
import logging
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Any

from crossrec_core.baselines import run_baselines
from crossrec_core.config import PROJECT_ROOT, RunConfig, load_config, parse_override
from crossrec_core.errors import ConfigError, CrossrecError
from crossrec_core.privacy_report import write_run_report
from crossrec_core.reporting import code_version, comparison_markdown, new_run_dir, write_atomic, write_json
from crossrec_core.scenario import build_scenario, resolve_data_dir
from crossrec_core.silo import check_privacy_plans
from server.federation import finished_result
from server.processes import (
    config_args, connection_toml, executable, flower_env, free_port, start_listening, stop_tree,
)

logger = logging.getLogger("crossrec")

CONNECTION = "crossrec-sim"
VARIANTS = {"nodp": False, "dp": True}


class SimulationError(CrossrecError):
    """A Flower run failed or did not finish."""


class SimulationLink:
    """A simulation SuperLink started as our child (own process group) and stopped by its PID."""

    def __init__(self, workdir: Path, log: Path, *, cpus_per_node: int = 1) -> None:
        self.port = free_port()
        self.home = workdir / "flwr-home"
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "config.toml").write_text(connection_toml(CONNECTION, f"127.0.0.1:{self.port}", None))
        self.log = log
        # each simulated ClientApp gets cpus_per_node CPUs and as many math threads: no oversubscription
        self.cpus_per_node = cpus_per_node
        self.env = flower_env(self.home, OMP_NUM_THREADS=str(cpus_per_node))
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "SimulationLink":
        cmd = [
            executable("flower-superlink"), "--insecure", "--simulation", "--isolation", "subprocess",
            "--host", "127.0.0.1", "--port", str(self.port), "--database", str(self.home / "state.db"),
            "--disable-runtime-dependency-installation",
        ]
        try:
            self.proc = start_listening(cmd, env=self.env, log=self.log, port=self.port, what="flower-superlink")
        except RuntimeError as exc:
            raise SimulationError(str(exc)) from None
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop the SuperLink and everything it started, by PID (``processes.stop_tree``)."""
        stop_tree(self.proc)

    def run(self, overrides: dict[str, Any], num_nodes: int, run_dir: Path, stream_to: Path) -> dict[str, Any]:
        """``flwr run`` this project with the overrides; wait for the run folder's final status."""
        cmd = [
            executable("flwr"), "run", str(PROJECT_ROOT), CONNECTION,
            "--federation-config", f"num-supernodes={num_nodes} client-resources-num-cpus={self.cpus_per_node}",
            "--run-config", config_args(overrides), "--stream",
        ]
        with open(stream_to, "ab") as out:
            done = subprocess.run(cmd, env=self.env, stdout=out, stderr=subprocess.STDOUT, cwd=PROJECT_ROOT)
        try:
            return finished_result(run_dir)
        except CrossrecError as exc:
            raise SimulationError(f"{exc} (flwr run exit {done.returncode}); see {stream_to}") from None


def read_experiment(path: str | None) -> dict[str, Any]:
    if not path:
        return {}
    try:
        with open(path, "rb") as fh:
            return dict(tomllib.load(fh))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read experiment file {path}:", [str(exc)]) from None


def federated_rows(result: dict[str, Any], method: str) -> list[dict[str, Any]]:
    eps = max(result["epsilon_by_silo"].values(), default=None) if result["dp"] else None
    rows = []
    for group, metrics in result["test"].items():
        metrics = dict(metrics)
        n = int(metrics.pop("n"))
        rows.append({"method": method, "group": group, "num_users": n, "metrics": metrics, "epsilon": eps})
    return rows


def _terminate(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m server.simulate", description=__doc__.split("\n\n")[0])
    parser.add_argument("-c", "--run-config", action="append", default=[], metavar="KEY=VALUE",
                        help="override a run_config key (repeatable)")
    parser.add_argument("--experiment", help="a TOML file of run_config overrides (see simulations/)")
    parser.add_argument("--variants", default=None,
                        help="federated runs to do: nodp, dp or both (default: both, or nodp when dp=false)")
    parser.add_argument("--no-baselines", action="store_true", help="skip the centralized baselines")
    parser.add_argument("--cpus-per-node", type=int, default=1, metavar="N",
                        help="CPUs (and math threads) per simulated ClientApp; ClientApps run side by side "
                             "as the machine's CPUs allow (default 1)")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    previous = signal.signal(signal.SIGTERM, _terminate)  # so the SuperLink is stopped on SIGTERM too
    try:
        return _main(args)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _main(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    try:
        overrides = read_experiment(args.experiment)
        overrides.update(dict(parse_override(o) for o in args.run_config))
        config = resolve_data_dir(load_config(overrides), PROJECT_ROOT)
        cpus = os.cpu_count() or 1
        if not 1 <= args.cpus_per_node <= cpus:
            raise ConfigError("bad --cpus-per-node:", [
                f"{args.cpus_per_node}: must be between 1 and this machine's {cpus} CPUs "
                "(Flower cannot place a ClientApp that needs more)"])
        chosen = args.variants or ("nodp,dp" if config.dp else "nodp")
        variants = list(dict.fromkeys(v.strip() for v in chosen.split(",") if v.strip()))
        unknown = set(variants) - set(VARIANTS)
        if unknown or not variants:
            raise ConfigError("bad --variants:", [f"{sorted(unknown) or 'none'}: choose from {sorted(VARIANTS)}"])
        scenario = build_scenario(config)  # validates every silo file before any run starts
        scenario.negatives(config.target)  # and that the target's catalogue can give them
        if config.dp and "dp" in variants:
            logger.info("checking every silo's privacy plan ...")
            check_privacy_plans(config, scenario)  # an impossible budget fails here, before any training
        output = Path(config.output_dir)
        try:
            top = new_run_dir(output if output.is_absolute() else PROJECT_ROOT / output, "run")
        except OSError as exc:
            raise CrossrecError(f"cannot create a run folder under output-dir {output}: {exc}") from None
        logger.info("run folder: %s", top)
        write_json(top / "config.json", {"run_config": config.to_run_config(), "code_version": code_version(),
                                         "experiment": args.experiment, "variants": variants})
        rows: list[dict[str, Any]] = []
        details: dict[str, Any] = {}
        if not args.no_baselines:
            logger.info("centralized baselines ...")
            base_rows, details = run_baselines(config, scenario=scenario, progress=not args.quiet)
            rows.extend(r for r in base_rows if r["method"] != "pooled")
            pooled = [r for r in base_rows if r["method"] == "pooled"]
        else:
            pooled = []
        results: dict[str, Any] = {}
        failures: list[str] = []
        with tempfile.TemporaryDirectory(prefix="crossrec-flwr-") as tmp, SimulationLink(Path(tmp), top / "superlink.log", cpus_per_node=args.cpus_per_node) as link:
            for variant in variants:
                run_dir = top / f"federated-{variant}"
                run_dir.mkdir()
                logger.info("federated run (%s) with %d silo nodes ...", variant, len(config.node_silos))
                t0 = time.perf_counter()
                run_overrides = {**overrides, "dp": VARIANTS[variant], "run-dir": str(run_dir), "data-dir": config.data_dir}
                try:
                    results[variant] = link.run(run_overrides, len(config.node_silos), run_dir, top / f"flwr-{variant}.log")
                except SimulationError as exc:
                    failures.append(str(exc))
                    logger.error("%s", exc)
                    continue
                logger.info("federated run (%s) done in %.1f s", variant, time.perf_counter() - t0)
                label = ({"segments": "federated (DP, segments)", "dp-sgd": "federated (DP-SGD)"}.get(
                    results[variant].get("design"), "federated (DP)") if VARIANTS[variant] else "federated (no DP)")
                rows.extend(federated_rows(results[variant], label))
        rows.extend(pooled)
        write_run_report(top, {f"federated-{v}": top / f"federated-{v}" for v in variants}, delta=config.delta,
                         accountant=config.accountant, baselines=not args.no_baselines)
        seconds = time.perf_counter() - start
        markdown = write_comparison(top, config, scenario, rows, results, details, seconds)
    except CrossrecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; the SuperLink and its processes were stopped", file=sys.stderr)
        return 130
    print(markdown)
    print(f"wall time: {seconds:.1f} s")
    print(f"privacy report: {top / 'privacy_report.md'}")
    print(f"run folder: {top}")
    if failures:
        print("FAILED: " + "; ".join(failures), file=sys.stderr)
        return 1
    return 0


def write_comparison(top: Path, config: RunConfig, scenario, rows, results, details, seconds) -> str:
    notes = [
        f"target silo: {config.target}; {int(scenario.target.cold.sum())} cold-start shoppers of "
        f"{scenario.target.num_users}; {len(config.node_silos)} silo node(s), {config.num_server_rounds} rounds, "
        f"aggregation {config.aggregation}",
        "sampled metrics: test item vs the same 99 seeded negatives for every method; full: vs the target "
        "catalogue minus the shopper's training and validation items",
        "ε column: the largest ε spent by any silo (δ = %g); per-silo figures below" % config.delta,
        scenario.collisions["shoppers"].describe("shopper keying"),
    ]
    for variant, result in results.items():
        if result["dp"]:
            spent = ", ".join(f"{k} {v:.3f}" for k, v in result["epsilon_by_silo"].items())
            notes.append(f"ε spent per silo ({variant}): {spent} (budget {config.epsilon_budget} each)")
            if result.get("design") == "segments":
                notes.append(f"DP run: segment transfer (each source releases once, by randomized response, one of "
                             f"{config.segments} values per shopper-table row: {'membership' if config.segments == 2 else 'membership and segment'}; "
                             "the target's segment model is fitted in the target silo and not released, so the "
                             "target spends no ε); private-transfer = \"dp-sgd\" runs plain DP-SGD instead")
    markdown = comparison_markdown(rows, title=f"crossrec on target {config.target}", notes=notes)
    write_json(top / "comparison.json", {"rows": rows, "baselines": details, "federated": results,
                                         "wall_seconds": round(seconds, 2)})
    write_atomic(top / "comparison.md", markdown)
    return markdown


if __name__ == "__main__":
    sys.exit(main())
