"""MCTS* on a tiny random policy over a deterministic env: cache reuse equals re-prefill, trees
do not depend on their batch, the whole tree matches a stored golden tree (mctx style)."""

import json
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from prm.models import ScalarHeadModel, Transformer, token_logprobs
from prm.sampling import Sampler, SamplingParams
from prm.search import EngineConfig, MCTSConfig, ScalarValueFn, TreeEngine, mcts_star
from tests.helpers.search_env import ByteTokenizer, ParityEnv, good_step
from tests.helpers.tiny_models import tiny_config

CONFIG = tiny_config("qwen2")
TASKS = [2, 3]
ENGINE = EngineConfig(max_step_tokens=4, max_length=48, sampling=SamplingParams(temperature=1.0))
SEARCH = MCTSConfig(iterations=4, branch=2, roll_forward_steps=2, roll_branch=2, full=True)
GOLDEN = pathlib.Path(__file__).parent / "golden" / "mcts_tiny_qwen2.json"


def fake_value(contexts):
    """A deterministic stand-in for V_θ: a hash of the context in [0, 1]."""
    return np.array([(sum(c) * 7 + len(c)) % 101 / 100 for c in contexts])


@pytest.fixture(scope="module")
def model():
    return Transformer(CONFIG, rngs=nnx.Rngs(0))


def search(model, tasks, reuse_cache=True, key=3):
    engine = TreeEngine(
        Sampler(model, eos_token_ids=()),
        ParityEnv(),
        ByteTokenizer(),
        fake_value,
        EngineConfig(**{**ENGINE.__dict__, "reuse_cache": reuse_cache}),
        key=jax.random.key(key),
    )
    trees = engine.new_trees(tasks)
    mcts_star(trees, engine, SEARCH)
    return trees, engine


@pytest.fixture(scope="module")
def searched(model):
    return search(model, TASKS)


def assert_same_tree(a, b):
    da, db = a.to_dict(), b.to_dict()
    for na, nb in zip(da["nodes"], db["nodes"], strict=True):
        for field in ("value", "prior", "reward"):
            assert na.pop(field) == pytest.approx(nb.pop(field), abs=1e-5)
        assert na == nb
    assert da["prompt_tokens"] == db["prompt_tokens"] and da["solution"] == db["solution"]


def test_cache_reuse_grows_the_same_trees_as_reprefill(model, searched):
    trees, engine = searched
    prefill_trees, prefill_engine = search(model, TASKS, reuse_cache=False)
    for a, b in zip(trees, prefill_trees, strict=True):
        assert_same_tree(a, b)
        for na, nb in zip(a.nodes, b.nodes):
            np.testing.assert_allclose(na.step_logprobs, nb.step_logprobs, atol=1e-5)
    # Reuse prefills only the prompts; re-prefill also every expanded or rolled-out context.
    assert engine.stats["prefilled_tokens"] == sum(len(t.prompt_tokens) for t in trees)
    assert prefill_engine.stats["prefilled_tokens"] > 3 * engine.stats["prefilled_tokens"]
    assert engine.stats["tokens"] == prefill_engine.stats["tokens"]


def test_step_logprobs_equal_a_forward_over_each_path(model, searched):
    trees, _ = searched
    nodes = [(tree, i) for tree in trees for i in range(1, len(tree.nodes))]
    contexts = [tree.context(i) for tree, i in nodes]
    width = max(map(len, contexts))
    ids = np.zeros((len(contexts), width), np.int32)
    for b, context in enumerate(contexts):
        ids[b, : len(context)] = context
    real = np.arange(width) < np.array([len(c) for c in contexts])[:, None]
    # One uncached forward over every path; position t is log π(context[t] | context[:t]).
    scored = np.asarray(token_logprobs(model, jnp.asarray(ids), jnp.asarray(real)).logprobs)
    for b, (tree, i) in enumerate(nodes):
        node = tree.nodes[i]
        start = len(contexts[b]) - len(node.observation_tokens) - len(node.step_tokens)
        got = scored[b, start : start + len(node.step_tokens)]
        np.testing.assert_allclose(node.step_logprobs, got, atol=1e-5)


def test_trees_do_not_depend_on_their_batch(model, searched):
    trees, _ = searched
    # Keys follow the tree index, so prefill both roots and search tree 1 alone.
    engine = TreeEngine(
        Sampler(model, eos_token_ids=()),
        ParityEnv(),
        ByteTokenizer(),
        fake_value,
        ENGINE,
        key=jax.random.key(3),
    )
    solo = engine.new_trees(TASKS)[1:]
    mcts_star(solo, engine, SEARCH)
    assert_same_tree(solo[0], trees[1])


def test_env_results_follow_the_paths(searched):
    trees, _ = searched
    for tree in trees:
        for i, node in enumerate(tree.nodes[1:], start=1):
            texts = tree.step_texts(i)
            assert node.done == (len(texts) == tree.task or node.truncated)
            if node.done and not node.truncated:
                assert node.reward == float(all(map(good_step, texts)))
            assert node.observation_tokens == (() if node.done else tuple(b"|"))
            assert (node.row is None) and node.visits >= 0
        assert all(tree.nodes[c].depth == n.depth + 1 for n in tree.nodes for c in n.children)


def test_whole_tree_matches_golden(searched):
    trees, _ = searched
    got = [tree.to_dict(digits=5) for tree in trees]
    if os.environ.get("PRM_UPDATE_GOLDEN"):
        GOLDEN.write_text(json.dumps(got, indent=1))
    want = json.loads(GOLDEN.read_text())
    assert len(got) == len(want)
    for g, w in zip(got, want):
        for ng, nw in zip(g["nodes"], w["nodes"], strict=True):
            for field in ("value", "prior", "reward"):
                assert ng.pop(field) == pytest.approx(nw.pop(field), abs=1e-4)
            assert ng == nw
        assert g["prompt_tokens"] == w["prompt_tokens"]


def test_scalar_value_fn_reads_the_last_token(model):
    value_model = ScalarHeadModel(Transformer(CONFIG, rngs=nnx.Rngs(1)), rngs=nnx.Rngs(2))
    value_model.head.kernel[...] = jax.random.normal(jax.random.key(0), (CONFIG.hidden_size, 1))
    contexts = [[5, 6, 7], list(range(10, 40)), [9]]
    got = ScalarValueFn(value_model, pad_id=256)(contexts)
    for context, value in zip(contexts, got):
        want = value_model(jnp.asarray([context]))[0, -1]
        assert value == pytest.approx(float(want), abs=1e-4)


def test_bad_engine_inputs_raise(model):
    sampler = Sampler(model, eos_token_ids=())
    with pytest.raises(ValueError, match="max_position_embeddings"):
        TreeEngine(sampler, ParityEnv(), ByteTokenizer(), fake_value, EngineConfig(max_length=600))
    with pytest.raises(ValueError, match="PRNG key"):
        TreeEngine(sampler, ParityEnv(), ByteTokenizer(), fake_value, ENGINE)
    engine = TreeEngine(
        sampler, ParityEnv(), ByteTokenizer(), lambda c: np.zeros(1), ENGINE, key=jax.random.key(0)
    )
    trees = engine.new_trees(TASKS)
    with pytest.raises(ValueError, match="one number per context"):
        mcts_star(trees, engine, SEARCH)
