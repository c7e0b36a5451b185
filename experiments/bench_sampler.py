"""Benchmark: the KV-cache sampler (`prm.sampling`) against its peers, side by side in one run.

Sections (`--sections`, default all):
  decode     greedy decode vs Hugging Face transformers `generate` (torch, CPU) on the same
             weights, batch 8, 128 new tokens after a 64-token prompt: `tiny` (~1M params) in
             float32, `100m` (Qwen2-like, d=768, 12 layers, vocab 32k) in float32 and bfloat16.
             HF runs at 1 and at 2 torch threads and its faster figure is the peer. prm's
             decode alone is also set against the weight-read roofline (parameter bytes per step
             over the read bandwidth measured in the same rounds). Agreement is checked on
             outputs that are not degenerate: the random init is scaled so greedy paths vary,
             and the report gives greedy prefix agreement, distinct tokens per row and the
             largest gap between prm's log-probs and HF's teacher-forced ones on prm's tokens.
  capacity   decode step time at a fixed live length (64-token prompts, 16 new tokens) with the
             cache allocated at capacity 96, 1024 and 4096.
  fork       k in {4, 8, 16} siblings of 64 tokens after a prefix of 256 or 1024 tokens: prefill
             once + fork vs re-prefilling the prefix for every sibling, and vs the ideal (one
             prefill + the batched decode, timed apart).
  multiturn  4 turns of 64 tokens with 192-token observations appended between them, batch 8:
             carrying the cache vs re-prefilling the context every turn, and vs the ideal (each
             prefill, decode and append timed alone on a copy of the session in its state).
  rollout    search-env RL rollouts (`prm.rollouts.rollout`, BM25 over a synthetic world) in sampled
             tokens/s, carrying the cache vs re-prefilling the context every turn.

Timing (`experiments.benchmarking.interleave`): the candidates of a comparison run in alternating
rounds after a warm-up; a figure is a candidate's best round, printed with the 1-minute load
average and the cores other processes kept busy during it; a ratio is printed only when the
load held still (`--max-load-change`, `--max-others`), otherwise it says REFUSED and why.

    .venv/bin/python -m experiments.bench_sampler                 # all sections (long on CPU)
    .venv/bin/python -m experiments.bench_sampler --quick         # smoke run: tiny shapes
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

from experiments.benchmarking import (
    Case,
    LoadRule,
    add_load_rule_arguments,
    figure,
    format_ratio,
    interleave,
    load_rule,
    torch_peer,
    verdict,
)
from prm.models import ModelConfig, Transformer, save_pretrained
from prm.sampling import Sampler, SamplingParams, Session
from prm.sampling.weights import decode_copy

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
# Init scales that make random-init greedy decoding non-degenerate: at HF's std 0.02 with tied
# embeddings each position mostly predicts its own input token, so greedy output repeats one
# token and any two implementations "agree". Larger kernels let the layers steer the residual
# stream, a larger embedding sharpens the logits (mean greedy log-prob about -0.3 to -0.7).
KERNEL_SCALE, EMBEDDING_SCALE = 8.0, 25.0
# Unbuffered, so a long run shows each section as it finishes.
print = functools.partial(print, flush=True)  # noqa: A001


@dataclasses.dataclass(frozen=True)
class Workload:
    batch: int = 8
    prompt_len: int = 64
    new_tokens: int = 128
    capacities: tuple[int, ...] = (96, 1024, 4096)
    capacity_tokens: int = 16
    weights_tokens: int = 32
    prefix_lens: tuple[int, ...] = (256, 1024)
    siblings: tuple[int, ...] = (4, 8, 16)
    sibling_tokens: int = 64
    turns: int = 4
    turn_prompt_len: int = 256
    turn_tokens: int = 64
    observation_len: int = 192
    rollout_questions: int = 8
    rollout_step_tokens: int = 64
    rollout_max_turns: int = 3
    rollout_max_length: int = 1024


QUICK = Workload(
    prompt_len=16,
    new_tokens=16,
    capacities=(96, 1024),
    capacity_tokens=8,
    weights_tokens=8,
    prefix_lens=(128,),
    siblings=(4,),
    sibling_tokens=16,
    turns=3,
    turn_prompt_len=32,
    turn_tokens=16,
    observation_len=24,
    rollout_questions=2,
    rollout_step_tokens=16,
    rollout_max_turns=1,
    rollout_max_length=256,
)


def bench_model(config: ModelConfig, seed: int = 0) -> Transformer:
    """A random-init model with the kernels and embedding scaled up (see KERNEL_SCALE)."""
    model = Transformer(config, rngs=nnx.Rngs(seed))
    for path, param in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        scale = {"kernel": KERNEL_SCALE, "embedding": EMBEDDING_SCALE}.get(path[-1], 1.0)
        param[...] = (param[...] * scale).astype(param[...].dtype)
    return model


def ready(session: Session) -> Session:
    """The session once its pending device work has finished."""
    jax.block_until_ready(session.cache)
    return session


def copy(session: Session) -> Session:
    """An independent copy of every row (for setups: generate and append donate the cache)."""
    return ready(session.select(list(range(session.batch_size))))


def param_bytes(model: nnx.Module) -> int:
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def random_tokens(rng: np.random.Generator, vocab: int, *shape: int) -> np.ndarray:
    # Skip the low ids so no prompt holds a pad or special token.
    return rng.integers(16, vocab, size=shape)


def bench_decode(name: str, dtype_name: str, work: Workload, rounds: int, rule: LoadRule):
    import torch
    import transformers

    dtype = DTYPES[dtype_name]
    config = dataclasses.replace(CONFIGS[name], dtype=dtype, param_dtype=dtype)
    model = bench_model(config)
    with tempfile.TemporaryDirectory() as path:
        save_pretrained(model, config, path)
        hf = transformers.AutoModelForCausalLM.from_pretrained(
            path, dtype={"f32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
        ).eval()
    prompts = random_tokens(
        np.random.default_rng(0), config.vocab_size, work.batch, work.prompt_len
    )
    input_ids = torch.as_tensor(prompts)
    n = work.new_tokens

    def hf_generate():
        with torch.inference_mode():
            return hf.generate(
                input_ids,
                attention_mask=torch.ones_like(input_ids),
                max_new_tokens=n,
                min_new_tokens=n,
                do_sample=False,
                pad_token_id=0,
            )

    sampler = Sampler(model, eos_token_ids=())
    start = lambda: sampler.start(prompts.tolist(), reserve=n)
    host = np.ones(2**27, np.float32)  # 512 MiB: far beyond the CPU caches
    device, reduce = jnp.asarray(host), jax.jit(jnp.sum)
    reads = 8  # per timed run: long enough for /proc/stat's 10 ms ticks to read the load
    threads = torch.get_num_threads()
    result = interleave(
        {
            "prm": lambda: start().generate(n).tokens,
            "prm decode": Case(lambda s: s.generate(n).tokens, setup=lambda: (ready(start()),)),
            **torch_peer("HF", hf_generate),
            "read numpy": lambda: [host.sum() for _ in range(reads)],
            "read XLA": lambda: [reduce(device) for _ in range(reads)],
        },
        rounds=rounds,
        rule=rule,
    )
    torch.set_num_threads(threads)

    generation = start().generate(n)
    ours = np.array(generation.tokens)  # writable: torch wraps it
    hf_tokens = hf_generate()[:, work.prompt_len :].numpy()
    agreement = float(np.mean(np.cumprod(ours == hf_tokens, axis=1)))
    with torch.inference_mode():
        full = torch.as_tensor(np.concatenate([prompts, ours], axis=1))
        hf_logp = torch.log_softmax(hf(full).logits.float(), dim=-1)[:, work.prompt_len - 1 : -1]
        teacher = hf_logp.gather(-1, torch.as_tensor(ours)[..., None])[..., 0].numpy()
    logprob_gap = float(np.max(np.abs(teacher - np.asarray(generation.logprobs))))
    if dtype_name != "f32":
        # The scale of rounding alone: both implementations' low-precision log-probs against
        # the same weights computed in f32. prm's error no larger than HF's means the gap above
        # is rounding (it compounds over a greedy decode), not a mismatch.
        with torch.inference_mode():
            exact = torch.log_softmax(hf.float()(full).logits, dim=-1)[:, work.prompt_len - 1 : -1]
            exact = exact.gather(-1, torch.as_tensor(ours)[..., None])[..., 0].numpy()
        rounding = {
            "prm": np.abs(np.asarray(generation.logprobs) - exact),
            "HF": np.abs(teacher - exact),
        }
    distinct = min(len(set(row)) for row in ours.tolist())

    tokens = work.batch * n
    prm, decode = result["prm"], result["prm decode"]
    peer_name, peer = result.best(["HF 1 thread", "HF 2 threads"])
    read_name, read = result.best(["read numpy", "read XLA"])
    bandwidth = reads * host.nbytes / read.seconds
    speedup = result.ratio(peer, prm)
    # Roofline: decode reads every parameter once per step; fraction = ideal time / decode time.
    read_ratio = result.ratio(read, decode)
    roofline = (
        None if read_ratio is None else read_ratio * n * param_bytes(model) / (reads * host.nbytes)
    )
    print(
        f"decode {name:>4} {dtype_name:>4}: "
        + figure("prm", prm, f"{tokens / prm.seconds:.0f} tok/s end-to-end")
        + " | "
        + figure("decode only", decode, f"{tokens / decode.seconds:.0f} tok/s")
        + " | "
        + figure(peer_name, peer, f"{tokens / peer.seconds:.0f} tok/s")
        + f" (HF 1 / 2 threads: {tokens / result['HF 1 thread'].seconds:.0f} / "
        f"{tokens / result['HF 2 threads'].seconds:.0f})"
    )
    target = 3.0 if name == "tiny" else 1.5
    print(
        f"    prm/HF {format_ratio(speedup, result, peer, prm)} {verdict(speedup, target)}"
        f" | roofline ({param_bytes(model) / 1e6:.0f} MB/step at {bandwidth / 1e9:.1f} GB/s, "
        f"{read_name}): decode at {format_ratio(roofline, result, read, decode, fmt='{:.1%}')}"
        + (f" of it {verdict(roofline, 0.6)}" if name != "tiny" else "")
    )
    print(
        f"    agreement with HF: greedy prefix {agreement:.1%}, >= {distinct} distinct tokens "
        f"per row, log-prob gap on prm's tokens {logprob_gap:.1e} | rounds' load "
        f"{min(result.loads):.2f}..{max(result.loads):.2f}"
    )
    if dtype_name != "f32":
        print(
            f"    {dtype_name} log-probs of prm's tokens vs the same weights in f32 (HF): "
            + ", ".join(f"{k} mean {v.mean():.2e} max {v.max():.2e}" for k, v in rounding.items())
        )


def bench_weights(name: str, dtypes: str, work: Workload, rounds: int, rule: LoadRule):
    """Decode with the decode-time weight copy (`Sampler(decode_copy=True)`) against without."""
    param_dtype, dtype = (DTYPES[d] for d in dtypes.split("/"))
    config = dataclasses.replace(CONFIGS[name], dtype=dtype, param_dtype=param_dtype)
    model = bench_model(config)
    prompts = random_tokens(
        np.random.default_rng(4), config.vocab_size, work.batch, work.prompt_len
    ).tolist()
    n = work.weights_tokens
    samplers = {
        "copy": Sampler(model, eos_token_ids=(), decode_copy=True),
        "model's": Sampler(model, eos_token_ids=(), decode_copy=False),
    }
    generations = {k: s.start(prompts, reserve=n).generate(n) for k, s in samplers.items()}
    same = np.array_equal(generations["copy"].tokens, generations["model's"].tokens)
    gap = float(np.max(np.abs(generations["copy"].logprobs - generations["model's"].logprobs)))
    cases = {
        f"{k} weights": Case(
            lambda s: s.generate(n).tokens,
            setup=lambda sampler=sampler: (ready(sampler.start(prompts, reserve=n)),),
        )
        for k, sampler in samplers.items()
    }
    cases["copy made"] = lambda: nnx.state(decode_copy(model, config.dtype))
    result = interleave(cases, rounds=rounds, rule=rule)
    copied, plain = result["copy weights"], result["model's weights"]
    speedup = result.ratio(plain, copied)
    print(
        f"weights {name:>4} params {dtypes.split('/')[0]}, compute {dtypes.split('/')[1]}: "
        f"decode batch {work.batch} x {n} tokens: "
        + figure("with the copy", copied, f"{copied.seconds / n * 1e3:.2f} ms/step")
        + " | "
        + figure("model's weights", plain, f"{plain.seconds / n * 1e3:.2f} ms/step")
        + f" | copy made in {result['copy made'].seconds * 1e3:.1f} ms"
    )
    print(
        f"    model's / copy {format_ratio(speedup, result, plain, copied)} | same tokens: "
        f"{same}, log-prob gap {gap:.1e} | rounds' load "
        f"{min(result.loads):.2f}..{max(result.loads):.2f}"
    )


def bench_capacity(config: ModelConfig, work: Workload, rounds: int, rule: LoadRule):
    model = bench_model(config)
    prompts = random_tokens(
        np.random.default_rng(3), config.vocab_size, work.batch, work.prompt_len
    ).tolist()
    n = work.capacity_tokens
    cases = {}
    for capacity in work.capacities:
        sampler = Sampler(model, eos_token_ids=(), min_capacity=capacity)
        cases[f"capacity {capacity}"] = Case(
            lambda s: s.generate(n).tokens,
            setup=lambda sampler=sampler: (ready(sampler.start(prompts)),),
        )
    result = interleave(cases, rounds=rounds, rule=rule)
    lo, hi = result[f"capacity {work.capacities[0]}"], result[f"capacity {work.capacities[-1]}"]
    steps = ", ".join(
        figure(name, t, f"{t.seconds / n * 1e3:.2f} ms/step") for name, t in result.timings.items()
    )
    spread = result.ratio(hi, lo)
    print(
        f"capacity: decode batch {work.batch}, live {work.prompt_len}..{work.prompt_len + n} "
        f"tokens: {steps}"
    )
    print(
        f"    step time capacity {work.capacities[-1]} / {work.capacities[0]}: "
        f"{format_ratio(spread, result, hi, lo)} {verdict(spread, 1.15, at_most=True)}"
    )


def bench_fork(model: Transformer, work: Workload, rounds: int, rule: LoadRule):
    vocab = model.config.vocab_size
    for prefix_len in work.prefix_lens:
        prefix = random_tokens(np.random.default_rng(1), vocab, prefix_len).tolist()
        for k in work.siblings:
            bench_fork_cell(model, prefix, k, work.sibling_tokens, rounds, rule)


def bench_fork_cell(
    model: Transformer, prefix: list[int], k: int, new: int, rounds: int, rule: LoadRule
):
    sampler = Sampler(model, eos_token_ids=())
    sampling, key = SamplingParams(temperature=1.0), jax.random.key(0)
    decode = lambda s: s.generate(new, key=key, sampling=sampling).tokens
    prefill_one = lambda: sampler.start([prefix], reserve=new)
    result = interleave(
        {
            "fork": lambda: decode(prefill_one().fork(k)),
            "re-prefill": lambda: decode(sampler.start([prefix] * k, reserve=new)),
            "prefill": lambda: prefill_one().cache,
            "decode": Case(decode, setup=lambda: (ready(prefill_one().fork(k)),)),
        },
        rounds=rounds,
        rule=rule,
    )
    fork, again = result["fork"], result["re-prefill"]
    ideal = result["prefill"].seconds + result["decode"].seconds
    speedup = result.ratio(again, fork)
    parts = result.ratio(result["prefill"], fork), result.ratio(result["decode"], fork)
    of_ideal = None if None in parts else sum(parts)
    print(
        f"fork  k={k:>2} x {new} tokens after {len(prefix)}: "
        + figure("fork", fork, f"{fork.seconds:.3f} s")
        + " | "
        + figure("re-prefill", again, f"{again.seconds:.3f} s")
        + f" | ideal {ideal:.3f} s (prefill {result['prefill'].seconds:.3f} + decode "
        f"{result['decode'].seconds:.3f})"
    )
    print(
        f"    vs re-prefill {format_ratio(speedup, result, again, fork)} | of ideal "
        f"{format_ratio(of_ideal, result, *result.timings.values(), fmt='{:.1%}')} "
        f"{verdict(of_ideal, 0.95)}"
    )


def bench_multiturn(model: Transformer, work: Workload, rounds: int, rule: LoadRule):
    rng = np.random.default_rng(2)
    vocab = model.config.vocab_size
    prompts = random_tokens(rng, vocab, work.batch, work.turn_prompt_len).tolist()
    observations = [
        random_tokens(rng, vocab, work.batch, work.observation_len).tolist()
        for _ in range(work.turns - 1)
    ]
    sampler = Sampler(model, eos_token_ids=())
    n = work.turn_tokens

    def generate(session: Session) -> jax.Array:
        return session.generate(n).tokens

    def append(turn: int):
        def run(session: Session) -> object:
            session.append(observations[turn])
            return session.cache

        return run

    def carried(phases: list[Case] | None = None):
        """The rollout; with `phases`, also each of its device calls as a Case on a snapshot."""

        def snapshot(fn, session: Session) -> None:
            if phases is not None:
                saved = copy(session)
                phases.append(Case(fn, setup=lambda: (copy(saved),)))

        # Like the re-prefill peer, reserve one turn: the cache grows as the context does.
        session = sampler.start(prompts, reserve=n)
        steps = []
        for turn in range(work.turns):
            snapshot(generate, session)
            steps.append(session.generate(n).token_lists())
            if turn < work.turns - 1:
                snapshot(append(turn), session)
                session.append(observations[turn])
        return steps

    def reprefilled():
        contexts = [list(p) for p in prompts]
        steps = []
        for turn in range(work.turns):
            session = sampler.start(contexts, reserve=n)
            steps.append(session.generate(n).token_lists())
            for b, context in enumerate(contexts):
                context += steps[-1][b] + (observations[turn][b] if turn < work.turns - 1 else [])
        return steps

    phases: list[Case] = [Case(lambda: sampler.start(prompts, reserve=n).cache)]
    same = carried(phases) == reprefilled()
    cases = {"carry": carried, "re-prefill": reprefilled}
    cases.update({f"phase {i}": phase for i, phase in enumerate(phases)})
    result = interleave(cases, rounds=rounds, rule=rule)
    carry, again = result["carry"], result["re-prefill"]
    phase_timings = [result[f"phase {i}"] for i in range(len(phases))]
    ideal = sum(t.seconds for t in phase_timings)
    speedup = result.ratio(again, carry)
    parts = [result.ratio(t, carry) for t in phase_timings]
    of_ideal = None if None in parts else sum(parts)
    print(
        f"multi-turn {work.turns} turns x {n} tokens + {work.observation_len}-token observations, "
        f"batch {work.batch}: "
        + figure("carry", carry, f"{carry.seconds:.3f} s")
        + " | "
        + figure("re-prefill", again, f"{again.seconds:.3f} s")
        + f" | ideal {ideal:.3f} s ({len(phases)} phases timed alone) | same tokens: {same}"
    )
    print(
        f"    vs re-prefill {format_ratio(speedup, result, again, carry)} | of ideal "
        f"{format_ratio(of_ideal, result, *result.timings.values(), fmt='{:.1%}')} "
        f"{verdict(of_ideal, 0.95)}"
    )


class ReprefillSampler:
    """The rollout peer: keeps no cache between calls, every `generate` prefills the context."""

    def __init__(self, sampler: Sampler):
        self.sampler, self.config, self.pad_token_id = sampler, sampler.config, sampler.pad_token_id

    def start(self, prompts, reserve=0):
        self.contexts = [list(p) for p in prompts]
        return self

    def generate(self, max_new_tokens, **kwargs):
        generation = self.sampler.start(self.contexts).generate(max_new_tokens, **kwargs)
        for context, new in zip(self.contexts, generation.token_lists()):
            context.extend(new)
        return generation

    def append(self, tokens):
        for context, new in zip(self.contexts, tokens):
            context.extend(new)


def bench_rollout(config: ModelConfig, work: Workload, rounds: int, rule: LoadRule):
    from prm.envs import protocol
    from prm.envs.assets import load_world_assets
    from prm.envs.synthetic_world import WorldConfig
    from prm.rollouts.rollout import RolloutConfig, rollout

    assets = load_world_assets(WorldConfig())  # built once into ~/.cache/prm/worlds
    tokenizer = assets.tokenizer
    config = dataclasses.replace(
        config,
        vocab_size=len(tokenizer),
        eos_token_ids=(tokenizer.eos_token_id,),
        pad_token_id=tokenizer.pad_token_id,
        max_position_embeddings=max(config.max_position_embeddings, work.rollout_max_length),
    )
    model = bench_model(config)
    questions = assets.world.split("dev")[: work.rollout_questions]
    env_config = protocol.EnvConfig(max_turns=work.rollout_max_turns, forced_answer="<answer>")
    rollout_config = RolloutConfig(
        max_step_tokens=work.rollout_step_tokens, max_length=work.rollout_max_length
    )

    def play(sampler):
        env = protocol.SearchEnv(assets.retriever, env_config, tokenizer)
        tasks = [protocol.QATask(q.text, tuple(q.answers)) for q in questions]
        return rollout(sampler, env, tokenizer, tasks, rollout_config)

    # No EOS: a random policy would end episodes at random; every step spends its budget.
    sampler = Sampler(model, eos_token_ids=())
    cached, reference = play(sampler), play(ReprefillSampler(sampler))
    same = all(
        np.array_equal(getattr(cached, f), getattr(reference, f))
        for f in ("tokens", "loss_mask", "step_id", "finish_reason")
    )
    sampled = int(cached.loss_mask.sum())
    result = interleave(
        {"carry": lambda: play(sampler), "re-prefill": lambda: play(ReprefillSampler(sampler))},
        rounds=rounds,
        rule=rule,
    )
    carry, again = result["carry"], result["re-prefill"]
    speedup = result.ratio(again, carry)
    print(
        f"rollout {len(questions)} search-env episodes ({sampled} sampled tokens, "
        f"{cached.num_turns.mean():.1f} turns, up to {work.rollout_step_tokens} tokens a step): "
        + figure("carry", carry, f"{sampled / carry.seconds:.0f} sampled tok/s")
        + " | "
        + figure("re-prefill", again, f"{sampled / again.seconds:.0f} sampled tok/s")
        + f" | vs re-prefill {format_ratio(speedup, result, again, carry)} | same trajectories: "
        f"{same}"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny shapes, f32, one round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per comparison")
    parser.add_argument(
        "--model", choices=sorted(CONFIGS), default="100m", help="model of the later sections"
    )
    parser.add_argument(
        "--sections",
        default="decode,weights,capacity,fork,multiturn,rollout",
        help="comma-separated subset of decode,weights,capacity,fork,multiturn,rollout",
    )
    add_load_rule_arguments(parser)
    args = parser.parse_args(argv)
    work = QUICK if args.quick else Workload()
    rounds = 1 if args.quick else args.rounds
    rule = load_rule(args)
    sections = set(args.sections.split(","))
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {rounds} rounds, {rule}, {work}")

    if "decode" in sections:
        decode_runs = [("tiny", "f32"), ("100m", "f32"), ("100m", "bf16")]
        for name, dtype_name in decode_runs[:1] if args.quick else decode_runs:
            bench_decode(name, dtype_name, work, rounds, rule)
    config = CONFIGS["tiny" if args.quick else args.model]
    if "weights" in sections:
        weight_runs = [("tiny", "f32/f32"), ("100m", "f32/f32"), ("100m", "bf16/bf16")]
        weight_runs.append(("100m", "f32/bf16"))
        for name, dtypes in weight_runs[:1] if args.quick else weight_runs:
            bench_weights(name, dtypes, work, rounds, rule)
    if "capacity" in sections:
        bench_capacity(config, work, rounds, rule)
    model = bench_model(config)
    if "fork" in sections:
        bench_fork(model, work, rounds, rule)
    if "multiturn" in sections:
        bench_multiturn(model, work, rounds, rule)
    if "rollout" in sections:
        bench_rollout(config, work, rounds, rule)


if __name__ == "__main__":
    main()
