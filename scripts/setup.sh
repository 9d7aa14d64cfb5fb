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
# The ssh-tunnel tests start a throwaway OpenSSH server (tests/ssh/conftest.py); ssh-keygen makes
# their keys. Only the test command asks for them (REPLICATOR_TEST_DEPS=1, set by scripts/test.sh),
# and the package's own system service is neither started nor left enabled (see below): installing
# replicator must not open an SSH server on port 22 of a user's machine.
ssh_server=0
if [ "${REPLICATOR_TEST_DEPS:-0}" = 1 ]; then
  [ -x /usr/sbin/sshd ] || { need+=(openssh-server); ssh_server=1; }
  command -v ssh-keygen >/dev/null || need+=(openssh-client)
fi
# The C extensions (replicator/_relay.c, _pgoutput.c, _wal2json.c) are compiled by pip below: a C
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
  policy_rc=""
  if [ "$ssh_server" = 1 ] && [ ! -e /usr/sbin/policy-rc.d ]; then
    # Debian's way to keep maintainer scripts from starting services (exit 101: "not allowed").
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
    $SUDO chmod +x /usr/sbin/policy-rc.d
    policy_rc=/usr/sbin/policy-rc.d
  fi
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
  [ -z "$policy_rc" ] || $SUDO rm -f "$policy_rc"
  if [ "$ssh_server" = 1 ] && command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
    $SUDO systemctl disable --now ssh.service ssh.socket >/dev/null 2>&1 || true
  fi
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
