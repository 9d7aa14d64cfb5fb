#!/usr/bin/env bash
# One command from a fresh machine to the whole test suite (real PostgreSQL servers, a moto AWS endpoint).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
