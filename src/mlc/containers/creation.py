"""Making a container from a :class:`~mlc.containers.spec.CreateSpec`: folders, image, Docker's
create and start (with the retries the spec allows), and the root setup script
(``setup.sh``, package data). On any failure nothing is left behind."""

from __future__ import annotations

import contextlib
import re
from importlib import resources
from pathlib import Path
from typing import Any

import docker
from docker.errors import APIError, NotFound
from docker.types import DeviceRequest, Mount, Ulimit

from mlc import host, warmpath
from mlc.containers.container import Container
from mlc.containers.images import ensure_image, first_line
from mlc.containers.labels import tag, validate_name
from mlc.containers.spec import CreateSpec, Gpus, Ulimits, after_refused_start, check_driver
from mlc.errors import MlcError
from mlc.progress import NullProgress, Progress

HOST_CA_DIR = "/usr/local/share/mlc/host-certs"
SETUP_MARK = "/etc/mlc-setup.done"
CA_VARS = (
    "SSL_CERT_FILE",
    "REQUESTS_CA_BUNDLE",
    "PIP_CERT",
    "CURL_CA_BUNDLE",
    "NODE_EXTRA_CA_CERTS",
)


def setup_script() -> str:
    """The root-side setup script (``setup.sh``; arguments USER UID GID MARK)."""
    return resources.files("mlc.containers").joinpath("setup.sh").read_text(encoding="utf-8")


def setup_command(spec: CreateSpec) -> list[str]:
    """The command that runs the setup script for SPEC's user, each value its own argument."""
    u = spec.user
    return ["sh", "-c", setup_script(), "mlc-setup", u.name, str(u.uid), str(u.gid), SETUP_MARK]


def device_requests(gpus: Gpus) -> list[DeviceRequest]:
    """GPUS as Docker device requests ([] for none)."""
    if gpus.ids:
        return [DeviceRequest(device_ids=list(gpus.ids), capabilities=[["gpu"]])]
    if gpus.count:
        return [DeviceRequest(count=gpus.count, capabilities=[["gpu"]])]
    return []


def docker_ulimits(ulimits: Ulimits) -> list[Ulimit]:
    return [Ulimit(name=u.name, soft=u.soft, hard=u.hard) for u in ulimits.items]


def environment_for(spec: CreateSpec) -> tuple[dict[str, str], list[Mount]]:
    """Container environment and extra mounts: proxies and the host CA bundle."""
    env = {"MLC_CONTAINER": spec.name, **spec.env}
    if spec.worker_dir:
        env["MLC_WORKER_DIR"] = str(warmpath.CONTAINER_DIR)
    mounts: list[Mount] = []
    if spec.models:
        env.setdefault("HF_HOME", "/models/huggingface")
    if spec.forward_network and not spec.remote_host:  # a remote host has its own network
        env.update(host.proxy_env())
        bundle = host.ca_bundle()
        if bundle:
            # Only the file, read-only: its folder may hold anything (~/corp-ca.pem beside
            # ~/.ssh). A bundle regenerated on the host (a new file) is seen at the next start.
            inside = f"{HOST_CA_DIR}/{bundle.name}"
            mounts.append(Mount(inside, str(bundle.resolve()), type="bind", read_only=True))
            for var in CA_VARS:
                env.setdefault(var, inside)
    return env, mounts


def folder_mounts(spec: CreateSpec) -> list[Mount]:
    """The user's folders: /workspace, and /data and /models when given; then the engine
    worker's private folder (:mod:`mlc.warmpath`), so the host reaches its socket."""
    mounts = [Mount("/workspace", str(spec.workspace), type="bind")]
    if spec.data:
        mounts.append(Mount("/data", str(spec.data), type="bind"))
    if spec.models:
        mounts.append(Mount("/models", str(spec.models), type="bind"))
    if spec.worker_dir:
        mounts.append(Mount(str(warmpath.CONTAINER_DIR), str(spec.worker_dir), type="bind"))
    return mounts


