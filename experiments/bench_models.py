"""Benchmark: prm.models against peers on the same inputs, printed as ratios in one run.

logprobs  `prm.models.chunked_logprobs` (time-chunked unembed + logsumexp under remat) vs the
          direct peer (full [B, T, V] float32 logits, log_softmax, gather), forward and
          gradient: XLA's compiled temporary memory and the best wall time per call.
forward   a jitted `Transformer` forward vs transformers' torch forward of the same weights
          (a random checkpoint written by `save_pretrained`), best wall time per call.

  .venv/bin/python -m experiments.bench_models logprobs --batch=2 --length=1024 --vocab=151936
  .venv/bin/python -m experiments.bench_models forward --batch=4 --length=256
"""

from __future__ import annotations

import argparse
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from experiments.benchmarking import best_seconds
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
        seconds = {
            n: best_seconds(c, hidden, weight, repeats=args.repeats) for n, c in compiled.items()
        }
        print(
            f"  {mode:7s} temp MiB prm {memory['prm']:8.1f}  direct {memory['direct']:8.1f}  "
            f"(direct/prm {memory['direct'] / memory['prm']:.1f}x) | "
            f"ms prm {seconds['prm'] * 1e3:8.1f}  direct {seconds['direct'] * 1e3:8.1f}  "
            f"(direct/prm {seconds['direct'] / seconds['prm']:.2f}x)"
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
    prm_seconds = best_seconds(forward, model, ids, repeats=args.repeats)
    torch_ids = torch.from_numpy(ids)

    def torch_forward():
        with torch.no_grad():
            return torch_model(torch_ids).logits

    torch_forward()
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        torch_forward()
        times.append(time.perf_counter() - start)
    torch_seconds = min(times)
    print(
        f"forward: qwen2 layers={args.layers} hidden={args.hidden} vocab={args.vocab} "
        f"batch={args.batch} length={args.length} (jax {jax.devices()[0].platform}, torch cpu "
        f"{torch.get_num_threads()} threads)\n"
        f"  ms prm {prm_seconds * 1e3:.1f}  transformers {torch_seconds * 1e3:.1f}  "
        f"(transformers/prm {torch_seconds / prm_seconds:.2f}x)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=("logprobs", "forward"))
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--length", type=int, default=1024)
    parser.add_argument("--hidden", type=int, default=896)
    parser.add_argument("--vocab", type=int, default=151_936)
    parser.add_argument("--chunk", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    bench_logprobs(args) if args.what == "logprobs" else bench_forward(args)


if __name__ == "__main__":
    main()
