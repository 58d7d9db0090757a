#!/usr/bin/env bash
# Makes <build dir>/pyenv, a Python virtual environment for the tests in tests/python/: numpy and
# safetensors (interop.py), and CPU-usable torch with fastfeedforward (pytorch_interop.py).
# Never fails the build: without python3-venv or PyPI it says so and exits 0, and the tests that
# need the missing packages are then skipped.
#   usage: [TREEGATE_PYTORCH=0] bash cmake/python_env.sh <build dir>
# TREEGATE_PYTORCH=0 leaves torch out (about 3.3 GB installed; see the README, "From PyTorch").
#
# torch is pinned to 1.13.1: PyPI's Linux wheels of every torch release bring NVIDIA's CUDA
# libraries as dependencies (import torch loads them even on a CPU), and 1.13.1's set is the
# smallest (4 of them, no triton): 3.3 GB and about 50 s cold here, against 5.4 GB for the
# newest. It was built against NumPy 1, so numpy is kept below 2 alongside it. Where no 1.13.1
# wheel exists (Python 3.12 and later) the newest torch is installed instead.
set -u
build=${1:?usage: bash cmake/python_env.sh <build dir>}
env_dir="$build/pyenv"
want_torch=${TREEGATE_PYTORCH:-1}
say() { printf '==> python_env: %s\n' "$*"; }
pip_install() {
  "$env_dir/bin/python" -m pip install --quiet --disable-pip-version-check --timeout 20 --retries 1 "$@"
}
has() { [ -x "$env_dir/bin/python" ] && "$env_dir/bin/python" -c "import $1" 2>/dev/null; }

base_ok=0 torch_ok=0
has "numpy, safetensors" && base_ok=1
has "torch, fastfeedforward, numpy, safetensors" && torch_ok=1
if [ "$base_ok" = 1 ] && { [ "$torch_ok" = 1 ] || [ "$want_torch" = 0 ]; }; then
  say "$env_dir already has what the tests need"
  exit 0
fi
if ! command -v python3 >/dev/null 2>&1; then
  say "no python3; the Python interop tests will be skipped"
  exit 0
fi
mkdir -p "$build"
if [ ! -x "$env_dir/bin/python" ] && ! python3 -m venv "$env_dir" >/dev/null 2>&1; then
  say "python3 -m venv failed (on Debian: apt-get install python3-venv); the interop tests will be skipped"
  rm -rf "$env_dir"
  exit 0
fi
start=$SECONDS
if [ "$want_torch" != 0 ]; then
  if pip_install "numpy<2" safetensors torch==1.13.1 fastfeedforward==0.2.1 ||
     pip_install numpy safetensors torch fastfeedforward==0.2.1; then
    say "installed numpy, safetensors, torch and fastfeedforward into $env_dir in $((SECONDS - start)) s" \
        "($(du -sh "$env_dir" 2>/dev/null | cut -f1))"
    exit 0
  fi
  say "pip could not install torch and fastfeedforward; the PyTorch test will be skipped"
fi
if pip_install numpy safetensors; then
  say "installed numpy and safetensors into $env_dir"
else
  say "pip could not install numpy and safetensors (is PyPI reachable?); the interop tests will be skipped"
fi
exit 0
