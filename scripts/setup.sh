#!/usr/bin/env bash
# Installs what replicator, its demo and its tests need on a fresh Debian 12 machine:
# PostgreSQL 15 server binaries (+ wal2json) from Debian, Python packages into ./.venv.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

need=()
[ -x /usr/lib/postgresql/15/bin/initdb ] || need+=(postgresql-15)
[ -f /usr/lib/postgresql/15/lib/wal2json.so ] || need+=(postgresql-15-wal2json)
command -v psql >/dev/null || need+=(postgresql-client-15)
command -v runuser >/dev/null || need+=(util-linux)
python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
# The ssh-tunnel tests start a throwaway OpenSSH server (tests/ssh/conftest.py); ssh-keygen makes their keys.
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v ssh-keygen >/dev/null || need+=(openssh-client)
# The C extensions (replicator/_relay.c, replicator/_pgoutput.c) are compiled by pip below: a C
# compiler, the C library headers and Python's headers (Debian's python3 keeps them in
# python3-dev). Without them the install still works, with the slower pure-Python twins.
command -v gcc >/dev/null || need+=(gcc)
[ -f /usr/include/stdio.h ] || need+=(libc6-dev)
python3 -c 'import os, sysconfig; raise SystemExit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
  || need+=(python3-dev)
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${need[*]}"
  # The throwaway servers are started by replicator itself; Debian's default cluster is not wanted.
  $SUDO mkdir -p /etc/postgresql-common
  echo "create_main_cluster = false" | $SUDO tee /etc/postgresql-common/createcluster.conf >/dev/null
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test]'
if ! .venv/bin/python -m replicator.native --require >/dev/null 2>&1; then
  echo "setup: warning: a C extension is not usable; its slower pure-Python twin will run:" >&2
  .venv/bin/python -m replicator.native >&2 || true
fi
echo "setup: ready (.venv)"
