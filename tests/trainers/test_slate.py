"""The SLATE trainer on the smoke world with a tiny random policy: siblings, judging, selection,
batch layout, gradients, padding; the paper configs; an end-to-end smoke run."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs.slate import get_config
from prm.advantages import sibling_step_advantages
from prm.envs.protocol import Action
from prm.judges import Judgement, JudgeStats
from prm.models import Transformer, token_logprobs
from prm.registry import TRAINERS
from prm.trainers.slate import Sibling, SlateTrainer, StepFrontier, row_keys, sample_softmax
from prm.training.policy_step import PolicyLossConfig, policy_loss, reference_logprobs
from prm.training.state import model_config_from
from prm.training.update import with_minibatch_counts
from tests.helpers.train_runs import train_as_typed

MESH = jax.make_mesh((1,), ("data",))


def make_trainer(tmp_path, opening="", **rollout):
    config = get_config("smoke")
    config.data.batch_size = 4
    config.data.env = {"after_observation": opening}
    config.rollout.k = 3
    config.rollout.update(rollout)
    return SlateTrainer(config, MESH, str(tmp_path))


def sibling_rows(rollout):
    return sum(len(g.siblings) for g in rollout.groups)


@pytest.fixture(scope="module")
def policy():
    return Transformer(model_config_from(get_config("smoke").model), rngs=nnx.Rngs(0))


@pytest.fixture(scope="module")
def constrained(tmp_path_factory):
    return make_trainer(tmp_path_factory.mktemp("constrained"), action_choice="constrained")


@pytest.fixture(scope="module")
def free(tmp_path_factory):
    return make_trainer(tmp_path_factory.mktemp("free"))


@pytest.fixture(scope="module")
def thinking(tmp_path_factory):
    """Constrained, with `<think>` forced before every step: siblings think first."""
    return make_trainer(
        tmp_path_factory.mktemp("thinking"), opening="<think>", action_choice="constrained"
    )


@pytest.fixture(scope="module")
def played(constrained, policy):
    """One constrained rollout of 4 questions and its batch."""
    questions = next(constrained.data)
    rollout = constrained.play({"policy": policy}, questions, jax.random.PRNGKey(3))
    batch, step_id = constrained.batch(rollout, len(questions))
    return rollout, batch, step_id


def test_registered():
    assert TRAINERS.get("slate") is SlateTrainer


@pytest.mark.parametrize("choice", ["free", "constrained", "thinking"])
def test_forked_siblings_equal_siblings_of_reprefilled_prefixes(
    choice, free, constrained, thinking, policy, monkeypatch
):
    trainer = {"free": free, "constrained": constrained, "thinking": thinking}[choice]
    k = trainer.k
    env = trainer.make_env()
    questions = next(trainer.data)[:2]
    prefixes = [trainer.encode(p) + trainer.opening for p in env.reset(trainer.tasks(questions))]
    keys = row_keys(jax.random.PRNGKey(7), len(prefixes), k)
    sampler = trainer.sampler({"policy": policy})
    rooms = np.full(len(prefixes), 200)
    forked_session, forked = trainer.sample_siblings(
        sampler.start(prefixes), np.ones(2, bool), keys, rooms
    )
    # The same prefixes prefilled once per sibling, each "forked" once, with the same keys.
    monkeypatch.setattr(trainer, "k", 1)
    copies = [p for p in prefixes for _ in range(k)]
    _, alone = trainer.sample_siblings(
        sampler.start(copies), np.ones(len(copies), bool), keys, np.repeat(rooms, k)
    )
    assert len({tuple(s.tokens) for s in forked}) > 1  # siblings differ
    for a, b in zip(forked, alone):
        assert a.tokens == b.tokens and a.trained == b.trained and a.action == b.action
        np.testing.assert_allclose(a.logprobs, b.logprobs, atol=1e-5)
    lengths = [len(p) + len(s.tokens) for p, s in zip(copies, forked)]
    np.testing.assert_array_equal(forked_session.lengths(), lengths)


def test_every_sibling_row_gets_gradient(played, policy):
    rollout, batch, _ = played
    real = sibling_rows(rollout)
    assert real < len(batch["tokens"])
    assert np.abs(batch["advantages"][:real]).sum(1).any()  # some siblings carry signal
    prepared = reference_logprobs(
        {"policy": policy, "reference": policy}, jax.tree.map(jnp.asarray, batch),
        PolicyLossConfig(),
    )  # fmt: skip
    grad = jax.grad(
        lambda adv: policy_loss(policy, {**prepared, "advantages": adv}, PolicyLossConfig())[0]
    )(prepared["advantages"])
    per_row = np.abs(np.asarray(grad)).sum(axis=1)
    assert (per_row[:real] > 0).all(), per_row[:real]
    assert (per_row[real:] == 0).all()


def test_rows_are_prefix_plus_sibling_with_its_advantage(played, constrained, policy):
    rollout, batch, step_id = played
    row = 0
    for group in rollout.groups:
        for sibling, advantage in zip(group.siblings, group.advantages):
            n, m = len(group.context), len(sibling.tokens)
            np.testing.assert_array_equal(
                batch["tokens"][row, : n + m], group.context + sibling.tokens
            )
            assert not batch["input_mask"][row, n + m :].any()
            np.testing.assert_array_equal(batch["loss_mask"][row, :n], 0)
            np.testing.assert_array_equal(batch["loss_mask"][row, n : n + m], sibling.trained)
            trained = batch["loss_mask"][row] > 0
            np.testing.assert_array_equal(step_id[row][trained], group.step)
            np.testing.assert_allclose(batch["advantages"][row][trained], advantage)
            np.testing.assert_allclose(
                batch["old_logprobs"][row, n : n + m][sibling.trained],
                np.asarray(sibling.logprobs)[sibling.trained],
            )
            row += 1
    # The sampler's log-probs are π_old: a teacher-forced forward pass gives the same, for the
    # sampled tokens and for the scored tag continuations alike.
    forward = token_logprobs(policy, jnp.asarray(batch["tokens"]), jnp.asarray(batch["input_mask"]))
    trained = batch["loss_mask"] > 0
    np.testing.assert_allclose(
        np.asarray(forward.logprobs)[trained], batch["old_logprobs"][trained], atol=1e-4
    )


def test_padding_rows_are_empty_and_change_no_loss(played, policy):
    rollout, batch, _ = played
    real = sibling_rows(rollout)
    # Padded up to a multiple of questions × k (4 × 3), at most questions × budget × k.
    unit = 4 * 3
    assert len(batch["tokens"]) == -(-real // unit) * unit <= 4 * 2 * 3
    for name in ("loss_mask", "advantages", "old_logprobs", "input_mask"):
        assert not batch[name][real:].any(), name
    padded = reference_logprobs(
        {"policy": policy, "reference": policy}, jax.tree.map(jnp.asarray, batch),
        PolicyLossConfig(),
    )  # fmt: skip
    unpadded = jax.tree.map(lambda x: x[:real], padded)
    for name in ("minibatch_loss_tokens", "minibatch_loss_rows"):
        assert with_minibatch_counts(padded)[name][0] == with_minibatch_counts(unpadded)[name][0]
    # Advantages that vary over tokens and a ratio away from 1, so every term is exercised.
    shift = jnp.asarray(np.random.default_rng(0).normal(0, 0.1, padded["old_logprobs"].shape))
    for data in (padded, unpadded):
        data["old_logprobs"] = data["old_logprobs"] + shift[: len(data["old_logprobs"])]
    # Every aggregation leaves empty rows out (prm.losses): checked end to end on the default
    # loss, gradients included, and on the value of the paper's sequence-level variant.
    value_and_grad = nnx.jit(
        nnx.value_and_grad(lambda m, d: policy_loss(m, d, PolicyLossConfig())[0])
    )
    (a, grad_a), (b, grad_b) = value_and_grad(policy, padded), value_and_grad(policy, unpadded)
    np.testing.assert_allclose(a, b, rtol=1e-5)
    for x, y in zip(jax.tree.leaves(grad_a), jax.tree.leaves(grad_b)):
        assert np.isfinite(x).all()
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-7)
    sequence = PolicyLossConfig(aggregation="seq-mean-token-mean", ratio_level="sequence")
    value = nnx.jit(lambda m, d: policy_loss(m, d, sequence)[0])
    np.testing.assert_allclose(value(policy, padded), value(policy, unpadded), rtol=1e-5)


class ScriptedJudge:
    """Scores by content: {content: (reasoning, action)}."""

    def __init__(self, scores):
        self.scores = scores
        self.stats = JudgeStats(("judgements",))

    def judge(self, requests):
        self.stats.add("judgements", 2 * len(requests))
        return [Judgement(r.kind, *self.scores[r.content]) for r in requests]


def sibling(kind, content):
    text = f"<{kind}> {content} </{kind}>" if kind != "invalid" else "junk"
    action = Action(kind, content) if kind != "invalid" else Action("invalid", reason="junk")
    return Sibling(tokens=[5], trained=[True], logprobs=[-1.0], text=text, env_text=text,
                   action=action)  # fmt: skip


def judge_step(trainer, scores, siblings, t=1):
    trainer.judge = ScriptedJudge(scores)
    questions = next(trainer.data)[:2]
    # The judge reads no session: none is started.
    frontier = StepFrontier(t, questions, np.ones(2, bool), siblings, None, [[1], [2]], [[], []],
                            [[], []])  # fmt: skip
    return trainer.judge_step(frontier)


def test_rewards_and_advantages_by_hand_within_each_group(free):
    judge = free.judge
    siblings = [sibling("search", "a"), sibling("search", "b"), sibling("invalid", ""),
                sibling("answer", "x"), sibling("answer", "y"), sibling("search", "c")]  # fmt: skip
    scores = {"a": (1, 1), "b": (0, -1), "x": (1, 1), "y": (0, 0), "c": (1, 0)}
    try:
        groups = judge_step(free, scores, siblings)
        # Eq. 3/4 with B = 2 (smoke), λ = 0.1, step 1 is the paper's t = 2: bonus λ(B − t)/B = 0.
        np.testing.assert_allclose(groups[0].rewards, [2, -1, -2])  # invalid: (−1) + (−1)
        np.testing.assert_allclose(groups[1].rewards, [2, 0, 1])
        for group in groups:
            r = group.rewards.astype(np.float64)
            np.testing.assert_allclose(
                group.advantages, (r - r.mean()) / (r.std(ddof=1) + 1e-6), rtol=1e-5
            )
            assert abs(group.advantages.sum()) < 1e-5
        assert groups[1].judgements[0] == Judgement("answer", 1, 1)
        assert groups[0].judgements[2] is None  # invalid siblings are not judged
        # Another question's scores do not move this group's advantages.
        changed = judge_step(free, {**scores, "x": (-1, -1), "y": (1, 1)}, siblings)
        np.testing.assert_array_equal(changed[0].advantages, groups[0].advantages)
        assert not np.allclose(changed[1].advantages, groups[1].advantages)
        # At step 0 the answer bonus is λ(B − 1)/B = 0.05 (answers only).
        first = judge_step(free, scores, siblings, t=0)
        np.testing.assert_allclose(first[1].rewards, [2.05, 0.05, 1], rtol=1e-6)
        np.testing.assert_allclose(first[0].rewards, groups[0].rewards)
    finally:
        free.judge = judge


def test_advantages_of_a_step_ignore_other_steps_rewards():
    rewards = np.random.default_rng(1).normal(size=(3, 4, 5)).astype(np.float32)
    exists = np.ones_like(rewards, bool)
    exists[2, 3:] = False  # question 2 answered after 3 steps
    base = np.asarray(sibling_step_advantages(rewards, exists))
    other = rewards.copy()
    other[:, 1] += np.random.default_rng(2).normal(size=(3, 5)) * 10
    moved = np.asarray(sibling_step_advantages(other, exists))
    np.testing.assert_array_equal(np.delete(moved, 1, axis=1), np.delete(base, 1, axis=1))
    np.testing.assert_allclose(base.sum(-1), 0, atol=1e-5)
    assert not base[2, 3:].any()


def test_played_groups_have_their_own_advantages(played):
    rollout, _, _ = played
    for group in rollout.groups:
        np.testing.assert_allclose(
            group.advantages, sibling_step_advantages(group.rewards[None])[0], rtol=1e-6
        )
        if group.chosen >= 0:
            assert group.siblings[group.chosen].valid


def test_selection_follows_softmax_of_advantages_over_eta():
    scores = np.array([0.5, -1.0, 1.2, 3.0])
    valid = np.array([True, True, True, False])
    n, eta = 20000, 0.7
    keys = row_keys(jax.random.PRNGKey(0), n)
    chosen = sample_softmax(np.tile(scores, (n, 1)), np.tile(valid, (n, 1)), eta, keys)
    expected = np.exp(scores[:3] / eta) / np.exp(scores[:3] / eta).sum()
    frequencies = np.bincount(chosen, minlength=4) / n
    np.testing.assert_allclose(frequencies[:3], expected, atol=0.015)
    assert frequencies[3] == 0  # invalid siblings are never chosen
    greedy = sample_softmax(np.array([scores, [1.0, 1.0, 0.0, 0.0]]), np.array([valid] * 2),
                            0.0, keys[:2])  # fmt: skip
    assert greedy.tolist() == [2, 0]  # argmax over valid siblings, first on ties
    none = sample_softmax(np.zeros((2, 3)), np.array([[False] * 3, [False, True, False]]), eta,
                          keys[:2])  # fmt: skip
    assert none.tolist() == [-1, 1]


def test_forced_answer_is_neither_trained_nor_judged(tmp_path, policy):
    trainer = make_trainer(tmp_path, action_choice="constrained", budget=1)
    questions = next(trainer.data)
    rollout = trainer.play({"policy": policy}, questions, jax.random.PRNGKey(0))
    batch, step_id = trainer.batch(rollout, len(questions))
    forced = rollout.ends.count("forced_answer")
    assert forced > 0
    assert len(rollout.groups) == len(questions)  # one judged step each
    assert trainer.judge.stats["judgements"] == 2 * sibling_rows(rollout)
    assert step_id.max() == 0 and len(batch["tokens"]) == len(questions) * trainer.k
    sibling_tokens = sum(len(s.tokens) for g in rollout.groups for s in g.siblings)
    assert rollout.sampled_tokens > sibling_tokens  # the forced answers were decoded
    trained = sum(sum(s.trained) for g in rollout.groups for s in g.siblings)
    assert batch["loss_mask"].sum() == trained


def test_constrained_siblings_always_have_an_action_tag(played, constrained):
    rollout, _, _ = played
    for group in rollout.groups:
        for s in group.siblings:
            assert s.action_start == 0  # no think stage without a forced <think>
            assert s.tokens[: len(constrained.tags[0])] in constrained.tags
            assert s.valid or s.action.reason.startswith(("empty", "longer"))


def test_constrained_siblings_think_first_when_the_opening_forces_think(thinking, policy):
    questions = next(thinking.data)
    rollout = thinking.play({"policy": policy}, questions, jax.random.PRNGKey(2))
    close, forced_closes = thinking.think_close, 0
    assert thinking.tags == [thinking.encode("\n<search>"), thinking.encode("\n<answer>")]
    for group in rollout.groups:
        assert group.context[-len(thinking.opening) :] == thinking.opening
        for s in group.siblings:
            think, action = s.tokens[: s.action_start], s.tokens[s.action_start :]
            assert (
                think[-len(close) :] == close and action[: len(thinking.tags[0])] in thinking.tags
            )
            # The reasoning is sampled; a `</think>` the policy did not write is forced (context).
            assert all(s.trained[: s.action_start - len(close)])
            forced_closes += not any(s.trained[s.action_start - len(close) : s.action_start])
            assert s.env_text == thinking.decode(action)
            assert s.valid or s.action.reason.startswith(("empty", "longer"))
    assert forced_closes > 0


def test_next_batch_metrics(free, policy):
    batch, metrics = free.next_batch({"policy": policy}, 1, jax.random.PRNGKey(1))
    assert len(batch["tokens"]) == -(-int(metrics["rows"]) // 12) * 12  # multiple of Q × k
    assert metrics["rows"] == (batch["loss_mask"].sum(1) > 0).sum()
    assert 0 <= metrics["invalid_sibling_fraction"] <= 1
    ends = ("answer", "forced_answer", "invalid", "truncated")
    assert sum(metrics[f"end/{end}"] for end in ends) == pytest.approx(1.0)
    names = ("reward", "exact_match", "steps_per_question", "sibling_advantage_variance",
             "advantage_variance/step", "judge/candidates", "sampled_tokens_per_s")  # fmt: skip
    for name in names:
        assert np.isfinite(metrics[name]), name


def test_paper_configs_carry_the_paper_settings_and_say_what_is_missing(tmp_path):
    # Run end to end against local servers in tests/trainers/test_slate_paper_scale.py.
    config = get_config("model=qwen2.5-7b,init_from=/models/qwen2.5-7b")
    assert config.model.init_from == "/models/qwen2.5-7b" and config.model.num_layers == 28
    assert (config.lora.rank, config.lora.alpha, config.optim.lr) == (16, 64.0, 1e-6)
    assert (config.rollout.k, config.rollout.budget, config.rollout.eta) == (5, 4, 0.7)
    assert config.data.batch_size == 32 and config.data.env.topk == 3
    assert config.judge.name == "http"
    assert get_config("model=qwen2.5-3b").model.hidden_size == 2048
    assert config.data.tokenizer == "/models/qwen2.5-7b"  # the policy's, by default
    with pytest.raises(FileNotFoundError, match="data.train_files: .* does not exist"):
        SlateTrainer(config, MESH, str(tmp_path))
    with pytest.raises(ValueError, match="Unknown model"):
        get_config("model=qwen3-8b")


def test_bad_rollout_config_raises(tmp_path):
    with pytest.raises(ValueError, match="action_choice"):
        make_trainer(tmp_path, action_choice="greedy")
    with pytest.raises(ValueError, match="k >= 2"):
        make_trainer(tmp_path, k=1)


def test_smoke_config_runs_as_typed(tmp_path):
    train_as_typed("slate.py:smoke", tmp_path / "slate")
