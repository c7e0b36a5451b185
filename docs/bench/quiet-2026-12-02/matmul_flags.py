"""Time decode-shaped matmuls ([8, d] @ [d, n]) under the XLA_FLAGS given in argv[1]."""
import os, sys, time
import jax, jax.numpy as jnp, numpy as np
def best(fn, *a, reps=30):
    jax.block_until_ready(fn(*a)); ts = []
    for _ in range(reps):
        t = time.perf_counter(); jax.block_until_ready(fn(*a)); ts.append(time.perf_counter() - t)
    return min(ts)
out = []
for dtype in (jnp.float32, jnp.bfloat16):
    for d, n in ((768, 32000), (768, 3072), (3072, 768)):
        x = jnp.ones((8, d), dtype); w = jnp.ones((d, n), dtype) * 0.01
        wt = jnp.ones((n, d), dtype) * 0.01
        f = jax.jit(lambda x, w: x @ w); ft = jax.jit(lambda x, w: jnp.einsum("bd,nd->bn", x, w))
        t, tt = best(f, x, w), best(ft, x, wt)
        gb = w.nbytes / 1e9
        out.append(f"{jnp.dtype(dtype).name} {d}x{n}: [in,out] {t*1e3:.2f} ms {gb/t:.1f} GB/s | [out,in] {tt*1e3:.2f} ms {gb/tt:.1f} GB/s")
print(os.environ.get("XLA_FLAGS", "(default)")); print("\n".join(out))
