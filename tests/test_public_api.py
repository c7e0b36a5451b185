"""The public API as the README shows it: the example runs, and `import prm` stays light."""

import pathlib
import re
import subprocess
import sys

import numpy as np

import prm

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def readme_example() -> str:
    text = README.read_text()
    section = text.split("## Using prm from another project", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_example_runs_and_gives_the_documented_quantities():
    namespace: dict = {}
    exec(readme_example(), namespace)  # noqa: S102 - the README's own example
    # Sibling advantages of [1, 0, 2, 1, -1]: mean 0.6, unbiased std sqrt(5.2/4) = 1.140175.
    np.testing.assert_allclose(
        namespace["advantages"],
        [[0.4, -0.6, 1.4, 0.4, -1.6]] / np.float32(1.140175 + 1e-6),
        rtol=1e-5,
    )
    np.testing.assert_allclose(namespace["token_adv"], [[0, 0, 0.5, 0.5, 0.5, 0, 0, -1, -1]])
    # ratio = exp(-1 + 1.1) = 1.10517 (inside the clip range): loss = -mean(ratio * adv) over
    # the 5 step tokens = -1.10517 * (3 * 0.5 - 2) / 5 = 0.110517.
    np.testing.assert_allclose(namespace["loss"], 0.1105171, rtol=1e-5)
    assert float(namespace["kl"]) == 0.0  # policy == reference
    # Every token reward is 0 (policy == reference), so the min step score is 0.
    np.testing.assert_allclose(namespace["score"], [0.0])


def test_public_names_resolve():
    for name in prm.__all__:
        assert callable(getattr(prm, name)), name
    for sub in ("rewards", "labels", "metrics", "theory", "models", "sampling", "envs"):
        assert getattr(prm, sub).__name__ == f"prm.{sub}"


def test_import_prm_does_not_pull_heavy_dependencies():
    code = (
        "import sys, prm; heavy = [m for m in ('transformers', 'torch', 'bm25s', "
        "'orbax.checkpoint', 'tunix') if m in sys.modules]; print(heavy); assert not heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
