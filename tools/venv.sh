#!/usr/bin/env bash
# Builds (once) and links the project's virtual environment, then prints nothing on success.
#
# The venv lives outside the clone, keyed by a hash of what it holds (the interpreter and the
# requirement lists of setup.cfg), so repeated fresh clones (CI) reuse it; `.venv` in the clone
# is a symlink to it. It holds only the dependencies (install_requires and the `dev` extra), never
# prm itself: the Makefile puts the clone on PYTHONPATH, so clones sharing one venv each import
# their own code, even when they run at the same time. A venv is only used once its install has
# completed (a marker file), so an interrupted install is redone, never half-used; concurrent
# first builds of the same venv wait for each other (flock, where available).
#
#   PRM_PYTHON=/path/to/python3.12   pick the interpreter explicitly
#   PRM_VENV_ROOT=DIR                where cached venvs live (default ~/.cache/prm)
set -euo pipefail
cd "$(dirname "$0")/.."

find_python() {
  if [ -n "${PRM_PYTHON:-}" ]; then echo "$PRM_PYTHON"; return; fi
  local candidates=()
  if command -v pyenv >/dev/null 2>&1; then
    local root; root=$(pyenv root)
    for v in "$root"/versions/3.12.* "$root"/versions/3.13.*; do
      [ -x "$v/bin/python3" ] && candidates+=("$v/bin/python3")
    done
  fi
  candidates+=(python3.12 python3.13 python3)
  for c in "${candidates[@]}"; do
    if "$c" -c 'import sys; sys.exit(0 if sys.version_info[:2] >= (3, 12) else 1)' 2>/dev/null; then
      echo "$c"; return
    fi
  done
  return 1
}

if ! PY=$(find_python); then
  echo "error: prm needs Python >= 3.12 (jax >= 0.11 requires it) and none was found." >&2
  echo "       Install one (e.g. 'pyenv install 3.12') or set PRM_PYTHON=/path/to/python3.12." >&2
  exit 1
fi

# What the venv holds, one requirement a line: setup.cfg's install_requires and `dev` extra.
requirements=$("$PY" -c '
import configparser
cfg = configparser.ConfigParser()
cfg.read("setup.cfg")
lists = cfg["options"]["install_requires"], cfg["options.extras_require"]["dev"]
print("\n".join(line.strip() for text in lists for line in text.splitlines() if line.strip()))
')
hash=$( (echo "$requirements"; "$PY" -c 'import sys; print(sys.version)') | sha256sum | cut -c1-16)
root=${PRM_VENV_ROOT:-$HOME/.cache/prm}
venv="$root/venv-$hash"
mkdir -p "$root"

if [ ! -f "$venv/.prm-installed" ]; then
  if command -v flock >/dev/null 2>&1; then
    exec 9>"$venv.lock"
    flock 9
  fi
  if [ ! -f "$venv/.prm-installed" ]; then  # another clone may have built it while we waited
    echo "prm: building virtual environment $venv with $("$PY" --version) (first run only; torch for parity tests is ~4.7 GB)" >&2
    rm -rf "$venv"
    "$PY" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --upgrade pip
    echo "$requirements" >"$venv/requirements.txt"  # kept: what this venv was built from
    "$venv/bin/python" -m pip install --quiet -r "$venv/requirements.txt"
    touch "$venv/.prm-installed"
  fi
fi
ln -sfn "$venv" .venv
