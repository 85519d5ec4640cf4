"""mlc's containers on the Docker SDK: ``from mlc import containers`` and call the names below.

Modules: :mod:`.labels` (names, the label table, mount points; no Docker), :mod:`.container`
(the Container object, client, find, mine), :mod:`.spec` (CreateSpec, GPU and ulimit parsing,
retries; no Docker), :mod:`.images` (pull/build), :mod:`.creation` (create and set up, with
``setup.sh``), :mod:`.lifecycle` (start/stop/remove/auto-stop), :mod:`.execute` (exec_stream,
shell), :mod:`.usage` (stats), :mod:`.remote` (which engine: DOCKER_HOST, contexts; remote or not).
"""

from mlc.containers.container import Container, client, find, mine
from mlc.containers.creation import create
from mlc.containers.execute import exec_stream, pty_mode, shell
from mlc.containers.labels import SEP, Labels, tag, validate_name
from mlc.containers.lifecycle import busy, remove, start, stop, stop_if_idle
from mlc.containers.remote import remote_host
from mlc.containers.spec import DEFAULT_ULIMITS, CreateSpec, Gpus, Ulimits, new_spec
from mlc.containers.usage import Stats, stats

__all__ = [
    "DEFAULT_ULIMITS",
    "SEP",
    "Container",
    "CreateSpec",
    "Gpus",
    "Labels",
    "Stats",
    "Ulimits",
    "busy",
    "client",
    "create",
    "exec_stream",
    "find",
    "mine",
    "new_spec",
    "remote_host",
    "remove",
    "pty_mode",
    "shell",
    "start",
    "stats",
    "stop",
    "stop_if_idle",
    "tag",
    "validate_name",
]
