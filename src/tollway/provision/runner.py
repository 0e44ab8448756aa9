"""Local deployments at run time: which version of each deployment is live,
its worker (if running), scale to zero and wake on the next request."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from tollway.provision.ai_binding import AIBinding
from tollway.provision.config import ProvisionConfig
from tollway.provision.workers import Pool, Worker, WorkerFailed, healthy, kill_sandbox

log = logging.getLogger("tollway.provision")


@dataclass(frozen=True, slots=True)
class Spec:
    deployment_id: str
    version: int
    dir: Path
    kind: str
    entrypoint: str
    host: str  # the deployment's default host name (sent in the health check)
    env: tuple[tuple[str, str], ...] = ()  # the environment the deployment declares


def _started(pid: int) -> str:
    """A process's start time (field 22 of /proc/<pid>/stat): with the pid, names it across pid reuse."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[1].split()[19]


def kill_recorded(run_dir: Path) -> int:
    """Kill the workers recorded under ``run_dir`` (by any process: the CLI's reaper
    too); each is named by pid and start time, so a reused pid is left alone."""
    killed = 0
    for f in run_dir.glob("*.pid") if run_dir.is_dir() else ():
        with contextlib.suppress(ValueError, OSError):
            pid, started = f.read_text().split()
            if _started(int(pid)) == started:
                kill_sandbox(int(pid))
                killed += 1
        f.unlink(missing_ok=True)
    return killed


