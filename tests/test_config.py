"""tollway.toml: defaults, file, environment overrides, and clear errors."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from tollway.core.config import ConfigError, default_config_text
from tollway.settings import load_settings


def test_defaults_without_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    s = load_settings(env={})
    assert (s.server.host, s.server.port) == ("127.0.0.1", 8787)
    assert s.database.url.startswith("sqlite:///.tollway/")


def test_default_file_is_valid(tmp_path: Path) -> None:
    p = tmp_path / "tollway.toml"
    p.write_text(default_config_text().replace("__ADMIN_TOKEN__", "x" * 32))
    s = load_settings(p, env={})
    assert s.admin.token == "x" * 32 and s.database.sqlite_synchronous == "FULL"


def test_env_overrides_file(tmp_path: Path) -> None:
    p = tmp_path / "tollway.toml"
    p.write_text("[server]\nport = 9000\n")
    s = load_settings(p, env={"TOLLWAY_SERVER__PORT": "9100", "TOLLWAY_LEDGER__BATCH_MAX": "64"})
    assert s.server.port == 9100 and s.ledger.batch_max == 64


@pytest.mark.parametrize(
    ("text", "key", "reason"),
    [
        ("[server]\nport = 'abc'\n", "server.port", "valid integer"),
        ("[server]\nport = 70000\n", "server.port", "less than or equal"),
        ("[server]\nprot = 1\n", "server.prot", "unknown key"),
        ("[nope]\nx = 1\n", "nope", "unknown key"),
        ("[database]\nurl = 'mysql://x'\n", "database.url", "sqlite"),
        ("[admin]\ntoken = 'short'\n", "admin.token", "16 characters"),
    ],
)
def test_bad_file_names_file_key_and_reason(tmp_path: Path, text: str, key: str, reason: str) -> None:
    p = tmp_path / "tollway.toml"
    p.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_settings(p, env={})
    assert e.value.source == str(p) and e.value.key == key and reason in e.value.reason


def test_bad_toml_syntax(tmp_path: Path) -> None:
    p = tmp_path / "tollway.toml"
    p.write_text("[server\nport = 1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(p, env={})


def test_bad_env_var_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        load_settings(None, env={"TOLLWAY_SERVER__PORT": "x"})
    assert e.value.source == "TOLLWAY_SERVER__PORT" and e.value.key == "server.port"


def test_explicit_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "absent.toml", env={})


def test_the_commented_plans_example_is_valid() -> None:
    text = default_config_text()
    snippet = text[text.index("# [[billing.plans]]") : text.index("# Agent wallets")]
    uncommented = "\n".join(ln[2:] if ln.startswith("# ") else "" for ln in snippet.splitlines())
    from tollway.billing.config import configured_plans
    from tollway.settings import Settings

    plans = configured_plans(Settings.model_validate(tomllib.loads(uncommented)))
    assert list(plans) == ["free", "pro"] and plans["pro"].overage


def test_bad_plans_are_config_errors(tmp_path: Path) -> None:
    for bad, key in (
        ('[[billing.plans]]\nlookup_key = "Pro Plan"', "billing.plans.0.lookup_key"),
        ('[[billing.plans]]\nlookup_key = "a"\n[[billing.plans]]\nlookup_key = "a"', "billing"),
        ('[billing]\ndefault_plan = "gold"\n[[billing.plans]]\nlookup_key = "a"', "billing"),
        ('[[billing.plans]]\nlookup_key = "free"\nprice = "ten"', "billing.plans.0.price"),
        ('[[billing.plans]]\nlookup_key = "free"\nfeatures = ["Chat!"]', "billing.plans.0.features"),
        ('[[billing.plans]]\nlookup_key = "free"\nquotas = { requests = 5 }', "billing.plans.0.quotas"),
    ):
        p = tmp_path / "t.toml"
        p.write_text(bad)
        with pytest.raises(ConfigError) as e:
            load_settings(p, env={})
        assert e.value.key == key, (bad, e.value)
