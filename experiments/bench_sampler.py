"""Benchmark: the KV-cache sampler (`prm.sampling`) against its peers, side by side in one run.

1. Decode vs Hugging Face transformers `generate` (torch, CPU) on the same weights (saved with
   `prm.models.save_pretrained`, loaded by transformers): greedy, batch 8, 128 new tokens after
   a 64-token prompt, for a ~1M-parameter and a ~100M-parameter (Qwen2-like, d=768, 12 layers,
   vocab 32k) config in float32 and bfloat16. End-to-end time (prefill + decode) for both; for
   prm also decode alone against the memory roofline (parameter bytes read per step / measured
   read bandwidth).
2. k=8 siblings of 64 tokens after one 1024-token prefix: prefill once + fork vs re-prefilling
   the prefix for every sibling, and vs the ideal (one prefill + a batched decode, timed apart).
3. A 4-turn search-style rollout (generate a step, append an observation, repeat) carrying the
   cache vs re-prefilling the whole context every turn; both must produce the same tokens.

Times are the best of --repeats runs (the figure least disturbed by other processes on a shared
machine), after one untimed warm-up run that compiles.

    .venv/bin/python -m experiments.bench_sampler            # full run
    .venv/bin/python -m experiments.bench_sampler --quick    # smoke run: tiny shapes, f32 only
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from experiments.benchmarking import best_seconds
from prm.models import ModelConfig, Transformer, save_pretrained
from prm.sampling import GREEDY, Sampler, SamplingParams, Session

CONFIGS = {
    # ~1.05M parameters (tied embeddings).
    "tiny": ModelConfig(
        family="qwen2",
        vocab_size=2048,
        hidden_size=128,
        num_layers=4,
        num_heads=4,
        num_kv_heads=2,
        head_dim=32,
        intermediate_size=384,
        attention_bias=True,
        tie_word_embeddings=True,
    ),
    # ~100M parameters: 24.6M tied embedding + 12 x 6.3M layers.
    "100m": ModelConfig(
        family="qwen2",
        vocab_size=32_000,
        hidden_size=768,
        num_layers=12,
        num_heads=12,
        num_kv_heads=4,
        head_dim=64,
        intermediate_size=2048,
        attention_bias=True,
        tie_word_embeddings=True,
    ),
}
DTYPES = {"f32": jnp.float32, "bf16": jnp.bfloat16}
# Unbuffered, so a long run shows each section as it finishes.
print = functools.partial(print, flush=True)  # noqa: A001


@dataclasses.dataclass(frozen=True)
class Workload:
    batch: int = 8
    prompt_len: int = 64
    new_tokens: int = 128
    prefix_len: int = 1024
    siblings: int = 8
    sibling_tokens: int = 64
    turns: int = 4
    turn_prompt_len: int = 256
    turn_tokens: int = 64
    observation_len: int = 192


QUICK = Workload(
    prompt_len=16,
    new_tokens=16,
    prefix_len=128,
    sibling_tokens=16,
    turn_prompt_len=32,
    turn_tokens=16,
    observation_len=24,
)


def ready(session: Session) -> Session:
    """The session once its prefill has finished on device."""
    jax.block_until_ready(session.cache)
    return session


def read_bandwidth(repeats: int) -> float:
    """Bytes/s of the fastest full read of a 512 MiB array (numpy and XLA reductions)."""
    host = np.ones(2**27, np.float32)
    device = jnp.asarray(host)
    reduce = jax.jit(jnp.sum)
    seconds = min(
        best_seconds(lambda: host.sum(), repeats=repeats),
        best_seconds(lambda: reduce(device), repeats=repeats),
    )
    return host.nbytes / seconds


def param_bytes(model: nnx.Module) -> int:
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def verdict(value: float, target: float) -> str:
    return f"(target >= {target:g}: {'met' if value >= target else 'MISSED'})"


def random_tokens(rng: np.random.Generator, vocab: int, *shape: int) -> np.ndarray:
    # Skip the low ids so no prompt holds a pad or special token.
    return rng.integers(16, vocab, size=shape)


def bench_decode(name: str, dtype_name: str, work: Workload, bandwidth: float, repeats: int):
    import torch
    import transformers

    dtype = DTYPES[dtype_name]
    config = dataclasses.replace(CONFIGS[name], dtype=dtype, param_dtype=dtype)
    model = Transformer(config, rngs=nnx.Rngs(0))
    with tempfile.TemporaryDirectory() as path:
        save_pretrained(model, config, path)
        hf = transformers.AutoModelForCausalLM.from_pretrained(
            path, dtype={"f32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
        ).eval()
    prompts = random_tokens(
        np.random.default_rng(0), config.vocab_size, work.batch, work.prompt_len
    )
    input_ids = torch.as_tensor(prompts)

    def hf_generate(_):
        with torch.inference_mode():
            return hf.generate(
                input_ids,
                attention_mask=torch.ones_like(input_ids),
                max_new_tokens=work.new_tokens,
                min_new_tokens=work.new_tokens,
                do_sample=False,
                pad_token_id=0,
            )

    sampler = Sampler(model, eos_token_ids=())
    start = lambda: sampler.start(prompts.tolist(), reserve=work.new_tokens)
    ours_total = best_seconds(lambda: start().generate(work.new_tokens), repeats=repeats)
    ours_decode = best_seconds(
        lambda s: s.generate(work.new_tokens), repeats=repeats, setup=lambda: (ready(start()),)
    )
    hf_total = best_seconds(hf_generate, None, repeats=repeats)

    ours_tokens = np.asarray(start().generate(work.new_tokens).tokens)
    hf_tokens = hf_generate(None)[:, work.prompt_len :].numpy()
    agreement = float(np.mean(np.cumprod(ours_tokens == hf_tokens, axis=1)))
    tokens = work.batch * work.new_tokens
    ratio = hf_total / ours_total
    roofline = (
        work.batch * bandwidth / param_bytes(model)
    )  # tokens/s if each step reads params once
    print(
        f"decode {name:>4} {dtype_name:>4}: prm {tokens / ours_total:8.0f} tok/s end-to-end, "
        f"{tokens / ours_decode:8.0f} decode-only | HF generate {tokens / hf_total:8.0f} tok/s | "
        f"prm/HF {ratio:5.2f}x {verdict(ratio, 3.0 if name == 'tiny' else 1.0)}"
    )
    print(
        f"    roofline {roofline:8.0f} tok/s ({param_bytes(model) / 1e6:.0f} MB params/step at "
        f"{bandwidth / 1e9:.1f} GB/s): decode at {tokens / ours_decode / roofline:6.1%} of it"
        + (f" {verdict(tokens / ours_decode / roofline, 0.9)}" if name != "tiny" else "")
        + f" | greedy prefix agreement with HF {agreement:.1%}"
    )


def bench_fork(model: Transformer, work: Workload, repeats: int):
    vocab = model.config.vocab_size
    prefix = random_tokens(np.random.default_rng(1), vocab, work.prefix_len).tolist()
    sampler = Sampler(model, eos_token_ids=())
    k, new = work.siblings, work.sibling_tokens
    sampling = SamplingParams(temperature=1.0)
    key = jax.random.key(0)
    prefill_one = lambda: sampler.start([prefix], reserve=new)
    forked = best_seconds(
        lambda: prefill_one().fork(k).generate(new, key=key, sampling=sampling), repeats=repeats
    )
    reprefilled = best_seconds(
        lambda: sampler.start([prefix] * k, reserve=new).generate(new, key=key, sampling=sampling),
        repeats=repeats,
    )
    ideal_prefill = best_seconds(lambda: prefill_one().cache, repeats=repeats)
    ideal_decode = best_seconds(
        lambda s: s.generate(new, key=key, sampling=sampling),
        repeats=repeats,
        setup=lambda: (ready(prefill_one().fork(k)),),
    )
    ideal = ideal_prefill + ideal_decode
    print(
        f"fork  k={k} x {new} tokens after a {work.prefix_len}-token prefix: fork {forked:.3f} s | "
        f"re-prefill per sibling {reprefilled:.3f} s | ideal {ideal:.3f} s "
        f"(prefill {ideal_prefill:.3f} + decode {ideal_decode:.3f})"
    )
    print(
        f"    speed-up vs re-prefill {reprefilled / forked:5.2f}x {verdict(reprefilled / forked, 4)}"
        f" | fraction of ideal {ideal / forked:6.1%} {verdict(ideal / forked, 0.9)}"
    )


def bench_multiturn(model: Transformer, work: Workload, repeats: int):
    rng = np.random.default_rng(2)
    vocab = model.config.vocab_size
    prompts = random_tokens(rng, vocab, work.batch, work.turn_prompt_len).tolist()
    observations = [
        random_tokens(rng, vocab, work.batch, work.observation_len).tolist()
        for _ in range(work.turns - 1)
    ]
    sampler = Sampler(model, eos_token_ids=())

    def carried(_):
        # Like the re-prefill peer, reserve one turn: the cache grows as the context does.
        session = sampler.start(prompts, reserve=work.turn_tokens)
        steps = []
        for turn in range(work.turns):
            steps.append(session.generate(work.turn_tokens, sampling=GREEDY).token_lists())
            if turn < work.turns - 1:
                session.append(observations[turn])
        return steps

    def reprefilled(_):
        contexts = [list(p) for p in prompts]
        steps = []
        for turn in range(work.turns):
            session = sampler.start(contexts, reserve=work.turn_tokens)
            steps.append(session.generate(work.turn_tokens, sampling=GREEDY).token_lists())
            for b, context in enumerate(contexts):
                context += steps[-1][b] + (observations[turn][b] if turn < work.turns - 1 else [])
        return steps

    same = carried(None) == reprefilled(None)
    t_carried = best_seconds(carried, None, repeats=repeats)
    t_reprefilled = best_seconds(reprefilled, None, repeats=repeats)
    ratio = t_reprefilled / t_carried
    print(
        f"multi-turn {work.turns} turns x {work.turn_tokens} tokens + {work.observation_len}-token "
        f"observations, batch {work.batch}: carry cache {t_carried:.3f} s | re-prefill each turn "
        f"{t_reprefilled:.3f} s | speed-up {ratio:5.2f}x {verdict(ratio, 3)} | "
        f"same tokens: {same}"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny shapes, f32, one repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--model", choices=sorted(CONFIGS), default="100m", help="model of sections 2 and 3"
    )
    parser.add_argument(
        "--sections",
        default="decode,fork,multiturn",
        help="comma-separated subset of decode,fork,multiturn",
    )
    args = parser.parse_args(argv)
    work = QUICK if args.quick else Workload()
    repeats = 1 if args.quick else args.repeats
    sections = set(args.sections.split(","))
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {work}")

    if "decode" in sections:
        bandwidth = read_bandwidth(repeats=3)
        print(f"measured read bandwidth: {bandwidth / 1e9:.1f} GB/s")
        decode_runs = [("tiny", "f32"), ("100m", "f32"), ("100m", "bf16")]
        for name, dtype_name in decode_runs[:1] if args.quick else decode_runs:
            bench_decode(name, dtype_name, work, bandwidth, repeats)
    model = Transformer(CONFIGS["tiny" if args.quick else args.model], rngs=nnx.Rngs(0))
    if "fork" in sections:
        bench_fork(model, work, repeats)
    if "multiturn" in sections:
        bench_multiturn(model, work, repeats)


if __name__ == "__main__":
    main()
