# Shared set-up for scripts/run, scripts/test, scripts/wheels and .ci/run: CPythons, virtualenvs
# under .venvs/, manylinux wheels built with maturin + zig, and stages that always all run.
set -euo pipefail
# Command substitutions fail with the script, too (bash >= 4.4; macOS's /bin/bash 3.2 lacks it).
shopt -s inherit_errexit 2>/dev/null || true

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# The CPythons CI tests (pyproject.toml's classifiers name exactly these). 3.11 is python3 when
# that is 3.11; the others (and 3.11 otherwise) come from $PYTHON_LOCATOR VERSION, by default
# scripts/find-python (python3.X on PATH, a locator beside the repository, or uv). confluent-kafka
# has no wheel for 3.15 yet, and sentry-arroyo needs it: 3.15 runs our tests without either.
PYTHONS=(3.11 3.13 3.14 3.15)
NO_KAFKA_PYTHONS=(3.15)
MAIN_PYTHON=3.11
# The arroyo versions tested: the first with a buffered ConfluentProducer, the last without latency
# samples, the first with them, and the latest release when this list was last updated.
ARROYO_VERSIONS=(2.31.2 2.40.1 2.40.3 2.48.0)
MAIN_ARROYO=2.48.0
PYTHON_LOCATOR=${PYTHON_LOCATOR:-$ROOT/scripts/find-python}
# Every virtualenv's tools are pinned (see the file).
CONSTRAINTS=$ROOT/constraints.txt
ARCH=$(uname -m)
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1

say() { printf '\n\033[1m== %s\033[0m\n' "$*" >&2; }
die() {
  echo "error: $*" >&2
  exit 1
}

# Build tools (on the main CPython): maturin, zig for manylinux2014 linking, auditwheel, and the
# GitHub workflow schema checker. What a test virtualenv gets; the main one also gets the linters.
BUILD_TOOLS="maturin>=1.9.4,<2 ziglang auditwheel check-jsonschema"
TEST_TOOLS="pytest pytest-timeout pytest-benchmark freezegun time-machine"
KAFKA_TOOLS="confluent-kafka==2.16.1"
# kafka_tools ARROYO_VERSION: confluent-kafka pinned within what that arroyo accepts (2.31.2
# requires < 2.10); constraints.txt cannot say it, as it depends on the arroyo version.
kafka_tools() {
  case "$1" in
    2.31.*) echo "confluent-kafka==2.9.0" ;;
    *) echo "$KAFKA_TOOLS" ;;
  esac
}
LINT_TOOLS="ruff mypy"

# python_for VERSION -> path of that CPython, or stop with the reason (never skip a Python).
python_for() {
  local version=$1 python
  if [ "$version" = "$MAIN_PYTHON" ] && python3 -c "import sys; sys.exit(sys.version_info[:2] != (3, 11))"; then
    python=$(python3 -c "import sys; print(sys.executable)")
  else
    python=$("$PYTHON_LOCATOR" "$version") \
      || die "no CPython $version: $PYTHON_LOCATOR $version failed (its message is above)"
  fi
  is_cpython "$python" "$version" || die "$python is not CPython $version"
  echo "$python"
}

# is_cpython PYTHON VERSION: PYTHON is that CPython; a trailing t (3.14t) is its free-threaded
# build, and without one, the build with the GIL.
is_cpython() {
  "$1" -c "import sys, sysconfig
want = '$2'
free = want.endswith('t')
sys.exit(sys.version_info[:2] != tuple(map(int, want.rstrip('t').split('.')))
         or bool(sysconfig.get_config_var('Py_GIL_DISABLED')) != free)" 2>/dev/null
}

