"""``tollway vectors``: create, list, query and delete a customer's indexes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from tollway.cli.main import app

runner = CliRunner()


@pytest.fixture
def cfg(tmp_path: Path, db_url: str) -> str:
    path = tmp_path / "tollway.toml"
    assert runner.invoke(app, ["init", "--path", str(path), "--json"]).exit_code == 0
    text = path.read_text().replace('url = "sqlite:///.tollway/tollway.db"', f'url = "{db_url}"')
    path.write_text(text + f'\n[vectors]\npath = "{tmp_path / "vectors"}"\n')
    return str(path)


def run(cfg: str, *args: str, code: int = 0) -> Any:
    r = runner.invoke(app, ["--config", cfg, *args, "--json"])
    assert r.exit_code == code, r.output
    return json.loads(r.stdout)


def test_vectors_cli(cfg: str) -> None:
    cus = run(cfg, "customers", "create", "--name", "Ada")["id"]
    made = run(
        cfg, "vectors", "create", "docs", "--customer", cus, "--dimensions", "2", "--metric", "euclidean"
    )
    assert made["config"] == {"dimensions": 2, "metric": "euclidean"}
    assert [i["name"] for i in run(cfg, "vectors", "indexes", "--customer", cus)["data"]] == ["docs"]
    r = run(cfg, "vectors", "query", "docs", "--customer", cus, "--vector", "[1, 0]")
    assert r == {"count": 0, "matches": []}
    e = run(cfg, "vectors", "query", "docs", "--customer", cus, "--vector", "[1, 0, 0]", code=1)
    assert e["error"]["code"] == "wrong_dimensions" and e["error"]["param"] == "vector"
    bad = run(cfg, "vectors", "create", "x", "--customer", cus, "--dimensions", "5000", code=1)
    assert bad["error"]["param"] == "dimensions"
    assert run(cfg, "vectors", "delete", "docs", "--customer", cus)["deleted"] is True
    assert run(cfg, "vectors", "indexes", "--customer", cus)["data"] == []