class Runner:
    def __init__(
        self, cfg: ProvisionConfig, load: Callable[[str], Awaitable[Spec | None]], data_dir: Path
    ) -> None:
        self.cfg = cfg
        self.load = load  # the live version of a deployment, from the database
        self.data_dir = data_dir
        self.pool = Pool(cfg, data_dir / "workers")
        self.live: dict[str, Spec] = {}
        self.running: dict[str, Worker] = {}
        self.last_seen: dict[str, float] = {}  # monotonic time of the last request
        self.touched: set[str] = set()
        self.wakes: list[float] = []  # seconds each wake took (the latest 1000)
        self._starting: dict[str, asyncio.Task[Worker]] = {}
        # Metering (provision/recurring.py): live worker time and routed requests, not yet recorded.
        self.worker_us: dict[str, int] = {}
        self.requests: dict[str, int] = {}
        self._live_since: dict[str, float] = {}  # monotonic: since when a deployment's worker is counted
        self.binding: AIBinding | None = None  # each worker's socket to tollway's AI routes

    def _run_dir(self, deployment_id: str) -> Path:
        return self.data_dir / "deployments" / deployment_id / "run"

    async def launch(self, spec: Spec) -> Worker:
        """A worker for ``spec`` that has passed its health check (SandboxUnavailable if none can run)."""
        logfile = spec.dir.parent / f"v{spec.version}.log"
        w = self.pool.take()
        try:
            run = self._run_dir(spec.deployment_id)
            run.mkdir(parents=True, exist_ok=True)
            (run / f"{w.pid}.pid").write_text(f"{w.pid} {_started(w.pid)}\n")
            env = dict(spec.env)
            if self.binding is not None:
                try:
                    env |= await self.binding.attach(spec.deployment_id, w, self.pool.inside_run(w))
                except OSError as e:
                    raise WorkerFailed(f"the AI binding's socket could not be made: {e}") from None
            self.pool.assign(w, spec.dir, spec.kind, spec.entrypoint, logfile, env)
            await healthy(w, spec.host, self.cfg.health_path, self.cfg.health_timeout_seconds, logfile)
        except BaseException:
            self._stop(spec.deployment_id, w)
            raise
        finally:
            self.pool.refill()
        return w

    def _stop(self, deployment_id: str, w: Worker) -> None:
        if self.binding is not None:
            self.binding.detach(w)
        self.pool.stop(w)
        (self._run_dir(deployment_id) / f"{w.pid}.pid").unlink(missing_ok=True)

    async def activate(self, spec: Spec) -> None:
        """Start ``spec``; once healthy it becomes the live version and the old
        worker stops. If it fails, the old version stays live (WorkerFailed)."""
        w = await self.launch(spec)
        old = self.running.get(spec.deployment_id)
        self.live[spec.deployment_id] = spec
        self.running[spec.deployment_id] = w
        self._live_since.setdefault(spec.deployment_id, time.monotonic())
        self.last_seen[spec.deployment_id] = time.monotonic()
        if old is not None:
            self._stop(spec.deployment_id, old)

    def stop(self, deployment_id: str, *, forget: bool = False) -> None:
        self._accrue(deployment_id, time.monotonic())
        self._live_since.pop(deployment_id, None)
        w = self.running.pop(deployment_id, None)
        if w is not None:
            self._stop(deployment_id, w)
        if forget:
            self.live.pop(deployment_id, None)
            self.last_seen.pop(deployment_id, None)
            kill_recorded(self._run_dir(deployment_id))  # workers another process started

    def count(self, deployment_id: str) -> None:
        """A request routed to the deployment (metered at ``hosting_price_per_request``)."""
        self.requests[deployment_id] = self.requests.get(deployment_id, 0) + 1

    def _accrue(self, deployment_id: str, now: float) -> None:
        since = self._live_since.get(deployment_id)
        if since is not None and now > since:
            us = int((now - since) * 1_000_000)
            self.worker_us[deployment_id] = self.worker_us.get(deployment_id, 0) + us
            self._live_since[deployment_id] = since + us / 1_000_000

    def usage(self) -> dict[str, tuple[int, int]]:
        """Live worker microseconds and requests per deployment since the last
        call (taken: the caller records them)."""
        now = time.monotonic()
        for dep in list(self._live_since):
            self._accrue(dep, now)
        out = {
            d: (self.worker_us.get(d, 0), self.requests.get(d, 0)) for d in {*self.worker_us, *self.requests}
        }
        self.worker_us, self.requests = {}, {}
        return out

    def touch(self, deployment_id: str) -> None:
        self.last_seen[deployment_id] = time.monotonic()
        self.touched.add(deployment_id)

    async def worker(self, deployment_id: str, fresh: bool = False) -> Worker:
        """The deployment's worker, started first if it is stopped (scale to
        zero) or, with ``fresh``, found dead."""
        w = self.running.get(deployment_id)
        if w is not None and not (fresh and not w.alive()):
            return w
        if fresh and w is not None:
            self.running.pop(deployment_id, None)
            self._stop(deployment_id, w)
        task = self._starting.get(deployment_id)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._wake(deployment_id))
            self._starting[deployment_id] = task
            task.add_done_callback(lambda _: self._starting.pop(deployment_id, None))
        return await asyncio.shield(task)

    async def _wake(self, deployment_id: str) -> Worker:
        t0 = time.perf_counter()
        spec = self.live.get(deployment_id) or await self.load(deployment_id)
        if spec is None:
            raise WorkerFailed(f"deployment {deployment_id} has no live version")
        w = await self.launch(spec)
        self.live[deployment_id] = spec
        self.running[deployment_id] = w
        self._live_since.setdefault(deployment_id, time.monotonic())
        self.wakes = [*self.wakes[-999:], time.perf_counter() - t0]
        log.info("woke %s v%s in %.0f ms", deployment_id, spec.version, (time.perf_counter() - t0) * 1000)
        return w

    def idle(self) -> list[str]:
        """Stop the workers with no request for ``idle_seconds`` (they wake on the next)."""
        now = time.monotonic()
        out = []
        for dep, w in list(self.running.items()):
            if now - max(self.last_seen.get(dep, 0.0), w.started, w.last_request()) >= self.cfg.idle_seconds:
                self.stop(dep)
                out.append(dep)
        return out

    async def run_idle(self) -> None:
        every = min(max(self.cfg.idle_seconds / 4, 0.05), 5.0)
        while True:
            await asyncio.sleep(every)
            try:
                for dep in self.idle():
                    log.info("scaled %s to zero after %ss idle", dep, self.cfg.idle_seconds)
            except Exception:
                log.exception("idle sweep failed")

    async def close(self) -> None:
        for dep in list(self.running):
            self.stop(dep)
        for task in list(self._starting.values()):
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        self.pool.close()
