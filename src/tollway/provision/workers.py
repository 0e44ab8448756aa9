"""Worker processes for local deployments: forked by the zygote, one per
running version, on loopback only, with memory and CPU-time limits; a
version is live once it answers its health check."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import mmap
import os
import signal
import socket
import struct
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tollway

log = logging.getLogger("tollway.provision")
_SRC = str(Path(tollway.__file__).resolve().parent.parent)  # for the zygote's PYTHONPATH


@dataclass(slots=True)
class Worker:
    pid: int
    port: int
    started: float  # monotonic
    handoff: str = ""  # the abstract Unix socket that takes connections handed over by the edge
    seen: Path | None = None  # 8 bytes: the monotonic time of the worker's last request
    _channel: socket.socket | None = None
    _seen_mm: mmap.mmap | None = None

    def hand(self, data: bytes, fd: int) -> bool:
        """Pass an accepted client socket (and the bytes already read from it) to the worker."""
        try:
            if self._channel is None:
                ch = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
                ch.connect(self.handoff)
                ch.setblocking(False)
                self._channel = ch
            return socket.send_fds(self._channel, [data], [fd]) == len(data)
        except OSError:
            self.close_channel()
            return False

    def close_channel(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None

    def last_request(self) -> float:
        """When the worker last served a request (monotonic; 0 if never)."""
        try:
            if self._seen_mm is None and self.seen is not None:
                with open(self.seen, "rb") as f:
                    self._seen_mm = mmap.mmap(f.fileno(), 8, access=mmap.ACCESS_READ)
            if self._seen_mm is None:
                return 0.0
            value: float = struct.unpack_from("d", self._seen_mm, 0)[0]
            return value
        except (OSError, ValueError):
            return 0.0

    def alive(self) -> bool:
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


class WorkerFailed(Exception):
    """The app did not come up: it crashed, or failed its health check."""


class Zygote:
    """The warm forking process (``tollway.provision.zygote``), started on first use."""

    def __init__(self) -> None:
        self._proc: asyncio.subprocess.Process | None = None
        self._lock = asyncio.Lock()
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        async with self._lock:
            if self._proc is not None and self._proc.returncode is None:
                return
            src = _SRC
            env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
            self._proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "tollway.provision.zygote",
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                env=env,
                start_new_session=True,
            )
            assert self._proc.stdout is not None
            ready = await asyncio.wait_for(self._proc.stdout.readline(), 60)
            if not ready:
                raise WorkerFailed("the zygote did not start")
            self._reader = asyncio.get_running_loop().create_task(self._read(self._proc))

    async def _read(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        while line := await proc.stdout.readline():
            msg = json.loads(line)
            fut = self._waiting.pop(int(msg.get("id") or 0), None)
            if fut is not None and not fut.done():
                fut.set_result(msg)
        for fut in self._waiting.values():
            if not fut.done():
                fut.set_exception(WorkerFailed("the zygote exited"))
        self._waiting.clear()

    async def fork(self, **req: Any) -> Worker:
        await self.start()
        assert self._proc is not None and self._proc.stdin is not None
        rid = next(self._ids)
        fut = self._waiting[rid] = asyncio.get_running_loop().create_future()
        self._proc.stdin.write(json.dumps({"id": rid, **req}).encode() + b"\n")
        await self._proc.stdin.drain()
        msg = await asyncio.wait_for(fut, 30)
        if "error" in msg:
            raise WorkerFailed(f"could not start a worker: {msg['error']}")
        return Worker(int(msg["pid"]), int(msg["port"]), time.monotonic(), req["handoff"], Path(req["seen"]))

    async def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), 5)
        except TimeoutError:
            proc.kill()
            await proc.wait()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader


async def probe(port: int, host: str, path: str) -> int | None:
    """One HTTP/1.1 request: the status, or None when nothing answers."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return None
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        line = await reader.readline()
        parts = line.split()
        return int(parts[1]) if len(parts) >= 2 and parts[1].isdigit() else 502
    except OSError:
        return None
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


def handoff_name() -> str:
    """A fresh name in Linux's abstract Unix socket namespace."""
    return f"\0tollway-worker-{uuid.uuid4().hex}"


def stop(w: Worker) -> None:
    w.close_channel()
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(w.pid, signal.SIGKILL)


def tail(path: Path, limit: int = 1500) -> str:
    try:
        data = path.read_bytes()[-limit:]
    except OSError:
        return ""
    return data.decode(errors="replace").strip()


async def healthy(w: Worker, host: str, path: str, timeout_s: float, logfile: Path) -> None:
    """Wait until the worker answers ``path`` below 500; raise :class:`WorkerFailed` with why not."""
    deadline = time.monotonic() + timeout_s
    delay = 0.002
    while True:
        status = await probe(w.port, host, path)
        if status is not None and status < 500:
            return
        if status is not None:
            stop(w)
            raise WorkerFailed(f"health check {path} answered {status}. {tail(logfile)}".strip())
        if not w.alive():
            raise WorkerFailed(f"the app exited while starting. {tail(logfile)}".strip())
        if time.monotonic() > deadline:
            stop(w)
            raise WorkerFailed(f"no answer on {path} within {timeout_s:g}s. {tail(logfile)}".strip())
        await asyncio.sleep(delay)
        delay = min(delay * 1.5, 0.05)
