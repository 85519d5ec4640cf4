# Root-side setup inside a new mlc container: the user, sudo, PATH, the prompt. POSIX sh,
# idempotent. Run by mlc.containers.create as root:
#   sh -c "$(cat setup.sh)" mlc-setup USER UID GID MARK
# USER, UID, GID: the host user the container is made for; MARK: the file written when done.
set -e
U=$1; UID_=$2; GID_=$3; MARK=$4
if [ "$UID_" != 0 ]; then
  group=$(getent group "$GID_" | cut -d: -f1 || true)
  if [ -z "$group" ]; then
    if getent group "$U" >/dev/null; then groupmod -g "$GID_" "$U"
    else groupadd -g "$GID_" "$U"; fi
    group=$(getent group "$GID_" | cut -d: -f1)
  fi
  holder=$(getent passwd "$UID_" | cut -d: -f1 || true)
  if [ -n "$holder" ] && [ "$holder" != "$U" ]; then
    # The image already has a user with this uid (Ubuntu 24.04: ubuntu=1000): take it over.
    usermod -l "$U" -d "/home/$U" -m -g "$GID_" -s /bin/bash "$holder"
  elif [ -z "$holder" ]; then
    if getent passwd "$U" >/dev/null; then
      usermod -u "$UID_" -g "$GID_" -d "/home/$U" -m "$U"
    else
      useradd -m -u "$UID_" -g "$GID_" -d "/home/$U" -s /bin/bash "$U"
    fi
  fi
  home="/home/$U"
  mkdir -p "$home"; [ -f "$home/.bashrc" ] || cp -rT /etc/skel "$home" 2>/dev/null || true
  chown "$UID_:$GID_" "$home" "$home/.bashrc" "$home/.profile" 2>/dev/null || true
  if ! command -v sudo >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq sudo) \
      >/dev/null 2>&1 || echo "mlc: warning: sudo is not installed in the image" >&2
  fi
  if [ -d /etc/sudoers.d ]; then
    keep="http_proxy https_proxy no_proxy HTTP_PROXY HTTPS_PROXY NO_PROXY"
    keep="$keep PIP_CERT SSL_CERT_FILE REQUESTS_CA_BUNDLE CURL_CA_BUNDLE"
    printf '%s ALL=(ALL) NOPASSWD:ALL\nDefaults:%s env_keep += "%s"\n' "$U" "$U" "$keep" \
      > "/etc/sudoers.d/mlc-$U"
    chmod 0440 "/etc/sudoers.d/mlc-$U"
  fi
else
  home=/root
fi
# Login shells reset PATH in /etc/profile; keep the image's (its venv or conda env first).
mkdir -p /etc/profile.d
printf 'export PATH="%s"\n' "$PATH" > /etc/profile.d/00-mlc-path.sh
for rc in "$home/.bashrc" /root/.bashrc; do
  touch "$rc"
  grep -q '# mlc prompt' "$rc" || cat >> "$rc" <<'EOF'
# mlc prompt
export PATH="$HOME/.local/bin:$PATH"
PS1="[$MLC_CONTAINER] \u@\h:\w\$ "
EOF
done
chown "$UID_:$GID_" "$home/.bashrc" 2>/dev/null || true
date > "$MARK"
