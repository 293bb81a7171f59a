"""ServerApp: runs the federation (setup, pre-training rounds, transfer to the target) and writes
the run folder named by ``run-dir`` (or a new one under ``output-dir``)."""

from __future__ import annotations

import logging
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from crossrec_core.config import PROJECT_ROOT, RunConfig
from crossrec_core.reporting import new_run_dir
from crossrec_core.scenario import resolve_data_dir
from server.federation import Federation

logger = logging.getLogger(__name__)
app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    config = resolve_data_dir(RunConfig.from_mapping(dict(context.run_config)), PROJECT_ROOT)
    if config.run_dir:
        run_dir = Path(config.run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
    else:
        output = Path(config.output_dir)
        run_dir = new_run_dir(output if output.is_absolute() else PROJECT_ROOT / output, "federated")
    logger.info("crossrec federation: %d silo node(s), run folder %s", len(config.node_silos), run_dir)
    Federation(grid, config, run_dir).run()
