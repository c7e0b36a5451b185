#!/usr/bin/env bash
# Builds (once) and links the project's virtual environment, then prints nothing on success.
#
# The venv lives outside the clone, keyed by a hash of setup.cfg, so repeated fresh clones (CI)
# reuse it; `.venv` in the clone is a symlink to it. A venv is only used once its install has
# completed (a marker file), so an interrupted install is redone, never half-used.
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

# Key the venv on what decides its contents: the interpreter and setup.cfg up to the pytest
# section (so editing test settings does not rebuild a 6 GB environment).
hash=$( (sed '/^\[tool:pytest\]/,$d' setup.cfg; "$PY" -c 'import sys; print(sys.version)') \
  | sha256sum | cut -c1-16)
root=${PRM_VENV_ROOT:-$HOME/.cache/prm}
venv="$root/venv-$hash"

if [ ! -f "$venv/.prm-installed" ]; then
  echo "prm: building virtual environment $venv with $("$PY" --version) (first run only; torch for parity tests is ~4.7 GB)" >&2
  rm -rf "$venv"
  mkdir -p "$root"
  "$PY" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --upgrade pip
  "$venv/bin/python" -m pip install --quiet -e '.[dev]'
  touch "$venv/.prm-installed"
else
  # The venv may have been built from another clone: point the editable install here (quietly;
  # pip's output is shown only if it fails).
  installed_at=$(cd / && "$venv/bin/python" -c 'import os, prm; print(os.path.dirname(os.path.dirname(prm.__file__)))' 2>/dev/null || true)
  if [ "$installed_at" != "$(pwd -P)" ]; then
    if ! out=$("$venv/bin/python" -m pip install --quiet --no-deps --no-build-isolation -e . 2>&1); then
      echo "$out" >&2
      echo "error: could not install this clone into $venv (see above)." >&2
      exit 1
    fi
  fi
fi
ln -sfn "$venv" .venv
