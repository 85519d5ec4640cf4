"""Resource use of running containers: CPU, memory, processes, GPU memory."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from mlc.containers.container import Container

GPU_QUERY = ["nvidia-smi", "--query-gpu=memory.used,memory.total", "--format=csv,noheader,nounits"]


@dataclass
class Stats:
    name: str
    cpu_percent: float
    mem_used: int
    mem_limit: int
    pids: int
    gpu_mem_used: int | None = None
    gpu_mem_total: int | None = None
    worker: dict[str, Any] | None = None  # its engine worker's status (mlc.warmpath), if any


def from_sample(name: str, s: dict[str, Any]) -> Stats:
    """Stats out of one sample of Docker's stats API (CPU % over the sample's interval)."""
    cpu, pre = s.get("cpu_stats", {}), s.get("precpu_stats", {})
    cpu_delta = cpu.get("cpu_usage", {}).get("total_usage", 0) - pre.get("cpu_usage", {}).get(
        "total_usage", 0
    )
    sys_delta = cpu.get("system_cpu_usage", 0) - pre.get("system_cpu_usage", 0)
    ncpu = cpu.get("online_cpus") or len(cpu.get("cpu_usage", {}).get("percpu_usage") or []) or 1
    percent = cpu_delta / sys_delta * ncpu * 100.0 if sys_delta > 0 and cpu_delta > 0 else 0.0
    mem = s.get("memory_stats", {})
    inner = mem.get("stats", {})
    used = mem.get("usage", 0) - inner.get("total_inactive_file", inner.get("inactive_file", 0))
    return Stats(
        name, percent, max(used, 0), mem.get("limit", 0), s.get("pids_stats", {}).get("current", 0)
    )


def _stats_one(c: Container) -> Stats | None:
    """C's sample, or None when C went away while it was sampled (removed, or stopped and
    Docker answered with an empty body): nothing to show, and no reason to fail the rest."""
    from docker.errors import NotFound

    try:
        sample = c.raw.stats(stream=False)
    except (NotFound, ValueError):  # ValueError: the JSON decoder's, on an empty body
        return None
    st = from_sample(c.name, sample)
    if c.has_gpus:
        code, out = c.exec_run(GPU_QUERY)
        if code == 0:
            pairs = [line.split(",") for line in out.decode().splitlines() if "," in line]
            st.gpu_mem_used = sum(int(a) for a, _ in pairs) * 2**20
            st.gpu_mem_total = sum(int(b) for _, b in pairs) * 2**20
    return st


def stats(containers: list[Container]) -> list[Stats]:
    """Resource use of running CONTAINERS, gathered in parallel (each sample takes ~1 s);
    one that goes away meanwhile is left out."""
    if not containers:
        return []
    with ThreadPoolExecutor(max_workers=min(16, len(containers))) as pool:
        return [st for st in pool.map(_stats_one, containers) if st is not None]
