#!/usr/bin/env bash
# The "remote" side of mlc's remote-engine tests (tests/test_remote.py), idempotent, as root:
# Debian's openssh-server (the test starts its own sshd on 127.0.0.1 with host keys it makes)
# and socat (a TLS front for the Docker socket), and a second user $MLC_REMOTE_USER (default
# mlcremote, uid 1300 or the next free one) in the docker group that logs in with a key only.
#
#   sudo tests/support/remoteuser.sh
set -euo pipefail
USER_NAME="${MLC_REMOTE_USER:-mlcremote}"
WANT_UID="${MLC_REMOTE_UID:-1300}"
log() { printf '[remoteuser.sh] %s\n' "$*" >&2; }
[ "$(id -u)" = 0 ] || { log "must run as root"; exit 1; }
export DEBIAN_FRONTEND=noninteractive

pkgs=()
[ -x /usr/sbin/sshd ] || pkgs+=(openssh-server)
command -v socat >/dev/null || pkgs+=(socat)
command -v openssl >/dev/null || pkgs+=(openssl)
if [ ${#pkgs[@]} -gt 0 ]; then
  log "installing ${pkgs[*]}"
  apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null 2>&1 \
    || { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null; }
fi
mkdir -p /run/sshd && chmod 0755 /run/sshd   # sshd's privilege separation folder

if ! id "$USER_NAME" >/dev/null 2>&1; then
  uid=$WANT_UID
  while getent passwd "$uid" >/dev/null || getent group "$uid" >/dev/null; do uid=$((uid + 1)); done
  groupadd -g "$uid" "$USER_NAME"
  useradd -m -u "$uid" -g "$uid" -s /bin/bash -d "/home/$USER_NAME" "$USER_NAME"
  log "created user $USER_NAME ($uid:$uid)"
fi
usermod -p '*' "$USER_NAME"   # no password, but not locked: sshd (UsePAM no) refuses locked ones
getent group docker >/dev/null || groupadd --system docker
usermod -aG docker "$USER_NAME"
if [ -S /var/run/docker.sock ] && [ "$(stat -c %G /var/run/docker.sock)" != docker ]; then
  chgrp docker /var/run/docker.sock && chmod g+rw /var/run/docker.sock
fi
log "ready: $USER_NAME ($(id -u "$USER_NAME")), sshd $(/usr/sbin/sshd -V 2>&1 | head -n1 || true)"
