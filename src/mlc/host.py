"""Facts about the host: user, uid/gid, GPU architecture, CA bundle, proxy settings."""

from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

# Compute capability floors -> AIME architecture names (AIME files Hopper under ADA).
_ARCH_BY_CAPABILITY = [
    (10.0, "CUDA_BLACKWELL"),
    (8.9, "CUDA_ADA"),
    (8.0, "CUDA_AMPERE"),
    (0.0, "CUDA"),
]

CA_BUNDLE_CANDIDATES = (
    "/etc/ssl/certs/ca-certificates.crt",  # Debian, Ubuntu
    "/etc/pki/tls/certs/ca-bundle.crt",  # Fedora, RHEL
    "/etc/ssl/cert.pem",  # Alpine, macOS
)

PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy")


@dataclass(frozen=True)
class User:
    """The host user a container is made for."""

    name: str
    uid: int
    gid: int
    home: Path


def current_user() -> User:
    """The calling user, from the password database (never os.getlogin())."""
    uid, gid = os.getuid(), os.getgid()
    try:
        entry = pwd.getpwuid(uid)
        return User(entry.pw_name, uid, gid, Path(entry.pw_dir))
    except KeyError:  # a uid without a passwd entry (e.g. inside another container)
        return User(os.environ.get("USER", f"user{uid}"), uid, gid, Path.home())


def _smi_query(field: str) -> list[str]:
    """One ``nvidia-smi --query-gpu`` field for every GPU ([] without nvidia-smi or GPUs)."""
    smi = shutil.which("nvidia-smi")
    if not smi:
        return []
    try:
        out = subprocess.run(
            [smi, f"--query-gpu={field}", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=15,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


def gpu_capabilities() -> list[float]:
    """Compute capabilities of the host's NVIDIA GPUs, or [] when there are none."""
    caps = []
    for value in _smi_query("compute_cap"):
        try:
            caps.append(float(value))
        except ValueError:
            continue
    return caps


def driver_version() -> str | None:
    """The host's NVIDIA driver version (e.g. ``550.54.15``), or None without one."""
    versions = _smi_query("driver_version")
    return versions[0] if versions else None


def version_key(text: str | None) -> tuple[int, ...]:
    """A version string as comparable numbers: ``550.54.15`` -> (550, 54, 15), ``2.1.0+cu121``
    -> (2, 1, 0) (a local ``+...`` part is ignored); None -> (0,)."""
    return tuple(int(n) for n in re.findall(r"\d+", (text or "0").split("+")[0])) or (0,)


def arch_for_capability(cap: float) -> str:
    """The catalog architecture for one compute capability."""
    return next(name for floor, name in _ARCH_BY_CAPABILITY if cap >= floor)


def detect_arch(override: str | None = None) -> str:
    """Catalog architecture: --arch, then MLC_ARCH, then the NVIDIA driver, else CPU."""
    chosen = override or os.environ.get("MLC_ARCH")
    if chosen:
        return chosen.strip().upper()
    caps = gpu_capabilities()
    return arch_for_capability(min(caps)) if caps else "CPU"


def ca_bundle() -> Path | None:
    """The host's CA bundle: SSL_CERT_FILE / REQUESTS_CA_BUNDLE, else the distro default."""
    for var in ("MLC_CA_BUNDLE", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE"):
        value = os.environ.get(var)
        if value and Path(value).is_file():
            return Path(value)
    return next((Path(p) for p in CA_BUNDLE_CANDIDATES if Path(p).is_file()), None)


def proxy_env() -> dict[str, str]:
    """The host's proxy settings, both spellings, as the container should see them."""
    env: dict[str, str] = {}
    for var in PROXY_VARS:
        if os.environ.get(var):
            env[var] = os.environ[var]
    # Tools disagree on case; give the container both when the host set one.
    for upper in ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY"):
        lower = upper.lower()
        if upper in env and lower not in env:
            env[lower] = env[upper]
        elif lower in env and upper not in env:
            env[upper] = env[lower]
    return env
