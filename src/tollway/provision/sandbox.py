"""The sandbox every worker of the local provider runs in: bubblewrap.

``bwrap`` runs as tollway's user, which must be root (it switches each
worker to a uid of its own; as another user deploys are refused). It binds
the runtime, then starts the app in new pid, network, IPC, UTS and cgroup
namespaces, with all capabilities dropped but the two ``setpriv`` needs to
become the worker's own unprivileged uid/gid (``no_new_privs`` set, groups
cleared) before Python starts. ``prlimit`` sets the resource limits first.

What the app sees: the Python runtime (read-only), ``/usr`` and the system
libraries (read-only), a few ``/etc`` files, its bundle at ``/app``
(read-only), its own run directory at ``/run/tollway`` (read-only: the
AI binding's socket, see :mod:`tollway.provision.ai_binding`), a
size-capped ``/tmp``, its own ``/proc`` and a minimal ``/dev``; an
environment of ``PATH``, ``LANG``, ``HOME``, ``PORT``, the binding's and
what the deployment declares; a network namespace with only its own
loopback. It serves on sockets tollway bound and passed in (a TCP listener on
the host's loopback and the edge's hand-off socket).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tollway.provision.config import ProvisionConfig

WARM = Path(__file__).with_name("warm.py")  # the process each worker runs (imports nothing of tollway)
INSIDE_WARM = "/opt/tollway/warm.py"
APP = "/app"
RUN = "/run/tollway"  # the worker's run directory (the AI binding's socket)
PATH = "/usr/local/bin:/usr/bin:/bin"
_ETC = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime", "alternatives", "ssl", "ca-certificates")
_TOP = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")


class SandboxUnavailable(Exception):
    """No sandbox can be set up: deploys are refused (unless unsafe_no_sandbox)."""


@dataclass(frozen=True, slots=True)
class Limits:
    memory_mb: int
    cpu_seconds: int
    processes: int
    open_files: int
    scratch_mb: int

    @classmethod
    def of(cls, cfg: ProvisionConfig) -> Limits:
        return cls(
            cfg.worker_memory_mb,
            cfg.worker_cpu_seconds,
            cfg.worker_processes,
            cfg.worker_open_files,
            cfg.worker_scratch_mb,
        )

    def prlimit(self) -> list[str]:
        mem = self.memory_mb * 1024 * 1024
        return [
            _tool("prlimit"),
            f"--as={mem}",
            f"--cpu={self.cpu_seconds}:{self.cpu_seconds + 5}",
            f"--nproc={self.processes}",
            f"--nofile={self.open_files}",
            f"--fsize={self.scratch_mb * 1024 * 1024}",
            "--core=0",
            "--",
        ]


def _tool(name: str) -> str:
    for d in ("/usr/bin", "/bin", "/usr/sbin", "/sbin"):
        if os.access(f"{d}/{name}", os.X_OK):
            return f"{d}/{name}"
    raise SandboxUnavailable(f"{name} (util-linux) is not installed")


def find_bwrap(cfg: ProvisionConfig) -> str:
    """The bubblewrap binary: ``[provision] bwrap_path`` if set (only it), else ``bwrap`` on PATH,
    else /usr/bin/bwrap."""
    if cfg.bwrap_path:
        if os.access(cfg.bwrap_path, os.X_OK):
            return cfg.bwrap_path
        raise SandboxUnavailable(f"[provision] bwrap_path {cfg.bwrap_path} is not an executable bubblewrap")
    for cand in (shutil.which("bwrap") or "", "/usr/bin/bwrap"):
        if cand and os.access(cand, os.X_OK):
            return cand
    raise SandboxUnavailable(
        "bubblewrap (bwrap) is not installed: install it (apt-get install bubblewrap) or set"
        " [provision] bwrap_path; deploys are refused until then"
    )


def _runtime() -> list[str]:
    """The directories the Python runtime lives in (outside /usr, which is bound whole)."""
    dirs = {
        sys.prefix,
        sys.base_prefix,
        sys.exec_prefix,
        sys.base_exec_prefix,
        os.path.dirname(os.path.realpath(sys.executable)),
    }
    out: list[str] = []
    for d in sorted(os.path.realpath(x) for x in dirs):
        if d == "/" or d.startswith("/usr/") or any(d.startswith(o + "/") for o in out):
            continue
        out.append(d)
    return out


def _ro_bind(args: list[str], made: set[str], src: str, dest: str) -> None:
    """Bind ``src`` read-only at ``dest``, its parents created traversable (bwrap makes them 0700)."""
    parts = Path(dest).parts[1:-1]
    for i in range(len(parts)):
        p = "/" + "/".join(parts[: i + 1])
        if p not in made:
            made.add(p)
            args += ["--perms", "0755", "--dir", p]
    args += ["--ro-bind", src, dest]


@dataclass(frozen=True, slots=True)
class Sandbox:
    bwrap: str
    limits: Limits

    @classmethod
    def of(cls, cfg: ProvisionConfig) -> Sandbox:
        return cls(find_bwrap(cfg), Limits.of(cfg))

    def command(
        self,
        *,
        uid: int,
        app_dir: Path,
        env: dict[str, str],
        argv: list[str],
        seccomp_fd: int | None,
        run_dir: Path | None = None,
    ) -> list[str]:
        """The command line that runs ``python -I warm.py argv...`` as ``uid`` in the sandbox
        (``seccomp_fd``: the filter of :mod:`tollway.provision.seccomp`, to pass along;
        ``run_dir``: the worker's own directory for the AI binding's socket, at ``/run/tollway``)."""
        args = [
            self.bwrap,
            "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
            "--die-with-parent", "--new-session", "--hostname", "app",
            "--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID",
            "--clearenv",
        ]  # fmt: skip
        for k, v in env.items():
            args += ["--setenv", k, v]
        if seccomp_fd is not None:
            args += ["--seccomp", str(seccomp_fd)]
        # The scratch /tmp first: the runtime may live below /tmp (a clone checked out
        # there, its virtualenv), and a tmpfs mounted after its bind would hide it.
        size = self.limits.scratch_mb * 1024 * 1024
        args += ["--perms", "1777", "--size", str(size), "--tmpfs", "/tmp"]
        made: set[str] = {"/tmp"}  # never re-created (that would make it 0755)
        args += ["--ro-bind", "/usr", "/usr"]
        for top in _TOP:
            p = Path("/" + top)
            if p.is_symlink():
                args += ["--symlink", os.readlink(p), str(p)]
            elif p.is_dir():
                args += ["--ro-bind", str(p), str(p)]
        for name in _ETC:
            if os.path.exists(f"/etc/{name}"):
                _ro_bind(args, made, f"/etc/{name}", f"/etc/{name}")
        for d in _runtime():
            _ro_bind(args, made, d, d)
        _ro_bind(args, made, str(WARM), INSIDE_WARM)
        args += ["--ro-bind", str(app_dir), APP]
        if run_dir is not None:
            _ro_bind(args, made, str(run_dir), RUN)
        args += ["--proc", "/proc", "--dev", "/dev", "--chdir", APP, "--"]
        args += self.limits.prlimit()
        args += [_tool("setpriv"), f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--no-new-privs"]
        args += ["--inh-caps=-all", "--"]
        return [*args, sys.executable, "-I", INSIDE_WARM, *argv]

    def check(self, uid: int) -> None:
        """Set up a sandbox once, as the workers' will be, and switch to ``uid`` in it:
        :class:`SandboxUnavailable` with why not (tollway must run as root to do that)."""
        cmd = [
            self.bwrap, "--unshare-pid", "--unshare-net", "--ro-bind", "/", "/", "--proc", "/proc",
            "--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID", "--",
            _tool("setpriv"), f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--", "true",
        ]  # fmt: skip
        try:
            r = subprocess.run(cmd, capture_output=True, timeout=30, check=False)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise SandboxUnavailable(f"bubblewrap could not start: {e}") from None
        if r.returncode != 0:
            why = r.stderr.decode(errors="replace").strip()[:300]
            raise SandboxUnavailable(
                f"bubblewrap cannot set up a sandbox here (tollway needs root to run apps as their own"
                f" uids): {why}"
            )


def unsafe_command(limits: Limits, argv: list[str]) -> list[str]:
    """``unsafe_no_sandbox``: the same process with its limits, as tollway's user, unconfined."""
    return [*limits.prlimit(), sys.executable, "-I", str(WARM), *argv]
