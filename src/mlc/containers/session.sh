# Signal what one `docker exec` started inside an mlc container. POSIX sh; run as root by
# mlc.containers.execute when the mlc command that made the exec is interrupted (Ctrl-C,
# SIGTERM, a closed terminal), because Docker passes no signal on to an exec:
#   sh -c "$(cat session.sh)" mlc-session MLC_EXEC=TAG SIGNUM GRACE all|leader
# The exec's first process is the one whose environment holds MLC_EXEC=TAG and whose parent is
# outside the container (ppid 0); runc made it a session leader. SIGNUM (a number) goes to
# every process of that session, as a terminal's hangup would reach them. After GRACE seconds
# what is left is killed: every process of the session (all), or only its leader (leader: an
# interactive shell, whose `nohup` jobs go on as they would on a host). Processes that left
# the session (the engine worker, started with setsid) are never touched.
want=$1; sig=$2; grace=$3; mode=$4

# stat fields after "(comm) ": state ppid pgrp session
fields() { read -r line < "$1/stat" 2>/dev/null || return 1; echo "${line##*) }"; }

leader=
for d in /proc/[0-9]*; do
  f=$(fields "$d") || continue
  set -- $f
  [ "$2" = 0 ] || continue
  if tr '\0' '\n' < "$d/environ" 2>/dev/null | grep -qxF "$want"; then
    leader=${d#/proc/}; break
  fi
done
[ -n "$leader" ] || exit 0

members() {
  for d in /proc/[0-9]*; do
    f=$(fields "$d") || continue
    set -- $f
    [ "$4" = "$leader" ] && [ "$1" != Z ] && echo "${d#/proc/}"
  done
}

targets() {
  if [ "$mode" = leader ]; then
    f=$(fields "/proc/$leader") || return 0
    set -- $f
    [ "$1" != Z ] && echo "$leader"
  else
    members
  fi
}

left=$(members)
[ -n "$left" ] && kill "-$sig" $left 2>/dev/null
left=$(targets)
ticks=$((grace * 10))
while [ -n "$left" ] && [ "$ticks" -gt 0 ]; do
  sleep 0.1; ticks=$((ticks - 1)); left=$(targets)
done
[ -n "$left" ] && kill -9 $left 2>/dev/null
exit 0
