#!/usr/bin/env bash
# treegate's build driver behind the README's two commands:
#   bash cmake/treegate.sh test   build with the `dev` preset (g++) and run every test, then the
#                                 unit tests under ASan+UBSan (`asan` preset, clang++-14: so the
#                                 tests are built by both compilers) and the threaded tests under
#                                 ThreadSanitizer (`tsan` preset, g++), then fuzz the safetensors
#                                 loader (`fuzz` preset, clang++-14) for TREEGATE_FUZZ_SECONDS
#                                 (default 60; 0 skips it). TREEGATE_SANITIZE=0 skips the
#                                 sanitizers and fuzz; TREEGATE_WERROR=1 (CI) turns warnings into
#                                 errors and makes clang++-14 required: without it `asan` runs
#                                 with g++ and fuzz is skipped, each saying so, except under CI.
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
# OpenMPI for treegate::mpi and its tests (tests/mpi/, run under mpirun inside the dev ctest):
# optional for a user's run (without it those tests are left out, saying so), required under
# TREEGATE_WERROR=1 (CI).
MPI_PACKAGES="libopenmpi-dev openmpi-bin"
# clang++-14 with its sanitizer runtimes and libFuzzer, for the presets in CLANG_PRESETS and the
# fuzz step. Without them `asan` falls back to g++ and fuzz is skipped, unless TREEGATE_WERROR=1
# (CI), where they are required.
CLANG_PACKAGES="clang-14 libclang-rt-14-dev"
CLANG_COMPILER=clang++-14
CLANG_PRESETS="asan"
FUZZ_OPTIONAL_PACKAGES=$CLANG_PACKAGES
FUZZ_COMPILER=$CLANG_COMPILER

# The sanitizer presets of `test`, run in this order after `dev` (TREEGATE_SANITIZE=0 skips them).
# Each needs a configure, build and test preset of that name in CMakePresets.json; to add one
# (e.g. tsan), add it there and append its name here.
SANITIZER_PRESETS="asan tsan"

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

# One line per preset for the closing summary.
summaries=""
add_summary() { summaries="$summaries  $*"$'\n'; }

# Whether clang++-14 and its runtimes are (or could be made) present; installs them if missing.
# Under TREEGATE_WERROR=1 (CI) their absence is an error rather than a reason to fall back.
clang_checked=0 clang_ok=0
clang_available() {
  if [ "$clang_checked" = 0 ]; then
    clang_checked=1
    ensure_packages "$CLANG_PACKAGES" optional
    local missing=""
    # shellcheck disable=SC2086  # word splitting of the package list is intended
    command -v dpkg-query >/dev/null 2>&1 && missing=$(missing_packages $CLANG_PACKAGES)
    if command -v "$CLANG_COMPILER" >/dev/null 2>&1 && [ -z "$missing" ]; then
      clang_ok=1
    elif [ "${TREEGATE_WERROR:-0}" = 1 ]; then
      die "TREEGATE_WERROR=1 (CI) needs $CLANG_COMPILER with its sanitizer runtimes and libFuzzer" \
          "(Debian: $CLANG_PACKAGES), which could not be installed"
    fi
  fi
  [ "$clang_ok" = 1 ]
}

# Drops build/<preset>'s CMake cache when it was configured with another compiler than $2 (a
# preset that changed compiler, or the g++ fallback): CMake cannot switch a configured tree's
# compiler, and --fresh needs CMake 3.24.
drop_cache_if_compiler_changed() {
  local dir=build/$1 cached wanted
  [ -f "$dir/CMakeCache.txt" ] || return 0
  cached=$(sed -n 's/^CMAKE_CXX_COMPILER:[A-Z]*=//p' "$dir/CMakeCache.txt")
  cached=$(readlink -f "$cached" 2>/dev/null || echo "$cached")
  wanted=$(command -v "$2" 2>/dev/null || echo "$2")
  wanted=$(readlink -f "$wanted" 2>/dev/null || echo "$wanted")
  [ "$cached" = "$wanted" ] && return 0
  say "$dir was configured with $cached, not $wanted: starting its configuration afresh"
  rm -rf "$dir/CMakeCache.txt" "$dir/CMakeFiles"
}

