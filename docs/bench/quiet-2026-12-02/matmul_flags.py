"""Time decode-shaped matmuls ([8, d] @ weights) under the XLA_FLAGS of the environment.

    XLA_FLAGS=--xla_cpu_experimental_xnn_fusion_type=dot python matmul_flags.py

Each shape is timed with the weights stored [in, out] (x @ w) and [out, in] (einsum "bd,nd");
the best of 30 calls after a warm-up, and the weight bytes read per second.
"""

import os
import time

import jax
import jax.numpy as jnp


def best_seconds(fn, *args, repeats=30):
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return min(times)


def main():
    lines = []
    plain = jax.jit(lambda x, w: x @ w)
    transposed = jax.jit(lambda x, w: jnp.einsum("bd,nd->bn", x, w))
    for dtype in (jnp.float32, jnp.bfloat16):
        for d, n in ((768, 32000), (768, 3072), (3072, 768)):
            x = jnp.ones((8, d), dtype)
            w = jnp.ones((d, n), dtype) * 0.01
            wt = jnp.ones((n, d), dtype) * 0.01
            t, tt = best_seconds(plain, x, w), best_seconds(transposed, x, wt)
            gb = w.nbytes / 1e9
            lines.append(
                f"{jnp.dtype(dtype).name} {d}x{n}: [in,out] {t * 1e3:.2f} ms {gb / t:.1f} GB/s | "
                f"[out,in] {tt * 1e3:.2f} ms {gb / tt:.1f} GB/s"
            )
    print(os.environ.get("XLA_FLAGS", "(default)"))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
