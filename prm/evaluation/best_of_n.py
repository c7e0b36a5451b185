"""Best-of-N with an implicit PRM on the synthetic world: accuracy (EM of the pick) against N.

Implicit PRM §4.1 and its evaluation code (notes implicit_prm_prime.md §1.4): a generator (the
SFT policy) samples N episodes per held-out question; the PRM scores every step (a turn, or a
delimiter step) with r^k = Σ_{t in step k} β·log π_φ/π_ref (one PRM and one reference forward
for all candidates); a response's score aggregates its step rewards by

    min / sum / last          over the step rewards r^k ("single"; min is the paper's score,
                              sum telescopes to q^S, the outcome-reward score)
    min_cumulative / ...      over the Q values q^k = Σ_{j≤k} r^j ("accumulative")

and the pick among the first n candidates (n = 1, 2, 4, … N, as the paper's `split_query`) is

    prm_<score>     the highest score                                        (best-of-n)
    vote_<score>    weighted majority vote, each answer summing σ(score)     (Fig. 3 "w/ sc")
    majority        plain majority vote over normalised answers   (outcome-free baseline)
    random          a uniformly random candidate: its expected EM, the mean over the n
                    (outcome-free baseline, exact rather than sampled)
    oracle          any of the n is right (pass@n; the ceiling)

Candidates without an answer get a vote each of their own (they never pool). Ties of the PRM's
score go to the earliest candidate, so an untrained PRM (π_φ = π_ref: every score 0) picks the
first candidate, whose expected EM is `random`'s.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from prm.metrics.qa import normalize_answer
from prm.rewards.implicit import (
    best_of_n,
    ce_loss,
    response_scores,
    sequence_rewards,
    step_rewards,
    weighted_majority_vote,
)

AGGREGATIONS = ("min", "sum", "last")
BASELINES = ("random", "majority", "oracle")


def candidate_scores(step_values: np.ndarray, step_mask: np.ndarray) -> dict[str, np.ndarray]:
    """Every score of the module docstring from `[..., S]` step rewards: name → `[...]`."""
    scores = {}
    for cumulative in (False, True):
        for aggregation in AGGREGATIONS:
            name = aggregation + ("_cumulative" if cumulative else "")
            scores[name] = np.asarray(
                response_scores(
                    jnp.asarray(step_values), jnp.asarray(step_mask), aggregation, cumulative
                )  # fmt: skip
            )
    return scores


def answer_ids(answers: Sequence[str | None], num_candidates: int) -> np.ndarray:
    """int32[Q, N] ids of the normalised answers (equal answers of a question share an id; a
    missing answer gets an id of its own)."""
    rows = np.asarray(answers, dtype=object).reshape(-1, num_candidates)
    ids = np.zeros(rows.shape, np.int32)
    for q, row in enumerate(rows):
        seen: dict[str, int] = {}
        for i, answer in enumerate(row):
            key = f"\0missing{i}" if answer is None else normalize_answer(answer)
            ids[q, i] = seen.setdefault(key, len(seen))
    return ids


def selection_accuracy(
    em: np.ndarray, ids: np.ndarray, scores: Mapping[str, np.ndarray], ns: Sequence[int]
) -> dict[str, dict[int, float]]:
    """{method: {n: mean EM of the pick among the first n}} for `[Q, N]` EM, answer ids and
    scores."""
    table: dict[str, dict[int, float]] = {}

    def picked(index: jax.Array, n: int) -> float:
        return float(np.take_along_axis(em[:, :n], np.asarray(index)[:, None], axis=1).mean())

    for n in ns:
        present = jnp.ones((em.shape[0], n), bool)
        first = lambda x, n=n: jnp.asarray(x[:, :n])
        table.setdefault("random", {})[n] = float(em[:, :n].mean())
        table.setdefault("oracle", {})[n] = float(em[:, :n].max(axis=1).mean())
        votes = weighted_majority_vote(first(ids), jnp.ones((em.shape[0], n)), present)
        table.setdefault("majority", {})[n] = picked(votes, n)
        for name, score in scores.items():
            table.setdefault(f"prm_{name}", {})[n] = picked(best_of_n(first(score), present), n)
            weights = jax.nn.sigmoid(first(score))
            table.setdefault(f"vote_{name}", {})[n] = picked(
                weighted_majority_vote(first(ids), weights, present), n
            )
    return table


def powers_of_two_up_to(n: int) -> list[int]:
    return [2**i for i in range(int(np.log2(n)) + 1)] + ([] if n & (n - 1) == 0 else [n])


def sample_candidates(
    world_trainer: Any, generator: Any, questions: Sequence[Any], n: int, seed: int
) -> Any:
    """`n` sampled episodes of `generator` per question (a `TrajectoryBatch`, rows question-major);
    `world_trainer` (a `WorldRLTrainer`) supplies the env, tokenizer and rollout settings."""
    from prm.rollouts import rollout  # noqa: PLC0415
    from prm.sampling import Sampler  # noqa: PLC0415

    tokenizer = world_trainer.assets.tokenizer
    config = dataclasses.replace(world_trainer.rollout_config, group_size=n)
    return rollout(
        Sampler(generator, pad_token_id=tokenizer.pad_token_id), world_trainer.make_env(),
        tokenizer, world_trainer.tasks(list(questions)), config, key=jax.random.PRNGKey(seed),
    )  # fmt: skip


def implicit_scores(
    prm: Any,
    reference: Any,
    tokenizer: Any,
    trajectories: Any,
    *,
    beta: float,
    delimiters: Sequence[str],
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """(every `candidate_scores` score `[B]`, response rewards r(y) `[B]`) of the implicit PRM on
    `trajectories`: one PRM and one reference forward for the whole batch."""
    from prm.trainers.implicit_prm import implicit_token_rewards, step_ids  # noqa: PLC0415

    steps = step_ids(tokenizer, trajectories, delimiters)
    rewards, _ = implicit_token_rewards(
        prm, reference, trajectories.tokens, trajectories.input_mask, steps >= 0, beta
    )
    step_values, step_mask = step_rewards(rewards, jnp.asarray(steps), max(int(steps.max()) + 1, 1))
    totals = np.asarray(sequence_rewards(rewards, jnp.asarray(steps >= 0)))
    return candidate_scores(np.asarray(step_values), np.asarray(step_mask)), totals


def best_of_n_table(
    world_trainer: Any,
    prm: Any,
    generator: Any,
    reference: Any,
    *,
    beta: float,
    delimiters: Sequence[str],
    n: int,
    questions: Sequence[Any],
    seed: int,
) -> tuple[dict[str, dict[int, float]], dict[str, float]]:
    """(accuracy table, PRM metrics) of best-of-`n` on `questions`.

    `world_trainer` supplies the env, tokenizer and rollout settings (a `WorldRLTrainer`);
    `generator` samples the candidates, `prm` and `reference` score them. PRM metrics: CE of the
    response rewards against EM and PRIME's pairwise accuracy on mixed groups.
    """
    from prm.trainers.implicit_prm import pairwise_prm_accuracy  # noqa: PLC0415

    trajectories = sample_candidates(world_trainer, generator, questions, n, seed)
    scores, totals = implicit_scores(
        prm, reference, world_trainer.assets.tokenizer, trajectories,
        beta=beta, delimiters=delimiters,
    )  # fmt: skip
    em = trajectories.em.reshape(-1, n)
    ids = answer_ids(trajectories.answers, n)
    by_question = {name: value.reshape(-1, n) for name, value in scores.items()}
    table = selection_accuracy(em, ids, by_question, powers_of_two_up_to(n))
    metrics = {
        "prm/heldout_ce": float(ce_loss(jnp.asarray(totals), jnp.asarray(trajectories.em))),
        "prm/heldout_pairwise_accuracy": pairwise_prm_accuracy(totals, trajectories.em, n),
    }
    return table, metrics


def flatten(table: Mapping[str, Mapping[int, float]]) -> dict[str, float]:
    return {f"bon/{method}/n{n}": acc for method, by_n in table.items() for n, acc in by_n.items()}


def table_from_metrics(metrics: Mapping[str, float]) -> dict[str, dict[int, float]]:
    """Inverse of `flatten` (other keys ignored)."""
    table: dict[str, dict[int, float]] = {}
    for key, value in metrics.items():
        parts = key.split("/")
        if len(parts) == 3 and parts[0] == "bon" and parts[2].startswith("n"):
            table.setdefault(parts[1], {})[int(parts[2][1:])] = value
    return table


def format_table(table: Mapping[str, Mapping[int, float]]) -> str:
    """Markdown: one row per method (baselines first), one column per n."""
    if not table:
        return ""
    ns = sorted({n for by_n in table.values() for n in by_n})
    order = [m for m in BASELINES if m in table] + sorted(m for m in table if m not in BASELINES)
    lines = ["| method | " + " | ".join(f"N={n}" for n in ns) + " |",
             "|---|" + "---:|" * len(ns)]  # fmt: skip
    for method in order:
        cells = " | ".join(f"{table[method].get(n, float('nan')):.3f}" for n in ns)
        lines.append(f"| {method} | {cells} |")
    return "\n".join(lines)


def evaluate_best_of_n(
    world_trainer: Any,
    prm: Any,
    reference: Any,
    prm_config: Mapping[str, Any],
    bon_config: Mapping[str, Any],
    workdir: str,
    step: int,
) -> dict[str, float]:
    """A trainer's evaluation: best-of-N with the reference (SFT) as generator, scalars
    `bon/<method>/n<k>` plus PRM metrics; the table goes to `workdir/best_of_n_step<step>.md`."""
    questions = world_trainer.assets.world.split(bon_config["split"])
    if bon_config["max_questions"] > 0:
        questions = questions[: bon_config["max_questions"]]
    table, metrics = best_of_n_table(
        world_trainer, prm, reference, reference,
        beta=prm_config["beta"], delimiters=tuple(prm_config["delimiters"]),
        n=bon_config["n"], questions=questions, seed=bon_config["seed"],
    )  # fmt: skip
    if jax.process_index() == 0:
        os.makedirs(workdir, exist_ok=True)
        with open(os.path.join(workdir, f"best_of_n_step{step}.md"), "w") as f:
            f.write(format_table(table) + "\n")
    return {**flatten(table), **metrics}
