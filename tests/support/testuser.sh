#!/usr/bin/env bash
# Create (or refresh) a real non-root host user for mlc's uid/gid-mapping tests.
#
#   sudo tests/support/testuser.sh              # as root; idempotent
#   eval "$(sudo tests/support/testuser.sh)"    # also sets MLC_TEST_USER / MLC_TEST_USER_PYTHON
#
# It makes user $MLC_TEST_USER (default mlctester, uid/gid 1234 or the next free
# one) with a home directory, adds it to the `docker` group so it can reach
# /var/run/docker.sock, and builds $HOME/venv from Debian's /usr/bin/python3
# (pyenv/root pythons live under /root, which other users cannot enter) with
# the host side of mlc installed: docker, typer, rich, pyyaml, requests, no torch.
# The checkout may sit under /root, so it installs a readable copy of it, not
# an editable install: rerun this script after changing src/.
# Logs go to stderr; stdout carries only the `export` lines.
set -euo pipefail

USER_NAME="${MLC_TEST_USER:-mlctester}"
WANT_UID="${MLC_TEST_UID:-1234}"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
HOST_CA="${MLC_HOST_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}"

log() { printf '[testuser.sh] %s\n' "$*" >&2; }
[ "$(id -u)" = 0 ] || { log "must run as root"; exit 1; }
t0=$SECONDS

# 1. The user and its group.
if ! id "$USER_NAME" >/dev/null 2>&1; then
  uid=$WANT_UID
  while getent passwd "$uid" >/dev/null || getent group "$uid" >/dev/null; do uid=$((uid + 1)); done
  groupadd -g "$uid" "$USER_NAME"
  useradd -m -u "$uid" -g "$uid" -s /bin/bash -d "/home/$USER_NAME" "$USER_NAME"
  log "created user $USER_NAME ($uid:$uid)"
fi
HOME_DIR="$(getent passwd "$USER_NAME" | cut -d: -f6)"
mkdir -p "$HOME_DIR"; chown "$USER_NAME:" "$HOME_DIR"

# 2. Docker access: the docker group owns the socket when it existed at daemon
# start; otherwise (group created later) hand the socket over now.
getent group docker >/dev/null || groupadd --system docker
usermod -aG docker "$USER_NAME"
if [ -S /var/run/docker.sock ] && [ "$(stat -c %G /var/run/docker.sock)" != docker ]; then
  chgrp docker /var/run/docker.sock && chmod g+rw /var/run/docker.sock
fi

# 3. A venv from Debian's python (needs python3-venv).
VENV="$HOME_DIR/venv"
PY=/usr/bin/python3
if [ ! -x "$VENV/bin/python" ]; then
  if ! "$PY" -c 'import ensurepip, venv' >/dev/null 2>&1; then
    log "installing python3-venv"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-venv >&2
  fi
  "$PY" -m venv "$VENV"
fi

# 4. The host side of mlc, from a copy the user can read (no .git, no build junk).
SRC="$HOME_DIR/mlc-src"
rm -rf "$SRC"; mkdir -p "$SRC"
parts=(pyproject.toml src images)
for f in README.md LICENSE; do [ -e "$REPO/$f" ] && parts+=("$f"); done
tar -C "$REPO" --exclude=.git --exclude='*.egg-info' --exclude=__pycache__ --exclude=build \
  -cf - "${parts[@]}" | tar -C "$SRC" -xf -
[ -e "$SRC/README.md" ] || echo "# mlc" > "$SRC/README.md"   # pyproject names it as readme
export PIP_CERT="$HOST_CA" PIP_DISABLE_PIP_VERSION_CHECK=1
"$VENV/bin/pip" uninstall --quiet -y mlc-toolkit >/dev/null 2>&1 || true   # always the current code
"$VENV/bin/pip" install --quiet "$SRC" >&2
chown -R "$USER_NAME:" "$HOME_DIR"

# 5. Check it: as the user, import mlc and talk to Docker (when an engine runs).
runuser -u "$USER_NAME" -- "$VENV/bin/python" -c 'import mlc, docker, typer, rich, yaml, requests' >&2
if docker info >/dev/null 2>&1; then
  runuser -u "$USER_NAME" -- "$VENV/bin/python" -c 'import docker; docker.from_env().ping()' >&2 \
    || { log "user $USER_NAME cannot reach the Docker engine"; ls -l /var/run/docker.sock >&2; exit 1; }
fi
log "ready in $((SECONDS - t0)) s: $USER_NAME ($(id -u "$USER_NAME"):$(id -g "$USER_NAME")), python $VENV/bin/python"

echo "export MLC_TEST_USER=$USER_NAME"
echo "export MLC_TEST_USER_PYTHON=$VENV/bin/python"