# wheel_tags VERSION -> the python and ABI tags of that CPython's wheels (cp314-cp314, cp314-cp314t).
wheel_tags() {
  local digits=${1//./}
  echo "cp${digits%t}-cp$digits"
}

# is_no_kafka VERSION: true for the CPythons without confluent-kafka (and so without arroyo).
is_no_kafka() { [[ " ${NO_KAFKA_PYTHONS[*]} " == *" $1 "* ]]; }

# make_venv DIR PYTHON REQUIREMENTS... -> DIR, made anew when what it should hold (the
# requirements, the pins of constraints.txt) has changed.
make_venv() {
  local dir=$1 python=$2 wants
  shift 2
  wants="$("$python" -VV | head -1) $* $(cksum <"$CONSTRAINTS")"
  if [ "$(cat "$dir/.ready" 2>/dev/null)" != "$wants" ]; then
    say "virtualenv $(basename "$dir"): $*"
    rm -rf "$dir"
    "$python" -m venv "$dir"
    "$dir/bin/pip" install -q -c "$CONSTRAINTS" --upgrade pip >&2
    "$dir/bin/pip" install -q -c "$CONSTRAINTS" "$@" >&2
    echo "$wants" >"$dir/.ready"
  fi
  echo "$dir"
}

tools_venv() {
  # shellcheck disable=SC2086 # lists of requirements
  make_venv "$ROOT/.venvs/tools" "$(python_for "$MAIN_PYTHON")" $BUILD_TOOLS
}

# test_venv PYTHON_VERSION [ARROYO_VERSION] -> a virtualenv with the test tools, and (unless this
# CPython has no confluent-kafka) confluent-kafka and that arroyo; the main one also gets the linters.
test_venv() {
  local version=$1 arroyo=${2:-$MAIN_ARROYO} wants=$TEST_TOOLS name=py$1
  if ! is_no_kafka "$version"; then
    wants="$wants $(kafka_tools "$arroyo") sentry-arroyo==$arroyo"
    name="$name-arroyo$arroyo"
  fi
  if [ "$version" = "$MAIN_PYTHON" ] && [ "$arroyo" = "$MAIN_ARROYO" ]; then wants="$wants $LINT_TOOLS"; fi
  # shellcheck disable=SC2086 # a list of requirements
  make_venv "$ROOT/.venvs/$name" "$(python_for "$version")" $wants
}

# build_wheel PYTHON_VERSION [ARCH] -> path of a freshly built manylinux2014 (manylinux_2_17) wheel
# in dist/wheels, linked with zig against glibc 2.17 whatever this machine's glibc is. One cargo
# target directory per CPython and arch, so rebuilding one does not invalidate the others.
build_wheel() {
  local version=$1 arch=${2:-$ARCH} tools interpreter tags
  tools=$(tools_venv)
  tags=$(wheel_tags "$version")
  # A cross build takes maturin's bundled sysconfig for that CPython: it gets a name, not a path.
  if [ "$arch" = "$ARCH" ]; then interpreter=$(python_for "$version"); else interpreter=python$version; fi
  if ! grep -qx "$arch-unknown-linux-gnu" <<<"$(rustup target list --installed)"; then
    rustup target add "$arch-unknown-linux-gnu" >&2
  fi
  say "building the wheel for CPython $version on $arch (release, manylinux2014, zig)"
  rm -f "$ROOT"/dist/wheels/arroyo_metrics_buffer-*-"$tags"-*_"$arch".whl
  (cd "$ROOT" && PATH="$tools/bin:$PATH" CARGO_TARGET_DIR="$ROOT/target/wheels/$arch-${tags#*-}" \
    maturin build --release --quiet --zig --compatibility manylinux2014 \
    --target "$arch-unknown-linux-gnu" -i "$interpreter" -o dist/wheels >&2)
  ls "$ROOT"/dist/wheels/arroyo_metrics_buffer-*-"$tags"-*_"$arch".whl
}

# check_wheel WHEEL ARCH: auditwheel agrees that it is a manylinux_2_17 wheel for ARCH.
check_wheel() {
  local report
  report=$("$(tools_venv)/bin/auditwheel" show "$1" 2>&1 | tr -s ' \n' ' ')
  echo "auditwheel show $(basename "$1"):$report" >&2
  [[ $report == *"consistent with the following platform tag: \"manylinux_2_17_$2\""* ]] \
    || die "auditwheel does not find $(basename "$1") consistent with manylinux_2_17_$2"
}

# install_wheel VENV WHEEL
install_wheel() {
  "$1/bin/pip" install -q --force-reinstall --no-deps "$2" >&2
}

# without_rust: runs a command with no cargo, rustc or rustup on PATH.
without_rust() {
  local dir path= entries
  IFS=: read -ra entries <<<"$PATH"
  for dir in "${entries[@]}"; do
    [ -x "$dir/cargo" ] || [ -x "$dir/rustc" ] || path=${path:+$path:}$dir
  done
  PATH=$path "$@"
}

# check_version VENV [WHEEL]: Cargo.toml's version is what __version__, `python -m
# arroyo_metrics_buffer --version` and the wheel's file name say.
check_version() {
  local want got cli
  want=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$ROOT/Cargo.toml" | head -1)
  got=$("$1/bin/python" -c "import arroyo_metrics_buffer as m; print(m.__version__)")
  cli=$("$1/bin/python" -m arroyo_metrics_buffer --version)
  echo "version: Cargo.toml $want, __version__ $got, --version '$cli'${2:+, wheel $(basename "$2")}" >&2
  [ "$got" = "$want" ] || die "__version__ is $got, Cargo.toml says $want"
  [[ " $cli " == *" $want "* ]] || die "--version says '$cli', Cargo.toml says $want"
  [ -z "${2:-}" ] || [[ $(basename "$2") == arroyo_metrics_buffer-"$want"-* ]] \
    || die "the wheel $(basename "$2") is not version $want"
}

# run_pytest VENV [pytest args...]: our suite against the package installed in VENV (never the
# source tree: scripts/pytest-installed.py refuses unless it comes from site-packages), no Rust on PATH.
run_pytest() {
  local venv=$1
  shift
  (cd "$ROOT" && without_rust "$venv/bin/python" scripts/pytest-installed.py -p no:cacheprovider "$@")
}

# run_arroyo_suite VENV: arroyo's own test suite with install() active.
run_arroyo_suite() {
  ARROYO_SUITE_PATCHED=1 without_rust "$ROOT/arroyo_suite/run.sh" "$1/bin/python" --benchmark-disable
}

# Stages: `stage NAME COMMAND...` runs every stage, whatever happened before, in a subshell with
# errexit on; `stages_report` prints each one's result and duration and fails if any failed.
STAGE_LINES=()
STAGES_FAILED=0
stage() {
  local name=$1 start rc
  shift
  say "stage: $name"
  start=$SECONDS
  set +e
  (
    set -e
    "$@"
  )
  rc=$?
  set -e
  stage_done "$rc" $((SECONDS - start)) "$name"
}

# stage_done STATUS SECONDS NAME: records a stage's result.
stage_done() {
  local rc=$1 took=$2 name=$3 result=PASS
  if [ "$rc" -ne 0 ]; then
    result=FAIL
    STAGES_FAILED=$((STAGES_FAILED + 1))
  fi
  STAGE_LINES+=("$(printf '%-4s  %3dm%02ds  %s' "$result" $((took / 60)) $((took % 60)) "$name")")
  say "stage $result in $((took / 60))m$((took % 60))s: $name"
}

# Stages that run at the same time, for stages that mostly wait (a Kafka consumer spends seconds
# joining its group on the mock cluster): `stage_bg NAME COMMAND...` starts one in the background
# with its output kept; `stages_join` waits for them all, then prints each one's output and records
# its result, in the order they were started.
BG_NAMES=()
BG_PIDS=()
BG_LOGS=()
stage_bg() {
  local name=$1 log
  shift
  log=$(mktemp)
  say "stage started: $name"
  (
    set +e
    start=$SECONDS
    (
      set -e
      "$@"
    ) >"$log" 2>&1
    echo "$? $((SECONDS - start))" >"$log.status"
  ) &
  BG_NAMES+=("$name")
  BG_PIDS+=($!)
  BG_LOGS+=("$log")
}

stages_join() {
  local i rc took
  for i in "${!BG_PIDS[@]}"; do
    wait "${BG_PIDS[$i]}" || true
    read -r rc took <"${BG_LOGS[$i]}.status" || { rc=1 took=0; }
    say "stage: ${BG_NAMES[$i]}"
    cat "${BG_LOGS[$i]}" >&2
    rm -f "${BG_LOGS[$i]}" "${BG_LOGS[$i]}.status"
    stage_done "$rc" "$took" "${BG_NAMES[$i]}"
  done
  BG_NAMES=()
  BG_PIDS=()
  BG_LOGS=()
}

stages_report() {
  say "${1:-stages}"
  printf '%s\n' "${STAGE_LINES[@]}"
  local total=${#STAGE_LINES[@]}
  echo "$((total - STAGES_FAILED)) of $total stages passed in $((SECONDS / 60))m$((SECONDS % 60))s"
  [ "$STAGES_FAILED" -eq 0 ]
}
