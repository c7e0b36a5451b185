"""Do XLA:CPU's experimental matmul flags change the compiled decode-shaped dot at all?

    python docs/bench/amd-2026-12-02/flags_hlo_check.py

Compiles `tanh(x @ w)` ([8, 768] @ [768, 3072], f32 and bf16) in a fresh process per XLA_FLAGS
value and prints whether the optimised HLO equals the default's, and which fusion holds the dot.
"""

import os
import subprocess
import sys

FLAG_SETS = (
    "",
    "--xla_cpu_experimental_xnn_fusion_type=dot",
    "--xla_cpu_experimental_onednn_custom_call=true",
    "--xla_cpu_experimental_onednn_custom_call=true --xla_cpu_experimental_xnn_fusion_type=dot",
)

CHILD = """
import jax, jax.numpy as jnp
for dtype in (jnp.float32, jnp.bfloat16):
    x, w = jnp.ones((8, 768), dtype), jnp.ones((768, 3072), dtype)
    print(jax.jit(lambda x, w: jnp.tanh(x @ w)).lower(x, w).compile().as_text())
"""


def compiled(flags: str) -> str:
    env = {**os.environ, "XLA_FLAGS": flags}
    return subprocess.run(
        [sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, check=True
    ).stdout


def main():
    default = compiled("")
    kinds = sorted({part.split('"')[0] for part in default.split('"kind":"')[1:]})
    print(f"default: the dot compiles into fusion kinds {kinds}")
    for flags in FLAG_SETS[1:]:
        print(f"{flags}: optimised HLO identical to the default: {compiled(flags) == default}")


if __name__ == "__main__":
    main()
