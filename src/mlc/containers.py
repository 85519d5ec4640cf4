"""Docker SDK layer: names, labels, create/start/stop/remove/list/stats, exec, shells."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import docker
from docker.errors import APIError, DockerException, ImageNotFound, NotFound
from docker.models.containers import Container
from docker.types import DeviceRequest, Mount, Ulimit

from mlc import host
from mlc.catalog import Entry
from mlc.errors import DockerUnavailable, MlcError, NotFoundError

SEP = "._."
LABEL = "aime.mlc"
SCHEMA_LABEL = "mlc.schema"
SCHEMA_VERSION = "1"
NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")
HOST_CA_DIR = "/usr/local/share/mlc/host-certs"
KEEP_RUNNING_MARK = "/run/mlc-keep-running"
SETUP_MARK = "/etc/mlc-setup.done"
DEFAULT_ULIMITS = "memlock=-1,stack=67108864"
GPU_DRIVER_ERRORS = ("could not select device driver", "nvidia-container-cli")
Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


def client() -> docker.DockerClient:
    """A Docker client, or one clear error saying why the engine cannot be reached."""
    try:
        c = docker.from_env()
        c.ping()
        return c
    except DockerException as exc:
        text = str(exc)
        if "Permission denied" in text or "PermissionError" in text:
            raise DockerUnavailable(
                "permission denied on the Docker socket",
                hint="join the docker group (sudo usermod -aG docker $USER, then log in again)",
            ) from None
        raise DockerUnavailable(
            "cannot reach the Docker engine",
            hint="start Docker (sudo systemctl start docker) or set DOCKER_HOST",
        ) from None


# -- names and lookups -------------------------------------------------------------------------


def tag(name: str, uid: int) -> str:
    """The Docker name of NAME for user UID, as AIME MLC spells it."""
    return f"{name}{SEP}{uid}"


def validate_name(name: str) -> None:
    """NAME must be a valid Docker name without AIME's separator."""
    if SEP in name:
        raise MlcError(f"invalid container name '{name}': it must not contain '{SEP}'")
    if not NAME_RE.match(name):
        raise MlcError(
            f"invalid container name '{name}'",
            hint="use letters, digits, '_', '.' and '-', starting with a letter or digit",
        )


def display_name(c: Container) -> str:
    return c.labels.get(f"{LABEL}.NAME") or c.name.split(SEP)[0]


def _owned_by(c: Container, user: host.User) -> bool:
    labels = c.labels
    if labels.get(f"{LABEL}.USER") == user.name or labels.get(LABEL) == user.name:
        return c.name.endswith(f"{SEP}{user.uid}") or SEP not in c.name
    return False


def find(dc: docker.DockerClient, name: str, user: host.User) -> Container:
    """The caller's container NAME (exact name, never a prefix); legacy bare names too."""
    for candidate in (tag(name, user.uid), name):
        try:
            c = dc.containers.get(candidate)
        except NotFound:
            continue
        if c.name != candidate:  # Docker also resolves ID prefixes: `mlc remove ab` must not
            continue
        if LABEL in c.labels or f"{LABEL}.NAME" in c.labels:
            if _owned_by(c, user):
                return c
            owner = c.labels.get(f"{LABEL}.USER", "another user")
            raise MlcError(
                f"container '{name}' belongs to {owner}",
                hint="mlc acts on your own containers only",
            )
    others = dc.containers.list(all=True, filters={"label": f"{LABEL}.NAME={name}"})
    if any(not _owned_by(c, user) for c in others):
        raise MlcError(
            f"container '{name}' belongs to another user",
            hint="mlc acts on your own containers only",
        )
    raise NotFoundError(f"no container named '{name}'", hint="see `mlc list`")


def mine(dc: docker.DockerClient, user: host.User, all_users: bool = False) -> list[Container]:
    """The caller's mlc/AIME containers (everyone's with all_users)."""
    label = LABEL if all_users else f"{LABEL}.USER={user.name}"
    found = dc.containers.list(all=True, filters={"label": label})
    if not all_users:
        found = [c for c in found if _owned_by(c, user)]
    return sorted(found, key=display_name)


# -- create ------------------------------------------------------------------------------------


@dataclass
class CreateSpec:
    """Everything `mlc create` decides before talking to Docker."""

    name: str
    entry: Entry
    arch: str
    user: host.User
    workspace: Path
    data: Path | None = None
    models: Path | None = None
    gpus: str = "all"
    gpus_explicit: bool = False
    ulimits: str = DEFAULT_ULIMITS
    ulimits_explicit: bool = False
    forward_network: bool = True
    build: bool = False
    env: dict[str, str] = field(default_factory=dict)


