"""tools/venv.sh and the Makefile around it, with a stand-in interpreter instead of a real build.

The stand-in (`PRM_PYTHON`) runs this test's own interpreter for everything except `-m venv`,
where it makes a venv whose `python` runs this interpreter too but only logs `pip` calls. So the
cache key, the marker, the link and what gets installed are venv.sh's real logic, and `make test`
runs real pytest, in seconds and offline. This interpreter's environment may hold an editable
prm pointing at another checkout: the clones must import their own code anyway.
"""

import os
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NOT_SOURCE = shutil.ignore_patterns(
    ".git", ".venv", "workdirs", "build", "*.egg-info", "__pycache__", ".hypothesis"
)

# Run in each clone by `make test ARGS=...`: both in pytest and in a process it starts from
# another directory, `prm` is this clone's.
PROBE = """
import os, subprocess, sys
import prm

CLONE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

def test_prm_is_this_clones():
    expected = os.path.join(CLONE, "prm", "__init__.py")
    assert prm.__file__ == expected
    child = subprocess.run([sys.executable, "-c", "import prm; print(prm.__file__)"],
                           cwd="/", capture_output=True, text=True, check=True)
    assert child.stdout.strip() == expected
"""

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


@pytest.fixture
def setup(tmp_path):
    """(clone a, clone b, environment for make, file logging the fake venvs' pip calls)."""
    pip_log = tmp_path / "pip.log"
    venv_python = tmp_path / "venv_python"
    venv_python.write_text(textwrap.dedent(f"""\
        #!/bin/sh
        if [ "$1" = -m ] && [ "$2" = pip ]; then echo "$@" >> {shlex.quote(str(pip_log))}; exit 0; fi
        exec {shlex.quote(sys.executable)} "$@"
        """))  # fmt: skip
    base_python = tmp_path / "base_python"
    base_python.write_text(textwrap.dedent(f"""\
        #!/bin/sh
        if [ "$1" = -m ] && [ "$2" = venv ]; then
          mkdir -p "$3/bin" && cp {shlex.quote(str(venv_python))} "$3/bin/python"; exit 0
        fi
        exec {shlex.quote(sys.executable)} "$@"
        """))  # fmt: skip
    for script in (venv_python, base_python):
        script.chmod(0o755)
    clones = []
    for name in ("a", "b"):
        clone = tmp_path / name
        shutil.copytree(ROOT, clone, ignore=NOT_SOURCE)
        (clone / "tests" / "test_probe_clone.py").write_text(PROBE)
        clones.append(clone)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MAKEFLAGS", "MFLAGS")}
    env.update(PRM_PYTHON=str(base_python), PRM_VENV_ROOT=str(tmp_path / "venvs"))
    return *clones, env, pip_log


def _make(clone, env, *args):
    return subprocess.Popen(["make", *args], cwd=clone, env=env, text=True, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip


def _succeeds(make, timeout=180):
    """Whether `make` exits 0 within `timeout` s; on a timeout its whole process group is
    killed (a Makefile that ignored ARGS would run the full suite)."""
    try:
        output, _ = make.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(make.pid, signal.SIGKILL)
        make.communicate()
        pytest.fail(f"make {make.args[1:]} did not finish in {timeout} s")
    assert make.returncode == 0, output
    return True


def _pip_calls(log):
    return log.read_text().splitlines() if log.exists() else []


def test_clones_sharing_a_cached_venv_import_their_own_code(setup):
    a, b, env, pip_log = setup
    assert _succeeds(_make(a, env, "venv"))
    # The venv holds the dependencies (install_requires and the dev extra), never prm itself.
    calls = _pip_calls(pip_log)
    venv = os.readlink(a / ".venv")
    assert calls[-1] == f"-m pip install --quiet -r {venv}/requirements.txt"
    with open(os.path.join(venv, "requirements.txt")) as f:
        packages = f.read().split()
    assert packages[0].startswith("jax~=") and "bm25s~=0.3" in packages
    assert "torch==2.13.0" in packages and "pytest~=9.0" in packages
    assert not [p for p in packages if p.startswith(("-e", ".", "prm"))]

    # Both clones run the README's one-file test command at the same time.
    runs = [_make(clone, env, "test", "ARGS=tests/test_probe_clone.py") for clone in (a, b)]
    for run in runs:
        assert _succeeds(run)
    assert len(_pip_calls(pip_log)) == len(calls)  # b reused a's venv: nothing installed
    assert os.readlink(a / ".venv") == os.readlink(b / ".venv")


def test_venv_key_follows_the_dependency_lists_only(setup):
    a, b, env, pip_log = setup
    assert _succeeds(_make(a, env, "venv"))
    cfg = (b / "setup.cfg").read_text()
    (b / "setup.cfg").write_text(cfg.replace("description = ", "description = Edited. "))
    assert _succeeds(_make(b, env, "venv"))
    assert os.readlink(a / ".venv") == os.readlink(b / ".venv")

    (b / "setup.cfg").write_text(cfg.replace("    tqdm>=4.66\n", "    tqdm>=4.67\n"))
    assert _succeeds(_make(b, env, "venv"))
    assert os.readlink(a / ".venv") != os.readlink(b / ".venv")
    with open(os.path.join(os.readlink(b / ".venv"), "requirements.txt")) as f:
        assert "tqdm>=4.67" in f.read().split()


def test_every_phony_target_has_a_recipe():
    with open(os.path.join(ROOT, "Makefile")) as f:
        phony = next(line for line in f if line.startswith(".PHONY:")).split()[1:]
    for target in phony:
        dry = subprocess.run(["make", "-n", "-C", ROOT, target], capture_output=True, text=True)
        assert dry.returncode == 0 and dry.stdout.strip(), (target, dry.stdout, dry.stderr)
        assert "Nothing to be done" not in dry.stdout, target
