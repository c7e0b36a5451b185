import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs.toy import get_config
from prm.registry import TRAINERS
from prm.trainers import sft
from prm.trainers.sft import SFTTrainer, next_token_loss
from prm.training.loop import evaluate


class _TableModel(nnx.Module):
    """logits[b, t] = table[tokens[b, t]]: a bigram model whose logits we know exactly."""

    def __init__(self, table):
        self.table = nnx.Param(jnp.asarray(table, jnp.float32))

    def __call__(self, tokens, input_mask=None):
        return self.table[...][tokens], None


def test_next_token_loss_matches_numpy():
    rng = np.random.default_rng(0)
    table = rng.normal(size=(5, 5))
    tokens = np.array([[0, 1, 2, 3], [4, 4, 0, 2]], np.int32)
    mask = np.array([[0, 1, 1, 0], [0, 0, 1, 1]], np.float32)
    loss, metrics = next_token_loss(
        _TableModel(table), {"tokens": jnp.asarray(tokens), "loss_mask": jnp.asarray(mask)}
    )
    # Targets with mask 1: row 0 predicts 1 from 0 and 2 from 1; row 1 predicts 0 from 4 and
    # 2 from 0.  NLL = logsumexp(table[prev]) - table[prev, target], averaged over these 4.
    pairs = [(0, 1), (1, 2), (4, 0), (0, 2)]
    log_z = np.log(np.exp(table).sum(axis=1))
    nll = [log_z[p] - table[p, t] for p, t in pairs]
    np.testing.assert_allclose(loss, np.mean(nll), rtol=1e-6)
    correct = [table[p].argmax() == t for p, t in pairs]
    np.testing.assert_allclose(metrics["accuracy"], np.mean(correct))
    assert float(metrics["target_tokens"]) == 4.0


def test_all_masked_batch_gives_zero_loss_not_nan():
    tokens = jnp.zeros((2, 3), jnp.int32)
    loss, _ = next_token_loss(_TableModel(np.eye(3)), {"tokens": tokens,
                                                       "loss_mask": jnp.zeros((2, 3))})  # fmt: skip
    assert float(loss) == 0.0


def test_jit_matches_eager():
    table = np.random.default_rng(1).normal(size=(6, 6))
    batch = {"tokens": jnp.array([[1, 2, 3, 4, 5]]), "loss_mask": jnp.ones((1, 5))}
    eager, _ = next_token_loss(_TableModel(table), batch)
    jitted, _ = nnx.jit(next_token_loss)(_TableModel(table), batch)
    np.testing.assert_allclose(eager, jitted, rtol=1e-6)


def test_registered_and_learns_the_toy_task(tmp_path, monkeypatch):
    assert TRAINERS.get("sft") is SFTTrainer
    config = get_config()
    config.total_steps = 200
    config.eval_every = 0
    config.progress = False
    workdir = str(tmp_path)
    assert sft.ensure_sft_checkpoint(workdir, config) == str(tmp_path / "hf")
    assert (tmp_path / "hf" / "config.json").exists()
    import prm.training.loop as loop

    monkeypatch.setattr(loop, "train", lambda *a: pytest.fail("trained twice"))
    assert sft.ensure_sft_checkpoint(workdir, config) == str(tmp_path / "hf")

    results = evaluate(workdir)
    # Chance is log(64) = 4.16 nats; copying the repeated pattern drives it towards 0.
    assert results["loss"] < 0.5 and results["accuracy"] > 0.9
    assert (tmp_path / "eval_200.json").exists()
