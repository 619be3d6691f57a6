#!/usr/bin/env bash
# What `make deploy` and `make test` need from the machine before hubops's own venv exists,
# installed with apt-get (as root) only when missing. A minimal Debian 12
# (`debootstrap --variant=minbase bookworm`) has bash, apt and util-linux (mount, nsenter,
# unshare, flock) but no python3, git, ip, iptables or curl; this script is what fills the gap.
# The Docker engine and debootstrap: scripts/ensure-docker.sh; test-only tools (Chromium,
# Pebble): scripts/ensure-test-tools.sh.
#
#   PYTHON   the interpreter the Makefile makes .venv with (default python3)
#   VENV     the venv folder (default .venv): once it exists, the interpreter is not checked again
set -euo pipefail
. "$(dirname "$0")/apt.sh"

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
missing=()

# The interpreter and its venv module. Debian splits `python3 -m venv` into python3-venv (without
# it, venv fails with "ensurepip is not available"); another interpreter (pyenv, a virtualenv) is
# the operator's choice and is only checked.
if [ ! -x "$VENV/bin/python" ]; then
  if ! command -v "$PYTHON" >/dev/null 2>&1; then
    if [ "$PYTHON" = python3 ]; then
      missing+=(python3 python3-venv)
    else
      echo "$PYTHON is not on PATH: install it, or run make with PYTHON=python3" >&2; exit 1
    fi
  else
    if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
      echo "$($PYTHON --version 2>&1) at $(command -v "$PYTHON") is older than 3.10, which hubops needs:" \
           "run make with PYTHON=python3.11 (or newer)" >&2
      exit 1
    fi
    if ! "$PYTHON" -c 'import ensurepip, venv' >/dev/null 2>&1; then
      exe=$(readlink -f "$(command -v "$PYTHON")")
      if [[ $exe == /usr/bin/python3* ]]; then
        missing+=(python3-venv)
      else
        echo "$PYTHON ($exe) has no working venv module (ensurepip is missing): use an interpreter" \
             "that has it, e.g. make PYTHON=/usr/bin/python3 after apt-get install python3-venv" >&2
        exit 1
      fi
    fi
  fi
fi

# Tools hubops and its tests call: git (the record notes the commit it ran), ip and iptables
# (`hubops lab`, the lab tests), curl and CA certificates (HTTPS checks of the hub as the README
# shows them). util-linux (mount, nsenter, unshare, flock) is part of every Debian. A deploy on
# the local engine runs without them, so a user who cannot install them is only warned.
wanted=()
command -v git >/dev/null 2>&1 || wanted+=(git)
command -v ip >/dev/null 2>&1 || wanted+=(iproute2)
command -v iptables >/dev/null 2>&1 || wanted+=(iptables)
command -v curl >/dev/null 2>&1 || wanted+=(curl)
if command -v dpkg-query >/dev/null 2>&1; then
  dpkg-query -W -f='${Status}' ca-certificates 2>/dev/null | grep 'ok installed' >/dev/null || wanted+=(ca-certificates)
fi

if can_apt; then
  all=("${missing[@]}" "${wanted[@]}")
  [ ${#all[@]} -eq 0 ] || apt_install "what make deploy and make test need" "${all[@]}"
else
  if [ ${#wanted[@]} -gt 0 ]; then
    echo "warning: ${wanted[*]} missing (the lab and its tests need ip and iptables, the record notes" \
         "the git commit): as root, apt-get update && apt-get install -y ${wanted[*]}" >&2
  fi
  if [ ${#missing[@]} -gt 0 ]; then
    apt_install "the interpreter make deploy installs hubops with" "${missing[@]}"
  fi
fi
