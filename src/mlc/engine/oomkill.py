"""Was a process killed for lack of memory? The kernel's OOM-kill counter of its memory cgroup.

The warm worker is not the client's child, so the client cannot see how it ended. What it can
see: the ``oom_kill`` counter of the worker's memory cgroup, read when it connects and again
when the worker vanished; a rise means the kernel's OOM killer struck there. Both files are
world-readable, on the host and inside a container as a non-root user:

- cgroup v1: ``/sys/fs/cgroup/memory/<path>/memory.oom_control`` (``oom_kill N``, kernel 4.13
  and later) and ``memory.limit_in_bytes``;
- cgroup v2: ``/sys/fs/cgroup/<path>/memory.events`` (``oom_kill N``) and ``memory.max``.

``<path>`` comes from ``/proc/PID/cgroup``. Inside a container that path names the host's
view (``/docker/<id>``) while the container sees its own cgroup at the mount's root, so the
path's tails are tried down to the root. Standard library only: the client imports this.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

ROOT = Path("/sys/fs/cgroup")
NO_LIMIT = 2**62  # cgroup v1 writes "no limit" as a huge number


@dataclass(frozen=True)
class OomCounter:
    """One reading of a memory cgroup's OOM-kill counter."""

    path: Path  # the file the count came from (memory.oom_control or memory.events)
    kills: int
    limit: int | None  # the cgroup's memory limit in bytes (None: none)

    def again(self) -> OomCounter | None:
        """The same counter read now (None when it can no longer be read)."""
        kills = _kills(self.path)
        return None if kills is None else OomCounter(self.path, kills, self.limit)


def _kills(path: Path) -> int | None:
    try:
        text = path.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == "oom_kill" and value.strip().isdigit():
            return int(value)
    return None


def _limit(path: Path) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        text = path.read_text().strip()
        if text != "max" and int(text) < NO_LIMIT:
            return int(text)
    return None


def _tails(cgroup: str) -> list[str]:
    """``/a/b/c`` -> ``a/b/c``, ``b/c``, ``c``, ```` (the root)."""
    parts = [p for p in cgroup.split("/") if p]
    return ["/".join(parts[i:]) for i in range(len(parts) + 1)]


def memory_cgroups(pid: int | str = "self") -> list[tuple[Path, str, str]]:
    """(folder, counter file, limit file) candidates for PID's memory cgroup, best first."""
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return []
    v1 = v2 = None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            v1 = path
        elif controllers == "":
            v2 = path
    found: list[tuple[Path, str, str]] = []
    if v1 is not None:
        found += [
            (ROOT / "memory" / t, "memory.oom_control", "memory.limit_in_bytes") for t in _tails(v1)
        ]
    if v2 is not None:
        found += [(ROOT / t, "memory.events", "memory.max") for t in _tails(v2)]
    return found


def oom_counter(pid: int | str = "self") -> OomCounter | None:
    """The OOM-kill counter of PID's memory cgroup now; None where none can be read."""
    for folder, counter, limit in memory_cgroups(pid):
        kills = _kills(folder / counter)
        if kills is not None:
            return OomCounter(folder / counter, kills, _limit(folder / limit))
    return None


def killed_for_memory(before: OomCounter | None) -> OomCounter | None:
    """The counter now when it rose since BEFORE (an OOM kill in that cgroup), else None."""
    if before is None:
        return None
    now = before.again()
    return now if now is not None and now.kills > before.kills else None
