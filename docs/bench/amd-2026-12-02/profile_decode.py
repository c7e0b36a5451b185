"""Where a 100M decode step's time goes: per-op device time from a jax.profiler trace.

    python docs/bench/amd-2026-12-02/profile_decode.py [f32|bf16] [copy|nocopy]

Builds the decode benchmark's 100M model (experiments/bench_sampler.py), warms up one generate of
64 tokens for 8 rows after a 64-token prompt, then traces a second one and sums the duration of
every XLA op event on XLA's worker threads (the two cores, so sums can exceed wall time): the
dot fusions (`ynn_fusion*`) against every other op kind, the largest of those by name.
"""

import collections
import dataclasses
import glob
import sys
import tempfile
import time

import jax
import numpy as np

from experiments.bench_sampler import CONFIGS, DTYPES, bench_model, random_tokens
from prm.sampling import Sampler


def main():
    dtype_name = sys.argv[1] if len(sys.argv) > 1 else "f32"
    dtype = DTYPES[dtype_name]
    config = dataclasses.replace(CONFIGS["100m"], dtype=dtype, param_dtype=dtype)
    decode_copy = (sys.argv[2] if len(sys.argv) > 2 else "copy") == "copy"
    sampler = Sampler(bench_model(config), eos_token_ids=(), decode_copy=decode_copy)
    prompts = random_tokens(np.random.default_rng(0), config.vocab_size, 8, 64).tolist()
    steps = 64

    def run():
        session = sampler.start(prompts, reserve=steps)
        jax.block_until_ready(session.cache)
        start = time.perf_counter()
        generation = session.generate(steps)
        jax.block_until_ready(generation.tokens)
        return time.perf_counter() - start

    run()
    seconds = run()
    with tempfile.TemporaryDirectory() as directory:
        with jax.profiler.trace(directory):
            run()
        (path,) = glob.glob(f"{directory}/**/*.xplane.pb", recursive=True)
        profile = jax.profiler.ProfileData.from_file(path)
        ops = collections.Counter()  # XLA op events on the XLA worker threads, by op name
        calls = collections.Counter()
        for plane in profile.planes:
            for line in plane.lines:
                if not line.name.startswith("tf_XLAEigen"):
                    continue
                for event in line.events:
                    if event.name.startswith(("ThunkExecutor", "SlinkyThreadPool")):
                        continue
                    ops[event.name] += event.duration_ns
                    calls[event.name] += 1
    per_step = lambda ns: ns / 1e6 / steps  # noqa: E731
    dots = sum(ns for name, ns in ops.items() if name.startswith("ynn_fusion"))
    print(
        f"{dtype_name} decode_copy={decode_copy}: generate {steps} tokens x 8 rows: {seconds / steps * 1e3:.2f} ms/step "
        f"untraced; op time summed over both threads {per_step(sum(ops.values())):.2f} ms/step, "
        f"of which dot fusions (ynn_fusion*) {per_step(dots):.2f}"
    )
    others = collections.Counter(
        {name.rstrip("0123456789.") or name: 0 for name in ops if not name.startswith("ynn")}
    )
    for name, ns in ops.items():
        if not name.startswith("ynn"):
            others[name.rstrip("0123456789.") or name] += ns
    for name, ns in others.most_common(15):
        print(f"{per_step(ns):8.3f} ms/step  {name}")


if __name__ == "__main__":
    main()
