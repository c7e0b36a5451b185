"""Implicit PRM: a policy-shaped model trained on response labels, read as a process reward.

Yuan et al. 2024, "Free Process Rewards without Process Labels" (arXiv 2412.01981; notes:
implicit_prm_prime.md §1-2). The PRM π_φ and a frozen reference π_ref (both the SFT warm start
at step 0) give every token the reward r_t = β·log π_φ(y_t|y_<t)/π_ref(y_t|y_<t); the response
reward r(y) = Σ_t r_t is trained on outcome labels with CE (default), DPO, NCA or KTO
(`prm.rewards.implicit`), and step rewards are the sums of r_t over each step's tokens (Eq. 3).

Here the PRM is the run's trained "policy" slot (the loop trains exactly one model for this
method; its HF export is the PRM), and the frozen "reference" is the SFT start, which also
generates the labelled rollouts. Steps are the policy's turns: a trajectory's `step_id` gives
every turn's exact token positions, observations (−1) belong to no step. With
`prm.delimiters` (strings), a step instead ends at the token holding the end of each delimiter
occurrence in the decoded response, and at the response's last token (`delimiter_step_ids`).

Per train step the trainer builds a labelled group batch — `questions` prompts × K responses with
labels in [0, 1] — from one of two sources (`prm.source`):
  "rollouts"  K rollouts of the frozen SFT policy per train question, labelled by EM;
  "file"      rows (prompt, response, label) of a jsonl or parquet file loaded with `datasets`,
              grouped by prompt (the first K responses of each prompt); the order of prompts is
              fixed by (seed, epoch) and its position is saved with each checkpoint.
and lays it out for the loss:
  ce        one row per response, its label                                    (Eq. 5)
  dpo, nca  rows 2p, 2p+1 = (correct, incorrect) response of pair p; every such pair of a
            group (Implicit PRM `formalize_dpo_data`), padded to ⌊K/2⌋·⌈K/2⌉ pairs per group
  kto       rows 2i, 2i+1 = response i and a mismatched "KL" row: the prompt of group g with
            the response in the same slot of group g+1 (OpenRLHF's shifted completions)

Step rewards of a whole batch cost one PRM forward and one reference forward, whatever the
number of steps (`implicit_step_rewards`; a token-level segment sum, not one scoring per step).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from prm.models import token_logprobs
from prm.registry import TRAINERS
from prm.rewards.implicit import (
    ce_loss,
    dpo_loss,
    kto_loss,
    nca_loss,
    pairwise_accuracy,
    sequence_rewards,
    step_ids_from_ends,
    step_rewards,
    token_rewards,
)
from prm.rollouts import TrajectoryBatch, rollout
from prm.sampling import Sampler
from prm.trainers.rl import WorldRLTrainer
from prm.training.update import loss_normalizer

LOSSES = ("ce", "dpo", "nca", "kto")
SOURCES = ("rollouts", "file")


# ---------------------------------------------------------------------------------------------
# Scoring: one forward per model for a whole batch.


@functools.partial(jax.jit, static_argnames=("graphdef", "chunk_size"))
def _logprobs(graphdef, state, tokens, input_mask, chunk_size):
    scored = token_logprobs(nnx.merge(graphdef, state), tokens, input_mask, chunk_size=chunk_size)
    return scored.logprobs, scored.mask


def sequence_logprobs(
    model: nnx.Module, tokens: chex.Array, input_mask: chex.Array, chunk_size: int = 128
) -> tuple[jax.Array, jax.Array]:
    """(log p(tokens[t] | tokens[<t]), where that is defined), `[B, T]` each: one jitted forward."""
    graphdef, state = nnx.split(model)
    return _logprobs(graphdef, state, jnp.asarray(tokens), jnp.asarray(input_mask), chunk_size)


def implicit_token_rewards(
    prm: nnx.Module,
    reference: nnx.Module,
    tokens: chex.Array,
    input_mask: chex.Array,
    response_mask: chex.Array,
    beta: float,
) -> tuple[jax.Array, jax.Array]:
    """(token rewards β·(log π_φ − log π_ref) on scored response tokens, log π_ref), `[B, T]`:
    one PRM forward and one reference forward."""
    logp_prm, scored = sequence_logprobs(prm, tokens, input_mask)
    logp_ref, _ = sequence_logprobs(reference, tokens, input_mask)
    mask = scored & (jnp.asarray(response_mask) > 0)
    return token_rewards(logp_prm, logp_ref, mask, beta), logp_ref


def implicit_step_rewards(
    prm: nnx.Module,
    reference: nnx.Module,
    tokens: chex.Array,
    input_mask: chex.Array,
    step_id: chex.Array,
    beta: float,
    num_steps: int | None = None,
) -> tuple[jax.Array, jax.Array]:
    """(step rewards, step mask), `[B, S]`, of a batch from one PRM and one reference forward.

    Step k's reward is Σ of the token rewards of the tokens with `step_id` k (Implicit PRM
    Eq. 3); S defaults to the batch's largest step id + 1.
    """
    step_id = np.asarray(step_id)
    if num_steps is None:
        num_steps = max(int(step_id.max()) + 1, 1)
    rewards, _ = implicit_token_rewards(prm, reference, tokens, input_mask, step_id >= 0, beta)
    return step_rewards(rewards, jnp.asarray(step_id), num_steps)


def delimiter_step_ids(
    tokens: np.ndarray,
    response_mask: np.ndarray,
    decode: Callable[[Sequence[int]], str],
    delimiters: Sequence[str],
) -> np.ndarray:
    """Per-token step ids (−1 off the response) from delimiter strings, at exact token positions.

    Each row's response is its masked tokens in order (observation tokens, unmasked, belong to
    no step and add no text). A step ends at the token whose decoded text completes an
    occurrence of any delimiter — found by decoding growing prefixes, so a delimiter split over
    several tokens or merged into a larger one is placed exactly — and at the last response
    token. `decode` maps token ids to text (e.g. `tokenizer.decode`).
    """
    if not delimiters or any(not d for d in delimiters):
        raise ValueError(f"Step delimiters must be non-empty strings, got {tuple(delimiters)}.")
    tokens, response_mask = np.asarray(tokens), np.asarray(response_mask) > 0
    ends = np.full(tokens.shape[:1] + (tokens.shape[1],), -1, np.int32)
    for b in range(tokens.shape[0]):
        positions = np.flatnonzero(response_mask[b])
        if not positions.size:
            continue
        ids = tokens[b, positions].tolist()
        text = decode(ids)
        prefix_chars = np.array([len(decode(ids[: i + 1])) for i in range(len(ids))])
        end_tokens = {len(ids) - 1}
        for delimiter in delimiters:
            start = text.find(delimiter)
            while start >= 0:
                end_char = start + len(delimiter)
                end_tokens.add(int(np.searchsorted(prefix_chars, end_char, side="left")))
                start = text.find(delimiter, end_char)
        row_ends = positions[sorted(t for t in end_tokens if t < len(ids))]
        ends[b, : len(row_ends)] = row_ends
    return np.asarray(step_ids_from_ends(jnp.asarray(ends), jnp.asarray(response_mask)))


# ---------------------------------------------------------------------------------------------
# Labelled groups and their loss layouts (host-side numpy).


def empty_rows(rows: int, length: int, pad_id: int) -> dict[str, np.ndarray]:
    """`rows` padding rows: pad tokens, nothing real, nothing scored."""
    return {
        "tokens": np.full((rows, length), pad_id, np.int32),
        "input_mask": np.zeros((rows, length), bool),
        "loss_mask": np.zeros((rows, length), np.float32),
        "labels": np.zeros((rows,), np.float32),
    }


def labelled_groups(trajectories: TrajectoryBatch, labels: np.ndarray) -> dict[str, np.ndarray]:
    """A labelled group batch from rollouts (rows already grouped K per prompt, contiguous)."""
    return {
        "tokens": trajectories.tokens,
        "input_mask": trajectories.input_mask,
        "loss_mask": trajectories.loss_mask,
        "labels": np.asarray(labels, np.float32),
    }


def _take(groups: Mapping[str, np.ndarray], rows: np.ndarray) -> dict[str, np.ndarray]:
    return {name: values[rows] for name, values in groups.items()}


def max_pairs(group_size: int) -> int:
    """The most (correct, incorrect) pairs a group of `group_size` binary labels can hold."""
    return (group_size // 2) * ((group_size + 1) // 2)


def pair_rows(groups: Mapping[str, np.ndarray], group_size: int, pad_id: int) -> dict[str, Any]:
    """DPO/NCA layout: rows 2p, 2p+1 = chosen (label 1) and rejected (label 0) of pair p.

    Every (correct, incorrect) pair within each group of `group_size` consecutive rows; pairs
    padded to `max_pairs(group_size)` per group with empty rows (`pair_mask` 0), so shapes are
    static. Labels must be 0 or 1 (pairs need a winner); rows with an empty response are
    skipped.
    """
    labels = groups["labels"]
    if not np.all((labels == 0) | (labels == 1)):
        raise ValueError("DPO/NCA pairs need binary labels (0 or 1); use prm.loss='ce' for soft.")
    num_groups = len(labels) // group_size
    length = groups["tokens"].shape[1]
    has_response = groups["loss_mask"].any(axis=1)
    chosen, rejected = [], []
    for g in range(num_groups):
        rows = np.arange(g * group_size, (g + 1) * group_size)
        rows = rows[has_response[rows]]
        good, bad = rows[labels[rows] == 1], rows[labels[rows] == 0]
        chosen += [w for w in good for _ in bad]
        rejected += [lose for _ in good for lose in bad]
    num_pairs = len(chosen)
    capacity = num_groups * max_pairs(group_size)
    out = empty_rows(2 * capacity, length, pad_id)
    if num_pairs:
        order = np.stack([chosen, rejected], axis=1).reshape(-1)
        for name, values in _take(groups, order).items():
            out[name][: 2 * num_pairs] = values
    out["pair_mask"] = np.repeat(np.arange(capacity) < num_pairs, 2).astype(np.float32)
    return out


def kto_rows(groups: Mapping[str, np.ndarray], group_size: int, pad_id: int) -> dict[str, Any]:
    """KTO layout: rows 2i = response i, 2i+1 = its KL row (prompt of i's group, the response in
    the same slot of the next group, cut at the row length); `kl_row` marks the latter."""
    tokens, mask = groups["tokens"], groups["loss_mask"]
    rows, length = tokens.shape
    num_groups = rows // group_size
    if num_groups < 2:
        raise ValueError("KTO's mismatched KL rows need at least 2 prompts per batch.")
    out = empty_rows(2 * rows, length, pad_id)
    for i in range(rows):
        j = (i + group_size) % rows
        out["tokens"][2 * i], out["input_mask"][2 * i] = tokens[i], groups["input_mask"][i]
        out["loss_mask"][2 * i], out["labels"][2 * i] = mask[i], groups["labels"][i]
        if not mask[i].any() or not mask[j].any():
            continue
        prompt = tokens[i, : np.argmax(mask[i] > 0)]
        start, stop = np.argmax(mask[j] > 0), int(groups["input_mask"][j].sum())
        row = np.concatenate([prompt, tokens[j, start:stop]])[:length]
        row_mask = np.concatenate([np.zeros(len(prompt)), mask[j, start:stop]])[:length]
        out["tokens"][2 * i + 1, : len(row)] = row
        out["input_mask"][2 * i + 1, : len(row)] = True
        out["loss_mask"][2 * i + 1, : len(row)] = row_mask
    out["kl_row"] = np.tile([0.0, 1.0], rows).astype(np.float32)
    return out


def loss_rows(
    groups: Mapping[str, np.ndarray], loss: str, group_size: int, pad_id: int
) -> dict[str, np.ndarray]:
    """The training rows of a labelled group batch for `loss` (module docstring)."""
    if loss == "ce":
        return {name: np.asarray(values) for name, values in groups.items()}
    if loss in ("dpo", "nca"):
        return pair_rows(groups, group_size, pad_id)
    if loss == "kto":
        return kto_rows(groups, group_size, pad_id)
    raise ValueError(f"Unknown implicit PRM loss {loss!r}; use one of {LOSSES}.")


def implicit_prm_loss(
    prm: nnx.Module, batch: Mapping[str, jax.Array], loss: str, beta: float
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(loss, metrics) of the PRM on a micro-batch laid out by `loss_rows`.

    `batch["ref_logprobs"]` holds log π_ref (no gradient). Each objective is a mean over its
    entries (responses, pairs, or desirable + undesirable responses), rescaled to divide by the
    mini-batch's count of non-empty rows (`loss_normalizer`) instead of this micro-batch's, so
    micro-batches add up exactly for CE, DPO and NCA; for KTO only approximately (its KL rows
    count too, and its reference point z is a per-micro-batch mean, as in OpenRLHF).
    """
    scored = token_logprobs(prm, batch["tokens"], batch["input_mask"])
    mask = (batch["loss_mask"] > 0) & scored.mask
    rewards = sequence_rewards(
        token_rewards(scored.logprobs, batch["ref_logprobs"], mask, beta), mask
    )
    present = jnp.any(mask, axis=-1)
    if loss == "ce":
        value = ce_loss(rewards, batch["labels"], present)
        metrics = {"prm/ce_loss": value}
    elif loss in ("dpo", "nca"):
        pairs = batch["pair_mask"].reshape(-1, 2)[:, 0] > 0
        chosen, rejected = rewards.reshape(-1, 2).T
        value = (dpo_loss if loss == "dpo" else nca_loss)(chosen, rejected, pairs)
        agree = jnp.where(pairs, chosen > rejected, False)
        metrics = {
            f"prm/{loss}_loss": value,
            "prm/pair_accuracy": jnp.sum(agree) / jnp.maximum(jnp.sum(pairs), 1),
        }
    elif loss == "kto":
        real, kl = rewards.reshape(-1, 2).T
        real_present, kl_present = present.reshape(-1, 2).T
        labels = batch["labels"].reshape(-1, 2)[:, 0]
        value = kto_loss(
            real, real, kl,
            chosen_mask=real_present & (labels >= 0.5),
            rejected_mask=real_present & (labels < 0.5),
            kl_mask=kl_present,
        )  # fmt: skip
        metrics = {"prm/kto_loss": value}
    else:
        raise ValueError(f"Unknown implicit PRM loss {loss!r}; use one of {LOSSES}.")
    own_rows = jnp.sum(present).astype(jnp.float32)
    normalizer = loss_normalizer(batch, "sequence-mean")
    if normalizer is not None:
        value = value * own_rows / jnp.maximum(normalizer, 1.0)
    metrics["prm/reward_mean"] = jnp.sum(jnp.where(present, rewards, 0.0)) / jnp.maximum(
        own_rows, 1
    )
    return value, metrics


