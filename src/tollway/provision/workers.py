"""Worker processes for local deployments: each one a warm process in its own
sandbox (:mod:`tollway.provision.sandbox`) with its own uid, started ahead of
need (a small pool) and given one deployment version to serve; a version is
live once it answers its health check."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import mmap
import os
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from tollway.provision import cgroups, seccomp
from tollway.provision.config import ProvisionConfig
from tollway.provision.sandbox import APP, PATH, RUN, Limits, Sandbox, SandboxUnavailable, unsafe_command

log = logging.getLogger("tollway.provision")


@dataclass(slots=True)
class Worker:
    pid: int  # bwrap's (its pid namespace dies with it)
    port: int
    started: float  # monotonic
    handoff: str = ""  # the abstract Unix socket (tollway's namespace) that takes connections from the edge
    uid: int = 0
    dir: Path | None = None  # the worker's own directory: app/ (its bundle, read-only inside) and its log
    log: Path | None = None
    proc: subprocess.Popen[bytes] | None = None
    seen: mmap.mmap | None = None  # 8 bytes shared with the worker: the monotonic time of its last request
    cgroup: cgroups.Cgroup | None = None
    _channel: socket.socket | None = field(default=None, repr=False)

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
        if self.seen is None:
            return 0.0
        try:
            value: float = struct.unpack_from("d", self.seen, 0)[0]
            return value
        except ValueError:
            return 0.0

    def alive(self) -> bool:
        if self.proc is not None:
            return self.proc.poll() is None
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


def _run_dir(path: Path, uid: int) -> None:
    """A worker's run directory: only root and the worker's uid (its gid) get in, and
    only root writes there (the AI binding's socket). Without root, tollway's own."""
    path.mkdir(mode=0o700)
    if os.getuid() == 0:
        os.chown(path, 0, uid)
        os.chmod(path, 0o750)


class WorkerFailed(Exception):
    """The app did not come up: it crashed, or failed its health check."""


class Pool:
    """Warm workers, each in its own sandbox with its own uid, waiting for a
    deployment; a worker serves one version, then is killed (never reused)."""

    def __init__(self, cfg: ProvisionConfig, run_dir: Path) -> None:
        self.cfg, self.run_dir = cfg, run_dir
        self.limits = Limits.of(cfg)
        self.sandbox: Sandbox | None = None
        self.warm: list[Worker] = []
        self._n = itertools.count()
        self._uids: set[int] = set()  # of the workers started and not yet stopped
        self._checked = False
        self._dead_cgroups: list[cgroups.Cgroup] = []  # of killed workers, removed once empty
        if cfg.unsafe_no_sandbox:
            log.warning(
                "UNSAFE: [provision] unsafe_no_sandbox = true: deployed apps run WITHOUT a sandbox, as"
                " tollway's own user, and can read its files, its database and other deployments"
            )

    def _ready(self) -> None:
        if self.cfg.unsafe_no_sandbox or self._checked:
            return
        sb = Sandbox.of(self.cfg)
        sb.check(self.cfg.worker_uid_base)
        self.sandbox, self._checked = sb, True

    def _uid(self) -> int:
        for _ in range(self.cfg.worker_uid_count):
            uid = self.cfg.worker_uid_base + next(self._n) % self.cfg.worker_uid_count
            if uid not in self._uids and uid != os.getuid():
                self._uids.add(uid)
                return uid
        raise WorkerFailed("every worker uid is in use: raise [provision] worker_uid_count")

    def _spawn(self) -> Worker:
        uid = self._uid()
        home = self.run_dir / f"w{uid}-{uuid.uuid4().hex[:8]}"
        (home / "app").mkdir(parents=True, mode=0o755)
        _run_dir(home / "run", uid)
        listen = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        handoff = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        seen_fd = os.memfd_create("tollway-seen")
        logfile = home / "worker.log"
        cg: cgroups.Cgroup | None = None
        filter_fd: int | None = None
        try:
            listen.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listen.bind(("127.0.0.1", 0))
            listen.listen(1024)
            name = f"\0tollway-worker-{uuid.uuid4().hex}"
            handoff.bind(name)
            handoff.listen(64)
            os.ftruncate(seen_fd, 8)
            seen = mmap.mmap(seen_fd, 8)
            fds: tuple[int, ...] = (listen.fileno(), handoff.fileno(), seen_fd)
            port = listen.getsockname()[1]
            argv = ["--listen", str(fds[0]), "--handoff", str(fds[1]), "--seen", str(fds[2])]
            env = {"PATH": PATH, "LANG": "C.UTF-8", "HOME": "/tmp", "TMPDIR": "/tmp", "PORT": str(port)}
            if self.sandbox is None:
                cmd = unsafe_command(self.limits, [*argv, "--dir", str(home / "app")])
            else:
                filt = seccomp.program()
                if filt is not None:
                    filter_fd = os.memfd_create("tollway-seccomp")
                    os.write(filter_fd, filt)
                    os.lseek(filter_fd, 0, os.SEEK_SET)
                    fds = (*fds, filter_fd)
                cmd = self.sandbox.command(
                    uid=uid, app_dir=home / "app", env=env, argv=[*argv, "--dir", APP], seccomp_fd=filter_fd,
                    run_dir=home / "run",
                )  # fmt: skip
            cg = cgroups.create(home.name, self.cfg.worker_memory_mb, self.cfg.worker_processes)
            if cg is not None:
                cmd = cg.wrap(cmd)
            with logfile.open("ab") as out:
                proc = subprocess.Popen(
                    cmd, stdin=subprocess.PIPE, stdout=out, stderr=out, pass_fds=fds, env=env,
                    start_new_session=True, close_fds=True,
                )  # fmt: skip
        except BaseException:
            self._uids.discard(uid)
            shutil.rmtree(home, ignore_errors=True)
            if cg is not None:
                cg.remove()
            raise
        finally:
            listen.close()
            handoff.close()
            os.close(seen_fd)
            if filter_fd is not None:
                os.close(filter_fd)
        return Worker(proc.pid, port, time.monotonic(), name, uid, home, logfile, proc, seen, cg)

    def inside_run(self, w: Worker) -> str:
        """Where the app sees ``w``'s run directory: ``/run/tollway`` in its sandbox;
        without one, its own path, or, where that is too long for a Unix socket's
        address (108 bytes, the AI binding's socket is in it), a short link to it
        in the temp directory (removed with the worker)."""
        assert w.dir is not None
        if self.sandbox is not None:
            return RUN
        run = w.dir / "run"
        if len(os.fsencode(run)) <= _SHORT_RUN:
            return str(run)
        link = _short_link(w.dir)
        try:
            link.symlink_to(run, target_is_directory=True)
        except FileExistsError:
            if not _ours(link, run):  # someone else's name in the temp directory: not used
                log.warning("%s is not tollway's: the worker's AI socket keeps its long path", link)
                return str(run)
        return str(link)

    def take(self) -> Worker:
        """A warm worker (started now if none is waiting); :class:`SandboxUnavailable` if none can be."""
        self._ready()
        while self.warm:
            w = self.warm.pop(0)
            if w.alive():
                return w
            self.stop(w)
        return self._spawn()

    def refill(self) -> None:
        """Start workers until ``warm_workers`` wait (after a deploy, so it does not compete with it)."""
        try:
            self._ready()
            while len(self.warm) < self.cfg.warm_workers:
                self.warm.append(self._spawn())
        except (SandboxUnavailable, WorkerFailed, OSError) as e:
            log.warning("could not start a warm worker: %s", e)

    def assign(
        self, w: Worker, bundle: Path, kind: str, entrypoint: str, logfile: Path, env: dict[str, str]
    ) -> None:
        """Give ``w`` the version unpacked at ``bundle`` to serve, with the environment it declares."""
        assert w.dir is not None and w.proc is not None and w.proc.stdin is not None
        shutil.copytree(bundle, w.dir / "app", dirs_exist_ok=True)
        for root, dirs, files in os.walk(w.dir / "app"):
            for d in dirs:
                os.chmod(os.path.join(root, d), 0o755)
            for f in files:
                os.chmod(os.path.join(root, f), 0o644)
        if w.log is not None:
            with contextlib.suppress(OSError):
                os.replace(w.log, logfile)  # the worker keeps writing to it
                w.log = logfile
        req = {
            "kind": kind, "entrypoint": entrypoint, "env": env,
            "request_seconds": self.cfg.worker_request_seconds,
        }  # fmt: skip
        try:
            w.proc.stdin.write(json.dumps(req).encode() + b"\n")
            w.proc.stdin.close()
        except OSError as e:
            raise WorkerFailed(f"the worker exited before it was given the app: {tail(logfile)}") from e

    def stop(self, w: Worker) -> None:
        stop(w)
        self._uids.discard(w.uid)
        if w.cgroup is not None:
            self._dead_cgroups.append(w.cgroup)
        self._dead_cgroups = [cg for cg in self._dead_cgroups if not cg.remove()]

    def close(self) -> None:
        for w in self.warm:
            self.stop(w)
        self.warm = []


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


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (from /proc/*/stat: not every kernel has .../children)."""
    out: list[int] = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                with open(f"/proc/{name}/stat", "rb") as f:
                    if int(f.read().rsplit(b")", 1)[1].split()[1]) == pid:
                        out.append(int(name))
    return out


def kill_sandbox(pid: int) -> None:
    """SIGKILL bwrap (``pid``) and its children: the sandbox's init, whose pid namespace dies
    with it. bwrap is stopped first, so it starts nothing meanwhile: ``--die-with-parent`` alone
    misses a sandbox killed while bwrap was still setting it up."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGSTOP)
        for child in _children(pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(child, signal.SIGKILL)
        os.kill(pid, signal.SIGKILL)


_SHORT_RUN = 80  # a run directory path at most this long leaves room for a socket's name


def _short_link(home: Path) -> Path:
    """Where an unsandboxed worker's run directory is linked when its path is long."""
    return Path(tempfile.gettempdir()) / f"tollway-{home.name}"


def _ours(link: Path, run: Path) -> bool:
    """Whether ``link`` is the symlink to ``run`` (not a file or link someone else put there)."""
    try:
        return os.readlink(link) == str(run)
    except OSError:
        return False


def unlink_short(home: Path) -> None:
    """Remove the worker's short link, if it made one (never another's file of that name)."""
    link = _short_link(home)
    if _ours(link, home / "run"):
        with contextlib.suppress(OSError):
            link.unlink()


def stop(w: Worker) -> None:
    """Kill the worker's sandbox, and every process in its cgroups."""
    w.close_channel()
    if w.proc is not None:
        kill_sandbox(w.proc.pid)
        for d in w.cgroup.dirs if w.cgroup is not None else ():
            with contextlib.suppress(OSError, ValueError):
                for p in (d / "cgroup.procs").read_text().split():
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(int(p), signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            w.proc.wait(1)
        if w.proc.stdin is not None:
            with contextlib.suppress(OSError):
                w.proc.stdin.close()
    else:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(w.pid, signal.SIGKILL)
    if w.dir is not None:
        unlink_short(w.dir)
        shutil.rmtree(w.dir, ignore_errors=True)


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
