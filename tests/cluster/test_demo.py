"""README's first command, `kakehashi demo`, end to end on the local clusters: two models trained
on the learning cluster's real node, the first baked and served on the production cluster's
real node, a prediction through its Service, the second rolled out, a rollback to the first."""

from __future__ import annotations

import re
from typing import Any

import pytest
from click.testing import CliRunner

from kakehashi.cli import main


@pytest.mark.timeout(1800)
def test_the_demo_trains_bakes_serves_predicts_and_rolls_back(dev_env: Any, operator: Any) -> None:
    if not dev_env.real_nodes or "serving" not in dev_env.images:
        pytest.skip(f"needs the real nodes and the project's images: {dev_env.no_real_nodes_reason}")
    # The session's operator is already running: a second one would reconcile everything twice.
    result = CliRunner().invoke(main, ["demo", "--no-operator"])
    output = result.output
    assert result.exit_code == 0, output[-5000:]
    for run in ("digits-v1", "digits-v2"):
        assert re.search(rf"TrainingRun {run}-[0-9a-f]{{6}}: Succeeded in [\d.]+s on learning-real; metrics .*accuracy",
                         output), output
    ready = re.findall(r"ModelService digits: Ready in [\d.]+s .*; image (\S+)", output)
    assert len(ready) == 2 and ready[0] != ready[1] and all("@sha256:" in image for image in ready), output
    predictions = re.findall(r"held-out digits \[[\d, ]+\]: \[[\d, ]+\], (\d+)/10 right, served by model (sha256:\w+)",
                             output)
    assert len(predictions) == 2 and predictions[0][1] != predictions[1][1], output
    assert all(int(right) >= 6 for right, _ in predictions), output  # models that passed a 0.85 gate
    rolled = re.search(r"Rolled back in [\d.]+s, no bake: served digest (sha256:\w+)… -> (sha256:\w+)… "
                       r"\(history \[1, 2, 3\]\)", output)
    assert rolled, output
    # Back to exactly the model the first deploy served.
    assert rolled.group(1) == predictions[1][1] and rolled.group(2) == predictions[0][1]
    assert "Demo finished in" in output
