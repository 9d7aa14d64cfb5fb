#!/usr/bin/env bash
# One command from a fresh machine to the whole test suite (real PostgreSQL servers, a moto AWS endpoint).
set -euo pipefail
cd "$(dirname "$0")/.."
REPLICATOR_TEST_DEPS=1 ./scripts/setup.sh
# The venv's tools (aws, used by tests that run the check's printed fixes) come first on PATH.
export PATH="$PWD/.venv/bin:$PATH"
# One worker per core; a test file stays on one worker (its module fixtures, e.g. the SSL server, too).
exec .venv/bin/python -m pytest -n auto --dist loadfile "$@"
