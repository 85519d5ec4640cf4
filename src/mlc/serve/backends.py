"""How a job reaches an engine: two backends with one interface.

* :class:`WorkerBackend`, inside a container (``mlc-txt2img --serve``): the user's warm worker
  through its socket, in this process (:mod:`mlc.serve.link`).
* :class:`ContainerBackend`, on the host (``mlc serve NAME``): the container's worker through
  ``docker exec`` of :mod:`mlc.serve.relay` (one exec per job, JSON lines back, PNGs as
  base64), as the user's own container user: a server never reaches another user's worker.
  Cancelling runs ``relay cancel TAG`` (docker exec passes no signal on).

Each backend's ``run(req, on_event)`` hands the link's events to ON_EVENT (PNG bytes as
``bytes``) and returns the engine's exit code; a backend that cannot reach its engine raises
an :class:`mlc.errors.MlcError`. Docker is imported only by the container backend's methods.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from mlc.errors import MlcError, WorkerError
from mlc.serve import EngineRequest

OnEvent = Callable[[dict[str, Any]], None]
RELAY = "mlc.serve.relay"


class Backend(Protocol):
    """What the job queue needs from an engine."""

    label: str  # where the engine runs, for messages

    def models(self) -> list[dict[str, Any]]: ...

    def run(self, req: EngineRequest, on_event: OnEvent) -> int: ...

    def cancel(self, tag: str) -> None: ...

    def close(self) -> None: ...


class WorkerBackend:
    """The user's worker in this container (or this machine), through its socket."""

    label = "this container's engine worker"

    def models(self) -> list[dict[str, Any]]:
        from mlc.serve import link

        return link.models()

    def run(self, req: EngineRequest, on_event: OnEvent) -> int:
        from mlc.serve import link

        return link.run(req, on_event)

    def cancel(self, tag: str) -> None:
        from mlc.serve import link

        link.cancel(tag)

    def close(self) -> None:
        pass


class ContainerBackend:
    """The worker in the caller's container NAME, through ``docker exec`` of the relay."""

    def __init__(self, name: str) -> None:
        from mlc import containers, host, provision

        self.name = name
        self.label = f"container {name}"
        self.dc = containers.client()
        self.c = containers.find(self.dc, name, host.current_user())
        containers.start(self.c)
        state = provision.load_state(self.c)
        if "engine" not in state:
            raise MlcError(f"the engine is not set up in '{name}'", hint=f"run: mlc setup {name}")
        self.python = str(state.get("python", "python3"))
        self.env = {"PYTHONUNBUFFERED": "1", **provision.engine_env(state)}
        if os.environ.get("MLC_WORKER_IDLE"):
            self.env["MLC_WORKER_IDLE"] = os.environ["MLC_WORKER_IDLE"]
        self.models()  # the engine copy has the relay (else: one line that says `mlc setup`)

    @property
    def mounts(self) -> list[Any]:
        return self.c.mounts

    def _lines(self, args: list[str], tag: str | None = None) -> Iterator[dict[str, Any]]:
        """The relay's JSON lines for ARGS, as they come; an MlcError when it fails."""
        from mlc import containers
        from mlc.containers.execute import EXEC_TAG, exec_env, new_tag

        containers.start(self.c)  # it may have been stopped meanwhile (`mlc stop`, auto-stop)
        env = {**exec_env(self.c), **self.env, EXEC_TAG: tag or new_tag()}
        if tag:
            env["MLC_REQUEST_TAG"] = tag
        cmd = [self.python, "-m", RELAY, *args]
        api = self.dc.api
        eid = api.exec_create(
            self.c.id, cmd, user=self.c.exec_user, workdir="/workspace", environment=env
        )["Id"]
        buf, errors, answered = b"", [], False
        for out, err in api.exec_start(eid, stream=True, demux=True):
            if err:
                errors.append(err)
            buf += out or b""
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                if "error" in event:
                    raise WorkerError(f"{self.label}: {event['error']}")
                answered = answered or bool({"exit", "models", "cancelled"} & set(event))
                yield event
        if not answered:
            raise self._failure(b"".join(errors).decode("utf-8", "replace"))

    def _failure(self, stderr: str) -> MlcError:
        if "No module named" in stderr and "mlc.serve" in stderr:
            return MlcError(
                f"the engine in {self.label} predates mlc serve",
                hint=f"run: mlc setup {self.name}",
            )
        tail = " | ".join(line.strip() for line in stderr.strip().splitlines()[-3:])
        return WorkerError(f"the engine relay in {self.label} ended without an answer: {tail}")

    def models(self) -> list[dict[str, Any]]:
        for event in self._lines(["models"]):
            if "models" in event:
                return list(event["models"])
        return []

    def run(self, req: EngineRequest, on_event: OnEvent) -> int:
        code = None
        for event in self._lines(["run", json.dumps(req.as_json())], req.tag):
            if isinstance(event.get("png"), str):
                event["png"] = base64.b64decode(event["png"])
            if "exit" in event:
                code = int(event["exit"])
            else:
                on_event(event)
        return 1 if code is None else code

    def cancel(self, tag: str) -> None:
        for _ in self._lines(["cancel", tag]):
            pass

    def close(self) -> None:
        from mlc import containers

        containers.stop_if_idle(self.dc, self.c)
