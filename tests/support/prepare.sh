#!/usr/bin/env bash
# Everything the test suite needs on this host, idempotent: a Docker engine (installed and
# started when none answers), the local test images (the seed's torch 2.0.1 one too), the
# non-root test user, the ssh user with openssh-server and socat for the remote-engine tests,
# and headless Chromium for the explorer test. Root only; `make test` runs it when it runs as root, and
# .ci/run does too. Each step skips what is already done.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
[ "$(id -u)" = 0 ] || { echo "prepare.sh must run as root" >&2; exit 1; }
export DEBIAN_FRONTEND=noninteractive

timed() { local t0=$SECONDS; "$@"; echo "[prepare] $1 ${2:-}: $((SECONDS - t0)) s"; }

browser() {  # tests/test_explorer_browser.py fails, not skips, in CI without it
  [ -x /usr/bin/chromium ] && return 0
  local pkgs=(chromium fonts-dejavu-core)  # no recommends: still headless, ~25 packages
  apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null \
    || { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null; }
  /usr/bin/chromium --version
}

timed bash images/local/engine.sh
timed bash images/local/build.sh
test_user() { bash tests/support/testuser.sh >/dev/null; }  # defaults match tests/conftest.py
timed test_user
timed bash tests/support/remoteuser.sh  # sshd, socat and the ssh user for tests/test_remote.py
timed browser