# ---------------------------------------------------------------------------------------------
# The file source: (prompt, response, label) rows grouped by prompt.


class LabelledFile:
    """Rows of a jsonl or parquet file (`datasets`), grouped by prompt, `questions` groups of at
    most `group_size` responses per batch, in an order fixed by (seed, epoch)."""

    def __init__(self, spec: Mapping[str, Any], tokenizer: Any, group_size: int, seed: int):
        import datasets  # noqa: PLC0415 - only this source needs it

        path = spec["path"]
        if not path or not os.path.exists(path):
            raise ValueError(f"prm.path={path!r} is not a file; give a .jsonl or .parquet path.")
        kind = "parquet" if path.endswith(".parquet") else "json"
        table = datasets.load_dataset(kind, data_files=path, split="train")
        keys = (spec["prompt_key"], spec["response_key"], spec["label_key"])
        if missing := [k for k in keys if k not in table.column_names]:
            raise ValueError(f"{path} has no column(s) {missing}; it has {table.column_names}.")
        grouped: dict[str, list[tuple[str, float]]] = {}
        for row in table:
            grouped.setdefault(row[keys[0]], []).append((row[keys[1]], float(row[keys[2]])))
        self.groups = [(p, rs[:group_size]) for p, rs in grouped.items()]
        self.tokenizer, self.group_size, self.seed = tokenizer, group_size, seed
        self.epoch, self.index = 0, 0

    def next_groups(self, count: int) -> list[tuple[str, list[tuple[str, float]]]]:
        if count > len(self.groups):
            raise ValueError(f"The file has {len(self.groups)} prompts, fewer than {count}.")
        if (self.index + 1) * count > len(self.groups):
            self.epoch, self.index = self.epoch + 1, 0
        order = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.groups))
        start, self.index = self.index * count, self.index + 1
        return [self.groups[i] for i in order[start : start + count]]

    def batch(self, count: int, length: int, pad_id: int) -> tuple[dict[str, np.ndarray], int]:
        """(labelled group batch of `count` prompts × group_size, responses cut at `length`)."""
        out = empty_rows(count * self.group_size, length, pad_id)
        cut = 0
        encode = lambda text: self.tokenizer.encode(text, add_special_tokens=False)
        for g, (prompt, responses) in enumerate(self.next_groups(count)):
            prompt_ids = encode(prompt)
            for k, (response, label) in enumerate(responses):
                ids = (prompt_ids + encode(response))[:length]
                cut += len(prompt_ids) + len(encode(response)) > length
                row = g * self.group_size + k
                out["tokens"][row, : len(ids)] = ids
                out["input_mask"][row, : len(ids)] = True
                out["loss_mask"][row, len(prompt_ids) : len(ids)] = 1.0
                out["labels"][row] = label
        return out, cut

    def state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "index": self.index}

    def restore(self, state: Mapping[str, Any]) -> None:
        self.epoch, self.index = int(state["epoch"]), int(state["index"])


