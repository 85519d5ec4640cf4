"""mlc.engine.oomkill in a real container, as a non-root user: the memory cgroup's OOM-kill
counter and limit can be read there, and a process the kernel kills for memory shows as a
rise of the counter (what the client tells an out-of-memory kill of its worker by)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.docker

PROBE = """
import json, os, signal
from mlc.engine.oomkill import killed_for_memory, oom_counter
before = oom_counter()
pid = os.fork()
if pid == 0:  # a child that wants 1 GB in a 128 MB container
    chunks = []
    while True:
        chunks.append(bytearray(16 * 2**20))
_, status = os.waitpid(pid, 0)
killed = killed_for_memory(before)
print(json.dumps({
    "uid": os.getuid(),
    "before": before and [before.kills, before.limit, str(before.path)],
    "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
    "killed": killed and killed.kills,
    "same": killed_for_memory(oom_counter()) is None,
}))
"""


def test_an_oom_kill_is_seen_inside_a_container_as_a_user(
    docker_client, base_image: str, shared_dir: Path
):
    out = docker_client.containers.run(
        base_image,
        ["python3", "-c", PROBE],
        user="65534:65534",  # nobody
        mem_limit="128m",
        memswap_limit="128m",
        environment={"PYTHONPATH": "/src", "PYTHONDONTWRITEBYTECODE": "1"},
        volumes={str(shared_dir / "src"): {"bind": "/src", "mode": "ro"}},
        remove=True,
        network_disabled=True,
    )
    got = json.loads(out.decode().strip().splitlines()[-1])
    assert got["uid"] == 65534
    kills, limit, path = got["before"]
    assert limit == 128 * 2**20 and path.startswith("/sys/fs/cgroup/")
    assert got["signal"] == 9  # SIGKILL, by the kernel's OOM killer
    assert got["killed"] == kills + 1
    assert got["same"] is True  # no rise without a kill
