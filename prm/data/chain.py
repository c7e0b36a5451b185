"""Noisy-expert demonstrations of chain arithmetic mod 10 (`prm.envs.chain_arithmetic`), for SFT.

Each row is one problem's prompt followed by a noisy expert's solution
(`noisy_expert_steps`: each operation's result is wrong with probability `error_rate`, later
lines compute from the wrong value). The prompt is context (`loss_mask` 0), every solution token
a target (1), so the policy learns the format, the arithmetic, and to make mistakes at about the
expert's rate: a warm start whose completions give Monte Carlo step labels strictly between 0
and 1. Rows are right-padded to `seq_len` (`input_mask` marks real tokens).

Batch `index` of a split is a pure function of (seed, split, index), so the position is one
integer and resume is exact. "train" draws train-split problems, "eval" dev-split ones.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from prm.data.source import host_rows
from prm.envs import chain_arithmetic as chain
from prm.registry import DATASETS

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

_SPLITS = {"train": "train", "eval": "dev"}


def tokenize_solutions(
    tokenizer: PreTrainedTokenizerFast,
    prompts: list[str],
    solutions: list[str],
    seq_len: int,
) -> dict[str, np.ndarray]:
    """`{"tokens", "input_mask", "loss_mask"}` `[N, seq_len]`: prompt (mask 0) then solution
    (mask 1) per row, right-padded with the tokenizer's pad id.

    Raises:
      ValueError: if a row does not fit `seq_len`.
    """
    encoded = tokenizer([*prompts, *solutions], add_special_tokens=False)["input_ids"]
    prompt_ids, solution_ids = encoded[: len(prompts)], encoded[len(prompts) :]
    tokens = np.full((len(prompts), seq_len), tokenizer.pad_token_id, np.int32)
    loss_mask = np.zeros((len(prompts), seq_len), np.float32)
    input_mask = np.zeros((len(prompts), seq_len), bool)
    for b, (p, s) in enumerate(zip(prompt_ids, solution_ids)):
        if len(p) + len(s) > seq_len:
            raise ValueError(
                f"A demonstration has {len(p) + len(s)} tokens, more than seq_len={seq_len}; "
                "raise seq_len or lower max_ops."
            )
        tokens[b, : len(p) + len(s)] = p + s
        loss_mask[b, len(p) : len(p) + len(s)] = 1.0
        input_mask[b, : len(p) + len(s)] = True
    return {"tokens": tokens, "input_mask": input_mask, "loss_mask": loss_mask}


@DATASETS.register("chain_demos")
class ChainDemonstrationSource:
    """Batches `{"tokens", "input_mask", "loss_mask"}` of shape `[B_local, seq_len]`.

    Args:
      batch_size: global batch size (rows over all hosts).
      seq_len: row length; every demonstration must fit (9 operations need ~140 tokens).
      min_ops, max_ops, operators: the problem distribution (`ChainConfig`).
      error_rate: probability that the expert writes a wrong result at each operation.
    """

    def __init__(
        self,
        batch_size: int,
        seq_len: int = 128,
        min_ops: int = 2,
        max_ops: int = 6,
        operators: str = chain.OPERATORS,
        error_rate: float = 0.1,
        seed: int = 0,
        split: str = "train",
        process_index: int = 0,
        process_count: int = 1,
    ):
        if split not in _SPLITS:
            raise ValueError(f"Unknown split {split!r}; valid splits are {sorted(_SPLITS)}.")
        if not 0.0 <= error_rate <= 1.0:
            raise ValueError(f"error_rate must lie in [0, 1], got {error_rate}.")
        self.batch_size = batch_size
        self.seq_len = seq_len
        self.problem_config = chain.ChainConfig(min_ops, max_ops, operators)
        self.error_rate = error_rate
        self.seed = seed
        self.split = split
        self.rows = host_rows(batch_size, process_index, process_count)
        self.tokenizer = chain.build_chain_tokenizer()  # saved with the HF export
        self.index = 0

    def __iter__(self) -> ChainDemonstrationSource:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        rng = np.random.default_rng([self.seed, list(_SPLITS).index(self.split), self.index])
        self.index += 1
        problems = [
            chain.sample_problem(rng, _SPLITS[self.split], self.problem_config)
            for _ in range(self.batch_size)
        ]
        solutions = ["".join(chain.noisy_expert_steps(p, rng, self.error_rate)) for p in problems]
        batch = tokenize_solutions(
            self.tokenizer, [p.prompt for p in problems], solutions, self.seq_len
        )
        return {name: array[self.rows] for name, array in batch.items()}

    def state(self) -> dict[str, Any]:
        return {"index": self.index}

    def restore(self, state: Mapping[str, Any]) -> None:
        self.index = int(state["index"])
