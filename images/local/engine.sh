#!/usr/bin/env bash
# Make a Docker engine answer on this host: install docker.io and mmdebstrap when
# missing (Debian), then start dockerd in the background when `docker info` fails.
# Root only; idempotent. Used by .ci/run and examples/quickstart.sh.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
DOCKERD_LOG="${MLC_DOCKERD_LOG:-/var/log/mlc-dockerd.log}"

[ "$(id -u)" = 0 ] || { echo "engine.sh must run as root (it installs packages and starts dockerd)" >&2; exit 1; }

install_packages() {
  local pkgs=()
  command -v dockerd >/dev/null || pkgs+=(docker.io)
  command -v mmdebstrap >/dev/null || pkgs+=(mmdebstrap)
  command -v make >/dev/null || pkgs+=(make)
  /usr/bin/python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || pkgs+=(python3 python3-venv)
  if [ ${#pkgs[@]} -eq 0 ]; then echo "packages: all present"; return; fi
  echo "installing: ${pkgs[*]}"
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
}

start_dockerd() {
  if docker info >/dev/null 2>&1; then echo "docker engine already answers"; return; fi
  # With the group present at daemon start, dockerd makes the socket root:docker.
  getent group docker >/dev/null || groupadd --system docker
  [ -d /sys/fs/cgroup/cpu ] || ! command -v cgroupfs-mount >/dev/null || cgroupfs-mount
  echo "starting dockerd (log: $DOCKERD_LOG)"
  # setsid: its own session, so it outlives the caller and its process group.
  setsid nohup dockerd >"$DOCKERD_LOG" 2>&1 </dev/null &
  local i
  for i in $(seq 1 120); do
    docker info >/dev/null 2>&1 && { echo "docker engine up after ~$((i / 2)) s"; return; }
    sleep 0.5
  done
  echo "dockerd did not answer within 60 s; log tail:" >&2
  tail -n 50 "$DOCKERD_LOG" >&2
  return 1
}

install_packages
start_dockerd