def gpu_requests(spec: str) -> list[DeviceRequest]:
    """`-g all|N|ID,ID|device=ID,ID|none` as Docker device requests."""
    spec = (spec or "all").strip().strip("'\"")
    if spec in ("none", "0", ""):
        return []
    if spec == "all":
        return [DeviceRequest(count=-1, capabilities=[["gpu"]])]
    if spec.isdigit():
        return [DeviceRequest(count=int(spec), capabilities=[["gpu"]])]
    ids = [i.strip() for i in spec.removeprefix("device=").split(",")]
    if not all(re.match(r"^([0-9]+|(GPU|MIG)-[A-Za-z0-9-]+)$", i) for i in ids):
        raise MlcError(
            f"invalid GPU selection '{spec}'", hint="use all, a count (2), device ids (0,1) or none"
        )
    return [DeviceRequest(device_ids=ids, capabilities=[["gpu"]])]


def parse_ulimits(spec: str) -> list[Ulimit]:
    """`memlock=-1,stack=67108864` or `nofile=1024:4096`; `none` for the engine's defaults."""
    if not spec or spec.strip() == "none":
        return []
    out = []
    for item in spec.split(","):
        name, _, value = item.strip().partition("=")
        soft, _, hard = value.partition(":")
        try:
            out.append(Ulimit(name=name, soft=int(soft), hard=int(hard or soft)))
        except ValueError:
            raise MlcError(
                f"invalid ulimit '{item}'", hint="use NAME=SOFT[:HARD], e.g. stack=67108864"
            ) from None
    return out


def resolve_dir(path: Path, what: str) -> Path:
    """PATH as an absolute path that is a directory or does not exist yet."""
    path = path.expanduser().resolve()
    if path.exists() and not path.is_dir():
        raise MlcError(f"{what} path {path} is a file, not a directory")
    return path


def _make_dirs(paths: list[Path]) -> list[Path]:
    """Create the missing PATHS (owned by the caller); returns those it made."""
    made: list[Path] = []
    for path in paths:
        missing = [p for p in [path, *path.parents] if not p.exists()]
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise MlcError(f"cannot create directory {path}: {exc.strerror}") from None
        made += reversed(missing)
    return made


def labels_for(spec: CreateSpec) -> dict[str, str]:
    """AIME MLC's labels plus mlc's own schema version."""
    e = spec.entry
    return {
        LABEL: spec.user.name,
        f"{LABEL}.NAME": spec.name,
        f"{LABEL}.USER": spec.user.name,
        f"{LABEL}.MLC_VERSION": "4",
        f"{LABEL}.FRAMEWORK": f"{e.framework}-{e.version}",
        f"{LABEL}.GPUS": spec.gpus,
        f"{LABEL}.ARCH": spec.arch,
        f"{LABEL}.WORK_MOUNT": str(spec.workspace),
        f"{LABEL}.DATA_MOUNT": str(spec.data) if spec.data else "-",
        f"{LABEL}.MODELS_MOUNT": str(spec.models) if spec.models else "-",
        f"{LABEL}.IMAGE": e.reference,
        SCHEMA_LABEL: SCHEMA_VERSION,
    }


def environment_for(spec: CreateSpec) -> tuple[dict[str, str], list[Mount]]:
    """Container environment and extra mounts: proxies and the host CA bundle."""
    env = {"MLC_CONTAINER": spec.name, **spec.env}
    mounts: list[Mount] = []
    if spec.models:
        env.setdefault("HF_HOME", "/models/huggingface")
    if spec.forward_network:
        env.update(host.proxy_env())
        bundle = host.ca_bundle()
        if bundle:
            # Mount the folder, not the file: a regenerated bundle (new inode) stays visible.
            mounts.append(Mount(HOST_CA_DIR, str(bundle.parent), type="bind", read_only=True))
            inside = f"{HOST_CA_DIR}/{bundle.name}"
            for var in (
                "SSL_CERT_FILE",
                "REQUESTS_CA_BUNDLE",
                "PIP_CERT",
                "CURL_CA_BUNDLE",
                "NODE_EXTRA_CA_CERTS",
            ):
                env.setdefault(var, inside)
    return env, mounts


