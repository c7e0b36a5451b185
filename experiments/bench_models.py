"""Benchmark: prm.models against peers on the same inputs, printed as ratios in one run.

logprobs  `prm.models.chunked_logprobs` (time-chunked unembed + logsumexp under remat) vs the
          direct peer (full [B, T, V] float32 logits, log_softmax, gather), forward and
          gradient: XLA's compiled temporary memory and the wall time per call.
forward   a jitted `Transformer` forward vs transformers' torch forward of the same weights
          (a random checkpoint written by `save_pretrained`; torch at 1 and at 2 threads, its
          faster figure is the peer), wall time per call and the largest logit gap.

Timing (`experiments.benchmarking.interleave`): prm and the peer run in `--repeats`
alternating rounds after a warm-up; each figure is a side's best round, printed with the
1-minute load average and the cores other processes kept busy; a ratio is printed only when
the load held still (`--max-load-change`, `--max-others`), otherwise REFUSED and why.

  .venv/bin/python -m experiments.bench_models logprobs --batch=2 --length=1024 --vocab=151936
  .venv/bin/python -m experiments.bench_models forward --batch=4 --length=256
"""

from __future__ import annotations

import argparse
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from experiments.benchmarking import (
    add_load_rule_arguments,
    figure,
    format_ratio,
    interleave,
    load_rule,
    torch_peer,
)
from prm.models import ModelConfig, Transformer, chunked_logprobs, save_pretrained


def bench_logprobs(args: argparse.Namespace) -> None:
    rng = np.random.default_rng(0)
    hidden = jnp.asarray(rng.normal(size=(args.batch, args.length, args.hidden)), jnp.float32)
    weight = jnp.asarray(rng.normal(size=(args.hidden, args.vocab)) * 0.02, jnp.float32)
    targets = jnp.asarray(rng.integers(0, args.vocab, (args.batch, args.length)), jnp.int32)

    def prm_loss(h, w):
        logprobs, _ = chunked_logprobs(lambda x: x @ w, h, targets, chunk_size=args.chunk)
        return logprobs.sum()

    def direct_loss(h, w):
        log_p = jax.nn.log_softmax(h @ w, axis=-1)
        return jnp.take_along_axis(log_p, targets[..., None], axis=-1).sum()

    print(
        f"logprobs: batch={args.batch} length={args.length} hidden={args.hidden} "
        f"vocab={args.vocab} chunk={args.chunk} ({jax.devices()[0].platform})"
    )
    for mode in ("forward", "grad"):
        fns = {"prm": prm_loss, "direct": direct_loss}
        if mode == "grad":
            fns = {name: jax.grad(fn, argnums=(0, 1)) for name, fn in fns.items()}
        compiled = {name: jax.jit(fn).lower(hidden, weight).compile() for name, fn in fns.items()}
        memory = {n: c.memory_analysis().temp_size_in_bytes / 2**20 for n, c in compiled.items()}
        result = interleave(
            {n: (lambda c=c: c(hidden, weight)) for n, c in compiled.items()},
            rounds=args.repeats,
            rule=load_rule(args),
        )
        prm, direct = result["prm"], result["direct"]
        speed = result.ratio(direct, prm)
        print(
            f"  {mode:7s} temp MiB prm {memory['prm']:8.1f}  direct {memory['direct']:8.1f}  "
            f"(direct/prm {memory['direct'] / memory['prm']:.1f}x) | "
            + figure("prm", prm, f"{prm.seconds * 1e3:.1f} ms")
            + "  "
            + figure("direct", direct, f"{direct.seconds * 1e3:.1f} ms")
            + f"  (direct/prm {format_ratio(speed, result, direct, prm)})"
        )


def bench_forward(args: argparse.Namespace) -> None:
    import torch
    import transformers

    config = ModelConfig(
        family="qwen2",
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        num_layers=args.layers,
        num_heads=args.hidden // 64,
        num_kv_heads=max(1, args.hidden // 256),
        head_dim=64,
        intermediate_size=4 * args.hidden,
        attention_bias=True,
        tie_word_embeddings=True,
    )
    model = Transformer(config, rngs=nnx.Rngs(0))
    ids = np.random.default_rng(0).integers(0, args.vocab, (args.batch, args.length))
    with tempfile.TemporaryDirectory() as path:
        save_pretrained(model, config, path)
        torch_model = transformers.AutoModelForCausalLM.from_pretrained(path).eval()
    forward = nnx.jit(lambda m, x: m(x)[0])
    torch_ids = torch.from_numpy(ids)

    def torch_forward():
        with torch.inference_mode():
            return torch_model(torch_ids).logits

    gap = float(np.max(np.abs(np.asarray(forward(model, ids)) - torch_forward().numpy())))
    threads = torch.get_num_threads()
    peer = torch_peer("transformers", torch_forward)
    result = interleave(
        {"prm": lambda: forward(model, ids), **peer}, rounds=args.repeats, rule=load_rule(args)
    )
    torch.set_num_threads(threads)
    prm = result["prm"]
    peer_name, peer_timing = result.best(list(peer))
    speed = result.ratio(peer_timing, prm)
    print(
        f"forward: qwen2 layers={args.layers} hidden={args.hidden} vocab={args.vocab} "
        f"batch={args.batch} length={args.length} (jax {jax.devices()[0].platform}, torch cpu; "
        f"max |logit gap| {gap:.1e})\n  "
        + figure("prm", prm, f"{prm.seconds * 1e3:.1f} ms")
        + "  "
        + figure(peer_name, peer_timing, f"{peer_timing.seconds * 1e3:.1f} ms")
        + f"  (transformers/prm {format_ratio(speed, result, peer_timing, prm)}; "
        + ", ".join(f"{n} {result[n].seconds * 1e3:.1f} ms" for n in peer)
        + ")"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=("logprobs", "forward"))
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--length", type=int, default=1024)
    parser.add_argument("--hidden", type=int, default=896)
    parser.add_argument("--vocab", type=int, default=151_936)
    parser.add_argument("--chunk", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds")
    add_load_rule_arguments(parser)
    args = parser.parse_args(argv)
    bench_logprobs(args) if args.what == "logprobs" else bench_forward(args)


if __name__ == "__main__":
    main()
