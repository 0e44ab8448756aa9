"""The README's x402 quick start, run as written: its ports do not collide
with the defaults (``serve --port 8788`` met the edge's default port, 8788,
and the server exited), and its commands work in a fresh directory."""

from __future__ import annotations

import os
import re
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tollway.settings import Settings

README = Path(__file__).parents[1] / "README.md"
TOLLWAY = [str(Path(sys.executable).parent / "tollway")]  # .venv/bin/tollway, the README's own


def _x402_section() -> str:
    text = README.read_text()
    start = text.index("## Pay for a request with x402")
    return text[start : text.index("\n## ", start + 1)]


def _commands() -> list[str]:
    block = re.search(r"```bash\n(.*?)```", _x402_section(), re.S)
    assert block is not None
    return [ln.split("  #", 1)[0].strip() for ln in block.group(1).splitlines() if ln.strip()]


def _port() -> int:
    m = re.search(r"serve --port (\d+)", _x402_section())
    assert m is not None
    return int(m.group(1))


def test_the_x402_quick_start_uses_one_free_port() -> None:
    port, s = _port(), Settings()
    assert port not in (s.provision.edge_port, s.server.port)
    assert set(re.findall(r"127\.0\.0\.1:(\d+)", _x402_section())) == {str(port)}


def _free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


@pytest.mark.slow
def test_the_x402_quick_start_runs_as_written(tmp_path: Path) -> None:
    port = _port()
    if not _free(port) or not _free(Settings().provision.edge_port):
        pytest.skip(f"port {port} or the edge's is taken on this machine")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOLLWAY_")}
    server: subprocess.Popen[bytes] | None = None
    log = (tmp_path / "serve.log").open("wb")
    try:
        for line in _commands():
            args = shlex.split(line.rstrip("&").strip())
            if args[0] == ".venv/bin/tollway":
                argv = [*TOLLWAY, *args[1:]]
                if line.endswith("&"):
                    server = subprocess.Popen(
                        argv, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT
                    )
                    _wait_healthy(server, port, tmp_path)
                else:
                    r = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, timeout=120)
                    assert r.returncode == 0, r.stdout + r.stderr
            elif args[0] == "curl":
                r = httpx.get(args[-1], timeout=10)
                assert r.status_code == 402, r.text
        assert server is not None and server.poll() is None  # still serving
    finally:
        if server is not None and server.poll() is None:
            server.terminate()
            server.wait(30)
        log.close()


def _wait_healthy(proc: subprocess.Popen[bytes], port: int, tmp: Path) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert proc.poll() is None, (tmp / "serve.log").read_text()[-3000:]
        time.sleep(0.2)
    raise AssertionError((tmp / "serve.log").read_text()[-3000:])