def ensure_image(
    dc: docker.DockerClient, entry: Entry, build: bool, progress: Progress = _quiet
) -> str:
    """The image for ENTRY: local as is, else pulled, else built from images/ with --build."""
    ref = entry.reference
    try:
        dc.images.get(ref)
        return ref
    except ImageNotFound:
        pass
    progress(f"pulling {ref}")
    try:
        _pull(dc, ref, progress)
        return ref
    except (APIError, MlcError) as exc:
        reason = exc.explanation if isinstance(exc, APIError) else str(exc)
        if entry.build and build:
            progress(f"pull failed ({_first_line(reason)}); building {ref} from images/")
            return _build(dc, entry, progress)
        hint = (
            "its Dockerfile recipe is in images/: add --build to build it locally"
            if entry.build
            else "check the network, or load the image with `docker load`"
        )
        raise MlcError(f"cannot pull image {ref}: {_first_line(reason)}", hint=hint) from None


def _first_line(text: Any) -> str:
    return str(text).strip().splitlines()[0] if str(text).strip() else "unknown error"


def _pull(dc: docker.DockerClient, ref: str, progress: Progress) -> None:
    from rich.progress import BarColumn, DownloadColumn, TransferSpeedColumn
    from rich.progress import Progress as Bar

    repo, _, tag_ = (
        ref.rpartition(":") if "@" not in ref and ":" in ref.split("/")[-1] else (ref, "", "")
    )
    layers: dict[str, tuple[int, int]] = {}
    with Bar(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        transient=True,
        disable=not sys.stderr.isatty(),
    ) as bar:
        task = bar.add_task(f"pull {ref}", total=None)
        for ev in dc.api.pull(repo or ref, tag=tag_ or None, stream=True, decode=True):
            if "error" in ev:
                raise MlcError(ev["error"])
            detail = ev.get("progressDetail") or {}
            if ev.get("id") and detail.get("total"):
                layers[ev["id"]] = (detail.get("current", 0), detail["total"])
                done = sum(c for c, _ in layers.values())
                bar.update(task, completed=done, total=sum(t for _, t in layers.values()))
    dc.images.get(ref)


def _build(dc: docker.DockerClient, entry: Entry, progress: Progress) -> str:
    from importlib import resources

    recipe = entry.build or {}
    origin = Path(entry.origin)
    # A user catalog's recipes are relative to that catalog; built-in ones to images/.
    root = (
        origin.parent if origin.is_file() else Path(str(resources.files("mlc").joinpath("images")))
    )
    dockerfile = root / recipe.get("dockerfile", "")
    if not dockerfile.is_file():
        raise MlcError(f"no Dockerfile recipe {dockerfile} for {entry.framework} {entry.version}")
    args = {k: str(v) for k, v in (recipe.get("args") or {}).items()}
    try:
        for ev in dc.api.build(
            path=str(dockerfile.parent),
            dockerfile=dockerfile.name,
            tag=entry.image,
            buildargs=args,
            decode=True,
            rm=True,
        ):
            if "error" in ev:
                raise MlcError(f"building {entry.image} failed: {_first_line(ev['error'])}")
            if ev.get("stream", "").strip():
                progress(ev["stream"].rstrip())
    except APIError as exc:
        raise MlcError(f"building {entry.image} failed: {_first_line(exc.explanation)}") from None
    return entry.image


