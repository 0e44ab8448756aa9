"""The sandbox of deployed apps, attacked: a probe app deployed through the
real API tries each escape (tollway's environment and files, its database,
another deployment's bundle, loopback services, a fork bomb, a huge file,
the server's /proc, a request that never ends) and fails at each. No sandbox
means no deploy; delete and the CLI's reaper stop the worker's processes."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

import tollway
from conftest import ADMIN, err
from provision_support import Agent, hello, provisioned, zipped
from tollway.cli.main import app as cli

pytestmark = pytest.mark.slow

SECRET = "planted-wallet-key-0123456789"
DECLARED = {"GREETING": "hello", "APP_MODE": "probe"}
PROBE = r"""
import asyncio, errno, json, os, signal, socket, time
from urllib.parse import parse_qs

def _err(e):
    return errno.errorcode.get(getattr(e, "errno", None) or 0, type(e).__name__)

def read(q):
    try:
        with open(q["path"], "rb") as f:
            return {"ok": True, "data": f.read(200).decode(errors="replace")}
    except OSError as e:
        return {"ok": False, "error": _err(e)}

def connect(q):
    s = socket.socket()
    s.settimeout(2)
    try:
        s.connect(("127.0.0.1", int(q["port"])))
        return {"ok": True}
    except OSError as e:
        return {"ok": False, "error": _err(e)}
    finally:
        s.close()

def fork(q):
    kids, error = [], None
    for _ in range(int(q["n"])):
        try:
            pid = os.fork()
        except OSError as e:
            error = _err(e)
            break
        if pid == 0:
            signal.pause()
            os._exit(0)
        kids.append(pid)
    for pid in kids:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    return {"ok": error is None, "forked": len(kids), "error": error}

def write(q):
    chunk, done = b"x" * (1 << 20), 0
    try:
        with open("/tmp/big", "wb") as f:
            while done < int(q["mb"]):
                f.write(chunk)
                f.flush()
                done += 1
        return {"ok": True, "mb": done}
    except OSError as e:
        return {"ok": False, "mb": done, "error": _err(e)}
    finally:
        if os.path.exists("/tmp/big"):
            os.unlink("/tmp/big")

def ids(q):
    return {"uid": os.getuid(), "gid": os.getgid(), "euid": os.geteuid(), "groups": os.getgroups()}

def env(q):
    return dict(os.environ)

def userns(q):
    import ctypes, threading
    libc = ctypes.CDLL(None, use_errno=True)
    ran = []
    t = threading.Thread(target=ran.append, args=(1,))
    t.start()
    t.join()
    pid = os.fork()  # a single-threaded process (the kernel refuses a threaded one anyway)
    if pid == 0:
        os._exit(0 if libc.unshare(0x10000000) == 0 else ctypes.get_errno())  # CLONE_NEWUSER
    code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    if code == 0:
        return {"ok": True, "threads": ran}
    return {"ok": False, "error": errno.errorcode.get(code, code), "threads": ran}

ROUTES = {"/userns": userns, "/read": read, "/connect": connect, "/fork": fork, "/write": write,
          "/ids": ids, "/env": env}

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    q = {k: v[0] for k, v in parse_qs(scope["query_string"].decode()).items()}
    if scope["path"] == "/sleep":
        await asyncio.sleep(float(q["s"]))
        out = {"ok": True}
    elif scope["path"] in ROUTES:
        out = ROUTES[scope["path"]](q)
    else:
        out = {"ok": True}
    body = json.dumps(out).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})