# Configures and builds one preset; "$@" after the name go to the configure step. Sets
# configure_seconds and build_seconds.
configure_seconds=0
build_seconds=0
configure_and_build() {
  local preset=$1 werror=OFF t
  shift
  [ "${TREEGATE_WERROR:-0}" = 1 ] && werror=ON
  say "configuring preset '$preset' (warnings as errors: $werror)"
  t=$SECONDS
  cmake --preset "$preset" -DCMAKE_COMPILE_WARNING_AS_ERROR="$werror" "$@"
  configure_seconds=$((SECONDS - t))
  say "building preset '$preset' with $jobs jobs"
  t=$SECONDS
  cmake --build --preset "$preset" --parallel "$jobs"
  build_seconds=$((SECONDS - t))
}

# Runs ctest for one preset, its output also in build/<preset>/ctest.log; sets test_seconds.
test_seconds=0
run_ctest() {
  local preset=$1 t
  say "testing preset '$preset'"
  t=$SECONDS
  ctest --preset "$preset" -j "$jobs" --output-on-failure 2>&1 | tee "build/$preset/ctest.log"
  test_seconds=$((SECONDS - t))
}

# Configures, builds and tests one preset and adds its line to the summary. A preset in
# CLANG_PRESETS runs with g++ instead, saying so, when clang++-14 is missing outside CI.
build_and_test() {
  local preset=$1 label=$1 compiler=""
  local -a args=()
  case " $CLANG_PRESETS " in
    *" $preset "*)
      compiler=$CLANG_COMPILER
      if ! clang_available; then
        compiler=g++
        args=(-DCMAKE_CXX_COMPILER=g++)
        label="$preset (WITH g++: no $CLANG_COMPILER)"
        say "$CLANG_COMPILER could not be installed (Debian: $CLANG_PACKAGES): running" \
            "preset '$preset' with g++ instead, so no step builds the tests with clang"
      fi
      drop_cache_if_compiler_changed "$preset" "$compiler" ;;
  esac
  configure_and_build "$preset" "${args[@]}"
  run_ctest "$preset"
  add_summary "$label: configure ${configure_seconds} s, build ${build_seconds} s," \
              "test ${test_seconds} s; $(ctest_summary "build/$preset/ctest.log")"
}

# The dev preset: every test. The interop test's Python environment is mostly downloads, so it is
# made while the build compiles.
test_dev() {
  local preset=dev pyenv_log=build/dev/python_env.log pyenv_pid t
  mkdir -p build/dev
  say "making the interop test's Python environment in the background (log: $pyenv_log)"
  t=$SECONDS
  bash cmake/python_env.sh build/dev >"$pyenv_log" 2>&1 &
  pyenv_pid=$!
  configure_and_build "$preset"
  wait "$pyenv_pid" || true
  cat "$pyenv_log"
  say "Python environment ready after $((SECONDS - t)) s (made during the build)"
  run_ctest "$preset"
  add_summary "$preset: configure ${configure_seconds} s, build ${build_seconds} s," \
              "test ${test_seconds} s; $(ctest_summary "build/$preset/ctest.log")"
}

