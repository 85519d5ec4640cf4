# The auto-stop inside an mlc container, for what outlives the mlc command that started it
# (the engine worker, a background job): stop the container once nothing of the user's runs
# in it any more, unless `mlc start` marked this run keep-running. POSIX sh; started detached,
# as root, by mlc.containers.lifecycle when a command ends and the container is still busy:
#   sh -c "$(cat idle.sh)" mlc-idle STARTED_AT PERIOD
# STARTED_AT: Docker's start time of this run (what the keep-running mark holds); PERIOD:
# seconds between looks. Idle twice in a row: the container's command (the first child of
# docker-init, PID 1) gets SIGTERM, as `docker stop` would send, and the container exits.
started=$1; period=$2
mark=/run/mlc-keep-running
lock=/run/mlc-idle-watch

# stat fields after "(comm) ": state ppid pgrp session ... (starttime is the 20th)
fields() { read -r line < "$1/stat" 2>/dev/null || return 1; echo "${line##*) }"; }

# One watcher per run of the container.
if read -r s p < "$lock" 2>/dev/null && [ "$s" = "$started" ] && [ "$p" != $$ ] \
   && [ -d "/proc/$p" ]; then
  exit 0
fi
echo "$started $$" > "$lock"

keep=; first=
for d in /proc/[0-9]*; do
  f=$(fields "$d") || continue
  set -- $f
  [ "$2" = 1 ] || continue
  if [ -z "$first" ] || [ "${20}" -lt "$first" ]; then keep=${d#/proc/}; first=${20}; fi
done
[ -n "$keep" ] || { rm -f "$lock"; exit 0; }

busy() {
  for d in /proc/[0-9]*; do
    p=${d#/proc/}
    case $p in 1 | "$$" | "$keep") continue ;; esac
    f=$(fields "$d") || continue
    set -- $f
    [ "$1" = Z ] && continue
    [ "$2" = $$ ] && continue
    return 0
  done
  return 1
}

idle=0
while :; do
  sleep "$period"
  if read -r m < "$mark" 2>/dev/null && [ "$m" = "$started" ]; then break; fi
  if busy; then idle=0; continue; fi
  idle=$((idle + 1))
  if [ "$idle" -ge 2 ]; then
    rm -f "$lock"
    kill -15 "$keep"
    exit 0
  fi
done
rm -f "$lock"
