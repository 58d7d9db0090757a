#!/usr/bin/env bash
# Makes <build dir>/pyenv, a Python virtual environment with numpy and safetensors, for the
# safetensors interop test (tests/python/interop.py finds it there). Never fails the build:
# without python3-venv or PyPI it says so and exits 0, and the interop test is then skipped.
#   usage: bash cmake/python_env.sh <build dir>
set -u
build=${1:?usage: bash cmake/python_env.sh <build dir>}
env_dir="$build/pyenv"
say() { printf '==> python_env: %s\n' "$*"; }

if [ -x "$env_dir/bin/python" ] && "$env_dir/bin/python" -c "import numpy, safetensors" 2>/dev/null; then
  say "$env_dir already has numpy and safetensors"
  exit 0
fi
if ! command -v python3 >/dev/null 2>&1; then
  say "no python3; the safetensors interop test will be skipped"
  exit 0
fi
mkdir -p "$build"
if ! python3 -m venv "$env_dir" >/dev/null 2>&1; then
  say "python3 -m venv failed (on Debian: apt-get install python3-venv); the interop test will be skipped"
  rm -rf "$env_dir"
  exit 0
fi
if "$env_dir/bin/python" -m pip install --quiet --disable-pip-version-check --timeout 20 --retries 1 \
     numpy safetensors; then
  say "installed numpy and safetensors into $env_dir"
else
  say "pip could not install numpy and safetensors (is PyPI reachable?); the interop test will be skipped"
fi
exit 0
