"""The ReST-MCTS* experiment runs end to end on its smoke config and writes its records."""

import json

import pytest

from configs.rest_mcts import get_config
from experiments.rest_mcts import run


@pytest.mark.slow
def test_smoke_run_writes_one_record_per_evaluation(tmp_path, monkeypatch):
    # The smoke warm start (4 SFT steps of configs/chain_sft.py:smoke) is trained into tmp_path.
    monkeypatch.setenv("PRM_CACHE_DIR", str(tmp_path / "cache"))
    config = get_config("smoke")
    records = run(config, str(tmp_path / "run"))
    assert [r["iteration"] for r in records] == [0, 1]
    stored = json.loads((tmp_path / "run" / "results.json").read_text())
    assert stored["records"] == json.loads(json.dumps(records))
    for record in records:
        for name in ("greedy_accuracy", "mcts_accuracy", "best_of_n_accuracy"):
            assert 0.0 <= record[name] <= 1.0
        assert record["mcts_tokens"] > 0 and record["n"] >= 1
