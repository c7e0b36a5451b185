import json
import os

from prm.training.metrics_writer import MetricsWriter


def _steps(path):
    with open(path) as f:
        return [json.loads(line)["step"] for line in f]


def test_jsonl_tensorboard_and_truncate(tmp_path):
    writer = MetricsWriter(str(tmp_path), total_steps=5, progress=False)
    for step in range(1, 6):
        writer.write(step, {"loss": 1.0 / step})
        writer.advance(step, {"loss": 1.0 / step})
    writer.write(5, {"loss": 0.5}, prefix="eval/")
    writer.close()
    with open(tmp_path / "metrics.jsonl") as f:
        records = [json.loads(line) for line in f]
    assert records[1] == {"step": 2, "loss": 0.5}
    assert records[-1] == {"step": 5, "eval/loss": 0.5}
    assert any(n.startswith("events.out.tfevents") for n in os.listdir(tmp_path / "tensorboard"))

    resumed = MetricsWriter(str(tmp_path), total_steps=5, start_step=3, progress=False)
    resumed.truncate_after(3)
    resumed.close()
    assert _steps(tmp_path / "metrics.jsonl") == [1, 2, 3]
