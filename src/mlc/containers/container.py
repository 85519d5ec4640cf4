"""One mlc container as an object, and how to find the caller's: docker-py style, a thin
object over Docker's ``attrs`` whose properties read the label table (:mod:`.labels`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from mlc import host
from mlc.containers.labels import NONE, TABLE, Labels, Mount, bare_name, owned_by, tag
from mlc.errors import DockerUnavailable, MlcError, NotFoundError

if TYPE_CHECKING:  # the SDK is imported where it is used: `mlc list` can do without it
    import docker
    from docker.models.containers import Container as DockerContainer

    from mlc.containers.engineapi import Engine

KEEP_RUNNING_MARK = "/run/mlc-keep-running"


class Container:
    """An mlc (or AIME) container: Docker's container ``raw`` and its labels as attributes."""

    def __init__(self, raw: DockerContainer) -> None:
        self.raw = raw

    def __repr__(self) -> str:
        return f"<mlc Container {self.name} ({self.docker_name})>"

    # -- from the labels --------------------------------------------------------------------

    @property
    def labels(self) -> Labels:
        """The label table read from Docker's labels."""
        return Labels.read(self.raw.labels)

    @property
    def name(self) -> str:
        """The name the user gave (``sd``), not Docker's (``sd._.1000``)."""
        return self.labels.name or bare_name(self.raw.name)

    @property
    def user(self) -> str:
        """The owner's user name."""
        labels = self.labels
        return labels.user or labels.owner or ""

    @property
    def framework(self) -> str:
        """The catalog framework, e.g. ``Pytorch``."""
        return (self.labels.framework or NONE).partition("-")[0]

    @property
    def version(self) -> str:
        """The catalog version, e.g. ``2.5.1``."""
        return (self.labels.framework or NONE).partition("-")[2]

    @property
    def gpus(self) -> str:
        """The GPU selection it was created with (``all``, ``0,1``, ``none``); an old mlc
        ``-g 0``, which gave no GPUs, reads ``none``."""
        value = self.labels.gpus or ""
        if value.strip("'\"") == "0" and not self._device_requests:
            return "none"
        return value

    @property
    def workspace(self) -> str:
        """The host folder at /workspace."""
        return self.labels.workspace or ""

    @property
    def data(self) -> str:
        """The host folder at /data, or ``-``."""
        return self.labels.data or NONE

    @property
    def models(self) -> str:
        """The host folder at /models, or ``-``."""
        return self.labels.models or NONE

    @property
    def mounts(self) -> list[Mount]:
        """(host folder, container folder) of each mlc mount, models first."""
        return self.labels.mounts

    # -- from Docker's attrs ----------------------------------------------------------------

    @property
    def docker_name(self) -> str:
        return self.raw.name

    @property
    def id(self) -> str:
        return self.raw.id

    @property
    def status(self) -> str:
        """``running``, ``exited``, ``created``, ... as of the last reload."""
        return self.raw.status

    @property
    def image(self) -> str:
        """The image reference it was created from."""
        return self.raw.attrs.get("Config", {}).get("Image", "")

    @property
    def exec_user(self) -> str:
        """Who commands run as: ``UID:GID`` of the owner (root for a root-made container)."""
        return self.raw.attrs["Config"].get("User") or "root"

    @property
    def started_at(self) -> str:
        return self.raw.attrs["State"]["StartedAt"]

    @property
    def has_gpus(self) -> bool:
        """Whether it was given GPUs (and Docker has device requests for them)."""
        return self.gpus not in ("", "none") and self._device_requests

    @property
    def _device_requests(self) -> bool:
        return bool(self.raw.attrs.get("HostConfig", {}).get("DeviceRequests"))

    def describe(self) -> dict[str, Any]:
        """The facts `mlc list` shows, as plain data."""
        return {
            "name": self.name,
            "framework": self.framework,
            "version": self.version,
            "status": self.status,
            "user": self.user,
            "workspace": self.workspace,
            "data": self.data,
            "models": self.models,
            "gpus": self.gpus,
            "arch": self.labels.arch or "",
            "image": self.image,
            "container": self.docker_name,
            "mlc_schema": self.labels.schema,
        }

    # -- Docker's methods, delegated --------------------------------------------------------

    def reload(self) -> None:
        self.raw.reload()

    def exec_run(self, cmd: list[str], **kwargs: Any) -> Any:
        return self.raw.exec_run(cmd, **kwargs)

    def get_archive(self, path: str) -> Any:
        return self.raw.get_archive(path)

    def put_archive(self, path: str, data: bytes) -> bool:
        return self.raw.put_archive(path, data)

    def keeps_running(self) -> bool:
        """Whether the current run was started by `mlc start` (so open must not stop it)."""
        code, out = self.raw.exec_run(["cat", KEEP_RUNNING_MARK], user="root")
        return code == 0 and out.decode().strip() == self.started_at