"""


class Probe:
    def __init__(self, a: Agent, port: int) -> None:
        self.a, self.port = a, port

    async def ask(self, route: str, **q: Any) -> Any:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{self.a.rt.provision.edge_port}") as c:
            r = await c.get(route, params=q, headers={"host": "probe.tollway.localhost"}, timeout=60)
        assert r.status_code == 200, r.text
        return r.json()


@pytest.fixture
async def probe(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Probe]:
    monkeypatch.setenv("TOLLWAY_WALLET_KEY", SECRET)  # as a server's environment holds it
    monkeypatch.setenv("STRIPE_SECRET_KEY", SECRET)
    (tmp_path / "tollway.toml").write_text(f'[admin]\ntoken = "{SECRET}"\n')
    prov = {"worker_processes": 32, "worker_scratch_mb": 16, "worker_request_seconds": 1}
    async with provisioned(db_url, tmp_path / "prov", **prov) as a:
        r = await a.post("/deployments", {"name": "other", "entrypoint": "app:app", "bundle": hello("o")})
        assert r.status_code == 201, r.text
        body = {
            "name": "probe",
            "entrypoint": "app:app",
            "bundle": zipped({"app.py": PROBE}),
            "env": DECLARED,
        }
        r = await a.post("/deployments", body)
        assert r.status_code == 201, r.text
        yield Probe(a, r.json()["id"])


async def test_the_app_sees_only_its_declared_environment(probe: Probe) -> None:
    env = await probe.ask("/env")
    assert SECRET not in json.dumps(env)
    binding = {"TOLLWAY_AI_SOCKET", "TOLLWAY_AI_URL"}  # where the AI binding's socket is: no secret
    assert not [k for k in env if k.startswith("TOLLWAY_") and k not in binding]
    assert set(env) == {"PATH", "LANG", "HOME", "TMPDIR", "PORT", "PWD", *binding, *DECLARED}, env
    assert {k: env[k] for k in DECLARED} == DECLARED
    runner = probe.a.rt.provision.runner
    runner.stop(probe.port)  # scaled to zero, and the version read again from the database on wake
    runner.live.pop(probe.port)
    woken = await probe.ask("/env")
    assert {k: woken[k] for k in DECLARED} == DECLARED and SECRET not in json.dumps(woken)


@pytest.mark.parametrize(
    "env",
    [["A=1"], {"PORT": "1"}, {"PATH": "/x"}, {"1X": "y"}, {"A-B": "y"}, {"A": 1}, {"A": "x\0y"},
     {f"K{i}": "v" for i in range(65)}, {"BIG": "x" * 40_000}, {"TOLLWAY_AI_SOCKET": "/tmp/x"}],
    ids=["list", "port", "path", "digit", "dash", "number", "nul", "too-many", "too-big", "ai-socket"],
)  # fmt: skip
async def test_a_bad_declared_environment_is_400_and_charges_nothing(
    db_url: str, tmp_path: Path, env: Any
) -> None:
    async with provisioned(db_url, tmp_path / "prov", start=False) as a:
        before = await a.available()
        r = await a.post(
            "/deployments", {"name": "e", "entrypoint": "app:app", "bundle": hello("e"), "env": env}
        )
        err(r, 400, "invalid_env", "env")
        assert await a.available() == before and a.rt.provision.runner.running == {}


async def test_the_app_runs_as_its_own_unprivileged_uid(probe: Probe) -> None:
    ids = await probe.ask("/ids")
    assert ids["uid"] not in (0, os.getuid()) and ids["euid"] == ids["uid"]
    assert ids["gid"] not in (0, os.getgid()) and ids["groups"] == []


async def test_the_app_cannot_read_tollways_files_or_other_bundles(probe: Probe, tmp_path: Path) -> None:
    rt = probe.a.rt
    other = await rt.provision.deployments.get("other")
    other_dir = getattr(rt.provision.runner.running[other["id"]], "dir", None) or tmp_path
    for path in (
        tmp_path / "tollway.toml",
        tmp_path / "tollway.db",
        tmp_path / "prov" / "deployments" / other["id"] / "v1" / "app.py",
        other_dir / "app" / "app.py",  # the other worker's own copy
        Path(tollway.__file__),  # the server's source checkout
        Path("/proc/1/environ"),  # the sandbox's init (root's)
        Path(f"/proc/{os.getpid()}/environ"),  # the server
        Path(f"/proc/{os.getpid()}/cmdline"),
    ):
        got = await probe.ask("/read", path=str(path))
        assert not got["ok"], (path, got)
        assert SECRET not in json.dumps(got)
    assert (await probe.ask("/read", path="/app/app.py"))["ok"]  # its own bundle it reads


async def test_the_app_reaches_no_loopback_service(probe: Probe) -> None:
    edge = probe.a.rt.provision.edge_port
    other = probe.a.rt.provision.runner.running[(await probe.a.rt.provision.deployments.get("other"))["id"]]
    with socket.socket() as api:  # a tollway API port, listening on the host's loopback
        api.bind(("127.0.0.1", 0))
        api.listen()
        for port in (edge, api.getsockname()[1], 5432, 6379, other.port):
            got = await probe.ask("/connect", port=port)
            assert not got["ok"], (port, got)


async def test_the_app_cannot_make_a_user_namespace(probe: Probe) -> None:
    got = await probe.ask("/userns")
    assert got == {"ok": False, "error": "EPERM", "threads": [1]}, got  # and threads still start


async def test_a_fork_bomb_stops_at_the_process_limit(probe: Probe) -> None:
    got = await probe.ask("/fork", n=10_000)
    assert not got["ok"] and got["error"] == "EAGAIN" and got["forked"] < 32, got


def _cgroup_state(d: Path) -> tuple[list[str], str]:
    """The live pids in a cgroup, and its limit."""
    pids = [p for p in (d / "cgroup.procs").read_text().split() if Path(f"/proc/{p}").exists()]
    limit = d / "pids.max" if (d / "pids.max").exists() else d / "memory.limit_in_bytes"
    return pids, limit.read_text().strip()


async def test_the_workers_processes_share_its_cgroups(probe: Probe) -> None:
    w = probe.a.rt.provision.runner.running[probe.port]
    if w.cgroup is None:
        pytest.skip("no writable cgroup v1 hierarchy here: rlimits only")
    for d in w.cgroup.dirs:
        pids, limit = _cgroup_state(d)
        assert pids and limit in ("32", str(512 * 1024 * 1024)), (d, pids, limit)


async def test_a_huge_file_stops_at_the_scratch_cap(probe: Probe) -> None:
    got = await probe.ask("/write", mb=10_240)  # 10 GB
    assert not got["ok"] and got["error"] in ("EFBIG", "ENOSPC") and got["mb"] <= 16, got


async def test_a_request_past_its_wall_time_gets_504(probe: Probe) -> None:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{probe.a.rt.provision.edge_port}") as c:
        r = await c.get("/sleep", params={"s": 30}, headers={"host": "probe.tollway.localhost"}, timeout=20)
    err(r, 504, "request_timeout")
    assert (await probe.ask("/ids"))["uid"]  # and the worker keeps serving


async def test_no_sandbox_no_deploy_and_nothing_charged(db_url: str, tmp_path: Path) -> None:
    no_bwrap = str(tmp_path / "no-bwrap")
    async with provisioned(db_url, tmp_path / "prov", start=False, bwrap_path=no_bwrap) as a:
        before = await a.available()
        r = await a.post("/deployments", {"name": "nope", "entrypoint": "app:app", "bundle": hello("n")})
        err(r, 503, "sandbox_unavailable", "bundle")
        assert "bubblewrap" in r.json()["error"]["message"]
        assert await a.available() == before
        assert a.rt.provision.runner.running == {}


async def test_unsafe_no_sandbox_is_loud(
    db_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    unsafe = {"bwrap_path": "/nonexistent", "unsafe_no_sandbox": True}
    with caplog.at_level(logging.WARNING, "tollway.provision"):
        async with provisioned(db_url, tmp_path / "prov", **unsafe) as a:
            assert any("UNSAFE" in r.message and r.levelno == logging.WARNING for r in caplog.records)
            r = await a.post("/deployments", {"name": "bare", "entrypoint": "app:app", "bundle": hello("b")})
            assert r.status_code == 201, r.text


async def _answers(port: int) -> bool:
    try:
        _, w = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    w.close()
    return True


async def _gone(port: int) -> bool:
    for _ in range(100):  # SIGKILL is asynchronous: a bounded wait, not a timing threshold
        if not await _answers(port):
            return True
        await asyncio.sleep(0.05)
    return False


async def test_delete_stops_the_sandbox(probe: Probe) -> None:
    w = probe.a.rt.provision.runner.running[probe.port]
    assert await _answers(w.port)
    r = await probe.a.delete("/deployments/probe")
    assert r.status_code == 200, r.text
    assert await _gone(w.port)


async def test_reap_apply_from_the_cli_stops_the_worker(db_url: str, tmp_path: Path) -> None:
    db, data_dir = db_url, tmp_path / "prov"
    async with provisioned(db, data_dir, reap_after_seconds=0.001) as a:
        r = await a.post("/deployments", {"name": "idle", "entrypoint": "app:app", "bundle": hello("i")})
        assert r.status_code == 201, r.text
        (w,) = a.rt.provision.runner.running.values()
        assert await _answers(w.port)
        cfg = tmp_path / "cli.toml"
        cfg.write_text(
            f'[database]\nurl = "{db}"\n[admin]\ntoken = "{ADMIN["Authorization"].split()[1]}"\n'
            f'[provision]\nedge_port = 0\ndata_dir = "{data_dir}"\nreap_after_seconds = 0.001\n'
        )
        out = await asyncio.to_thread(
            CliRunner().invoke, cli, ["--config", str(cfg), "provision", "reap", "--apply", "--json"]
        )
        assert out.exit_code == 0, out.output
        assert json.loads(out.stdout)["torn_down"] == [r.json()["id"]]
        assert await _gone(w.port)


def test_a_runtime_below_tmp_stays_visible_under_the_scratch_tmpfs(monkeypatch: pytest.MonkeyPatch) -> None:
    """A clone checked out below /tmp (its virtualenv too): the scratch tmpfs is
    mounted before the runtime's binds, which would otherwise be hidden under it
    (the app then could not even start its Python)."""
    from tollway.provision import sandbox
    from tollway.provision.config import ProvisionConfig

    monkeypatch.setattr(sandbox, "_runtime", lambda: ["/tmp/clone/.venv", "/opt/python"])
    box = sandbox.Sandbox("/usr/bin/bwrap", sandbox.Limits.of(ProvisionConfig()))
    args = box.command(uid=100_001, app_dir=Path("/tmp/data/v1"), env={}, argv=[], seccomp_fd=None)
    tmpfs = args.index("--tmpfs")
    binds = [i for i, a in enumerate(args) if a == "--ro-bind" and args[i + 1].startswith("/tmp/")]
    assert binds and all(i > tmpfs for i in binds)
    dirs = [args[i + 1] for i, a in enumerate(args) if a == "--dir"]
    assert "/tmp" not in dirs  # the scratch keeps its 1777


def test_an_unsandboxed_run_dir_too_long_for_a_socket_gets_a_short_link_and_only_its_own(
    tmp_path: Path,
) -> None:
    """Without a sandbox the app sees its run directory's own path, linked from the temp
    directory when too long for a Unix socket address; a file someone else put under
    that name is neither used nor removed."""
    from types import SimpleNamespace

    from tollway.provision import workers

    pool = SimpleNamespace(sandbox=None)
    short = tmp_path / "w1"
    (short / "run").mkdir(parents=True)
    assert workers.Pool.inside_run(pool, SimpleNamespace(dir=short)) == str(short / "run")  # type: ignore[arg-type]
    home = tmp_path / ("deep-" * 20) / f"w0-{uuid.uuid4().hex[:8]}"
    (home / "run").mkdir(parents=True)
    seen = workers.Pool.inside_run(pool, SimpleNamespace(dir=home))  # type: ignore[arg-type]
    assert len(seen) < 80 and Path(seen).resolve() == (home / "run").resolve()
    assert workers.Pool.inside_run(pool, SimpleNamespace(dir=home)) == seen  # asked again: the same link
    workers.unlink_short(home)
    assert not os.path.lexists(seen)
    # Another's name in the temp directory: the long path, and it stays.
    other = tmp_path / "elsewhere"
    other.mkdir()
    os.symlink(other, seen)
    try:
        assert workers.Pool.inside_run(pool, SimpleNamespace(dir=home)) == str(home / "run")  # type: ignore[arg-type]
        workers.unlink_short(home)
        assert os.readlink(seen) == str(other)
    finally:
        os.unlink(seen)