def setup_script(spec: CreateSpec) -> str:
    """Root-side setup inside a new container: the user, sudo, prompt. Idempotent, POSIX sh."""
    u = spec.user
    return f"""set -e
U={u.name}; UID_={u.uid}; GID_={u.gid}; NAME={spec.name}
if [ "$UID_" != 0 ]; then
  group=$(getent group "$GID_" | cut -d: -f1 || true)
  if [ -z "$group" ]; then
    if getent group "$U" >/dev/null; then groupmod -g "$GID_" "$U"
    else groupadd -g "$GID_" "$U"; fi
    group=$(getent group "$GID_" | cut -d: -f1)
  fi
  holder=$(getent passwd "$UID_" | cut -d: -f1 || true)
  if [ -n "$holder" ] && [ "$holder" != "$U" ]; then
    # The image already has a user with this uid (Ubuntu 24.04: ubuntu=1000): take it over.
    usermod -l "$U" -d "/home/$U" -m -g "$GID_" -s /bin/bash "$holder"
  elif [ -z "$holder" ]; then
    if getent passwd "$U" >/dev/null; then
      usermod -u "$UID_" -g "$GID_" -d "/home/$U" -m "$U"
    else
      useradd -m -u "$UID_" -g "$GID_" -d "/home/$U" -s /bin/bash "$U"
    fi
  fi
  home="/home/$U"
  mkdir -p "$home"; [ -f "$home/.bashrc" ] || cp -rT /etc/skel "$home" 2>/dev/null || true
  chown "$UID_:$GID_" "$home" "$home/.bashrc" "$home/.profile" 2>/dev/null || true
  if ! command -v sudo >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq sudo) \
      >/dev/null 2>&1 || echo "mlc: warning: sudo is not installed in the image" >&2
  fi
  if [ -d /etc/sudoers.d ]; then
    printf '%s ALL=(ALL) NOPASSWD:ALL\\nDefaults:%s env_keep += "http_proxy https_proxy no_proxy \
HTTP_PROXY HTTPS_PROXY NO_PROXY PIP_CERT SSL_CERT_FILE REQUESTS_CA_BUNDLE CURL_CA_BUNDLE"\\n' \
      "$U" "$U" > "/etc/sudoers.d/mlc-$U"
    chmod 0440 "/etc/sudoers.d/mlc-$U"
  fi
else
  home=/root
fi
# Login shells reset PATH in /etc/profile; keep the image's (its venv or conda env first).
mkdir -p /etc/profile.d
printf 'export PATH="%s"\n' "$PATH" > /etc/profile.d/00-mlc-path.sh
for rc in "$home/.bashrc" /root/.bashrc; do
  touch "$rc"
  grep -q '# mlc prompt' "$rc" || cat >> "$rc" <<'EOF'
# mlc prompt
export PATH="$HOME/.local/bin:$PATH"
PS1="[$MLC_CONTAINER] \\u@\\h:\\w\\$ "
EOF
done
chown "$UID_:$GID_" "$home/.bashrc" 2>/dev/null || true
date > {SETUP_MARK}
"""


def create(dc: docker.DockerClient, spec: CreateSpec, progress: Progress = _quiet) -> Container:
    """Make and set up the container for SPEC; on any failure nothing is left behind."""
    validate_name(spec.name)
    cname = tag(spec.name, spec.user.uid)
    try:
        dc.containers.get(cname)
        raise MlcError(
            f"container '{spec.name}' already exists",
            hint=f"open it with `mlc open {spec.name}` or pick another name",
        )
    except NotFound:
        pass
    if gpu_requests(spec.gpus):
        check_driver(spec.entry)
    image = ensure_image(dc, spec.entry, spec.build, progress)
    made = _make_dirs([p for p in (spec.workspace, spec.data, spec.models) if p])
    try:
        c = _create_and_start(dc, spec, image, progress)
    except BaseException:
        for d in reversed(made):  # only the folders this create made, and only while empty
            with contextlib.suppress(OSError):
                d.rmdir()
        raise
    for d in made:
        if d in (spec.workspace, spec.data, spec.models):
            progress(f"created {d}")
    return c


def check_driver(entry: Entry) -> None:
    """Refuse, before anything is made, an image whose CUDA needs a newer NVIDIA driver
    than the host's (the catalog's ``min_driver``; no driver or no minimum: nothing to check)."""
    have = host.driver_version()
    if not (have and entry.min_driver):
        return
    if _version_key(have) < _version_key(entry.min_driver):
        raise MlcError(
            f"the NVIDIA driver {have} is too old for {entry.reference}: "
            f"it needs >= {entry.min_driver}",
            hint="update the driver, or pick an image with an older CUDA (`mlc images` "
            "shows each image's minimum driver)",
        )


def _version_key(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text))


