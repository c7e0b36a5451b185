"""Search-R1 GRPO trainer: the batch it builds, and the config run exactly as typed."""

import jax
import numpy as np
import pytest

from configs.search_r1 import get_config
from prm.training.loop import build_run
from tests.helpers.train_runs import train_as_typed


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    config = get_config("smoke")
    config.warm_start = {}  # a random policy is enough to check the batch
    config.data.batch_size, config.rollout.group_size = 3, 4
    run = build_run(config, str(tmp_path_factory.mktemp("run")))
    run.checkpointer.close()
    return run


def test_batch_has_group_relative_advantages_on_sampled_tokens_only(run):
    with jax.set_mesh(run.mesh):
        batch, metrics = run.trainer.next_batch(run.models(), 1, jax.random.PRNGKey(0))
    rows = 3 * 4
    assert batch["tokens"].shape == (rows, run.config.data.seq_len)
    trained = batch["loss_mask"] > 0
    adv = batch["advantages"]
    assert np.all(adv[~trained] == 0)  # prompt, observations and padding carry nothing
    per_row = np.array([adv[b, trained[b]][0] if trained[b].any() else 0.0 for b in range(rows)])
    for b in range(rows):  # one outcome advantage on every sampled token of a trajectory
        np.testing.assert_array_equal(adv[b, trained[b]], per_row[b])
    # GRPO within each question's group of 4 consecutive rows: zero mean; with EM rewards in
    # {0, 1}, every advantage is ±(r - mean)/std, so it is 0 exactly when the group is uniform.
    groups = per_row.reshape(3, 4)
    np.testing.assert_allclose(groups.sum(axis=1), 0.0, atol=1e-5)
    assert metrics["sampled_tokens"] == trained.sum()
    assert 0.0 <= metrics["exact_match"] <= 1.0
    assert metrics["advantage_variance/token"] >= 0.0
    # The sampler's log-probs are the π_old the batch carries, on sampled tokens only.
    assert np.all(batch["old_logprobs"][~trained] == 0)
    assert np.all(batch["old_logprobs"][trained] <= 0)


def test_format_reward_follows_search_r1s_table(run):
    from prm.rewards.outcome import search_r1_format_reward

    trainer = run.trainer
    tokenizer = trainer.assets.tokenizer
    question = trainer.assets.world.split("train")[0]
    prompt = tokenizer.encode("Question: x\n", add_special_tokens=False)
    answer = f"<think> t </think>\n<answer> {question.answers[0]} </answer>"
    ids = tokenizer.encode(answer, add_special_tokens=False)

    class Trajectories:
        length = len(prompt) + len(ids)
        tokens = np.array([prompt + ids])
        step_id = np.array([[-1] * len(prompt) + [0] * len(ids)])
        input_mask = np.ones((1, length), bool)

    trainer.config.rollout.unlock()
    trainer.config.rollout.reward = "format"
    try:
        reward = trainer.rewards(Trajectories, [question] * trainer.group_size)
    finally:
        trainer.config.rollout.reward = "em"
    expected = search_r1_format_reward(tokenizer.decode(ids), question.answers)
    assert expected == 1.0  # a correct, well-formed answer
    np.testing.assert_allclose(reward, [expected])


def test_smoke_config_runs_as_typed(tmp_path):
    workdir = tmp_path / "search_r1_smoke"
    train_as_typed("search_r1.py:smoke", workdir)
    assert (workdir / "qa_test_step0.md").exists() and (workdir / "qa_test_step3.md").exists()