def _make_dirs(paths: list[Path]) -> list[Path]:
    """Create the missing PATHS (owned by the caller); returns those it made."""
    made: list[Path] = []
    for path in paths:
        try:
            missing = [p for p in [path, *path.parents] if not p.exists()]
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise MlcError(
                f"cannot create directory {path}: {exc.strerror or exc}",
                hint="pick a folder you may create and write, e.g. under your home",
            ) from None
        made += reversed(missing)
    return made


def create(
    dc: docker.DockerClient, spec: CreateSpec, progress: Progress | None = None
) -> Container:
    """Make and set up the container for SPEC; on any failure nothing is left behind."""
    progress = progress or NullProgress()
    validate_name(spec.name)
    try:
        dc.containers.get(tag(spec.name, spec.user.uid))
        raise MlcError(
            f"container '{spec.name}' already exists",
            hint=f"open it with `mlc open {spec.name}` or pick another name",
        )
    except NotFound:
        pass
    if spec.gpus.wanted:
        check_driver(spec.entry)
    image = ensure_image(dc, spec.entry, spec.build, progress)
    made = [] if spec.remote_host else _make_dirs(spec.folders)  # remote: checked there
    if spec.worker_dir:
        warmpath.forget_route(warmpath.make_host_dir(spec.worker_dir))  # a removed namesake's
    try:
        c = _create_and_start(dc, spec, image, progress)
    except BaseException:
        for d in reversed(made):  # only the folders this create made, and only while empty
            with contextlib.suppress(OSError):
                d.rmdir()
        raise
    for d in made:
        if d in spec.folders:
            progress.note(f"created {d}")
    return c


MISSING_SOURCE = re.compile(r"bind source path does not exist: (\S+)")


def _create(dc: docker.DockerClient, spec: CreateSpec, image: str, **kwargs: Any) -> Any:
    """Docker's create; a folder missing on the engine's host (Docker checks every bind
    source there) is named: ``workspace /x does not exist on host gpu1``."""
    try:
        return dc.containers.create(image, **kwargs)
    except APIError as exc:
        found = MISSING_SOURCE.search(str(exc.explanation or exc))
        if not found:
            raise
        path = Path(found.group(1))
        named = {spec.workspace: "workspace", spec.data: "data", spec.models: "models"}
        what = named.get(path, "folder")
        where = f"host {spec.remote_host}" if spec.remote_host else "this machine"
        raise MlcError(
            f"{what} {path} does not exist on {where}",
            hint=f"create it there (e.g. ssh {spec.remote_host or 'HOST'} mkdir -p {path}) "
            "or pick another folder",
        ) from None


def _create_and_start(
    dc: docker.DockerClient, spec: CreateSpec, image: str, progress: Progress
) -> Container:
    env, extra = environment_for(spec)
    mounts = folder_mounts(spec)
    mounts[1:1] = extra  # as before: /workspace, the CA folder, then /data and /models
    while True:
        raw = _create(
            dc,
            spec,
            image,
            command=["sleep", "infinity"],
            name=tag(spec.name, spec.user.uid),
            hostname=spec.name,
            init=True,
            extra_hosts={spec.name: "127.0.1.1"},
            user=f"{spec.user.uid}:{spec.user.gid}",
            working_dir="/workspace",
            labels=spec.labels().as_dict(),
            environment=env,
            mounts=mounts,
            ipc_mode="host",
            network_mode="host",
            ulimits=docker_ulimits(spec.ulimits),
            device_requests=device_requests(spec.gpus),
            detach=True,
        )
        try:
            raw.start()
            break
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM while Docker starts it: nothing is left
            with contextlib.suppress(Exception):
                raw.remove(force=True)
            raise
        except APIError as exc:
            raw.remove(force=True)
            reason = str(exc.explanation or exc)
            retry = after_refused_start(spec, reason)
            if retry is None:
                raise MlcError(
                    f"cannot start container '{spec.name}': {first_line(reason)}"
                ) from None
            if retry.warning:
                progress.note(retry.warning)
            spec = retry.spec
    try:
        code, out = raw.exec_run(setup_command(spec), user="root")
        if code != 0:
            raise MlcError(
                f"setting up container '{spec.name}' failed (exit {code}): "
                f"{first_line(out.decode(errors='replace').strip()[-500:])}"
            )
        raw.reload()
        return Container(raw)
    except BaseException:
        raw.remove(force=True)
        raise
