# Shared set-up for scripts/run and scripts/test: virtualenvs under .venvs/, one per arroyo version,
# and the extension built once (release profile) as a wheel installed into each.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# The arroyo versions tested: the first with a buffered ConfluentProducer, the last without latency
# samples, the first with them, and the latest release when this list was last updated.
ARROYO_VERSIONS=(2.31.2 2.40.1 2.40.3 2.48.0)
MAIN_ARROYO=2.48.0
PYTHON=${PYTHON:-python3}
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1

say() { printf '\n\033[1m== %s\033[0m\n' "$*" >&2; }

# What every virtualenv gets besides arroyo (the main one also gets MAIN_TOOLS).
TEST_TOOLS="confluent-kafka pytest pytest-timeout pytest-benchmark pytest-rerunfailures freezegun time-machine"
MAIN_TOOLS="maturin ruff mypy"

# venv_for VERSION -> path of a virtualenv with that arroyo, confluent-kafka and the test tools,
# made anew when the list of what it should hold has changed.
venv_for() {
  local version=$1 dir="$ROOT/.venvs/arroyo-$1" wants
  wants="sentry-arroyo==$version $TEST_TOOLS"
  if [ "$version" = "$MAIN_ARROYO" ]; then wants="$wants $MAIN_TOOLS"; fi
  if [ "$(cat "$dir/.ready" 2>/dev/null)" != "$wants" ]; then
    say "virtualenv for arroyo $version"
    rm -rf "$dir"
    "$PYTHON" -m venv "$dir"
    "$dir/bin/pip" install -q --upgrade pip >&2
    # shellcheck disable=SC2086 # a list of requirements
    "$dir/bin/pip" install -q $wants >&2
    echo "$wants" > "$dir/.ready"
  fi
  echo "$dir"
}

# build_wheel -> path of the freshly built wheel (cargo rebuilds only what changed).
build_wheel() {
  local main
  main=$(venv_for "$MAIN_ARROYO")
  say "building the extension (release)"
  rm -rf "$ROOT/dist"
  (cd "$ROOT" && "$main/bin/maturin" build --release --quiet -o dist -i "$main/bin/python" >&2)
  ls "$ROOT"/dist/arroyo_metrics_buffer-*.whl
}

# install_wheel VENV WHEEL
install_wheel() {
  "$1/bin/pip" install -q --force-reinstall --no-deps "$2" >&2
}
