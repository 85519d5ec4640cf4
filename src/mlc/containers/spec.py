"""What `mlc create` decides before talking to Docker: the create spec, with the GPU selection
and the ulimits parsed once (bad input fails here, before any pull), and the retries a refused
start allows, each returning a new spec. Pure data: no Docker here."""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from mlc import catalog, host, warmpath
from mlc.catalog import Entry
from mlc.containers.labels import DEFAULT_ULIMITS, Labels, new_labels, validate_name
from mlc.errors import MlcError, UsageError

GPU_DRIVER_ERRORS = ("could not select device driver", "nvidia-container-cli")
_GPU_ID = re.compile(r"^([0-9]+|(GPU|MIG)-[A-Za-z0-9-]+)$")


@dataclass(frozen=True)
class Gpus:
    """A parsed ``-g``: every GPU (count -1), a count, device ids, or none (count 0, no ids).
    ``text`` is the selection as given, which the GPUS label keeps."""

    text: str = "all"
    count: int = -1
    ids: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str | None) -> Gpus:
        """``all|N|ID,ID|device=ID,ID|none`` (None: all); ``0`` is refused as ambiguous."""
        raw = text or "all"
        spec = raw.strip().strip("'\"")
        if spec == "0":  # no GPUs (a count) or GPU 0 (Docker's device ids)? Ask which.
            raise UsageError(
                "-g 0 is ambiguous",
                hint="use -g none for no GPUs, or -g device=0 for the GPU with id 0",
            )
        if spec in ("none", ""):
            return cls(raw, 0)
        if spec == "all":
            return cls(raw, -1)
        if spec.isdigit():
            return cls(raw, int(spec))
        ids = tuple(i.strip() for i in spec.removeprefix("device=").split(","))
        if not all(_GPU_ID.match(i) for i in ids):
            raise MlcError(
                f"invalid GPU selection '{spec}'",
                hint="use all, a count (2), device ids (0,1) or none",
            )
        return cls(raw, 0, ids)

    @property
    def wanted(self) -> bool:
        """Whether any GPU is asked for."""
        return self.count != 0 or bool(self.ids)


NO_GPUS = Gpus("none", 0)


@dataclass(frozen=True)
class Ulimit:
    """One ulimit: NAME=SOFT[:HARD]."""

    name: str
    soft: int
    hard: int


@dataclass(frozen=True)
class Ulimits:
    """A parsed ``--ulimit`` (``text`` as given, for messages)."""

    text: str = DEFAULT_ULIMITS
    items: tuple[Ulimit, ...] = ()

    @classmethod
    def parse(cls, text: str) -> Ulimits:
        """``memlock=-1,stack=67108864`` or ``nofile=1024:4096``; ``none`` for the engine's
        defaults."""
        if not text or text.strip() == "none":
            return cls(text, ())
        items = []
        for item in text.split(","):
            name, _, value = item.strip().partition("=")
            soft, _, hard = value.partition(":")
            try:
                items.append(Ulimit(name, int(soft), int(hard or soft)))
            except ValueError:
                raise MlcError(
                    f"invalid ulimit '{item}'", hint="use NAME=SOFT[:HARD], e.g. stack=67108864"
                ) from None
        return cls(text, tuple(items))

    def names(self) -> set[str]:
        return {u.name for u in self.items}

    def without(self, name: str) -> Ulimits:
        """These ulimits less NAME (the text stays as given)."""
        return dataclasses.replace(self, items=tuple(u for u in self.items if u.name != name))


@dataclass(frozen=True)
class CreateSpec:
    """Everything `mlc create` decides before talking to Docker."""

    name: str
    entry: Entry
    arch: str
    user: host.User
    workspace: Path
    data: Path | None = None
    models: Path | None = None
    gpus: Gpus = Gpus()
    gpus_explicit: bool = False
    ulimits: Ulimits = field(default_factory=lambda: Ulimits.parse(DEFAULT_ULIMITS))
    ulimits_explicit: bool = False
    forward_network: bool = True
    build: bool = False
    env: dict[str, str] = field(default_factory=dict)
    remote_host: str | None = None  # a remote engine's host: the folders are there, not here
    worker_dir: Path | None = None  # the host folder mounted as the engine worker's (local only)
    prewarm: bool = True  # `mlc start` / `open` / `setup` pre-warm the engine worker

    @property
    def folders(self) -> list[Path]:
        """The host folders it mounts: workspace, then data and models when given."""
        return [p for p in (self.workspace, self.data, self.models) if p]

    def labels(self) -> Labels:
        """The labels of the container this spec makes."""
        e = self.entry
        return new_labels(
            name=self.name,
            user=self.user.name,
            framework=f"{e.framework}-{e.version}",
            gpus=self.gpus.text,
            arch=self.arch,
            workspace=self.workspace,
            data=self.data,
            models=self.models,
            image=e.reference,
            worker=self.worker_dir,
            prewarm=self.prewarm,
        )


