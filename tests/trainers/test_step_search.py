"""StepSearch trainer: rewards placed on a hand-built trajectory, GAE against the critic, the
batch of a real rollout, and the config run exactly as typed."""

import jax
import numpy as np
import pytest

from configs.step_search import get_config
from prm.envs import protocol
from prm.envs.expert import gold_steps
from prm.rewards.step_search import StepSearchRewardConfig
from prm.rollouts.trajectory import EpisodeEnd, Trajectory, collate
from prm.trainers.step_search import StepSearchTrainer, world_search_keys
from prm.training.loop import build_run
from tests.helpers.train_runs import train_as_typed


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    config = get_config("smoke")
    config.warm_start = {}  # a random policy (and critic) is enough to check the batch
    config.data.batch_size, config.rollout.group_size = 3, 2
    run = build_run(config, str(tmp_path_factory.mktemp("run")))
    run.checkpointer.close()
    return run


def _passage(world, doc_id):
    title, text = world.passages[doc_id]
    return {"id": doc_id, "contents": f'"{title}"\n{text}', "score": 1.0}


def _played(trainer, question, searches):
    """One trajectory of `question`: a search step per entry of `searches` (its passage ids),
    each with the noise-free expert's query for the first hop, then the gold answer."""
    tokenizer, world = trainer.assets.tokenizer, trainer.assets.world
    encode = lambda text: tokenizer.encode(text, add_special_tokens=False)
    search_text, answer_text = gold_steps(world, question, think=False)
    query = protocol.parse_step(search_text).content
    row = Trajectory(group_id=0)
    row.add(encode("Question: x\n"))
    for t, doc_ids in enumerate(searches):
        ids = encode(search_text)
        row.add(ids, t, [-1.0] * len(ids))
        passages = [_passage(world, d) for d in doc_ids]
        observation = protocol.format_observation(passages)
        row.steps.append(
            protocol.StepResult(search_text, protocol.Action("search", query), observation, False,
                                0.0, {"query": query, "passages": passages})
        )  # fmt: skip
        row.add(encode(observation))
    ids = encode(answer_text)
    row.add(ids, len(searches), [-1.0] * len(ids))
    row.steps.append(
        protocol.StepResult(answer_text, protocol.parse_step(answer_text), "", True, 1.0)
    )
    row.outcome, row.end = {"reward": 1.0, "em": 1.0, "f1": 1.0}, EpisodeEnd.ANSWER
    return row


def test_rewards_returns_and_advantages_by_hand(run):
    trainer = run.trainer
    world = trainer.assets.world
    question = next(q for q in world.split("train") if q.qtype == "single")
    gold = question.gold_doc_ids[0]
    others = [d for d in world.passages if d != gold][:2]
    # Row 0 finds the gold passage with its first search (IG 1, P 0: step score 0.6 · 1), then
    # repeats it (IG 0, P 1: 0.6 · −1). Row 1 answers without searching.
    rows = [_played(trainer, question, [[gold, *others], [gold, *others]]),
            _played(trainer, question, [])]  # fmt: skip
    trajectories = collate(rows, run.config.data.seq_len, trainer.assets.tokenizer.pad_token_id)
    with jax.set_mesh(run.mesh):
        batch, metrics = trainer.build_batch(run.models(), trajectories, [question] * 2)
    # The query is exactly the hop's gold key: r_key = 1; the answer is the gold: F1 = 1.
    assert (
        world_search_keys(world, question)[0][0]
        == protocol.parse_step(gold_steps(world, question, think=False)[0]).content
    )
    final = 1.0 + 0.618 * 1.0
    # Returns (γ = λ = 1) are rewards-to-go over the sampled tokens, whatever the critic says.
    step_id, trained = trajectories.step_id, trajectories.loss_mask > 0
    expected_returns = np.zeros(step_id.shape)
    expected_returns[0][step_id[0] == 0] = 0.6 - 0.6 + final
    expected_returns[0][step_id[0] == 1] = -0.6 + final
    expected_returns[0][step_id[0] == 2] = final
    expected_returns[1][step_id[1] == 0] = 1.0  # no search: F1 only
    np.testing.assert_allclose(batch["returns"], expected_returns, atol=1e-5)
    # Advantages: R − V over the sampled tokens, whitened (unbiased variance); 0 elsewhere.
    raw = (batch["returns"] - batch["old_values"])[trained]
    expected = np.zeros(step_id.shape)
    expected[trained] = (raw - raw.mean()) / np.sqrt(raw.var(ddof=1) + 1e-8)
    np.testing.assert_allclose(batch["advantages"], expected, atol=1e-4)
    assert np.all(batch["old_values"][~trained] == 0)
    assert metrics["reward"] == pytest.approx((final + 1.0) / 2)
    assert metrics["reward/information_gain"] == pytest.approx(0.5)  # searches: IG 1, 0
    assert metrics["reward/redundancy"] == pytest.approx(0.5)  # P 0, 1
    assert metrics["searches"] == 1.0 and metrics["reward/format_ok"] == 1.0


def test_rollout_batch_trains_sampled_tokens_only(run):
    with jax.set_mesh(run.mesh):
        batch, metrics = run.trainer.next_batch(run.models(), 1, jax.random.PRNGKey(0))
    rows = 3 * 2
    assert batch["tokens"].shape == (rows, run.config.data.seq_len)
    trained = batch["loss_mask"] > 0
    for key in ("advantages", "returns", "old_values", "old_logprobs"):
        assert np.all(batch[key][~trained] == 0), key  # prompt, observations, padding
    assert metrics["sampled_tokens"] == trained.sum()
    assert 0.0 <= metrics["exact_match"] <= 1.0
    assert -1.0 <= metrics["reward"] <= 1.0 + 0.618
    assert metrics["advantage_variance/token"] >= 0.0
    # The update runs the loss with the critic's value loss.
    with jax.set_mesh(run.mesh):
        prepared = run.trainer.prepare(run.models(), batch)
        loss, loss_metrics = run.trainer.loss(run.models(), prepared, jax.random.PRNGKey(1))
    assert np.isfinite(loss) and float(loss_metrics["value_loss"]) >= 0.0


def test_config_options_reach_the_reward_block():
    config = get_config("information_gain=false,search_key_coef=0")
    assert StepSearchRewardConfig(**config.reward) == StepSearchRewardConfig(
        information_gain=False, search_key_coef=0.0
    )
    assert StepSearchRewardConfig(**get_config().reward) == StepSearchRewardConfig()


def test_a_config_without_a_critic_is_refused(tmp_path):
    config = get_config("smoke")
    config.warm_start = {}
    del config.parts["value"]
    with pytest.raises(ValueError, match="needs a critic"):
        StepSearchTrainer(config, mesh=None, workdir=str(tmp_path))


@pytest.mark.slow  # ~1 min of CPU: the smoke SFT warm start, 3 steps and 2 evaluations
def test_smoke_config_runs_as_typed(tmp_path):
    workdir = tmp_path / "step_search_smoke"
    train_as_typed("step_search.py:smoke", workdir)
    assert (workdir / "qa_test_step0.md").exists() and (workdir / "qa_test_step3.md").exists()
