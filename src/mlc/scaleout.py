"""The host side of scale-out: ``mlc txt2img NAME --gpus all|N|ID,ID`` as the engine's
``--devices`` inside the container (docs/scale-out.md).

The container sees its GPUs as ``cuda:0``, ``cuda:1``, ... in the order of the selection it
was created with (``mlc create -g``); GPU ids given to ``--gpus`` are the host's (as
``nvidia-smi`` and ``-g`` name them) and are translated to the container's numbering here. A
sharded run (``--gpus``, ``--devices``, ``--ray``, ``--resume``) runs one-shot: its engine
starts its own device processes, so the warm worker's one loaded model would be of no use.
"""

from __future__ import annotations

from collections.abc import Sequence

from mlc.errors import UsageError

GPUS_FLAG = "--gpus"
SCALED_FLAGS = ("--devices", "--ray", "--resume")  # the engine's: run one-shot


def take_gpus_flag(flags: Sequence[str]) -> tuple[list[str], str | None]:
    """FLAGS without ``--gpus VALUE`` (a host flag), and VALUE (None when not given)."""
    rest: list[str] = []
    value: str | None = None
    i = 0
    while i < len(flags):
        flag = flags[i]
        if flag == GPUS_FLAG:
            if i + 1 == len(flags) or flags[i + 1].startswith("-"):
                raise UsageError(f"{GPUS_FLAG} needs a value: all, a count (2) or GPU ids (0,2)")
            value, i = flags[i + 1], i + 2
        elif flag.startswith(GPUS_FLAG + "="):
            value, i = flag.partition("=")[2], i + 1
        else:
            rest.append(flag)
            i += 1
    return rest, value


def container_gpus(selection: str) -> tuple[int | None, list[str] | None]:
    """A container's GPU selection (its ``-g``: ``all``, ``2``, ``0,1``, ``device=0,1``,
    ``none``) as (count, ids): (None, None) for all, (0, []) for none."""
    text = selection.strip().strip("'\"")
    if text in ("", "none"):
        return 0, []
    if text == "all":
        return None, None
    if text.isdigit():
        return int(text), None
    ids = [i.strip() for i in text.removeprefix("device=").split(",") if i.strip()]
    return len(ids), ids


def devices_for(value: str, selection: str, name: str = "the container") -> str:
    """``--gpus VALUE`` as the engine's ``--devices`` in a container created with the GPU
    SELECTION: ``all`` -> every GPU it has, ``N`` -> its first N, ``ID,ID`` (or ``device=ID``)
    -> those host GPUs, as the container numbers them."""
    count, ids = container_gpus(selection)
    spec = value.strip().strip("'\"")
    if count == 0:
        raise UsageError(f"{GPUS_FLAG}: {name} has no GPUs (it was created with -g {selection})")
    if spec == "all":
        return "all" if count is None else ",".join(f"cuda:{i}" for i in range(count))
    if spec.isdigit():
        n = int(spec)
        if n == 0:
            raise UsageError(
                f"{GPUS_FLAG} 0 is ambiguous: use {GPUS_FLAG} device=0 for the GPU with id 0"
            )
        if count is not None and n > count:
            raise UsageError(f"{GPUS_FLAG} {n}: {name} has {count} GPU(s)")
        return ",".join(f"cuda:{i}" for i in range(n))
    wanted = [i.strip() for i in spec.removeprefix("device=").split(",") if i.strip()]
    if not wanted or len(set(wanted)) != len(wanted):
        raise UsageError(f"{GPUS_FLAG} {value!r}: use all, a count (2) or distinct GPU ids (0,2)")
    out = []
    for gpu in wanted:
        if ids is not None:  # the container has chosen GPUs: its cuda:N is the Nth of them
            if gpu not in ids:
                raise UsageError(
                    f"{GPUS_FLAG}: GPU {gpu} is not one of {name}'s GPUs ({','.join(ids)})"
                )
            out.append(ids.index(gpu))
        elif gpu.isdigit() and (count is None or int(gpu) < count):
            out.append(int(gpu))  # all GPUs (or the first COUNT): host order
        else:
            have = "all GPUs" if count is None else f"GPUs 0-{count - 1}"
            raise UsageError(f"{GPUS_FLAG}: GPU {gpu} is not one of {name}'s ({have})")
    return ",".join(f"cuda:{i}" for i in out)


def engine_flags(flags: Sequence[str], selection: str, name: str) -> tuple[list[str], bool]:
    """FLAGS with ``--gpus`` turned into ``--devices``, and whether the run is sharded (then
    it runs one-shot)."""
    rest, gpus = take_gpus_flag(flags)
    if gpus is not None:
        if any(f == "--devices" or f.startswith("--devices=") for f in rest):
            raise UsageError(f"{GPUS_FLAG} and --devices cannot be combined; use one of them")
        rest = [*rest, "--devices", devices_for(gpus, selection, name)]
    scaled = any(f in SCALED_FLAGS or f.split("=")[0] in SCALED_FLAGS for f in rest)
    return rest, scaled
