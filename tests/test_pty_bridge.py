"""`mlc open` without the docker CLI: mlc's own terminal bridge over the SDK (MLC_PTY=sdk, or
no `docker` on PATH), driven through real terminals (tmux, pexpect) against the real engine:
the same prompt, keys, window size, exit code and auto-stop as through the docker CLI."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pexpect
import pytest

from mlc.containers import execute, pty

TMUX = shutil.which("tmux")


def _wait(predicate, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"waited {timeout:.0f} s for {what}"
        time.sleep(0.2)


def _status(docker_client, name: str) -> str:
    return docker_client.containers.get(f"{name}._.{os.getuid()}").status


def _create(mlc, name: str, ws: Path) -> None:
    r = mlc("create", name, "Pytorch", "test", "-w", str(ws), "-g", "none")
    assert r.code == 0, r.err
    assert mlc("stop", name, "-f").code == 0


# -- without Docker ------------------------------------------------------------------------


def test_pty_mode(monkeypatch, tmp_path):
    monkeypatch.setenv("MLC_PTY", "SDK")
    assert execute.pty_mode() == "sdk"
    monkeypatch.setenv("MLC_PTY", "cli")
    assert execute.pty_mode() == "cli"
    monkeypatch.setenv("MLC_PTY", "auto")
    monkeypatch.setenv("PATH", str(tmp_path))  # no docker CLI here
    assert execute.pty_mode() == "sdk"
    monkeypatch.setenv("MLC_PTY", "dockerpty")
    with pytest.raises(execute.UsageError, match="invalid MLC_PTY=dockerpty"):
        execute.pty_mode()


def test_frames_are_split_back_into_stdout_and_stderr():
    frames = pty._Frames()
    data = b"\x01\0\0\0\0\0\0\x03out" + b"\x02\0\0\0\0\0\0\x04err!" + b"\x01\0\0\0\0\0\0\x05he"
    assert frames.feed(data[:5]) == []
    assert frames.feed(data[5:]) == [(1, b"out"), (2, b"err!")]
    assert frames.feed(b"llo") == [(1, b"hello")]
    assert frames.buf == b""


# -- the real engine, real terminals ---------------------------------------------------------


class Tmux:
    """One detached tmux session running a command, read by capture-pane."""

    def __init__(self, session: str, command: str, env: dict[str, str]) -> None:
        self.session = session
        self.env = env
        self.tmux("new-session", "-d", "-s", session, "-x", "120", "-y", "40", command)

    def tmux(self, *args: str) -> str:
        p = subprocess.run(
            [TMUX or "tmux", *args], capture_output=True, text=True, env=self.env, timeout=30
        )
        assert p.returncode == 0, p.stderr
        return p.stdout

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-J", "-S", "-200", "-t", self.session)

    def expect(self, pattern: str, timeout: float = 60) -> re.Match:
        found: list[re.Match] = []

        def seen() -> bool:
            m = re.search(pattern, self.screen())
            if m:
                found.append(m)
            return bool(m)

        try:
            _wait(seen, f"{pattern!r} on the screen", timeout)
        except AssertionError:
            raise AssertionError(f"{pattern!r} not on the screen:\n{self.screen()}") from None
        return found[0]

    def type(self, text: str) -> None:
        self.tmux("send-keys", "-t", self.session, "-l", text)
        self.tmux("send-keys", "-t", self.session, "Enter")

    def pane_pid(self) -> int:
        return int(self.tmux("display-message", "-p", "-t", self.session, "#{pane_pid}"))

    def kill(self) -> None:
        subprocess.run([TMUX or "tmux", "kill-session", "-t", self.session], env=self.env)


@pytest.fixture
def tmux_env(tmp_path, mlc):
    if not TMUX:
        if os.environ.get("CI"):
            pytest.fail("tmux is missing (apt-get install tmux)")
        pytest.skip("tmux is missing (apt-get install tmux)")
    sock = tmp_path / "tmux"
    sock.mkdir()
    return {**mlc.env, "TMUX_TMPDIR": str(sock), "MLC_PTY": "sdk", "TERM": "xterm"}


@pytest.mark.docker
def test_tmux_shell_size_resize_exit_code_and_auto_stop(
    mlc, name, tmp_path, docker_client, tmux_env
):
    _create(mlc, name, tmp_path / "ws")
    result = tmp_path / "exit"
    command = (
        f"echo outer-$TERM; {sys.executable} -m mlc open {name}; echo $? > {result}; "
        f"stty -a > {tmp_path / 'stty'}; sleep 600"
    )
    t = Tmux(name, f"sh -c '{command}'", tmux_env)
    try:
        prompt = rf"\[{name}\] \S+@{name}:/workspace[#$] "
        t.expect(prompt)
        t.type("echo typed-$((6*7)); stty size; echo $TERM")
        t.expect(r"(?s)outer-(\S+)\n.*typed-42\n40 120\n\1\n")  # the terminal's TERM
        t.tmux("resize-window", "-t", name, "-x", "100", "-y", "30")
        t.type("stty size")
        t.expect(r"stty size\n30 100\n")
        t.type("exit 7")
        _wait(result.exists, "mlc to end")
        _wait(lambda: result.read_text().strip() != "", "the exit code")
        assert result.read_text().strip() == "7"
        t.expect("last shell closed: container stopped")
        assert _status(docker_client, name) == "exited"
        settings = (tmp_path / "stty").read_text()  # the terminal is out of raw mode again
        assert re.search(r"(?<!-)icanon", settings) and re.search(r"(?<!-)echo\b", settings)
    finally:
        t.kill()


@pytest.mark.docker
def test_tmux_terminated_bridge_ends_the_shell_and_restores_the_terminal(
    mlc, name, tmp_path, docker_client, tmux_env
):
    """SIGTERM to mlc (from elsewhere): the shell inside ends, the container stops as after
    `exit`, mlc exits 143, and the terminal it had made raw is restored."""
    _create(mlc, name, tmp_path / "ws")
    result = tmp_path / "exit"
    command = (
        f"{sys.executable} -m mlc open {name}; echo $? > {result}; "
        f"stty -a > {tmp_path / 'stty'}; sleep 600"
    )
    t = Tmux(name, f"sh -c '{command}'", tmux_env)
    try:
        t.expect(rf"\[{name}\] \S+@{name}:/workspace[#$] ")
        t.type("sleep 4321")
        c = docker_client.containers.get(f"{name}._.{os.getuid()}")
        _wait(lambda: any("sleep 4321" in p[-1] for p in c.top()["Processes"]), "the command")
        shell = t.pane_pid()
        kids = subprocess.run(["pgrep", "-P", str(shell)], capture_output=True, text=True)
        mlc_pid = int(kids.stdout.split()[0])
        os.kill(mlc_pid, signal.SIGTERM)
        _wait(lambda: result.exists() and result.read_text().strip() != "", "mlc to end")
        assert result.read_text().strip() == "143"
        assert "mlc: interrupted (SIGTERM)" in t.screen()
        _wait(lambda: _status(docker_client, name) == "exited", "the container to stop")
        settings = (tmp_path / "stty").read_text()
        assert re.search(r"(?<!-)icanon", settings) and re.search(r"(?<!-)echo\b", settings)
    finally:
        t.kill()


@pytest.mark.docker
def test_no_docker_cli_on_path(mlc, name, tmp_path, docker_client):
    """Without the docker CLI, `mlc open` bridges the terminal itself: bash's Ctrl-P history
    (not Docker's detach prefix), a real tty, the exit code and the auto-stop."""
    _create(mlc, name, tmp_path / "ws")
    bare = tmp_path / "bin"  # a PATH without docker
    bare.mkdir()
    env = {**mlc.env, "PATH": str(bare)}
    env.pop("MLC_PTY", None)
    child = pexpect.spawn(
        sys.executable, ["-m", "mlc", "open", name], env=env, encoding="utf-8", timeout=30,
        dimensions=(33, 111),
    )  # fmt: skip
    prompt = rf"\[{name}\] \S+@{name}:/workspace[#$] "
    child.expect(prompt)
    child.sendline("echo first-$((6*7))")
    child.expect("first-42")
    child.expect(prompt)
    child.send("\x10")  # Ctrl-P
    child.send("\r")
    child.expect("first-42")
    child.expect(prompt)
    child.sendline("tty; stty size")
    child.expect(r"/dev/pts/\d+\r\n33 111")
    child.sendline("exit 4")
    child.expect("container stopped")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 4
    assert _status(docker_client, name) == "exited"


@pytest.mark.docker
def test_piped_stdin_same_through_both_paths(mlc, name, tmp_path, docker_client):
    """No terminal: the exec gets no tty, stdout and stderr stay apart, the end of stdin
    reaches the shell, and the exit code is its."""
    _create(mlc, name, tmp_path / "ws")
    script = "read line; echo got-$line; echo to-stderr >&2; cat > /workspace/rest; exit 3\n"
    seen = []
    for mode in ("sdk", "cli"):
        p = subprocess.run(
            [sys.executable, "-m", "mlc", "open", name],
            input=script + "hello\nmore\nlines\n", capture_output=True, text=True,
            env={**mlc.env, "MLC_PTY": mode}, timeout=120,
        )  # fmt: skip
        assert p.returncode == 3, (mode, p.stderr)
        assert p.stdout == "got-hello\n", (mode, p.stdout)
        assert "to-stderr\n" in p.stderr and "container stopped" in p.stderr
        seen.append((tmp_path / "ws" / "rest").read_text())
        assert _status(docker_client, name) == "exited"
    assert seen == ["more\nlines\n"] * 2


@pytest.mark.docker
def test_closed_terminal_ends_the_bridged_shell(mlc, name, tmp_path, docker_client):
    """The terminal window goes away (SIGHUP): mlc exits 129, the shell it bridged ends, and
    the container stops as after `exit`."""
    _create(mlc, name, tmp_path / "ws")
    child = pexpect.spawn(
        sys.executable, ["-m", "mlc", "open", name], env={**mlc.env, "MLC_PTY": "sdk"},
        encoding="utf-8", timeout=30, dimensions=(40, 160),
    )  # fmt: skip
    child.expect(rf"\[{name}\] \S+@{name}:/workspace[#$] ")
    child.sendline("sleep 1234")
    c = docker_client.containers.get(f"{name}._.{os.getuid()}")
    _wait(lambda: any("sleep 1234" in p[-1] for p in c.top()["Processes"]), "the command")
    child.ptyproc.fileobj.close()
    _wait(lambda: not child.ptyproc.isalive(), "mlc to end")
    assert child.ptyproc.exitstatus == 129, child.ptyproc.signalstatus
    _wait(lambda: _status(docker_client, name) == "exited", "the container to stop")


@pytest.mark.docker
def test_invalid_pty_mode_is_refused_before_the_container_starts(
    mlc, name, tmp_path, docker_client
):
    """A typo in MLC_PTY costs one line and exit 2, not a started container left running."""
    _create(mlc, name, tmp_path / "ws")
    assert _status(docker_client, name) == "exited"
    p = subprocess.run(
        [sys.executable, "-m", "mlc", "open", name], capture_output=True, text=True,
        env={**mlc.env, "MLC_PTY": "dockerpty"}, timeout=120,
    )  # fmt: skip
    assert p.returncode == 2, p.stderr
    assert p.stderr == "mlc: error: invalid MLC_PTY=dockerpty (use cli, sdk or auto)\n"
    assert _status(docker_client, name) == "exited"
