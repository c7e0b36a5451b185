"""The dry run's memory plan: per-device bytes counted by hand, the verdict, the command line."""

import dataclasses
import os
import subprocess
import sys

import ml_collections
import pytest

from prm.training.checkpoints import RunError
from prm.training.config import base_config, model_config
from prm.training.memory_plan import (
    GiB,
    abstract_state,
    activation_bytes,
    check_fits,
    kv_cache_bytes,
    memory_plan,
    per_device_bytes,
    simulated_devices,
)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MESH = {"data": 2, "fsdp": 2, "tensor": 2}


def tiny_config(**mesh) -> ml_collections.ConfigDict:
    """qwen2 tiny (hidden 64, 2 layers, 4 heads, 2 kv heads of 16, MLP 128, vocab 64, float32,
    biases on q k v, untied head), LoRA rank 4 on all linear layers, reference = LoRA off."""
    c = base_config()
    c.model = model_config("qwen2", init_from="/nowhere")  # ignored by the dry run
    c.lora.rank = 4
    c.reference = "lora_off"
    c.mesh.update(mesh or MESH)
    c.data = ml_collections.ConfigDict({"batch_size": 4, "seq_len": 32})
    c.updates.micro_batch_size = 8
    return c


def test_per_device_parameter_bytes_counted_by_hand():
    params, frozen, opt_state, _ = abstract_state(tiny_config())
    # (fsdp, tensor) kernels and the (tensor, fsdp) embedding: / 4; q k v biases: / 2 (tensor);
    # norms replicated. Elements per device of one layer:
    q, k, v = 64 * 64 // 4 + 64 // 2, 64 * 32 // 4 + 32 // 2, 64 * 32 // 4 + 32 // 2
    o, mlp, norms = 64 * 64 // 4, 3 * (64 * 128 // 4), 2 * 64
    base = 2 * (q + k + v + o + mlp + norms) + 64 * 64 // 4 + 64 * 64 // 4 + 64  # + embed, head
    # LoRA: lora_a [in, 4] over fsdp, lora_b [4, out] over tensor.
    lora_in = {"q": 64, "k": 64, "v": 64, "o": 64, "gate": 64, "up": 64, "down": 128}
    lora_out = {"q": 64, "k": 32, "v": 32, "o": 64, "gate": 128, "up": 128, "down": 64}
    lora = 2 * sum(4 * lora_in[n] // 2 + 4 * lora_out[n] // 2 for n in lora_in)
    assert per_device_bytes(params, MESH) == 4 * lora
    # The reference shares the base weights and adds its zeroed adapters.
    assert per_device_bytes(frozen, MESH) == 4 * (base + lora)
    # AdamW: μ and ν like the trainable params, plus a few scalar step counts.
    extra = per_device_bytes(opt_state, MESH) - 2 * 4 * lora
    assert 0 < extra < 64


def test_activation_and_kv_cache_formulas():
    config = tiny_config()
    _, _, _, mc = abstract_state(config)
    # b=2 rows, T=32, 1 tensor shard: one layer = b·T·(4d + 2(H + 2K)D + 3I)·4 + 2·b·H·T²·4.
    layer = 2 * 32 * (4 * 64 + 2 * (4 + 2 * 2) * 16 + 3 * 128) * 4 + 2 * 2 * 4 * 32 * 32 * 4
    boundary, chunk = 2 * 32 * 64 * 4, 2 * 16 * 64 * 4
    without = activation_bytes(mc, 2, 32, 1, 16)
    assert without == 2 * layer + boundary + chunk
    remat = activation_bytes(dataclasses.replace(mc, remat=True), 2, 32, 1, 16)
    assert remat == 3 * boundary + layer + chunk
    assert kv_cache_bytes(mc, 3, 64, 2) == 3 * 2 * 2 * (2 // 2) * 16 * 64 * 4


def test_simulated_devices():
    assert simulated_devices("8xH200") == (8, 141 * GiB)
    assert simulated_devices("v5p-8") == (4, 95 * GiB)  # 8 TensorCores, 4 chips
    assert simulated_devices("v5e-8") == (8, 16 * GiB)
    with pytest.raises(RunError, match="Unknown dry_run_devices"):
        simulated_devices("8xT4")


def test_verdict_against_device_memory():
    config = tiny_config()
    plan = memory_plan(config)  # 8xH200: a tiny model fits
    check_fits(plan, config)
    assert plan.peak == max(plan.update_phase, plan.rollout_phase)
    assert plan.micro_rows == 2  # 8 rows over data × fsdp = 4
    small = dataclasses.replace(plan, device_bytes=plan.peak - 1)
    assert not small.fits
    with pytest.raises(RunError, match="Does not fit on 8xH200: the .* phase") as error:
        check_fits(small, config)
    assert "--config.model.remat=True" in str(error.value)
    assert "\n" not in str(error.value)
    check_fits(dataclasses.replace(plan, device_bytes=plan.peak), config)


def _dry_run(config, *args):
    """`python -m experiments.train --config=CONFIG --config.dry_run=True ARGS`, as typed."""
    command = [sys.executable, "-m", "experiments.train", config, "--config.dry_run=True", *args]
    env = {**os.environ, "PYTHONPATH": ROOT}
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_paper_config_fits_on_8xh200():
    done = _dry_run("--config=configs/slate.py:model=qwen2.5-3b")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Dry run on 8xH200 (mesh data=1 fsdp=8 tensor=1), per device:" in done.stdout
    assert "peak" in done.stdout and "Verdict: fits" in done.stdout
    assert not os.path.exists(os.path.join(ROOT, "workdirs", "slate-model=qwen2.5-3b"))


def test_too_small_devices_exit_with_one_error_line():
    done = _dry_run(
        "--config=configs/slate.py:model=qwen2.5-7b",
        "--config.dry_run_devices=v5e-8",
        "--config.mesh.fsdp=1",
        "--config.mesh.data=8",
    )
    assert done.returncode == 2
    assert "Verdict: does NOT fit" in done.stdout
    errors = done.stderr.strip().splitlines()
    assert errors[-1].startswith("error: Does not fit on v5e-8") and "fsdp" in errors[-1]
