r"""Best-of-N on the synthetic world: an implicit PRM against a Math-Shepherd PRM, equal compute.

    python -m experiments.best_of_n_compare --out=docs/results/best-of-n-2026-12-02

Both PRMs start from the SFT warm start of `configs/implicit_prm.py` (its frozen "reference",
which also generates every sample) and train the same number of optimizer steps on batches of
the same number of rows with the same optimiser; they differ only in their labels:

  implicit PRM   (Implicit PRM, arXiv 2412.01981, §3-4) `--train_questions` × `--k` episodes,
                 each labelled by its exact match; the PRM π_φ (a copy of the SFT model) is
                 trained with CE on r(y) = β·log π_φ(y)/π_ref(y) (`implicit_prm_loss`); a step's
                 reward is the sum of β·log π_φ/π_ref over its tokens.
  Math-Shepherd  (Wang et al. 2023, Eq. 3) `--ms_solutions` episodes of each of
                 `--ms_questions` other questions, and `--ms_completions` completions after every
                 step prefix of each (`prm.rollouts.step_labels.math_shepherd`): a step's hard
                 label is 1 if any completion reaches the gold answer (the last step's is the
                 episode's own EM). The PRM is the SFT trunk with a zero-initialised scalar head
                 (`ScalarHeadModel`), trained with binary CE of its logit at each step's last
                 token against the step's label.

A step is a turn of the policy (a search or the answer): the world's turns have exact token
positions and the env verifies only the final answer, so MC completions (which need only an
outcome check) label them, and no step text heuristic is needed. Policy compute is counted in
sampled episodes and sampled tokens; the defaults put both label sets at about the same number
of sampled tokens (4,133 and 4,131 in docs/RESULTS.md's run; the script prints both).

Evaluation: the SFT model samples `--n` episodes for each of `--test_questions` held-out
questions; both PRMs score the same candidates and `prm.evaluation.best_of_n` tabulates EM of the
pick among the first n (n = 1, 2, 4, …): the implicit PRM's min/sum/last (and cumulative)
scores with their weighted votes, the Math-Shepherd PRM's min/last step logits (`ms_min`,
`ms_last`) with theirs, and the outcome-free baselines (random, majority vote, pass@n). The
implicit PRM's `sum` (= q^S = r(y)) is its outcome-reward (ORM) reading. Outputs in `--out`:
`table.md`, `summary.json` (costs, label statistics, training losses, held-out PRM metrics).
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging
from flax import nnx

from prm.evaluation.best_of_n import (
    answer_ids,
    format_table,
    implicit_scores,
    powers_of_two_up_to,
    sample_candidates,
    selection_accuracy,
)
from prm.models import ScalarHeadModel
from prm.rewards.implicit import ce_loss, response_scores, step_rewards
from prm.rewards.spa import step_end_mask
from prm.rollouts import TrajectoryBatch
from prm.rollouts.step_labels import Completer, Solution, math_shepherd
from prm.sampling import Sampler
from prm.trainers.implicit_prm import implicit_prm_loss, pairwise_prm_accuracy, sequence_logprobs
from prm.training.optim import make_optimizer


def step_end_logits(
    scores: jax.Array, step_id: jax.Array, num_steps: int
) -> tuple[jax.Array, jax.Array]:
    """(logit of each step, step present), `[B, S]`: a per-token score `[B, T]` read at the last
    token of each step (steps by `step_id`, −1 = no step; a step's tokens are contiguous, as a
    turn's are)."""
    return step_rewards(jnp.where(step_end_mask(step_id), scores, 0.0), step_id, num_steps)


def math_shepherd_loss(
    model: ScalarHeadModel, batch: Mapping[str, jax.Array]
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Binary CE of each step's end-token logit against its hard label (Math-Shepherd §3.3),
    the mean over labelled steps (`label_mask`)."""
    num_steps = batch["step_labels"].shape[-1]
    scores = model(batch["tokens"], batch["input_mask"])
    logits, _ = step_end_logits(scores, batch["step_id"], num_steps)
    loss = ce_loss(
        logits.reshape(-1), batch["step_labels"].reshape(-1), batch["label_mask"].reshape(-1) > 0
    )
    return loss, {"ms/ce_loss": loss}


def step_label_rows(
    trajectories: TrajectoryBatch, hard_labels: Sequence[np.ndarray]
) -> dict[str, np.ndarray]:
    """Training rows of the Math-Shepherd PRM: tokens, step ids and per-step labels `[B, S]`.

    `hard_labels[b]` labels row b's turns in order; it must have one entry per turn.
    """
    num_steps = max(int(trajectories.num_turns.max()), 1)
    labels = np.zeros((len(hard_labels), num_steps), np.float32)
    label_mask = np.zeros_like(labels)
    for b, row in enumerate(hard_labels):
        if len(row) != trajectories.num_turns[b]:
            raise ValueError(f"Row {b} has {trajectories.num_turns[b]} turns, {len(row)} labels.")
        labels[b, : len(row)], label_mask[b, : len(row)] = row, 1.0
    return {
        "tokens": trajectories.tokens,
        "input_mask": trajectories.input_mask,
        "step_id": trajectories.step_id,
        "step_labels": labels,
        "label_mask": label_mask,
    }


def train(
    model: nnx.Module,
    loss_fn: Callable[[nnx.Module, Mapping[str, jax.Array]], tuple[jax.Array, Any]],
    rows: Mapping[str, np.ndarray],
    *,
    optim: Any,
    steps: int,
    batch_size: int,
    seed: int,
) -> list[float]:
    """`steps` optimizer steps of `loss_fn` on batches of `batch_size` rows drawn without
    replacement (a fresh permutation each epoch); returns the loss of every step."""
    tx, _ = make_optimizer(optim, steps)
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

    @nnx.jit
    def update(model, optimizer, batch):
        (loss, _), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model, batch)
        optimizer.update(model, grads)
        return loss

    num_rows = len(next(iter(rows.values())))
    if batch_size > num_rows:
        raise ValueError(f"--batch={batch_size} exceeds the {num_rows} training rows.")
    rng, order, losses = np.random.default_rng(seed), np.zeros(0, int), []
    for _ in range(steps):
        if len(order) < batch_size:
            order = rng.permutation(num_rows)
        picked, order = order[:batch_size], order[batch_size:]
        losses.append(
            float(update(model, optimizer, {k: jnp.asarray(v[picked]) for k, v in rows.items()}))
        )
    return losses


def sampled_tokens(trajectories: TrajectoryBatch) -> int:
    return int(trajectories.loss_mask.sum())


def ms_scores(model: ScalarHeadModel, trajectories: TrajectoryBatch) -> dict[str, np.ndarray]:
    """The Math-Shepherd PRM's response scores `[B]`: min and last of its step logits."""
    num_steps = max(int(trajectories.num_turns.max()), 1)
    scores = nnx.jit(lambda m, t, i: m(t, i))(
        model, jnp.asarray(trajectories.tokens), jnp.asarray(trajectories.input_mask)
    )
    logits, present = step_end_logits(scores, jnp.asarray(trajectories.step_id), num_steps)
    return {f"ms_{a}": np.asarray(response_scores(logits, present, a)) for a in ("min", "last")}


_FLAGS = {}


def run(config: Any, flag: Mapping[str, Any], out: str) -> dict[str, Any]:
    """Samples, labels, trains both PRMs and tabulates best-of-N; returns the summary."""
    from prm.training.loop import build_run  # noqa: PLC0415

    started = time.perf_counter()
    os.makedirs(out, exist_ok=True)
    built = build_run(config, tempfile.mkdtemp(prefix="best_of_n_compare_"))
    trainer, sft = built.trainer, built.models()["reference"]
    tokenizer, world = trainer.assets.tokenizer, trainer.assets.world
    beta, seed = config.prm.beta, flag["seed"]
    train_split = world.split(config.data.train_split)
    wanted = flag["train_questions"] + flag["ms_questions"]
    if wanted > len(train_split):
        raise ValueError(f"{wanted} train questions asked for; the split has {len(train_split)}.")
    implicit_questions = train_split[: flag["train_questions"]]
    ms_questions = train_split[flag["train_questions"] : wanted]
    optim = copy.deepcopy(config.optim)
    optim.lr = flag["lr"]
    summary: dict[str, Any] = {"flags": dict(flag), "optim": optim.to_dict()}
    timings = {}

    with jax.set_mesh(built.mesh):
        # Implicit PRM: K episodes per question, labelled by EM.
        clock = time.perf_counter()
        episodes = sample_candidates(trainer, sft, implicit_questions, flag["k"], seed)
        labels = episodes.em.astype(np.float32)
        ref_logprobs, _ = sequence_logprobs(sft, episodes.tokens, episodes.input_mask)
        implicit_rows = {
            "tokens": episodes.tokens, "input_mask": episodes.input_mask,
            "loss_mask": episodes.loss_mask, "labels": labels,
            "ref_logprobs": np.asarray(ref_logprobs),
        }  # fmt: skip
        summary["implicit_labels"] = {
            "episodes": len(labels), "sampled_tokens": sampled_tokens(episodes),
            "label_mean": float(labels.mean()),
        }  # fmt: skip
        timings["implicit_sampling_s"] = time.perf_counter() - clock

        # Math-Shepherd: episodes, then completions after every proper step prefix.
        clock = time.perf_counter()
        solutions_batch = sample_candidates(
            trainer, sft, ms_questions, flag["ms_solutions"], seed + 1
        )
        tasks = trainer.tasks(list(ms_questions))
        solutions = [
            Solution(tasks[b // flag["ms_solutions"]], tuple(s.step_text for s in steps), em)
            for b, (steps, em) in enumerate(zip(solutions_batch.steps, solutions_batch.em))
        ]
        completer = Completer(
            Sampler(sft, pad_token_id=tokenizer.pad_token_id), trainer.make_env(), tokenizer,
            trainer.rollout_config, jax.random.key(seed + 2),
        )  # fmt: skip
        completions = math_shepherd(completer, solutions, flag["ms_completions"])
        hard = [rows.any(axis=1).astype(np.float32) for rows in completions]
        ms_rows = step_label_rows(solutions_batch, hard)
        inner = np.concatenate([h[:-1] for h in hard]) if hard else np.zeros(0)
        summary["math_shepherd_labels"] = {
            "episodes": len(solutions),
            "episode_sampled_tokens": sampled_tokens(solutions_batch),
            "completion_cost": dict(vars(completer.cost)),
            "sampled_tokens": sampled_tokens(solutions_batch) + completer.cost.tokens,
            "episode_em_mean": float(solutions_batch.em.mean()),
            "labelled_steps": int(sum(len(h) for h in hard)),
            "inner_step_label_mean": float(inner.mean()) if inner.size else float("nan"),
        }
        timings["math_shepherd_sampling_s"] = time.perf_counter() - clock

        # Training: same steps, rows per batch and optimiser.
        clock = time.perf_counter()
        implicit_prm = nnx.clone(sft)
        implicit_loss = lambda m, b: implicit_prm_loss(m, b, "ce", beta)
        train_args = dict(optim=optim, steps=flag["steps"], batch_size=flag["batch"], seed=seed)
        implicit_losses = train(implicit_prm, implicit_loss, implicit_rows, **train_args)
        timings["implicit_training_s"] = time.perf_counter() - clock
        clock = time.perf_counter()
        ms_prm = ScalarHeadModel(nnx.clone(sft), rngs=nnx.Rngs(seed))
        ms_losses = train(ms_prm, math_shepherd_loss, ms_rows, **train_args)
        timings["math_shepherd_training_s"] = time.perf_counter() - clock
        summary["training"] = {
            "steps": flag["steps"], "rows_per_step": flag["batch"],
            "implicit_ce_first_last": [implicit_losses[0], implicit_losses[-1]],
            "math_shepherd_ce_first_last": [ms_losses[0], ms_losses[-1]],
            "implicit_ce": implicit_losses, "math_shepherd_ce": ms_losses,
        }  # fmt: skip

        # Best-of-N on held-out questions: one candidate set, both PRMs score it.
        clock = time.perf_counter()
        test = world.split(flag["split"])[: flag["test_questions"]]
        n = flag["n"]
        candidates = sample_candidates(trainer, sft, test, n, seed + 3)
        scores, totals = implicit_scores(
            implicit_prm, sft, tokenizer, candidates, beta=beta, delimiters=()
        )
        scores.update(ms_scores(ms_prm, candidates))
        em = candidates.em.reshape(-1, n)
        table = selection_accuracy(
            em, answer_ids(candidates.answers, n),
            {name: value.reshape(-1, n) for name, value in scores.items()},
            powers_of_two_up_to(n),
        )  # fmt: skip
        timings["evaluation_s"] = time.perf_counter() - clock
    summary["heldout"] = {
        "questions": len(test), "candidates": int(em.size), "em_mean": float(em.mean()),
        "implicit_ce": float(ce_loss(jnp.asarray(totals), jnp.asarray(candidates.em))),
        "implicit_pairwise_accuracy": pairwise_prm_accuracy(totals, candidates.em, n),
        "math_shepherd_last_pairwise_accuracy": pairwise_prm_accuracy(
            scores["ms_last"], candidates.em, n
        ),
    }  # fmt: skip
    summary["timings_s"] = {**timings, "total": time.perf_counter() - started}
    markdown = format_table(table)
    with open(os.path.join(out, "table.md"), "w") as f:
        f.write(markdown + "\n")
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump({**summary, "table": table}, f, indent=2)
    print(markdown)
    brief = {k: v for k, v in summary.items() if k != "training"}
    brief["training"] = {k: v for k, v in summary["training"].items() if "first_last" in k}
    print(json.dumps(brief, indent=2))
    return summary


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    from configs.implicit_prm import get_config  # noqa: PLC0415

    values = {name: getattr(flags.FLAGS, name) for name in _FLAGS}
    run(get_config(), values, flags.FLAGS.out)


if __name__ == "__main__":
    # Flags are defined only when run as a program, so tests can import several experiments.
    flags.DEFINE_string("out", None, "Output directory (table.md, summary.json).")
    for name, default, help_ in (
        ("train_questions", 32, "Implicit PRM: train questions."),
        ("k", 8, "Implicit PRM: episodes per question."),
        ("ms_questions", 30, "Math-Shepherd: train questions (disjoint from the implicit's)."),
        ("ms_solutions", 2, "Math-Shepherd: labelled episodes per question."),
        ("ms_completions", 4, "Math-Shepherd: completions per step prefix."),
        ("steps", 30, "Optimizer steps of each PRM."),
        ("batch", 32, "Rows per optimizer step."),
        ("test_questions", 64, "Held-out questions."),
        ("n", 16, "Candidates per held-out question."),
        ("seed", 0, "Sampling and batching seed."),
    ):
        _FLAGS[name] = flags.DEFINE_integer(name, default, help_)
    _FLAGS["lr"] = flags.DEFINE_float("lr", 1e-4, "Learning rate of both PRMs (constant).")
    _FLAGS["split"] = flags.DEFINE_string("split", "test", "Held-out world split.")
    flags.mark_flag_as_required("out")
    app.run(main)
