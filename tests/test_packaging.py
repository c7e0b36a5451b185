"""Packaging: `pip install` of this checkout installs the `prm` package only, and a project that
installed it trains its own config file with `python -m prm.train` from its own directory."""

import json
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOT_SOURCE = shutil.ignore_patterns(
    ".git", ".venv", "workdirs", "build", "*.egg-info", "__pycache__", ".hypothesis"
)

# A project's own config: the helpers come from the installed package, not the repo's configs/.
OWN_CONFIG = """
from prm.training.config import base_config, model_config, parse_arg

def get_config(arg=None):
    opts = parse_arg(arg, steps=100)
    c = base_config()
    c.model = model_config("qwen3", "tiny", vocab_size=64)
    c.data = {"name": "toy_repeat", "batch_size": 4, "seq_len": 16, "vocab_size": 64, "seed": 0}
    c.total_steps = opts.steps
    c.progress = False
    c.export_hf = False
    return c
"""


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A directory holding `pip install --no-deps` of this checkout (built offline)."""
    tmp = tmp_path_factory.mktemp("packaging")
    source, site = tmp / "source", tmp / "site"
    shutil.copytree(ROOT, source, ignore=NOT_SOURCE)  # the build writes into its source tree
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
         "--no-build-isolation", "--target", str(site), str(source)],
        check=True, capture_output=True,
    )  # fmt: skip
    return site


def test_only_the_prm_package_is_installed(site):
    installed = sorted(entry.name for entry in site.iterdir())
    assert [name for name in installed if not name.endswith(".dist-info")] == ["prm"]
    # The Search-R1 adapters the retrieval server and client import ship inside prm.
    assert (site / "prm" / "third_party" / "search_r1" / "retriever.py").is_file()


def test_an_installed_project_trains_its_own_config(site, tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    (project / "my_config.py").write_text(OWN_CONFIG)
    shutil.copy(os.path.join(ROOT, "configs", "toy.py"), project / "copied_from_repo.py")
    env = {**os.environ, "PYTHONPATH": str(site)}  # as if pip-installed: the repo is not on it

    def run(*args):
        return subprocess.run(
            [sys.executable, *args], cwd=project, env=env, capture_output=True, text=True
        )

    where = run("-c", "import prm; print(prm.__file__)")
    assert where.stdout.strip() == str(site / "prm" / "__init__.py"), where.stderr

    trained = run("-m", "prm.train", "--config=my_config.py:steps=2", "--workdir=runs/first")
    assert trained.returncode == 0, trained.stderr[-3000:]
    with open(project / "runs" / "first" / "config.json") as f:
        assert json.load(f)["total_steps"] == 2

    # A config copied from the repository imports `configs.common`, which only the repo has.
    copied = run("-m", "prm.train", "--config=copied_from_repo.py", "--workdir=run2")
    assert copied.returncode == 2
    assert copied.stderr.startswith("error: copied_from_repo.py: No module named 'configs'. ")
    assert "in a project of your own, import the helpers from prm.training.config" in (
        copied.stderr
    )
    assert not (project / "run2").exists()
