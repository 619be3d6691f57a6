#!/usr/bin/env bash
# Make sure a Docker engine answers on /var/run/docker.sock, installing and starting one if not.
# Debian/Ubuntu machines without systemd (CI, containers): installs docker.io and debootstrap
# (the base image is bootstrapped with it when no registry answers), then starts dockerd.
set -euo pipefail
. "$(dirname "$0")/apt.sh"

answers() { timeout 10 docker version --format '{{.Server.Version}}' >/dev/null 2>&1; }

if answers; then
  echo "docker engine: $(docker version --format '{{.Server.Version}}') (already running)"
else
  if [ "$(id -u)" != 0 ]; then
    echo "No Docker engine answers and this is not root: start Docker (or run as root to let this script install it)." >&2
    exit 1
  fi
  if ! command -v dockerd >/dev/null 2>&1 || ! command -v docker >/dev/null 2>&1; then
    apt_install "the Docker engine and its CLI" docker.io
  fi
  if command -v systemctl >/dev/null 2>&1 && systemctl is-system-running >/dev/null 2>&1; then
    systemctl start docker
  else
    # No init system: run dockerd in the background. DOCKER_SERVICE_PREFER_OFFLINE_IMAGE makes
    # Swarm tasks use the local image instead of asking a registry first (none may answer).
    mkdir -p /var/log
    DOCKER_SERVICE_PREFER_OFFLINE_IMAGE=1 nohup dockerd >/var/log/hubops-dockerd.log 2>&1 &
  fi
  for _ in $(seq 60); do answers && break; sleep 1; done
  answers || { echo "dockerd did not start; see /var/log/hubops-dockerd.log" >&2; tail -20 /var/log/hubops-dockerd.log >&2 || true; exit 1; }
  echo "docker engine: $(docker version --format '{{.Server.Version}}') (started)"
fi

if ! command -v debootstrap >/dev/null 2>&1 && can_apt; then
  apt_install "bootstraps the base image when no registry answers" debootstrap
fi
