import dataclasses
import json
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs.toy import get_config
from prm.models import from_pretrained
from prm.registry import TRAINERS
from prm.trainers.sft import SFTTrainer
from prm.training.checkpoints import Checkpointer, IncompatibleCheckpointError
from prm.training.loop import (
    Stepper,
    build_run,
    check_or_write_config,
    config_from_workdir,
    restore,
    train,
)
from prm.training.metrics_writer import TIMING_METRICS
from prm.training.sharding import path_to_str
from prm.training.state import reference_mode
from tests.helpers.parts_config import get_config as parts_config
from tests.helpers.parts_trainer import PolicyWithValueTrainer


def _smoke(**overrides):
    config = get_config("smoke")
    config.export_hf = False
    config.eval_every = 0
    for key, value in overrides.items():
        config[key] = value
    return config


def _records(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [
            {k: v for k, v in json.loads(line).items() if k not in TIMING_METRICS} for line in f
        ]


def _final_state(config, workdir):
    run = build_run(config, workdir)
    step = restore(run)
    run.checkpointer.close()
    return step, jax.device_get(run.state)


def test_crash_and_resume_is_bitwise_identical(tmp_path, monkeypatch):
    straight, split = str(tmp_path / "straight"), str(tmp_path / "split")
    train(_smoke(), straight)

    original = SFTTrainer.next_batch

    def crash_at_step_8(self, models, step, rng):
        if step == 8:
            raise KeyboardInterrupt("simulated crash")
        return original(self, models, step, rng)

    monkeypatch.setattr(SFTTrainer, "next_batch", crash_at_step_8)
    with pytest.raises(KeyboardInterrupt):
        train(_smoke(), split)  # 7 steps logged, last checkpoint at 6
    assert len(_records(split)) == 7
    monkeypatch.setattr(SFTTrainer, "next_batch", original)
    train(_smoke(), split)
    assert _records(split) == _records(straight)
    (step_a, state_a), (step_b, state_b) = (
        _final_state(_smoke(), straight),
        _final_state(_smoke(), split),
    )
    assert step_a == step_b == 12
    for a, b in zip(jax.tree.leaves(state_a), jax.tree.leaves(state_b)):
        np.testing.assert_array_equal(a, b)
    # The run learns: mean loss over the last 3 steps is below the first step's log(64)≈4.16.
    losses = [r["loss"] for r in _records(straight)]
    assert np.mean(losses[-3:]) < losses[0]


@TRAINERS.register("test_nan_from_step_5")
class _NaNTrainer(SFTTrainer):
    def next_batch(self, models, step, rng):
        batch, metrics = super().next_batch(models, step, rng)
        rows = len(batch["tokens"])
        batch["poison"] = np.full(rows, np.nan if step >= 5 else 0.0, np.float32)
        return batch, metrics

    def loss(self, models, batch, rng):
        loss, metrics = super().loss(models, batch, rng)
        return loss + batch["poison"][0], metrics


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    with pytest.raises(FloatingPointError, match="at step 5.*last good checkpoint is step 3"):
        train(_smoke(trainer="test_nan_from_step_5"), str(tmp_path))
    assert Checkpointer(str(tmp_path / "checkpoints")).all_steps() == [3]


def test_incompatible_config_is_rejected_and_workdir_untouched(tmp_path):
    workdir = str(tmp_path)
    train(_smoke(), workdir)
    before = {p: os.path.getmtime(os.path.join(d, p)) for d, _, ps in os.walk(workdir) for p in ps}
    wider = _smoke()
    wider.model.hidden_size = 128
    with pytest.raises(IncompatibleCheckpointError, match="model.hidden_size: stored 64, new 128"):
        train(wider, workdir)
    after = {p: os.path.getmtime(os.path.join(d, p)) for d, _, ps in os.walk(workdir) for p in ps}
    assert after == before


def test_lora_run_trains_only_adapters_and_exports_merged_weights(tmp_path):
    config = _smoke(total_steps=3)
    config.lora.rank = 4
    config.export_hf = True
    train(config, str(tmp_path))
    losses = [r["loss"] for r in _records(str(tmp_path))]
    assert len(losses) == 3 and all(np.isfinite(losses))

    run = build_run(config, str(tmp_path))
    restore(run)
    run.checkpointer.close()
    names = {path_to_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(run.state.params)[0]}
    assert names and all(n.endswith((".lora_a", ".lora_b")) for n in names)
    tokens = np.arange(12, dtype=np.int32).reshape(2, 6)
    with jax.set_mesh(run.mesh):
        with_adapters, _ = run.model()(tokens)
    exported, _ = from_pretrained(str(tmp_path / "hf"))
    merged, _ = exported(tokens)
    np.testing.assert_allclose(merged, with_adapters, atol=1e-5)

    # A new run initialised from the export starts from the merged weights; `model.remat` is this
    # run's choice (the export's config.json does not carry it).
    continued = _smoke()
    continued.model.init_from = str(tmp_path / "hf")
    continued.model.remat = True
    run = build_run(continued, str(tmp_path / "continued"))
    run.checkpointer.close()
    assert run.model_config.remat and run.model().config.remat
    with jax.set_mesh(run.mesh):
        reloaded, _ = run.model()(tokens)
    np.testing.assert_allclose(reloaded, merged, atol=1e-6)


def test_failed_export_keeps_the_previous_export_whole(tmp_path, monkeypatch):
    import prm.training.loop as loop

    run = build_run(_smoke(), str(tmp_path))
    export = str(tmp_path / "hf")
    loop.export_hf(run, export)
    first = sorted(os.listdir(export))
    assert "config.json" in first

    def save_then_die(model, config, path):
        os.makedirs(path, exist_ok=True)
        with open(os.path.join(path, "config.json"), "w") as f:
            f.write("{}")  # what a kill mid-save leaves: a config.json without weights
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "save_pretrained", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        loop.export_hf(run, export)
    assert sorted(os.listdir(export)) == first
    from_pretrained(export)  # still loads: the previous export is intact
    run.checkpointer.close()


def test_async_save_failure_stops_the_run_at_once(tmp_path, monkeypatch):
    import prm.training.checkpoints as checkpoints

    original = checkpoints.Checkpointer.save
    failures = []

    def save_then_fail_in_background(self, step, state, meta):
        original(self, step, state, meta)
        if step == 3:

            def check():  # what orbax raises from its commit thread, e.g. a full disk
                if not failures:
                    failures.append(step)
                    raise OSError(28, "No space left on device")

            monkeypatch.setattr(self._manager, "check_for_errors", check)

    monkeypatch.setattr(checkpoints.Checkpointer, "save", save_then_fail_in_background)
    with pytest.raises(checkpoints.CheckpointSaveError, match="No space left on device.*rerun"):
        train(_smoke(), str(tmp_path))
    # Stopped right after the failed save at step 3, not at the next save 3 steps later.
    assert [r["step"] for r in _records(str(tmp_path))] == [1, 2, 3]


def test_hf_export_loads_as_a_transformers_model_and_tokenizer_pair(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from configs.sft import get_config as sft_config

    config = sft_config("smoke")
    config.total_steps, config.eval_every = 2, 0
    train(config, str(tmp_path))
    export = str(tmp_path / "hf")
    tokenizer = AutoTokenizer.from_pretrained(export)
    hf_model = AutoModelForCausalLM.from_pretrained(export).eval()
    text = "Answer the question. <search> capital of </search>"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    # The exported tokenizer is the one the policy was trained with.
    run = build_run(config, str(tmp_path))
    restore(run)
    run.checkpointer.close()
    assert ids == run.trainer.tokenizer().encode(text, add_special_tokens=False)
    assert tokenizer.decode(ids) == text
    with torch.no_grad():
        theirs = hf_model(torch.tensor([ids])).logits.numpy()
    with jax.set_mesh(run.mesh):
        ours, _ = run.model()(np.array([ids], np.int32))
    np.testing.assert_allclose(theirs, np.asarray(ours), atol=1e-4)


def _parts_smoke():
    """A reference ("auto": a copy), a trainable value part, uneven rows (tests/helpers)."""
    config = parts_config("smoke")
    config.export_hf = False
    config.eval_every = 0
    config.total_steps = 6
    config.checkpoint_every = 2
    return config


@pytest.mark.slow  # the default suite has the real-SIGKILL version (tests/experiments/test_train.py)
def test_crash_and_resume_with_reference_and_value_part_is_bitwise_identical(tmp_path, monkeypatch):
    straight, split = str(tmp_path / "straight"), str(tmp_path / "split")
    train(_parts_smoke(), straight)

    original = PolicyWithValueTrainer.next_batch

    def crash_at_step_5(self, models, step, rng):
        if step == 5:
            raise KeyboardInterrupt("simulated crash")
        return original(self, models, step, rng)

    monkeypatch.setattr(PolicyWithValueTrainer, "next_batch", crash_at_step_5)
    with pytest.raises(KeyboardInterrupt):
        train(_parts_smoke(), split)  # 4 steps logged, last checkpoint at 4
    assert len(_records(split)) == 4
    monkeypatch.setattr(PolicyWithValueTrainer, "next_batch", original)
    stored = config_from_workdir(split)  # resume as `--workdir` alone does: the stored config
    stored.lock()
    train(stored, split)

    records = _records(straight)
    assert _records(split) == records
    # Host metrics of next_batch reach metrics.jsonl; row b trains on b + 1 tokens: 1 + … + 8.
    assert [r["rollout/trained_tokens"] for r in records] == [36.0] * 6
    assert len({r["rollout/uniform"] for r in records}) == 6  # a new rollout key every step
    assert all(r["value/grad_norm"] > 0 for r in records)
    final_a, final_b = _checkpoint_arrays(straight, 6), _checkpoint_arrays(split, 6)
    assert final_a.keys() == final_b.keys()
    # Both trainable parts and their optimiser states; the frozen reference is not saved.
    assert {name.split(".")[1] for name in final_a if name.startswith("params.")} == {
        "policy",
        "value",
    }
    for name in final_a:
        np.testing.assert_array_equal(final_a[name], final_b[name], err_msg=name)


def _checkpoint_arrays(workdir, step):
    """Every array of checkpoint `step`, by dotted name (read without building the run)."""
    path = os.path.join(workdir, "checkpoints", str(step), "state")
    return ocp.StandardCheckpointer().restore(path)


def _with_everything():
    config = _parts_smoke()
    config["updates"].update(ppo_epochs=2, num_mini_batches=4, micro_batch_size=1)
    config.warm_start = _smoke()
    return config


@pytest.mark.parametrize("config", [_smoke, _with_everything], ids=["empty_blocks", "filled"])
def test_config_round_trips_through_config_json(tmp_path, config):
    config = config()
    config.lock()
    check_or_write_config(config, str(tmp_path))
    stored = config_from_workdir(str(tmp_path))
    stored.lock()
    check_or_write_config(stored, str(tmp_path))  # a resumed run's config matches the stored one
    assert stored.to_dict() == json.loads(config.to_json_best_effort())
    assert stored["updates"].to_dict() == config["updates"].to_dict()
    assert reference_mode(stored) == reference_mode(config)
    assert stored.parts.to_dict() == config.parts.to_dict()
    # Empty: build_run trains no warm start; else the same JSON, so the same cached warm start.
    assert bool(stored.warm_start) == bool(config.warm_start)


class _KeyRecorded(Exception):
    pass


@TRAINERS.register("test_records_rollout_key")
class _KeyRecordingTrainer(SFTTrainer):
    """Records the rollout key and the parts it is given, then stops the step."""

    def setup(self, models):
        self.calls = []

    def next_batch(self, models, step, rng):
        self.calls.append((step, sorted(models), np.asarray(rng)))
        raise _KeyRecorded


def test_rollout_key_is_fixed_by_seed_and_step(tmp_path):
    run = build_run(_smoke(trainer="test_records_rollout_key", reference="copy"), str(tmp_path))
    run.checkpointer.close()
    reseeded = dataclasses.replace(run, config=_smoke(trainer="test_records_rollout_key", seed=1))
    for stepper, step in [(Stepper(run), s) for s in (3, 1, 2, 3)] + [(Stepper(reseeded), 3)]:
        with pytest.raises(_KeyRecorded):
            stepper(step)
    (_, parts, key3), (_, _, key1), (_, _, key2), (_, _, again3), (_, _, reseeded3) = (
        run.trainer.calls
    )
    assert parts == ["policy", "reference"]
    np.testing.assert_array_equal(again3, key3)
    assert len({k.tobytes() for k in (key1, key2, key3, reseeded3)}) == 4
