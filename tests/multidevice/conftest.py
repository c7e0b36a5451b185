"""Multi-device tests: 8 simulated CPU devices, set before JAX initialises its backend.

`make test` runs this directory in its own pytest process so the rest of the suite keeps the
default single device.
"""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)
