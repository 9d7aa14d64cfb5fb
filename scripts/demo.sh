#!/usr/bin/env bash
# One command from a fresh machine to a replication you can watch: sets up, then runs the demo
# (two throwaway local PostgreSQL servers, sample data, a parallel snapshot with progress).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
exec .venv/bin/python -m replicator demo "$@"
