"""MCTS* with KV-cache reuse along tree paths vs re-prefilling every expanded path.

    nice -n 10 python -m experiments.bench_tree_search --iterations=4,8,16 --rounds=2

Both sides grow the same trees (checked: identical step tokens in every node) with
`TreeEngine`: with reuse, an expansion gathers its parents' cache rows and decodes; without,
it prefills each parent's whole context first (`EngineConfig.reuse_cache=False`). The task is
a fixed-depth env in this file (every step accepted, a forced observation after each, the
episode ends after `--depth` steps) over a random Qwen3-shaped policy, so the prompt and the
observations make the paths long, as retrieved documents do; the value function is a cheap
hash, so the timing is the policy's device work. Per tree size: wall time of each side (best
of `--rounds` interleaved runs, with the load average), the ratio, prefilled tokens, and the
peak KV-cache bytes alive (rows of unexpanded nodes only: expanded and finished nodes release
theirs) against the bytes the tree's contexts would take if each node kept its own row.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import jax
import numpy as np
from absl import app, flags
from flax import nnx

from experiments.benchmarking import LoadRule, format_ratio, interleave, load_average
from prm.envs.protocol import Action, StepResult
from prm.models import ModelConfig, Transformer
from prm.sampling import Sampler, SamplingParams
from prm.search import EngineConfig, MCTSConfig, TreeEngine, mcts_star

_ITERATIONS = flags.DEFINE_list("iterations", ["4", "8", "16"], "MCTS* rounds per run.")
_QUESTIONS = flags.DEFINE_integer("questions", 4, "Trees searched together.")
_PROMPT = flags.DEFINE_integer("prompt", 192, "Prompt tokens.")
_OBSERVATION = flags.DEFINE_integer("observation", 32, "Forced tokens after each step.")
_STEP = flags.DEFINE_integer("step", 16, "Tokens per step.")
_DEPTH = flags.DEFINE_integer("depth", 6, "Steps per episode.")
_ROUNDS = flags.DEFINE_integer("rounds", 2, "Interleaved timing rounds.")
_HIDDEN = flags.DEFINE_integer("hidden", 256, "Policy hidden size (4 layers).")
_MAX_LOAD_CHANGE = flags.DEFINE_float(
    "max_load_change", LoadRule.max_load_change, "LoadRule: above it the ratio is refused."
)
_MAX_OTHERS = flags.DEFINE_float(
    "max_others", LoadRule.max_others, "LoadRule: above it the ratio is refused."
)

VOCAB = 512


class IdTokenizer:
    """Text is space-separated token ids."""

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [int(x) for x in text.split()]

    def decode(self, token_ids: Sequence[int], **kwargs) -> str:
        return " ".join(map(str, token_ids))


class FixedDepthEnv:
    """Task = a seed; every step is accepted; observation = `observation` ids; done at depth."""

    stop_strings = ()

    def __init__(self, prompt: int, observation: int, depth: int):
        self.prompt, self.observation, self.depth = prompt, observation, depth
        self._tasks, self._steps = [], []

    def reset(self, tasks):
        self._tasks, self._steps = list(tasks), [0] * len(tasks)
        rng = [np.random.default_rng(t) for t in self._tasks]
        return [" ".join(map(str, r.integers(1, VOCAB, self.prompt))) for r in rng]

    def step(self, texts):
        results = []
        for i, text in enumerate(texts):
            if text is None:
                results.append(None)
                continue
            self._steps[i] += 1
            done = self._steps[i] == self.depth
            ids = ((self._steps[i] * 7 + k) % VOCAB for k in range(self.observation))
            obs = "" if done else " ".join(map(str, ids))
            reward = float(done and sum(map(int, text.split() or ["0"])) % 2 == 0)
            results.append(StepResult(text, Action("search", text), obs, done, reward))
        return results

    def outcomes(self):
        return [{"reward": 0.0} for _ in self._tasks]


def hash_value(contexts):
    return np.array([(sum(c) * 7 + len(c)) % 101 / 100 for c in contexts])


def main(argv):
    del argv
    config = ModelConfig(
        family="qwen3",
        vocab_size=VOCAB,
        hidden_size=_HIDDEN.value,
        num_layers=4,
        num_heads=4,
        num_kv_heads=2,
        head_dim=_HIDDEN.value // 4,
        intermediate_size=3 * _HIDDEN.value,
        qk_norm=True,
        max_position_embeddings=1024,
        eos_token_ids=(),
        pad_token_id=0,
    )
    model = Transformer(config, rngs=nnx.Rngs(0))
    sampler = Sampler(model, eos_token_ids=())
    tasks = list(range(_QUESTIONS.value))
    env_args = (_PROMPT.value, _OBSERVATION.value, _DEPTH.value)
    max_length = _PROMPT.value + _DEPTH.value * (_STEP.value + _OBSERVATION.value) + 1

    def run(iterations: int, reuse: bool):
        engine = TreeEngine(
            sampler,
            FixedDepthEnv(*env_args),
            IdTokenizer(),
            hash_value,
            EngineConfig(
                max_step_tokens=_STEP.value,
                max_length=max_length,
                sampling=SamplingParams(temperature=1.0),
                reuse_cache=reuse,
            ),
            key=jax.random.key(0),
        )
        trees = engine.new_trees(tasks)
        mcts_star(trees, engine, MCTSConfig(iterations=iterations, branch=3, full=True))
        return trees, engine

    rows = []
    for iterations in map(int, _ITERATIONS.value):
        reuse_trees, reuse_engine = run(iterations, True)
        prefill_trees, prefill_engine = run(iterations, False)
        for a, b in zip(reuse_trees, prefill_trees):
            assert [n.step_tokens for n in a.nodes] == [n.step_tokens for n in b.nodes]
        rounds = interleave(
            {
                "reuse": lambda n=iterations: run(n, True),
                "prefill": lambda n=iterations: run(n, False),
            },
            rounds=_ROUNDS.value,
            rule=LoadRule(_MAX_LOAD_CHANGE.value, _MAX_OTHERS.value),
        )
        nodes = sum(len(t.nodes) for t in reuse_trees)
        per_token = 2 * config.num_layers * config.num_kv_heads * config.head_dim * 4
        all_paths = sum(len(t.context(i)) for t in reuse_trees for i in range(len(t.nodes)))
        rows.append(
            {
                "iterations": iterations,
                "nodes": nodes,
                "generated_tokens": sum(reuse_engine.stats["tokens"].values()),
                "reuse_s": rounds["reuse"].seconds,
                "prefill_s": rounds["prefill"].seconds,
                "speedup": format_ratio(
                    rounds.ratio(rounds["prefill"], rounds["reuse"]),
                    rounds,
                    rounds["prefill"],
                    rounds["reuse"],
                ),
                "raw_ratio": rounds["prefill"].seconds / rounds["reuse"].seconds,
                "prefilled_tokens_reuse": reuse_engine.stats["prefilled_tokens"],
                "prefilled_tokens_prefill": prefill_engine.stats["prefilled_tokens"],
                "peak_cache_mb_reuse": reuse_engine.stats["peak_cache_bytes"] / 2**20,
                "peak_cache_mb_prefill": prefill_engine.stats["peak_cache_bytes"] / 2**20,
                "every_node_own_row_mb": all_paths * per_token / 2**20,
                "loads": rounds.loads,
                "timings": {k: rounds[k].describe() for k in ("reuse", "prefill")},
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    print(f"load average at the end: {load_average():.2f}")


if __name__ == "__main__":
    app.run(main)