# The fuzz preset: builds fuzz_safetensors and fuzz_load_into with clang++-14 and runs them as ctests for
# TREEGATE_FUZZ_SECONDS (libFuzzer -max_total_time) from the seed corpus; reports the number of
# executions and crashes. Skipped, with a message, when clang++-14 or libFuzzer is missing.
test_fuzz() {
  local seconds=${TREEGATE_FUZZ_SECONDS:-60} log=build/fuzz/ctest.log status=0
  case "$seconds" in
    0) say "TREEGATE_FUZZ_SECONDS=0: skipping the fuzz step"
       add_summary "fuzz: skipped (TREEGATE_FUZZ_SECONDS=0)"
       return 0 ;;
    *[!0-9]*|'') die "TREEGATE_FUZZ_SECONDS must be a whole number of seconds, not '$seconds'" ;;
  esac
  if ! clang_available; then
    say "SKIPPING the fuzz step: it needs $FUZZ_COMPILER with libFuzzer" \
        "(Debian: $FUZZ_OPTIONAL_PACKAGES), which could not be installed"
    add_summary "fuzz: SKIPPED (no $FUZZ_COMPILER with libFuzzer)"
    return 0
  fi
  configure_and_build fuzz -DTREEGATE_FUZZ_SECONDS="$seconds"
  # -V for libFuzzer's closing statistics; its per-input lines stay in the log only.
  say "fuzzing the safetensors loader for $seconds s (full output: $log)"
  find build/fuzz -maxdepth 1 -type f -name 'fuzz_*_*-*' -delete  # a previous run's
  local t=$SECONDS
  ctest --preset fuzz -V >"$log" 2>&1 || status=$?
  test_seconds=$((SECONDS - t))
  grep -E 'INFO: (Seed|Loaded|seed corpus)|INITED|DONE|Done [0-9]+ runs|stat::|ERROR|SUMMARY|Test unit written|tests passed|Passed|Failed' \
    "$log" || true
  local executions crashes
  # Both fuzzers' (fuzz_safetensors, fuzz_load_into) executions, summed.
  executions=$(grep -Eo 'stat::number_of_executed_units: [0-9]+' "$log" | grep -Eo '[0-9]+$' |
               awk '{ n += $1 } END { if (NR) print n }' || true)
  crashes=$(find build/fuzz -maxdepth 1 -name 'fuzz_*_*-*' -type f | wc -l)
  add_summary "fuzz: configure ${configure_seconds} s, build ${build_seconds} s, test ${test_seconds} s;" \
              "${executions:-?} executions in $seconds s, $crashes crash(es); $(ctest_summary "$log")"
  if [ "$status" -ne 0 ]; then
    tail -n 80 "$log"
    printf '%s' "$summaries"
    die "the fuzz step failed (crashing inputs, if any: build/fuzz/fuzz_*_*-*)"
  fi
}

cmd_test() {
  ensure_packages "$REQUIRED_PACKAGES"
  ensure_packages "$TEST_OPTIONAL_PACKAGES" optional
  if [ "${TREEGATE_WERROR:-0}" = 1 ]; then
    ensure_packages "$MPI_PACKAGES"
  else
    ensure_packages "$MPI_PACKAGES" optional
  fi
  local start=$SECONDS preset
  test_dev
  if [ "${TREEGATE_SANITIZE:-1}" != 0 ]; then
    for preset in $SANITIZER_PRESETS; do
      build_and_test "$preset"
    done
    test_fuzz
  else
    say "TREEGATE_SANITIZE=0: skipping the sanitizer presets ($SANITIZER_PRESETS) and the fuzz step"
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
  # Only what the demo runs (the release preset also holds the tests and the other benchmarks).
  local targets="showcase treegate_roofline"
  [ -d build/release/examples/CMakeFiles/fashion_mnist.dir ] && targets="$targets fashion_mnist"
  say "building $targets (preset 'release') with $jobs jobs"
  # shellcheck disable=SC2086  # word splitting of the target list is intended
  cmake --build --preset release --parallel "$jobs" --target $targets
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
    run_if_built build/release/bench/treegate_roofline "bench/roofline/main.cpp"
  else
    say "build/release/bench/treegate_roofline does not exist yet (bench/roofline/main.cpp); skipped"
  fi
  return "$status"
}

[ $# -eq 1 ] || usage
case "$1" in
  test) cmd_test ;;
  demo) cmd_demo ;;
  *) usage ;;
esac
