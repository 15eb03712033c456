#!/usr/bin/env bash
# Runs arroyo's own test suite, from the sdist of the arroyo installed in $PYTHON's environment,
# with our stand-ins for the files the sdist lacks. ARROYO_SUITE_PATCHED=1 installs the patch first.
# Tests that need a Kafka broker are deselected (they connect to $DEFAULT_BROKERS).
# Usage: arroyo_suite/run.sh PYTHON [pytest args...]
set -euo pipefail
python=$(cd "$(dirname "$1")" && pwd)/$(basename "$1"); shift
here=$(cd "$(dirname "$0")" && pwd)
version=$("$python" -c 'from importlib.metadata import version; print(version("sentry-arroyo"))')
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$python" -m pip download -q --no-deps --no-binary :all: "sentry-arroyo==$version" -d "$work" >/dev/null
tar xzf "$work"/sentry_arroyo-"$version".tar.gz -C "$work"
src="$work/sentry_arroyo-$version"
cp "$here/metrics.py" "$here/assertions.py" "$here/conftest.py" "$src/tests/"
cd "$src"
# Import arroyo and arroyo_metrics_buffer from the environment, never from the unpacked sdist.
rm -rf arroyo
"$python" -m pytest tests -q -p no:cacheprovider -o addopts="" --timeout=120 \
  --deselect tests/backends/test_kafka.py::TestKafkaStreams \
  --deselect tests/backends/test_kafka.py::TestKafkaStreamsKip848 \
  --deselect tests/test_kip848_e2e.py \
  "$@"
