"""Chain arithmetic demonstrations: rows, masks, determinism, resume, registration."""

import numpy as np
import pytest

from prm.data import make_data_source
from prm.data.chain import ChainDemonstrationSource, tokenize_solutions
from prm.envs import chain_arithmetic as chain


def test_rows_are_prompt_then_solution_with_masks():
    source = ChainDemonstrationSource(batch_size=8, seq_len=100, error_rate=0.0, seed=3)
    batch = next(source)
    tokenizer = source.tokenizer
    for tokens, loss_mask, input_mask in zip(
        batch["tokens"], batch["loss_mask"], batch["input_mask"]
    ):
        text = tokenizer.decode(tokens[input_mask])
        prompt, _, solution = text.partition("\n")
        problem_line = prompt + "\n"
        # With error_rate 0 the solution is the gold one, and only it is trained.
        start, ops = problem_line.split(" | ")
        problem = chain.ChainProblem(int(start), tuple((op[2], int(op[3])) for op in ops.split()))
        assert problem.prompt == problem_line and solution == "".join(problem.gold_steps())
        assert tokenizer.decode(tokens[loss_mask > 0]) == solution
        assert not loss_mask[~input_mask].any() and (tokens[~input_mask] == 0).all()


def test_batches_are_a_pure_function_of_seed_split_and_index():
    a = ChainDemonstrationSource(batch_size=4, seed=1)
    first, second = next(a), next(a)
    b = ChainDemonstrationSource(batch_size=4, seed=1)
    b.restore(a.state() | {"index": 1})
    np.testing.assert_array_equal(next(b)["tokens"], second["tokens"])
    assert not np.array_equal(first["tokens"], second["tokens"])
    evaluation = next(ChainDemonstrationSource(batch_size=4, seed=1, split="eval"))
    assert not np.array_equal(evaluation["tokens"], first["tokens"])


def test_registered_and_host_sliced():
    source = make_data_source({"name": "chain_demos", "batch_size": 6, "seq_len": 100})
    assert next(source)["tokens"].shape == (6, 100)
    half = ChainDemonstrationSource(batch_size=6, seed=0, process_index=1, process_count=2)
    full = ChainDemonstrationSource(batch_size=6, seed=0)
    np.testing.assert_array_equal(next(half)["tokens"], next(full)["tokens"][3:])


def test_bad_arguments():
    with pytest.raises(ValueError, match="split"):
        ChainDemonstrationSource(batch_size=2, split="test")
    with pytest.raises(ValueError, match="error_rate"):
        ChainDemonstrationSource(batch_size=2, error_rate=2.0)
    tokenizer = chain.build_chain_tokenizer()
    with pytest.raises(ValueError, match="seq_len"):
        tokenize_solutions(tokenizer, ["1 | 1:+1\n"], ["1: 1+1=2\nAnswer: 2\n"], seq_len=10)
