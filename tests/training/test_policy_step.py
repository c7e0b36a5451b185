import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from prm.training.policy_step import PolicyLossConfig, policy_loss


class _TableModel(nnx.Module):
    """logits[b, t] = table[tokens[b, t]] (a bigram model with known log-probs)."""

    def __init__(self, table):
        self.table = nnx.Param(jnp.asarray(table, jnp.float32))

    def hidden_states(self, tokens, input_mask=None):
        return jax.nn.one_hot(tokens, self.table.shape[0]), None

    def unembed(self, hidden):
        return hidden @ self.table[...]


TABLE = np.random.default_rng(0).normal(size=(6, 6))
TOKENS = np.array([[0, 3, 1, 5, 2], [4, 4, 0, 1, 3]], np.int32)
MASK = np.array([[0, 0, 1, 1, 1], [0, 1, 1, 0, 0]], np.float32)
ADV = np.array([[0, 0, 1.0, 1.0, 1.0], [0, -2.0, -2.0, 0, 0]], np.float32)


def _numpy_logprobs():
    log_softmax = TABLE - np.log(np.exp(TABLE).sum(-1, keepdims=True))
    out = np.zeros(TOKENS.shape)
    out[:, 1:] = log_softmax[TOKENS[:, :-1], TOKENS[:, 1:]]
    return out


def _batch(old, ref, adv=ADV):
    return {"tokens": jnp.asarray(TOKENS), "loss_mask": jnp.asarray(MASK),
            "advantages": jnp.asarray(adv), "old_logprobs": jnp.asarray(old, jnp.float32),
            "ref_logprobs": jnp.asarray(ref, jnp.float32)}  # fmt: skip


def test_on_policy_loss_is_minus_mean_advantage_plus_k3():
    current = _numpy_logprobs()
    ref = current - 0.5 * MASK  # d = log π_ref − log π_θ = −0.5 on trained tokens
    config = PolicyLossConfig(kl_coef=0.1)
    loss, metrics = policy_loss(_TableModel(TABLE), _batch(current, ref), config)
    # Ratio 1 everywhere: PPO term = −mean_mask(A) = −(1+1+1−2−2)/5 = 0.2.
    # k3 = exp(−0.5) + 0.5 − 1 per trained token; token-mean over 5 tokens is the same value.
    k3 = np.exp(-0.5) + 0.5 - 1.0
    np.testing.assert_allclose(metrics["pg_loss"], 0.2, rtol=1e-5)
    np.testing.assert_allclose(metrics["kl"], k3, rtol=1e-5)
    np.testing.assert_allclose(loss, 0.2 + 0.1 * k3, rtol=1e-5)
    # Variance of [1, 1, 1, −2, −2]: mean −0.2, E[x²] = 11/5 → 2.2 − 0.04 = 2.16.
    np.testing.assert_allclose(metrics["advantage_variance"], 2.16, rtol=1e-5)
    assert metrics["clip_fraction"] == 0.0
    # Entropy of the bigram rows that predict trained tokens, averaged over those 5 tokens.
    probs = np.exp(TABLE) / np.exp(TABLE).sum(-1, keepdims=True)
    row_entropy = -(probs * np.log(probs)).sum(-1)
    previous = TOKENS[:, :-1][MASK[:, 1:] > 0]
    np.testing.assert_allclose(metrics["entropy"], row_entropy[previous].mean(), rtol=1e-5)


def test_masked_positions_do_not_change_loss_or_gradient():
    current = _numpy_logprobs()
    noisy_adv = np.where(MASK > 0, ADV, 1e6).astype(np.float32)
    noisy_old = np.where(MASK > 0, current, -1e9)

    def loss_and_grad(batch):
        grad_fn = nnx.value_and_grad(lambda m: policy_loss(m, batch, PolicyLossConfig())[0])
        return grad_fn(_TableModel(TABLE))

    loss_a, grad_a = loss_and_grad(_batch(current, current))
    loss_b, grad_b = loss_and_grad(_batch(noisy_old, current, noisy_adv))
    np.testing.assert_allclose(loss_a, loss_b, rtol=1e-6)
    np.testing.assert_allclose(grad_a["table"][...], grad_b["table"][...], rtol=1e-5, atol=1e-7)
    assert np.isfinite(grad_b["table"][...]).all()


def test_jit_matches_eager():
    current = _numpy_logprobs()
    batch = _batch(current + 0.1 * MASK, current)
    eager, _ = policy_loss(_TableModel(TABLE), batch, PolicyLossConfig())
    jitted, _ = nnx.jit(policy_loss, static_argnums=2)(_TableModel(TABLE), batch,
                                                        PolicyLossConfig())  # fmt: skip
    np.testing.assert_allclose(eager, jitted, rtol=1e-6)
