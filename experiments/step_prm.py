r"""A step-level PRM trained on Math-Shepherd labels of chain arithmetic, and how well it verifies.

    python -m experiments.collect --config=configs/math_shepherd.py:policy=expert,problems=400 \
        --out=/tmp/ms400
    python -m experiments.step_prm --config=configs/step_prm.py --labels=/tmp/ms400/steps.jsonl \
        --workdir=/tmp/step_prm

From the rows of `experiments/collect.py`'s `steps.jsonl` it fits one scalar-head model per label
kind (`config.label_kinds`), each a `prm.models.ScalarHeadModel` on a copy of the chain SFT warm
start's trunk, on the score at a prefix's last token (`prm.search.self_train.fit_value`; MSE, or
balanced cross-entropy with the value read as σ(score), `config.train.objective`):

    hard     y_t = 1[MC(x_{1:t}) > 0]         Math-Shepherd's hard estimation (Eq. 3)
    soft     y_t = MC(x_{1:t})                its soft estimation (Eq. 4)
    true     y_t = the task's step correctness (an oracle PRM: what perfect labels give)
    outcome  one sample per solution, the full solution → its outcome (an ORM)

On held-out (test split) problems the chain SFT policy samples N solutions each; every model
scores every step prefix. Reported: step classification (score ≥ 0.5) against the task's true
step correctness, on all steps and on truly correct / wrong ones; and best-of-n accuracy for
n = 1, 2, 4, … N (`prm.evaluation.best_of_n.selection_accuracy`): the highest `min` over step
scores (Math-Shepherd's aggregation) or `last` step score, against majority vote, a random
candidate and the oracle (pass@n). Writes `results.json` and `best_of_n.md` to the workdir.
"""

from __future__ import annotations

import json
import pathlib
import time
from collections.abc import Sequence

import jax
import ml_collections
import numpy as np
from absl import app, flags
from flax import nnx
from ml_collections import config_flags

from experiments.collect import label_accuracy
from prm.envs import chain_arithmetic as chain
from prm.evaluation.best_of_n import (
    answer_ids,
    candidate_scores,
    format_table,
    powers_of_two_up_to,
    selection_accuracy,
)
from prm.models import ScalarHeadModel
from prm.rollouts import RolloutConfig
from prm.rollouts.step_labels import Completer, Solution, sample_solutions
from prm.sampling import Sampler, SamplingParams
from prm.search import ScalarValueFn
from prm.search.self_train import fit_value
from prm.training.loop import load_warm_start

LABEL_KINDS = ("hard", "soft", "true", "outcome")


def prefix_texts(prompt: str, steps: Sequence[str]) -> list[str]:
    """The texts a PRM scores: prompt + x_{1:t} for t = 1..M."""
    return [prompt + "".join(steps[:t]) for t in range(1, len(steps) + 1)]


def prefix_samples(rows: Sequence[dict], kind: str) -> list[tuple[str, float]]:
    """(text, target) regression samples of collect.py rows for one label kind (module
    docstring); steps whose label is null (no estimate) are left out."""
    if kind not in LABEL_KINDS:
        raise ValueError(f"Unknown label kind {kind!r}; use one of {LABEL_KINDS}.")
    samples = []
    for row in rows:
        texts = prefix_texts(row["prompt"], row["steps"])
        if kind == "outcome":
            samples.append((texts[-1], float(row["outcome"])))
            continue
        targets = row[{"hard": "hard_labels", "soft": "soft_labels", "true": "true_labels"}[kind]]
        if len(targets) != len(texts):
            raise ValueError(
                f"A row has {len(texts)} steps but {len(targets)} {kind} labels; is it a "
                "steps.jsonl row of experiments/collect.py?"
            )
        samples += [(t, float(y)) for t, y in zip(texts, targets) if y is not None]
    return samples


def step_scores(
    value_fn: ScalarValueFn, tokenizer, solutions: Sequence[Solution], chunk: int = 512
) -> tuple[np.ndarray, np.ndarray]:
    """(scores, mask), float32 / bool [len(solutions), max M]: the value at every step prefix."""
    texts = [t for s in solutions for t in prefix_texts(s.task.prompt, s.steps)]
    contexts = [tokenizer.encode(t, add_special_tokens=False) for t in texts]
    flat = np.concatenate(
        [value_fn(contexts[i : i + chunk]) for i in range(0, len(contexts), chunk)]
    )
    width = max(len(s.steps) for s in solutions)
    scores = np.zeros((len(solutions), width), np.float32)
    mask = np.zeros((len(solutions), width), bool)
    start = 0
    for i, s in enumerate(solutions):
        scores[i, : len(s.steps)] = flat[start : start + len(s.steps)]
        mask[i, : len(s.steps)] = True
        start += len(s.steps)
    return scores, mask


