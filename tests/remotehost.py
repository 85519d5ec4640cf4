"""Remote Docker engines for the tests, on this machine: a real sshd on 127.0.0.1 (Debian's
openssh-server, host key made here, key login for the second test user; prepared by
tests/support/remoteuser.sh), and a TLS front for the local Docker socket (socat, with a CA,
server and client certificates made here by openssl: the shared dockerd cannot listen on one
more socket without a restart)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
from pathlib import Path

SSHD = "/usr/sbin/sshd"
DOCKER_SOCKET = "/var/run/docker.sock"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, proc: subprocess.Popen, log: Path) -> None:
    for _ in range(100):
        if proc.poll() is not None:
            raise RuntimeError(f"exited {proc.returncode}: {log.read_text(errors='replace')}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port}: {log.read_text(errors='replace')}")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class SshServer:
    """sshd on 127.0.0.1:PORT letting USER in with a key made here; ``client_home(home)``
    gives a home folder the key and the host's known_hosts entry, as ssh and paramiko read
    them (``~/.ssh``)."""

    def __init__(self, root: Path, user: str) -> None:
        self.root, self.user, self.port = root, user, free_port()
        self.log = root / "sshd.log"
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> SshServer:
        r = self.root
        for name in ("host_key", "client_key"):
            subprocess.run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(r / name)], check=True
            )
        (r / "authorized_keys").write_text((r / "client_key.pub").read_text())
        (r / "authorized_keys").chmod(0o644)
        (r / "sshd_config").write_text(
            f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {r / 'host_key'}\n"
            f"PidFile {r / 'sshd.pid'}\nAuthorizedKeysFile {r / 'authorized_keys'}\n"
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\n"
            "PubkeyAuthentication yes\nUsePAM no\nStrictModes no\n"
            f"AllowUsers {self.user}\nLogLevel VERBOSE\n"
        )
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        self.proc = subprocess.Popen(
            [SSHD, "-D", "-f", str(r / "sshd_config"), "-E", str(self.log)],
            stdin=subprocess.DEVNULL,
        )
        _wait_port(self.port, self.proc, self.log)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc:
            _stop(self.proc)

    @property
    def url(self) -> str:
        return f"ssh://{self.user}@127.0.0.1:{self.port}"

    def client_home(self, home: Path) -> None:
        ssh = home / ".ssh"
        ssh.mkdir(mode=0o700, parents=True, exist_ok=True)
        key = ssh / "id_ed25519"
        key.write_bytes((self.root / "client_key").read_bytes())
        key.chmod(0o600)
        host_key = (self.root / "host_key.pub").read_text().split()
        (ssh / "known_hosts").write_text(f"[127.0.0.1]:{self.port} {host_key[0]} {host_key[1]}\n")

    def logins(self) -> int:
        """How many key logins of the user sshd accepted so far."""
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return text.count(f"Accepted publickey for {self.user}")


def make_certs(d: Path) -> Path:
    """A CA, a server certificate for 127.0.0.1 and a client certificate (Docker's file names:
    ca.pem, cert.pem, key.pem for the client; server-*.pem) in D; returns D."""

    def ssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=d)

    ssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=mlc test CA",
        "-keyout", "ca-key.pem", "-out", "ca.pem")  # fmt: skip
    for name, cn, ext in (
        ("server", "127.0.0.1", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"),
        ("client", "mlc test client", "extendedKeyUsage=clientAuth\n"),
    ):
        (d / f"{name}.ext").write_text(ext)
        ssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={cn}",
            "-keyout", f"{name}-key.pem", "-out", f"{name}.csr")  # fmt: skip
        ssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca-key.pem",
            "-CAcreateserial", "-days", "2", "-extfile", f"{name}.ext",
            "-out", f"{name}.pem")  # fmt: skip
    (d / "client.pem").rename(d / "cert.pem")
    (d / "client-key.pem").rename(d / "key.pem")
    return d


class TlsFront:
    """``tcp://127.0.0.1:PORT`` with TLS and client certificates, in front of the Docker
    socket (socat; what ``dockerd --tlsverify -H tcp://...`` would serve)."""

    def __init__(self, certs: Path) -> None:
        self.certs, self.port = certs, free_port()
        self.log = certs / "socat.log"
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> TlsFront:
        c = self.certs
        listen = (
            f"OPENSSL-LISTEN:{self.port},bind=127.0.0.1,reuseaddr,fork,"
            f"cert={c / 'server.pem'},key={c / 'server-key.pem'},cafile={c / 'ca.pem'},verify=1"
        )
        with self.log.open("w") as log:
            self.proc = subprocess.Popen(
                ["socat", listen, f"UNIX-CONNECT:{DOCKER_SOCKET}"],
                stdin=subprocess.DEVNULL,
                stderr=log,
            )
        _wait_port(self.port, self.proc, self.log)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc:
            _stop(self.proc)

    @property
    def url(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"
