"""The container contract, spelled once: Docker names, the label table, the mount points.

A container made by mlc (or by AIME's bash MLC, which mlc reads too) carries AIME's
``aime.mlc.*`` labels plus mlc's ``mlc.schema``. :data:`TABLE` is the one place that maps a
label key to an attribute of :class:`Labels`; writing (``mlc create``) and reading (``mlc list``,
ownership, mounts) both go through it. Pure data: no Docker here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from mlc.errors import UsageError

SEP = "._."
"""AIME's separator between the name and the uid in a Docker name: ``sd._.1000``."""
PREFIX = "aime.mlc"
SCHEMA_VERSION = "1"
MLC_VERSION = "4"  # the AIME MLC version whose labels mlc writes
NONE = "-"  # an unset mount in AIME's labels
NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")
NAME_MAX = 64
"""The longest name: it is also the container's host name, which the kernel caps at 64 bytes
(runc refuses to start a container with a longer one)."""

DEFAULT_ULIMITS = "memlock=-1,stack=67108864"
"""The ulimits `mlc create` gives a container (AIME's; ``--ulimit`` replaces them)."""

TABLE: dict[str, str] = {
    "owner": PREFIX,
    "name": f"{PREFIX}.NAME",
    "user": f"{PREFIX}.USER",
    "mlc_version": f"{PREFIX}.MLC_VERSION",
    "framework": f"{PREFIX}.FRAMEWORK",
    "gpus": f"{PREFIX}.GPUS",
    "arch": f"{PREFIX}.ARCH",
    "workspace": f"{PREFIX}.WORK_MOUNT",
    "data": f"{PREFIX}.DATA_MOUNT",
    "models": f"{PREFIX}.MODELS_MOUNT",
    "image": f"{PREFIX}.IMAGE",
    "schema": "mlc.schema",
    "worker": "mlc.worker",
    "prewarm": "mlc.prewarm",
}
"""Attribute of :class:`Labels` -> Docker label key, in the order they are written."""

MOUNT_POINTS: tuple[tuple[str, PurePosixPath], ...] = (
    ("models", PurePosixPath("/models")),
    ("workspace", PurePosixPath("/workspace")),
    ("data", PurePosixPath("/data")),
)
"""Label attribute of a host folder -> where it is mounted inside; models first (where
`mlc setup` puts weights by default)."""

Mount = tuple[Path, PurePosixPath]
"""(host folder, folder inside the container)."""


@dataclass(frozen=True)
class Labels:
    """The labels of one container as attributes; a missing label reads as None."""

    owner: str | None = None
    name: str | None = None
    user: str | None = None
    mlc_version: str | None = None
    framework: str | None = None
    gpus: str | None = None
    arch: str | None = None
    workspace: str | None = None
    data: str | None = None
    models: str | None = None
    image: str | None = None
    schema: str | None = None
    worker: str | None = None  # the host folder mounted as the worker's (mlc.warmpath)
    prewarm: str | None = None  # "off": `mlc start` never pre-warms the engine worker

    @classmethod
    def read(cls, labels: Mapping[str, str] | None) -> Labels:
        """The table's labels out of a Docker label mapping (others are ignored)."""
        labels = labels or {}
        return cls(**{attr: labels.get(key) for attr, key in TABLE.items()})

    def as_dict(self) -> dict[str, str]:
        """The Docker labels (those that are set), keys as in :data:`TABLE`."""
        return {
            key: value for attr, key in TABLE.items() if (value := getattr(self, attr)) is not None
        }

    @property
    def is_mlc(self) -> bool:
        """Whether these are the labels of an mlc or AIME container."""
        return self.owner is not None or self.name is not None

    @property
    def prewarms(self) -> bool:
        """Whether `mlc start` / `open` / `setup` pre-warm its engine worker (unless told not)."""
        return (self.prewarm or "on").lower() not in ("off", "0", "no", "false")

    @property
    def mounts(self) -> list[Mount]:
        """(host folder, container folder) for each mount that is set, models first."""
        out = []
        for attr, inside in MOUNT_POINTS:
            value = getattr(self, attr)
            if value and value != NONE:
                out.append((Path(value), inside))
        return out


def new_labels(
    *,
    name: str,
    user: str,
    framework: str,
    gpus: str,
    arch: str,
    workspace: Path,
    data: Path | None,
    models: Path | None,
    image: str,
    worker: Path | None = None,
    prewarm: bool = True,
) -> Labels:
    """The labels `mlc create` writes: AIME MLC's, plus mlc's own schema version, the host
    folder of its engine worker (when it has one) and ``prewarm=off`` (when asked)."""
    return Labels(
        owner=user,
        name=name,
        user=user,
        mlc_version=MLC_VERSION,
        framework=framework,
        gpus=gpus,
        arch=arch,
        workspace=str(workspace),
        data=str(data) if data else NONE,
        models=str(models) if models else NONE,
        image=image,
        schema=SCHEMA_VERSION,
        worker=str(worker) if worker else None,
        prewarm=None if prewarm else "off",
    )


# -- names -------------------------------------------------------------------------------------


def tag(name: str, uid: int) -> str:
    """The Docker name of NAME for user UID, as AIME MLC spells it."""
    return f"{name}{SEP}{uid}"


def bare_name(docker_name: str) -> str:
    """NAME out of a Docker name ``NAME._.UID`` (a legacy bare name as it is)."""
    return docker_name.split(SEP)[0]


def validate_name(name: str) -> None:
    """NAME must be a valid Docker name and host name, without AIME's separator (a
    :class:`~mlc.errors.UsageError` saying why not)."""
    if not name:
        raise UsageError("the container name is empty", hint="see `mlc list` for yours")
    if len(name) > NAME_MAX:
        raise UsageError(
            f"invalid container name '{name[:24]}...': {len(name)} characters, at most "
            f"{NAME_MAX} (it is also the container's host name)"
        )
    if SEP in name:
        raise UsageError(f"invalid container name '{name}': it must not contain '{SEP}'")
    if not NAME_RE.match(name):
        raise UsageError(
            f"invalid container name '{name}'",
            hint="use letters, digits, '_', '.' and '-', starting with a letter or digit",
        )


def owned_by(labels: Labels, docker_name: str, user_name: str, uid: int) -> bool:
    """Whether the container (its LABELS and Docker name) belongs to USER_NAME with UID."""
    if labels.user == user_name or labels.owner == user_name:
        return docker_name.endswith(f"{SEP}{uid}") or SEP not in docker_name
    return False