def resolve_dir(path: Path, what: str) -> Path:
    """PATH as an absolute path that is a directory or does not exist yet (and can be
    looked at: a folder inside another user's home cannot)."""
    path = path.expanduser().resolve()
    try:
        is_file = path.exists() and not path.is_dir()
    except OSError as exc:
        raise MlcError(
            f"cannot use {path} as the {what} folder: {exc.strerror or exc}",
            hint="pick a folder you may create and write, e.g. under your home",
        ) from None
    if is_file:
        raise MlcError(f"{what} path {path} is a file, not a directory")
    return path


def remote_dir(path: Path, what: str, host_name: str) -> Path:
    """PATH as a folder on a remote engine's host: absolute, taken as written (this machine's
    files say nothing about it; the engine checks it when the container is made)."""
    path = path.expanduser()
    if not path.is_absolute():
        raise UsageError(f"give the {what} folder as an absolute path on {host_name}")
    return Path(os.path.normpath(path))


def new_spec(
    name: str,
    framework: str,
    version: str,
    *,
    workspace: Path,
    data: Path | None = None,
    models: Path | None = None,
    gpus: str | None = None,
    arch: str | None = None,
    ulimits: str = DEFAULT_ULIMITS,
    forward_network: bool = True,
    build: bool = False,
    catalog_path: str | None = None,
    remote_host: str | None = None,
    prewarm: bool = True,
) -> CreateSpec:
    """The spec for `mlc create NAME FRAMEWORK VERSION ...`: every input checked (name, -g,
    --ulimit first, then the catalog and the folders), nothing made yet."""
    validate_name(name)
    parsed_gpus = Gpus.parse(gpus)
    parsed_ulimits = Ulimits.parse(ulimits)
    arch_name = host.detect_arch(arch)
    entry = catalog.load(catalog_path).resolve(framework, version, arch_name)

    def folder(path: Path, what: str) -> Path:
        return remote_dir(path, what, remote_host) if remote_host else resolve_dir(path, what)

    return CreateSpec(
        name=name,
        entry=entry,
        arch=arch_name,
        user=host.current_user(),
        workspace=folder(workspace, "workspace"),
        data=folder(data, "data") if data else None,
        models=folder(models, "models") if models else None,
        gpus=parsed_gpus,
        gpus_explicit=gpus is not None,
        ulimits=parsed_ulimits,
        ulimits_explicit=ulimits != DEFAULT_ULIMITS,
        forward_network=forward_network,
        build=build,
        remote_host=remote_host,
        worker_dir=None if remote_host else warmpath.host_dir(name),
        prewarm=prewarm,
    )


@dataclass(frozen=True)
class Retry:
    """A refused start that may be retried: the new spec, and a warning to show (or None)."""

    spec: CreateSpec
    warning: str | None = None


def after_refused_start(spec: CreateSpec, reason: str) -> Retry | None:
    """What to do when Docker refused to start SPEC's container for REASON: a Retry with a new
    spec (SPEC is never changed), an MlcError saying why not, or None (not a known refusal)."""
    if spec.gpus.wanted and "requirement error" in reason:  # the driver is too old for the image
        need = (
            f" (this image needs driver >= {spec.entry.min_driver})"
            if spec.entry.min_driver
            else ""
        )
        raise MlcError(
            f"the NVIDIA driver is too old for {spec.entry.reference}{need}",
            hint="update the driver, or pick an image with an older CUDA (`mlc images`)",
        )
    if spec.gpus.wanted and any(s in reason for s in GPU_DRIVER_ERRORS):
        if spec.gpus_explicit:
            raise MlcError(
                f"cannot give the container GPUs ({spec.gpus.text}): no NVIDIA container runtime",
                hint="install nvidia-container-toolkit, or use -g none",
            )
        return Retry(
            dataclasses.replace(spec, gpus=NO_GPUS),
            "warning: no NVIDIA container runtime on this host; the container is CPU-only",
        )
    if "rlimit" in reason and "memlock" in spec.ulimits.names():
        if spec.ulimits_explicit:
            raise MlcError(
                f"the Docker engine refused the ulimits {spec.ulimits.text}",
                hint="this host cannot raise memlock; pick a lower value",
            )
        return Retry(dataclasses.replace(spec, ulimits=spec.ulimits.without("memlock")))
    return None


def check_driver(entry: Entry) -> None:
    """Refuse, before anything is made, an image whose CUDA needs a newer NVIDIA driver
    than the host's (the catalog's ``min_driver``; no driver or no minimum: nothing to check)."""
    have = host.driver_version()
    if not (have and entry.min_driver):
        return
    if host.version_key(have) < host.version_key(entry.min_driver):
        raise MlcError(
            f"the NVIDIA driver {have} is too old for {entry.reference}: "
            f"it needs >= {entry.min_driver}",
            hint="update the driver, or pick an image with an older CUDA (`mlc images` "
            "shows each image's minimum driver)",
        )