def fit_verifier(policy, tokenizer, rows, kind: str, config) -> tuple[ScalarHeadModel, float]:
    """A scalar head on a copy of the policy's trunk, fitted to `kind` samples; (model, the
    mean training loss over the last 10% of steps)."""
    samples = [
        (tokenizer.encode(text, add_special_tokens=False), y)
        for text, y in prefix_samples(rows, kind)
    ]
    model = ScalarHeadModel(nnx.clone(policy), rngs=nnx.Rngs(config.seed))
    t = config.train
    losses = fit_value(
        model, samples, steps=t.steps, batch_size=t.batch_size, learning_rate=t.lr,
        pad_id=config.warm_start.model.pad_token_id, seed=config.seed, objective=t.objective,
        balanced=t.balanced,
    )  # fmt: skip
    return model, float(np.mean(losses[-max(len(losses) // 10, 1) :]))


def run(config: ml_collections.ConfigDict, labels: str, workdir: str | None) -> dict:
    start = time.time()
    rows = [json.loads(line) for line in pathlib.Path(labels).read_text().splitlines() if line]
    policy, tokenizer = load_warm_start(config.warm_start)
    e = config.eval
    problems = chain.generate_problems(
        e.problems, seed=config.seed, split="test",
        config=chain.ChainConfig(e.min_ops, e.max_ops, e.operators),
    )  # fmt: skip
    rollout = RolloutConfig(
        max_step_tokens=e.max_step_tokens,
        max_length=e.max_length,
        sampling=SamplingParams(temperature=e.temperature),
    )
    completer = Completer(
        Sampler(policy), chain.ChainArithmeticEnv(), tokenizer, rollout, jax.random.key(config.seed)
    )
    solutions = sample_solutions(completer, problems, e.n)  # problem-major
    truth = np.concatenate([chain.step_correctness(s.task, s.steps) for s in solutions])
    em = np.asarray([s.outcome for s in solutions]).reshape(-1, e.n)
    answers = [chain.final_answer("".join(s.steps)) for s in solutions]
    ids = answer_ids([None if a is None else str(a) for a in answers], e.n)
    results = {
        "label_rows": len(rows),
        "test_problems": len(problems),
        "candidates_per_problem": e.n,
        "candidate_accuracy": float(em.mean()),
        "candidate_steps": int(truth.size),
        "candidate_truly_wrong_steps": int((~truth).sum()),
        "models": {},
    }
    scores = {}
    for kind in config.label_kinds:
        model, train_loss = fit_verifier(policy, tokenizer, rows, kind, config)
        value_fn = ScalarValueFn(
            model,
            pad_id=config.warm_start.model.pad_token_id,
            sigmoid=config.train.objective == "cross_entropy",
        )
        values, mask = step_scores(value_fn, tokenizer, solutions)
        aggregated = candidate_scores(values, mask)
        for name in ("min", "last"):
            scores[f"{kind}_{name}"] = aggregated[name].reshape(-1, e.n)
        results["models"][kind] = {
            f"train_{config.train.objective}_last_10pct": train_loss,
            "step_classification": label_accuracy(values[mask] >= 0.5, truth),
        }
        print(kind, json.dumps(results["models"][kind]), flush=True)
    table = selection_accuracy(em, ids, scores, powers_of_two_up_to(e.n))
    results["best_of_n"] = table
    results["wall_s"] = time.time() - start
    print(format_table(table))
    print(json.dumps({k: v for k, v in results.items() if k != "best_of_n"}, indent=1))
    if workdir:
        path = pathlib.Path(workdir)
        path.mkdir(parents=True, exist_ok=True)
        (path / "results.json").write_text(
            json.dumps({"config": config.to_dict(), "labels": labels, **results}, indent=1)
        )
        (path / "best_of_n.md").write_text(format_table(table) + "\n")
    return results


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    run(_CONFIG.value, _LABELS.value, _WORKDIR.value)


if __name__ == "__main__":
    # Flags are defined only when run as a program, so tests can import several experiments.
    _CONFIG = config_flags.DEFINE_config_file("config", "configs/step_prm.py", "Experiment config.")
    _LABELS = flags.DEFINE_string("labels", None, "steps.jsonl of experiments/collect.py.")
    _WORKDIR = flags.DEFINE_string("workdir", None, "Where results.json goes.")
    flags.mark_flags_as_required(["labels"])
    app.run(main)