def client() -> docker.DockerClient:
    """A Docker client for the engine the docker CLI would use (:mod:`.remote`: --context,
    DOCKER_HOST, DOCKER_CONTEXT, the current context), or one clear error saying why it
    cannot be reached."""
    from docker.errors import DockerException

    from mlc.containers import remote

    ep = remote.endpoint()
    where = f" at {ep.describe()}" if ep.host or ep.context else ""
    try:
        c = remote.connect(ep)
        c.ping()
        return c
    except DockerException as exc:
        text = str(exc)
        if "Permission denied" in text or "PermissionError" in text:
            raise DockerUnavailable(
                "permission denied on the Docker socket",
                hint="join the docker group (sudo usermod -aG docker $USER, then log in again)",
            ) from None
        if "paramiko" in text:
            raise DockerUnavailable(
                f"{ep.describe()} needs the paramiko package for ssh://",
                hint="install paramiko: pip install paramiko (or mlc-toolkit[remote])",
            ) from None
        if ep.host and "server API version" not in text and "Connection" not in text:
            raise DockerUnavailable(  # the address itself is wrong: nothing was asked
                f"invalid {'Docker host ' if ep.context else 'DOCKER_HOST='}{ep.describe()}: "
                f"{text.strip().splitlines()[0]}",
                hint="use unix:///var/run/docker.sock, tcp://HOST:PORT or ssh://USER@HOST",
            ) from None
        raise DockerUnavailable(
            f"cannot reach the Docker engine{where}",
            hint="start Docker (sudo systemctl start docker), or check DOCKER_HOST / the "
            "Docker context (`docker context ls`)",
        ) from None
    except Exception as exc:  # ssh refused or not let in (paramiko's), TLS files missing
        if not isinstance(exc, (OSError, EOFError)) and "paramiko" not in type(exc).__module__:
            raise
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        ssh = ep.host.startswith("ssh://")
        raise DockerUnavailable(
            f"cannot reach the Docker engine{where}: {detail}",
            hint="check that `ssh USER@HOST docker version` works without a password"
            if ssh
            else None,
        ) from None


def _owned(raw: Any, user: host.User) -> bool:
    return owned_by(Labels.read(raw.labels), raw.name, user.name, user.uid)


Get = Callable[[str], Any]  # a container by exact name or ID, or None
Listing = Callable[[str], list[Any]]  # every container (running or not) with a label


def find(dc: docker.DockerClient, name: str, user: host.User) -> Container:
    """The caller's container NAME (exact name, never a prefix); legacy bare names too."""
    from docker.errors import NotFound

    def get(ref: str) -> DockerContainer | None:
        try:
            return dc.containers.get(ref)
        except NotFound:
            return None

    return _find(get, _sdk_listing(dc), name, user)


def mine(dc: docker.DockerClient, user: host.User, all_users: bool = False) -> list[Container]:
    """The caller's mlc/AIME containers (everyone's with all_users), sorted by name."""
    return _mine(_sdk_listing(dc), user, all_users)


def find_local(engine: Engine, name: str, user: host.User) -> Container:
    """:func:`find` on the local engine without the SDK (:mod:`.engineapi`)."""
    return _find(engine.inspect, engine.containers, name, user)


def mine_local(engine: Engine, user: host.User, all_users: bool = False) -> list[Container]:
    """:func:`mine` on the local engine without the SDK (:mod:`.engineapi`)."""
    return _mine(engine.containers, user, all_users)


def _sdk_listing(dc: docker.DockerClient) -> Listing:
    return lambda label: dc.containers.list(all=True, filters={"label": label})


def _find(get: Get, listing: Listing, name: str, user: host.User) -> Container:
    for candidate in (tag(name, user.uid), name):
        raw = get(candidate)
        if raw is None:
            continue
        if raw.name != candidate:  # Docker also resolves ID prefixes: `mlc remove ab` must not
            continue
        labels = Labels.read(raw.labels)
        if labels.is_mlc:
            if _owned(raw, user):
                return Container(raw)
            owner = labels.user if labels.user is not None else "another user"
            raise MlcError(
                f"container '{name}' belongs to {owner}",
                hint="mlc acts on your own containers only",
            )
    if any(not _owned(raw, user) for raw in listing(f"{TABLE['name']}={name}")):
        raise MlcError(
            f"container '{name}' belongs to another user",
            hint="mlc acts on your own containers only",
        )
    raise NotFoundError(f"no container named '{name}'", hint="see `mlc list`")


def _mine(listing: Listing, user: host.User, all_users: bool) -> list[Container]:
    found = listing(TABLE["owner"] if all_users else f"{TABLE['user']}={user.name}")
    if not all_users:
        found = [raw for raw in found if _owned(raw, user)]
    return sorted((Container(raw) for raw in found), key=lambda c: c.name)