# ---------------------------------------------------------------------------------------------


@TRAINERS.register("implicit_prm")
class ImplicitPRMTrainer(WorldRLTrainer):
    """Trains the "policy" slot as an implicit PRM against the frozen "reference" (config block
    `prm`: beta, loss, source, path/prompt_key/response_key/label_key, delimiters; `rollout`:
    group_size K, temperature, max_step_tokens; `eval.best_of_n`: n, max_questions)."""

    def __init__(self, config: Any, mesh: jax.sharding.Mesh, workdir: str):
        super().__init__(config, mesh, workdir)
        self.prm_config = config.prm
        if config.prm.loss not in LOSSES:
            raise ValueError(f"Unknown prm.loss {config.prm.loss!r}; use one of {LOSSES}.")
        if config.prm.source not in SOURCES:
            raise ValueError(f"Unknown prm.source {config.prm.source!r}; use one of {SOURCES}.")
        if config.get("reference", "none") != "copy":
            raise ValueError("The implicit PRM needs the frozen SFT reference: reference='copy'.")
        self.group_size = config.rollout.group_size
        self.file = None
        if config.prm.source == "file":
            self.file = LabelledFile(
                config.prm, self.assets.tokenizer, self.group_size, config.seed
            )

    def play(
        self, generator: nnx.Module, questions: list[Any], key: jax.Array, group_size: int = 0
    ) -> TrajectoryBatch:
        """`group_size` (default K) sampled rollouts of `generator` per question, contiguous."""
        config = dataclasses.replace(self.rollout_config, group_size=group_size or self.group_size)
        sampler = Sampler(generator, pad_token_id=self.assets.tokenizer.pad_token_id)
        return rollout(sampler, self.make_env(), self.assets.tokenizer, self.tasks(questions),
                       config, key=key)  # fmt: skip

    def labelled_batch(
        self, models: Mapping[str, nnx.Module], rng: jax.Array
    ) -> tuple[dict[str, np.ndarray], dict[str, float]]:
        """This step's labelled group batch and its host metrics."""
        pad_id = self.assets.tokenizer.pad_token_id
        if self.file is not None:
            groups, cut = self.file.batch(
                self.config.data.batch_size, self.config.data.seq_len, pad_id
            )
            return groups, {
                "truncated_rows": float(cut),
                "label_mean": float(groups["labels"].mean()),
            }
        started = time.perf_counter()
        trajectories = self.play(models["reference"], next(self.data), rng)
        em = trajectories.em.astype(np.float32)
        metrics = {"rollout_time_s": time.perf_counter() - started, "label_mean": float(em.mean())}
        return labelled_groups(trajectories, em), metrics

    def next_batch(
        self, models: Mapping[str, nnx.Module], step: int, rng: jax.Array
    ) -> tuple[dict[str, np.ndarray], dict[str, float]]:
        groups, metrics = self.labelled_batch(models, rng)
        rows = loss_rows(groups, self.prm_config.loss, self.group_size,
                         self.assets.tokenizer.pad_token_id)  # fmt: skip
        per_group = groups["labels"].reshape(-1, self.group_size)
        metrics["mixed_group_fraction"] = float(np.mean(per_group.min(1) != per_group.max(1)))
        if "pair_mask" in rows:
            metrics["pairs"] = float(rows["pair_mask"].sum() / 2)
        return rows, metrics

    def prepare(
        self, models: Mapping[str, nnx.Module], batch: Mapping[str, jax.Array]
    ) -> dict[str, jax.Array]:
        scored = token_logprobs(models["reference"], batch["tokens"], batch["input_mask"])
        return {**batch, "ref_logprobs": jax.lax.stop_gradient(scored.logprobs)}

    def loss(
        self, models: Mapping[str, nnx.Module], batch: Mapping[str, jax.Array], rng: jax.Array
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        del rng
        return implicit_prm_loss(
            models["policy"], batch, self.prm_config.loss, self.prm_config.beta
        )

    def evaluate(self, models: Mapping[str, nnx.Module], step: int) -> dict[str, float]:
        """Best-of-N on held-out questions: the SFT reference generates, the PRM ranks
        (`prm.evaluation.best_of_n`); the table goes to `workdir/best_of_n_step<step>.md`."""
        from prm.evaluation.best_of_n import evaluate_best_of_n  # noqa: PLC0415

        return evaluate_best_of_n(
            self, models["policy"], models["reference"], self.prm_config, self.config.eval.best_of_n,
            self.workdir, step,
        )  # fmt: skip

    def headline(self, eval_results: Mapping[str, float]) -> str:
        n = self.config.eval.best_of_n.n
        keys = (f"bon/prm_min/n{n}", f"bon/majority/n{n}", f"bon/random/n{n}")
        if all(k in eval_results for k in keys):
            prm, vote, rand = (eval_results[k] for k in keys)
            return f"best-of-{n} EM: PRM (min) {prm:.4f}, majority {vote:.4f}, random {rand:.4f}"
        return ""

    def results_table(self, eval_results: Mapping[str, float]) -> str:
        from prm.evaluation.best_of_n import format_table, table_from_metrics  # noqa: PLC0415

        return format_table(table_from_metrics(eval_results))

    def data_state(self) -> dict[str, Any]:
        state = super().data_state()
        return state if self.file is None else {**state, "file": self.file.state()}

    def restore_data_state(self, state: Mapping[str, Any]) -> None:
        super().restore_data_state(state)
        if self.file is not None:
            self.file.restore(state["file"])


def step_ids(
    tokenizer: Any, trajectories: TrajectoryBatch, delimiters: Sequence[str]
) -> np.ndarray:
    """Steps of rollouts: their turns (`step_id`), or delimiter steps when any are given."""
    if not delimiters:
        return trajectories.step_id
    decode = lambda ids: tokenizer.decode(ids, skip_special_tokens=False)
    return delimiter_step_ids(trajectories.tokens, trajectories.loss_mask, decode, delimiters)


def pairwise_prm_accuracy(sequence_rewards_: np.ndarray, labels: np.ndarray, k: int) -> float:
    """PRIME's `dpo_acc` averaged over groups of `k` consecutive rows with mixed labels."""
    acc = np.asarray(pairwise_accuracy(jnp.asarray(sequence_rewards_).reshape(-1, k),
                                       jnp.asarray(labels).reshape(-1, k)))  # fmt: skip
    labels = np.asarray(labels).reshape(-1, k)
    mixed = labels.min(1) != labels.max(1)
    return float(acc[mixed].mean()) if mixed.any() else 0.5
