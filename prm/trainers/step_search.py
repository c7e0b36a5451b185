"""StepSearch (StePPO): PPO with a critic, a reward at every search step, F1 + search keys at the end.

StepSearch (Wang et al., 2025, arXiv 2505.15107; notes: search_r1_stepsearch.md §2). Per
question, `rollout.group_size` full trajectories are played with the retriever in the loop, as
in Search-R1 (the group only shares the prompt's prefill: PPO needs no groups; the paper runs
one trajectory per question). Each trajectory gets StepSearch's token rewards
(`prm.rewards.step_search`, coefficients in `config.reward`):

    r[</search> closing search t] = 0.6 · (IG_t − P_t)                  information gain vs the
                                                                        gold passages − redundancy
    r[last sampled token]         = round(F1, 4) + 0.618 · r_key        (−1, and no step rewards,
                                                                        unless the answer ends it)

The synthetic world gives every question what StepSearch's data pipeline builds with GPT-4o:
its gold support passages (`Question.gold_doc_ids`) and, per hop, gold search keys (the noisy
expert's precise query for the hop, once per name of its subject entity).

Advantages are StePPO's: GAE with γ = λ = 1 over the policy's tokens against a critic V, then
whitened over the batch (verl's `compute_gae_advantage_return`):

    δ_t = r_t + γ·V_next(t) − V_t,   A_t = δ_t + γλ·A_next(t),   R_t = A_t + V_t (critic target)

The critic is the extra trainable part `config.parts.value` (a copy of the initial policy with
a zeroed scalar head, as verl initialises its critic from the actor; `prm.training.state`).
V_t is its score at token t − 1, the state in which token t is chosen (verl's
`values[:, -response_length - 1 : -1]`). The loss adds PPO's clipped value loss on the same
tokens (clip 0.5) to the shared policy loss; the two parts have their own optimisers, so the sum
trains each as verl's separate actor and critic updates would.

Deviations from the released StepSearch/verl PPO, all documented choices:
- The KL to the reference is the shared loss's k3 term (β = 0.001, `policy_loss`), not verl
  PPO's in-reward k1 penalty at the same β.
- GAE, whitening and the critic use the policy's tokens only (`loss_mask`); verl runs them over
  observation tokens too. With γ = λ = 1 the advantages before whitening are the same
  (A_t = Σ_{s≥t} r_s − V_t: observation tokens carry no reward); the whitening's mean and
  variance are taken over the policy's tokens, and the critic skips values it never uses.
- The gold search keys and passages come from the world, not from GPT-4o decompositions.

Config blocks (see `configs/step_search.py`): `rollout` (group_size, temperature,
max_step_tokens), `reward` (`StepSearchRewardConfig` fields), `ppo` (gamma, lam,
whiten_advantages, value_clip), `parts.value` (the critic, its `lr`).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from prm.advantages import generalized_advantage_estimation
from prm.envs.expert import _query as hop_query
from prm.envs.synthetic_world import Question, World
from prm.losses import value_loss
from prm.masked import masked_whiten
from prm.registry import TRAINERS
from prm.rewards.step_search import (
    StepSearchReward,
    StepSearchRewardConfig,
    step_search_token_rewards,
    trajectory_rewards,
)
from prm.rollouts import TrajectoryBatch
from prm.trainers.rl import WorldRLTrainer, advantage_variances, token_batch
from prm.training.update import loss_normalizer


def state_values(
    critic: nnx.Module, tokens: jax.Array, input_mask: jax.Array | None = None
) -> jax.Array:
    """float32 [B, T]: V_t = the critic's score at position t − 1 (the context token t is
    sampled from); 0 at t = 0, which nothing predicts."""
    scores = critic(tokens, input_mask)
    return jnp.pad(scores[:, :-1], ((0, 0), (1, 0)))


@functools.partial(jax.jit, static_argnames=("gamma", "lam", "whiten"))
def gae_advantages(
    token_rewards: jax.Array,
    values: jax.Array,
    mask: jax.Array,
    *,
    gamma: float,
    lam: float,
    whiten: bool,
) -> tuple[jax.Array, jax.Array]:
    """(advantages, returns) `[B, T]`: GAE over the tokens of `mask`, the advantages whitened
    over them (unbiased variance, verl's `masked_whiten`) when `whiten`."""
    chex.assert_equal_shape([token_rewards, values, mask])
    advantages, returns = generalized_advantage_estimation(
        token_rewards, values, mask, gamma=gamma, lam=lam
    )
    if whiten:
        advantages = masked_whiten(advantages, mask, ddof=1)
    return advantages, returns


def world_search_keys(world: World, question: Question) -> list[list[str]]:
    """Gold search keys per hop: the expert's precise query ("birthplace of Varo Kelin") with
    each name of the hop's subject (name and unique short form)."""
    return [
        [hop_query(world, hop, name) for name in world.entities[hop.subject].aliases]
        for hop in question.hops
    ]


def world_gold_passages(world: World, question: Question) -> list[str]:
    """The texts (titles left out) of the question's gold support passages."""
    return [world.passages[doc_id][1] for doc_id in question.gold_doc_ids]


def passage_text(passage: Mapping[str, Any]) -> str:
    """A retrieved passage's text: its `contents` after the title line."""
    return passage["contents"].partition("\n")[2]


@TRAINERS.register("step_search")
class StepSearchTrainer(WorldRLTrainer):
    """Config: `rollout.group_size`, `reward.*`, `ppo.*`, `parts.value` (module docstring)."""

    def __init__(self, config: Any, mesh: jax.sharding.Mesh, workdir: str):
        super().__init__(config, mesh, workdir)
        critic = config.parts.get("value")
        if critic is None or critic.head != "scalar":
            raise ValueError(
                "StepSearch's PPO needs a critic: set config.parts.value = {init: 'policy', "
                "head: 'scalar', lr: <critic lr>} (configs/step_search.py)."
            )
        if config.rollout.group_size < 1:
            raise ValueError(f"rollout.group_size must be >= 1, got {config.rollout.group_size}.")
        self.group_size = config.rollout.group_size
        self.reward_config = StepSearchRewardConfig(**config.reward)
        self.ppo = config.ppo
        self._values = nnx.jit(state_values)

    def next_batch(
        self, models: Mapping[str, nnx.Module], step: int, rng: jax.Array
    ) -> tuple[dict[str, np.ndarray], dict[str, float]]:
        questions, trajectories, played = self.play_groups(models, rng)
        rows = [q for q in questions for _ in range(self.group_size)]
        batch, metrics = self.build_batch(models, trajectories, rows)
        return batch, {**played, **metrics}

    def build_batch(
        self,
        models: Mapping[str, nnx.Module],
        trajectories: TrajectoryBatch,
        questions: Sequence[Question],
    ) -> tuple[dict[str, np.ndarray], dict[str, float]]:
        """The update's arrays from played trajectories (`questions[b]`: row b's question):
        token rewards, critic values V, GAE advantages and returns; and their metrics (reward
        parts, F1, the critic's fit; `next_batch` adds the rollout's, `play_groups`)."""
        rewards = self.rewards(trajectories, questions)
        step_rewards = self.step_rewards(trajectories, rewards)
        global_rewards = np.array([r.global_reward for r in rewards], np.float32)
        token_rewards = step_search_token_rewards(
            step_rewards, trajectories.step_id, global_rewards, trajectories.loss_mask
        )
        values = self._values(models["value"], trajectories.tokens, trajectories.input_mask)
        values = np.asarray(values) * trajectories.loss_mask
        advantages, returns = gae_advantages(
            token_rewards, values, trajectories.loss_mask, gamma=float(self.ppo.gamma),
            lam=float(self.ppo.lam), whiten=bool(self.ppo.whiten_advantages),
        )  # fmt: skip
        advantages, returns = np.asarray(advantages), np.asarray(returns)
        batch = {
            **token_batch(trajectories, advantages),
            "returns": returns.astype(np.float32),
            "old_values": values.astype(np.float32),
        }
        metrics = {
            **self.reward_metrics(rewards),
            "f1": float(trajectories.f1.mean()),
            **self.critic_fit(trajectories.loss_mask, values, returns),
            **advantage_variances(advantages, trajectories.step_id),
        }
        return batch, metrics

    def rewards(
        self, trajectories: TrajectoryBatch, questions: Sequence[Question]
    ) -> list[StepSearchReward]:
        """StepSearch's rewards of every row (`questions[b]`: row b's question). The format gate
        reads the response as text: everything after the prompt, observations included."""
        world, tokenizer = self.assets.world, self.assets.tokenizer
        out = []
        for b, question in enumerate(questions):
            sampled = trajectories.step_id[b] >= 0
            start, end = int(np.argmax(sampled)), int(trajectories.input_mask[b].sum())
            response = trajectories.tokens[b, start:end] if sampled.any() else []
            steps = trajectories.steps[b]
            out.append(
                trajectory_rewards(
                    tokenizer.decode(response, skip_special_tokens=True),
                    question.answers,
                    queries=[s.action.content for s in steps if s.action.kind == "search"],
                    search_keys=world_search_keys(world, question),
                    passages_per_search=[
                        [passage_text(p) for p in s.info["passages"]]
                        for s in steps
                        if "passages" in s.info
                    ],
                    gold_passages=world_gold_passages(world, question),
                    config=self.reward_config,
                )
            )
        return out

    def step_rewards(
        self, trajectories: TrajectoryBatch, rewards: Sequence[StepSearchReward]
    ) -> np.ndarray:
        """float32 [B, S]: step_scale · s of each executed search at its step index, else 0."""
        out = np.zeros((len(rewards), max(trajectories.num_turns.max(), 1)), np.float32)
        for b, (steps, reward) in enumerate(zip(trajectories.steps, rewards)):
            searches = [t for t, s in enumerate(steps) if "passages" in s.info]
            out[b, searches] = self.reward_config.step_scale * reward.step_scores
        return out

    @staticmethod
    def reward_metrics(rewards: Sequence[StepSearchReward]) -> dict[str, float]:
        """Batch means of the reward parts; the step parts are means over executed searches."""
        gains = np.concatenate([r.gains for r in rewards])
        penalties = np.concatenate([r.penalties for r in rewards])
        scores = np.concatenate([r.step_scores for r in rewards])
        per_search = lambda x: float(x.mean()) if x.size else 0.0
        return {
            "reward": float(np.mean([r.global_reward for r in rewards])),
            "reward/answer_f1": float(np.mean([r.answer_f1 for r in rewards])),
            "reward/search_keys": float(np.mean([r.search_keys for r in rewards])),
            "reward/format_ok": float(np.mean([r.format_ok for r in rewards])),
            "reward/information_gain": per_search(gains),
            "reward/redundancy": per_search(penalties),
            "reward/step_score": per_search(scores),
            "searches": gains.size / len(rewards),
        }

    @staticmethod
    def critic_fit(mask: np.ndarray, values: np.ndarray, returns: np.ndarray) -> dict[str, float]:
        """The critic's fit on the sampled tokens (`mask`; none: no metrics): mean value, mean
        return and the explained variance 1 − Var(R − V)/Var(R) (1: perfect, ≤ 0: no better
        than a constant)."""
        trained = mask > 0
        if not trained.any():
            return {}
        v, r = values[trained], returns[trained]
        variance = float(np.var(r))
        return {
            "critic/value_mean": float(v.mean()),
            "critic/return_mean": float(r.mean()),
            "critic/explained_variance": 1.0 - float(np.var(r - v)) / variance
            if variance > 0
            else 0.0,
        }

    def loss(
        self, models: Mapping[str, nnx.Module], batch: Mapping[str, jax.Array], rng: jax.Array
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """The shared policy loss + PPO's clipped value loss (½ max of squares, token mean)."""
        total, metrics = super().loss(models, batch, rng)
        mask = batch["loss_mask"]
        normalizer = loss_normalizer(batch, "token-mean")
        critic_loss, critic_metrics = value_loss(
            state_values(models["value"], batch["tokens"], batch.get("input_mask")),
            batch["old_values"],
            batch["returns"],
            mask,
            clip_range=self.ppo.value_clip or None,
            normalizer=normalizer,
        )
        # Logged as this micro-batch's own mean, like the policy loss's terms.
        to_mean = 1.0 if normalizer is None else normalizer / jnp.maximum(jnp.sum(mask), 1.0)
        return total + critic_loss, {
            **metrics,
            **critic_metrics,
            "value_loss": critic_loss * to_mean,
        }