def _create_and_start(
    dc: docker.DockerClient, spec: CreateSpec, image: str, progress: Progress
) -> Container:
    env, mounts = environment_for(spec)
    mounts.insert(0, Mount("/workspace", str(spec.workspace), type="bind"))
    if spec.data:
        mounts.append(Mount("/data", str(spec.data), type="bind"))
    if spec.models:
        mounts.append(Mount("/models", str(spec.models), type="bind"))
    devices = gpu_requests(spec.gpus)
    ulimits = parse_ulimits(spec.ulimits)
    while True:
        c = dc.containers.create(
            image,
            ["sleep", "infinity"],
            name=tag(spec.name, spec.user.uid),
            hostname=spec.name,
            init=True,
            extra_hosts={spec.name: "127.0.1.1"},
            user=f"{spec.user.uid}:{spec.user.gid}",
            working_dir="/workspace",
            labels=labels_for(spec),
            environment=env,
            mounts=mounts,
            ipc_mode="host",
            network_mode="host",
            ulimits=ulimits,
            device_requests=devices,
            detach=True,
        )
        try:
            c.start()
            break
        except APIError as exc:
            c.remove(force=True)
            reason = str(exc.explanation or exc)
            if devices and "requirement error" in reason:  # the driver is too old for the image
                need = (
                    f" (this image needs driver >= {spec.entry.min_driver})"
                    if spec.entry.min_driver
                    else ""
                )
                raise MlcError(
                    f"the NVIDIA driver is too old for {spec.entry.reference}{need}",
                    hint="update the driver, or pick an image with an older CUDA (`mlc images`)",
                ) from None
            if devices and any(s in reason for s in GPU_DRIVER_ERRORS):
                if spec.gpus_explicit:
                    raise MlcError(
                        f"cannot give the container GPUs ({spec.gpus}): "
                        "no NVIDIA container runtime",
                        hint="install nvidia-container-toolkit, or use -g none",
                    ) from None
                progress(
                    "warning: no NVIDIA container runtime on this host; the container is CPU-only"
                )
                devices = []
                spec.gpus = "none"
                continue
            if "rlimit" in reason and any(u.name == "memlock" for u in ulimits):
                if spec.ulimits_explicit:
                    raise MlcError(
                        f"the Docker engine refused the ulimits {spec.ulimits}",
                        hint="this host cannot raise memlock; pick a lower value",
                    ) from None
                ulimits = [u for u in ulimits if u.name != "memlock"]
                continue
            raise MlcError(f"cannot start container '{spec.name}': {_first_line(reason)}") from None
    try:
        code, out = c.exec_run(["sh", "-c", setup_script(spec)], user="root")
        if code != 0:
            raise MlcError(
                f"setting up container '{spec.name}' failed (exit {code}): "
                f"{_first_line(out.decode(errors='replace').strip()[-500:])}"
            )
        c.reload()
        return c
    except BaseException:
        c.remove(force=True)
        raise


# -- lifecycle ---------------------------------------------------------------------------------


def start(c: Container, keep_running: bool = False) -> bool:
    """Start C if needed; returns whether it was started. keep_running marks an `mlc start`."""
    c.reload()
    started = c.status != "running"
    if started:
        c.start()
        c.reload()
    if keep_running:
        stamp = c.attrs["State"]["StartedAt"]
        c.exec_run(["sh", "-c", f"echo '{stamp}' > {KEEP_RUNNING_MARK}"], user="root")
    return started


def marked_keep_running(c: Container) -> bool:
    """Whether the current run of C was started by `mlc start` (so open must not stop it)."""
    code, out = c.exec_run(["cat", KEEP_RUNNING_MARK], user="root")
    return code == 0 and out.decode().strip() == c.attrs["State"]["StartedAt"]


def busy(dc: docker.DockerClient, c: Container) -> bool:
    """Whether anything besides the keep-alive runs in C: other execs or background processes."""
    c.reload()
    if c.status != "running":
        return False
    for eid in c.attrs.get("ExecIDs") or []:
        try:
            if dc.api.exec_inspect(eid).get("Running"):
                return True
        except NotFound:
            continue
    procs = c.top(ps_args="-eo pid,comm").get("Processes") or []
    return len(procs) > 2  # docker-init and sleep


def stop_if_idle(dc: docker.DockerClient, c: Container) -> bool:
    """AIME's auto-stop: stop C when the last shell is gone, unless `mlc start` started it."""
    c.reload()
    if c.status != "running" or marked_keep_running(c) or busy(dc, c):
        return False
    c.stop(timeout=10)
    return True


def stop(c: Container) -> None:
    c.stop(timeout=10)


def remove(dc: docker.DockerClient, c: Container) -> None:
    """Remove C; the workspace, data and models folders are never touched."""
    image_tag = c.attrs.get("Config", {}).get("Image", "")
    c.remove(v=False, force=False)
    # AIME MLC committed a per-container image `<repo>:<name>._.<uid>`: remove it too.
    if image_tag.endswith(f":{c.name}"):
        with contextlib.suppress(ImageNotFound, APIError):
            dc.images.remove(image_tag)


# -- exec --------------------------------------------------------------------------------------


def exec_env(c: Container) -> dict[str, str]:
    env = {"MLC_CONTAINER": display_name(c)}
    for var in ("TERM", "LANG", "DISPLAY", "NCCL_P2P_LEVEL", "CUDA_VISIBLE_DEVICES"):
        if os.environ.get(var):
            env[var] = os.environ[var]
    return env


