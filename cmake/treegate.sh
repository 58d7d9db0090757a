#!/usr/bin/env bash
# treegate's build driver behind the README's two commands:
#   bash cmake/treegate.sh test   build with the `dev` preset and run every test, then the same
#                                 under ASan+UBSan (`asan` preset) unless TREEGATE_SANITIZE=0;
#                                 TREEGATE_WERROR=1 turns warnings into errors.
#   bash cmake/treegate.sh demo   build the `release` preset and run the showcase example, the
#                                 quick Fashion-MNIST training example and the roofline benchmark.
set -euo pipefail

# Debian packages: needed for every command, and wanted (not needed) by `demo`.
REQUIRED_PACKAGES="cmake g++ libeigen3-dev catch2 libbenchmark-dev nlohmann-json3-dev"
DEMO_OPTIONAL_PACKAGES="gnuplot-nox"
# The Fashion-MNIST example needs its data and zlib; without them the demo skips that step.
DEMO_MNIST_PACKAGES="dataset-fashion-mnist zlib1g-dev"
# The safetensors interop test runs in a virtual environment with numpy and safetensors from PyPI.
TEST_OPTIONAL_PACKAGES="python3 python3-venv"

usage() {
  echo "usage: bash cmake/treegate.sh {test|demo}" >&2
  exit 2
}

say() { printf '==> %s\n' "$*"; }
die() { printf 'treegate.sh: error: %s\n' "$*" >&2; exit 1; }

cd "$(dirname "$0")/.."

jobs=$(nproc 2>/dev/null || getconf _NPROCESSORS_ONLN 2>/dev/null || echo 2)

# Prints the packages of "$@" that dpkg does not report as installed.
missing_packages() {
  local pkg status
  for pkg in "$@"; do
    status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
    case "$status" in
      *" installed") ;;
      *) printf '%s ' "$pkg" ;;
    esac
  done
}

# Prints the command prefix that runs apt-get as root ("" when we are root, "sudo" when it
# is available); fails when there is none.
root_prefix() {
  if [ "$(id -u)" -eq 0 ]; then
    echo ""
  elif command -v sudo >/dev/null 2>&1; then
    echo sudo
  else
    return 1
  fi
}

# Installs "$@" with apt-get through the prefix $root; updates the package lists only when
# the first attempt fails.
apt_install() {
  local -a install=(env DEBIAN_FRONTEND=noninteractive
                    apt-get install -y --no-install-recommends "$@")
  # shellcheck disable=SC2086  # $root is empty or "sudo"
  $root "${install[@]}" && return 0
  say "apt-get install failed; updating the package lists and retrying"
  # shellcheck disable=SC2086
  $root env DEBIAN_FRONTEND=noninteractive apt-get update && $root "${install[@]}"
}

# Makes sure the packages in $1 are installed; with $2 = optional, only tries.
ensure_packages() {
  local packages=$1 kind=${2:-required} missing
  if ! command -v dpkg-query >/dev/null 2>&1; then
    [ "$kind" = required ] &&
      say "not a Debian system: make sure the equivalents of these are installed: $packages"
    return 0
  fi
  # shellcheck disable=SC2086  # word splitting of the package list is intended
  missing=$(missing_packages $packages)
  missing=${missing% }
  [ -z "$missing" ] && return 0
  say "missing $kind Debian packages: $missing"
  local root
  # shellcheck disable=SC2086
  if root=$(root_prefix) && apt_install $missing; then
    return 0
  fi
  if [ "$kind" = required ]; then
    {
      echo "treegate.sh: these Debian packages are needed and could not be installed: $missing"
      echo "install them with:"
      echo "  sudo apt-get install -y --no-install-recommends $missing"
    } >&2
    exit 1
  fi
  say "optional packages not installed ($missing); continuing without them"
}

# The "N tests failed out of M" line of a ctest log.
ctest_summary() {
  grep -E 'tests passed, [0-9]+ tests? failed out of [0-9]+' "$1" | tail -n 1 || true
}

# Configures, builds and tests one preset; appends "preset: summary" to $summaries.
summaries=""
build_and_test() {
  local preset=$1 werror=OFF log build_start build_seconds
  [ "${TREEGATE_WERROR:-0}" = 1 ] && werror=ON
  say "configuring preset '$preset' (warnings as errors: $werror)"
  cmake --preset "$preset" -DCMAKE_COMPILE_WARNING_AS_ERROR="$werror"
  say "building preset '$preset' with $jobs jobs"
  build_start=$SECONDS
  cmake --build --preset "$preset" --parallel "$jobs"
  build_seconds=$((SECONDS - build_start))
  if [ "$preset" = dev ]; then
    bash cmake/python_env.sh "build/$preset"
  fi
  say "testing preset '$preset'"
  log="build/$preset/ctest.log"
  ctest --preset "$preset" -j "$jobs" --output-on-failure 2>&1 | tee "$log"
  summaries="$summaries  $preset: built in ${build_seconds} s; $(ctest_summary "$log")"$'\n'
}

cmd_test() {
  ensure_packages "$REQUIRED_PACKAGES"
  ensure_packages "$TEST_OPTIONAL_PACKAGES" optional
  local start=$SECONDS
  build_and_test dev
  if [ "${TREEGATE_SANITIZE:-1}" != 0 ]; then
    build_and_test asan
  else
    say "TREEGATE_SANITIZE=0: skipping the asan preset"
  fi
  say "all tests passed; $((SECONDS - start)) s in total"
  printf '%s' "$summaries"
}

run_if_built() {
  local exe=$1 what=$2
  if [ -x "$exe" ]; then
    say "running $exe"
    "$exe"
  else
    say "$exe does not exist yet: $what has not been written, nothing to run"
    return 1
  fi
}

cmd_demo() {
  ensure_packages "$REQUIRED_PACKAGES"
  ensure_packages "$DEMO_OPTIONAL_PACKAGES" optional
  ensure_packages "$DEMO_MNIST_PACKAGES" optional
  local start=$SECONDS
  say "configuring preset 'release'"
  cmake --preset release
  say "building preset 'release' with $jobs jobs"
  cmake --build --preset release --parallel "$jobs"
  say "built in $((SECONDS - start)) s"
  local status=0
  run_if_built build/release/examples/showcase "examples/showcase.cpp" || status=1
  local mnist_missing=""
  if command -v dpkg-query >/dev/null 2>&1; then
    # shellcheck disable=SC2086  # word splitting of the package list is intended
    mnist_missing=$(missing_packages $DEMO_MNIST_PACKAGES)
  fi
  if [ -n "$mnist_missing" ]; then
    say "Debian packages ${mnist_missing% } are not installed: skipped the Fashion-MNIST example"
  elif [ ! -e /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
    say "no Fashion-MNIST data in /usr/share/datasets/fashion-mnist: skipped the Fashion-MNIST example"
  elif [ ! -x build/release/examples/fashion_mnist ]; then
    say "build/release/examples/fashion_mnist was not built (zlib not found by CMake?); skipped"
  else
    say "running build/release/examples/fashion_mnist --quick --out build/release/fashion_mnist"
    build/release/examples/fashion_mnist --quick --out build/release/fashion_mnist || status=1
  fi
  if [ -e build/release/bench/treegate_roofline ]; then
    run_if_built build/release/bench/treegate_roofline "bench/treegate_roofline.cpp"
  else
    say "build/release/bench/treegate_roofline does not exist yet (bench/treegate_roofline.cpp); skipped"
  fi
  return "$status"
}

[ $# -eq 1 ] || usage
case "$1" in
  test) cmd_test ;;
  demo) cmd_demo ;;
  *) usage ;;
esac
