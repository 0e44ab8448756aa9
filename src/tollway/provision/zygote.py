"""The zygote: a warm process that has uvicorn (and the common web stack)
imported, and forks one worker per deployment version on request, so a
deploy costs a ``fork`` and the app's own import rather than a fresh
interpreter (about 300 ms on a small machine).

Protocol (JSON lines): stdin gets ``{"id", "dir", "kind", "entrypoint",
"memory_mb", "cpu_seconds", "log"}``; stdout answers ``{"id", "pid", "port"}``
or ``{"id", "error"}``. The worker listens on 127.0.0.1 on a port the zygote
bound before forking (no race for it). When stdin closes (tollway exited),
the zygote stops its workers and exits.

Run as ``python -m tollway.provision.zygote``; it imports nothing else of tollway.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import resource
import signal
import socket
import sys
from typing import Any

import uvicorn  # warm: imported once here, shared by every fork
import uvicorn.config
import uvicorn.server
from starlette.staticfiles import StaticFiles

with contextlib.suppress(ImportError):  # what uvicorn[standard] runs on: warm them too
    import httptools  # noqa: F401
    import uvicorn.loops.uvloop
    import uvicorn.protocols.http.httptools_impl
    import uvloop  # noqa: F401
with contextlib.suppress(ImportError):
    import uvicorn.middleware.wsgi

_PR_SET_PDEATHSIG = 1


def _limit(memory_mb: int, cpu_seconds: int) -> None:
    mem = memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 5))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _die_with_parent() -> None:
    with contextlib.suppress(Exception):
        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _child(req: dict[str, Any], sock: socket.socket) -> None:
    """In the forked worker: never returns."""
    code = 1
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        _die_with_parent()
        os.setsid()
        log = os.open(req["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(log)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)
        _limit(int(req["memory_mb"]), int(req["cpu_seconds"]))
        os.chdir(req["dir"])
        sys.path.insert(0, req["dir"])
        kind = req["kind"]
        app: Any = req["entrypoint"]
        if kind == "static":
            app = StaticFiles(directory=os.path.join(req["dir"], req["entrypoint"]), html=True)
        cfg = uvicorn.config.Config(
            app,
            fd=sock.fileno(),
            interface="wsgi" if kind == "wsgi" else "auto",
            lifespan="auto" if kind == "asgi" else "off",
            log_level="warning",
            access_log=False,
            server_header=False,
            date_header=False,
            timeout_keep_alive=75,
        )
        uvicorn.server.Server(cfg).run()
        code = 3  # the server stopped (or the app failed to load / start)
    except BaseException as e:
        with contextlib.suppress(Exception):
            sys.stderr.write(f"worker failed: {type(e).__name__}: {e}\n")
            sys.stderr.flush()
    finally:
        os._exit(code)


def _spawn(req: dict[str, Any]) -> dict[str, Any]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    port = sock.getsockname()[1]
    pid = os.fork()
    if pid == 0:
        _child(req, sock)
    sock.close()
    return {"id": req["id"], "pid": pid, "port": port}


def main() -> None:
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # workers are reaped as they exit
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # tollway's ^C is tollway's to handle
    _die_with_parent()
    children: list[int] = []
    out = sys.stdout
    print(json.dumps({"ready": True, "pid": os.getpid()}), file=out, flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        req: Any = {}
        try:
            req = json.loads(line)
            answer = _spawn(req)
            children.append(int(answer["pid"]))
        except Exception as e:
            answer = {"id": req.get("id") if isinstance(req, dict) else None, "error": str(e)}
        print(json.dumps(answer), file=out, flush=True)
    for pid in children:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)


if __name__ == "__main__":
    main()