def user_of(c: Container) -> str:
    return c.attrs["Config"].get("User") or "root"


def exec_stream(
    dc: docker.DockerClient,
    c: Container,
    cmd: list[str],
    *,
    user: str | None = None,
    workdir: str = "/workspace",
    env: dict[str, str] | None = None,
    stdout: BinaryIO | None = None,
    stderr: BinaryIO | None = None,
) -> int:
    """Run CMD in C non-interactively, streaming its output; returns its exit code."""
    stdout = stdout or sys.stdout.buffer
    stderr = stderr or sys.stderr.buffer
    eid = dc.api.exec_create(
        c.id,
        cmd,
        user=user or user_of(c),
        workdir=workdir,
        environment={**exec_env(c), **(env or {})},
    )["Id"]
    for out, err in dc.api.exec_start(eid, stream=True, demux=True):
        if out:
            stdout.write(out)
            stdout.flush()
        if err:
            stderr.write(err)
            stderr.flush()
    code = dc.api.exec_inspect(eid)["ExitCode"]
    return 127 if code is None else int(code)


def shell(c: Container, command: list[str] | None = None) -> int:
    """An interactive login shell (or COMMAND) through the docker CLI; returns its exit code."""
    cli = shutil.which("docker")
    if not cli:
        raise MlcError(
            "the docker command-line client is needed for interactive shells",
            hint="install docker-ce-cli or docker.io",
        )
    argv = [
        cli,
        "exec",
        "-i",
        "--detach-keys",
        "ctrl-^,ctrl-@",
        "-u",
        user_of(c),
        "-w",
        "/workspace",
    ]
    if sys.stdin.isatty():
        argv.append("-t")
    for k, v in exec_env(c).items():
        argv += ["-e", f"{k}={v}"]
    argv += [c.name, *(command or ["bash", "-l"])]
    return subprocess.call(argv)


# -- stats -------------------------------------------------------------------------------------


@dataclass
class Stats:
    name: str
    cpu_percent: float
    mem_used: int
    mem_limit: int
    pids: int
    gpu_mem_used: int | None = None
    gpu_mem_total: int | None = None


def _stats_one(c: Container) -> Stats:
    s = c.stats(stream=False)
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
    st = Stats(
        display_name(c),
        percent,
        max(used, 0),
        mem.get("limit", 0),
        s.get("pids_stats", {}).get("current", 0),
    )
    if c.labels.get(f"{LABEL}.GPUS", "none") != "none" and c.attrs["HostConfig"].get(
        "DeviceRequests"
    ):
        code, out = c.exec_run(
            ["nvidia-smi", "--query-gpu=memory.used,memory.total", "--format=csv,noheader,nounits"]
        )
        if code == 0:
            pairs = [line.split(",") for line in out.decode().splitlines() if "," in line]
            st.gpu_mem_used = sum(int(a) for a, _ in pairs) * 2**20
            st.gpu_mem_total = sum(int(b) for _, b in pairs) * 2**20
    return st


def stats(containers: list[Container]) -> list[Stats]:
    """Resource use of running CONTAINERS, gathered in parallel (each sample takes ~1 s)."""
    if not containers:
        return []
    with ThreadPoolExecutor(max_workers=min(16, len(containers))) as pool:
        return list(pool.map(_stats_one, containers))


# -- listing -----------------------------------------------------------------------------------


def describe(c: Container) -> dict[str, Any]:
    """The facts `mlc list` shows, as plain data."""
    labels = c.labels
    framework, _, version = labels.get(f"{LABEL}.FRAMEWORK", "-").partition("-")
    return {
        "name": display_name(c),
        "framework": framework,
        "version": version,
        "status": c.status,
        "user": labels.get(f"{LABEL}.USER", labels.get(LABEL, "")),
        "workspace": labels.get(f"{LABEL}.WORK_MOUNT", ""),
        "data": labels.get(f"{LABEL}.DATA_MOUNT", "-"),
        "models": labels.get(f"{LABEL}.MODELS_MOUNT", "-"),
        "gpus": labels.get(f"{LABEL}.GPUS", ""),
        "arch": labels.get(f"{LABEL}.ARCH", ""),
        "image": c.attrs.get("Config", {}).get("Image", ""),
        "container": c.name,
        "mlc_schema": labels.get(SCHEMA_LABEL),
    }
