"""server.simulate's argument checks (no Flower process is started)."""

import json

import pytest

from server import simulate


@pytest.mark.parametrize("cpus", ["0", "-1", "100000"])
def test_simulate_refuses_cpus_per_node_the_machine_cannot_place(tmp_path, capsys, cpus):
    out = tmp_path / "runs"
    assert simulate.main(["--cpus-per-node", cpus, "--no-baselines", "-c", f"output-dir={json.dumps(str(out))}"]) == 2
    assert "--cpus-per-node" in capsys.readouterr().err and not out.exists()  # refused before any run folder
