"""``tollway.toml``: one file, validated with pydantic, overridable from the environment.

Every key can be overridden by ``TOLLWAY_<SECTION>__<KEY>`` (for example
``TOLLWAY_SERVER__PORT=9000``).  A bad file or variable raises
:class:`ConfigError` naming the source, the key and the reason.

Core defines the sections it reads itself (server, database, ledger, admin)
and the loader; each face defines its own section in its ``config`` module,
and ``tollway.settings.Settings`` assembles them all.
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

ENV_PREFIX = "TOLLWAY_"
DEFAULT_PATH = "tollway.toml"


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ServerConfig(Section):
    host: str = "127.0.0.1"
    port: int = Field(8787, ge=1, le=65535)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # Background work starts this long after start-up (tollway.api.app's lifespan).
    background_delay_seconds: float = Field(1.0, ge=0, le=3600)


class DatabaseConfig(Section):
    url: str = "sqlite:///.tollway/tollway.db"
    sqlite_synchronous: Literal["OFF", "NORMAL", "FULL", "EXTRA"] = "FULL"
    pool_size: int = Field(10, ge=1, le=1000)
    migrate_on_start: bool = True

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, v: str) -> str:
        scheme = v.split("://", 1)[0]
        if not (scheme.startswith("sqlite") or scheme.startswith("postgres")):
            raise ValueError("must be a sqlite:/// or postgresql:// URL")
        return v


class LedgerConfig(Section):
    batch_max: int = Field(2048, ge=1, le=100_000)
    pending_timeout_seconds: int = Field(300, ge=1)
    expiry_interval_seconds: float = Field(1.0, gt=0)
    # "durable": nothing that reports a charge (x-tollway-charged, a stream's
    # last chunks, a receipt) leaves the server before the charge is committed.
    # "fast": the response goes out first and the settle commits just after it
    # (a crash in that window leaves the call uncharged; see docs/ledger.md).
    acknowledge: Literal["durable", "fast"] = "durable"
    # Long calls (a stream) checkpoint what they produced this often, so a
    # crash mid-call still charges it on recovery (tollway.charge.recovery);
    # 0 turns checkpoints off.
    progress_seconds: float = Field(1.0, ge=0)


class AdminConfig(Section):
    token: str = ""

    @field_validator("token")
    @classmethod
    def _long_enough(cls, v: str) -> str:
        if v and len(v) < 16:
            raise ValueError("must be at least 16 characters (or empty to disable /admin)")
        return v


def valid_amount(v: str, free_ok: bool = False) -> str:
    from tollway.core.errors import TollwayError
    from tollway.core.money import parse_amount, parse_price

    try:
        (parse_price if free_ok else parse_amount)(v)
    except TollwayError as e:
        raise ValueError(e.message) from None
    return v


class CoreSettings(Section):
    """The sections core reads; ``tollway.settings.Settings`` adds each face's own."""

    server: ServerConfig = ServerConfig()
    database: DatabaseConfig = DatabaseConfig()
    ledger: LedgerConfig = LedgerConfig()
    admin: AdminConfig = AdminConfig()


S = TypeVar("S", bound=CoreSettings)


class ConfigError(Exception):
    """A bad config: which file or variable, which key, and why."""

    def __init__(self, source: str, key: str, reason: str) -> None:
        super().__init__(f"{source}: {key}: {reason}" if key else f"{source}: {reason}")
        self.source = source
        self.key = key
        self.reason = reason


def default_config_text() -> str:
    return (resources.files("tollway.core") / "default_config.toml").read_text()


def _env_value(raw: str) -> Any:
    text = raw.strip()
    if text[:1] in "[{":
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return raw
    return raw


def _env_overrides(env: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    data: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for name, raw in env.items():
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        parts = [p.lower() for p in name[len(ENV_PREFIX) :].split("__")]
        if any(not p for p in parts):
            continue
        node = data
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                break
        else:
            node[parts[-1]] = _env_value(raw)
            origin[".".join(parts)] = name
    return data, origin


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def load_config(
    model: type[S],
    path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
) -> S:
    """Load ``tollway.toml`` (if present) into ``model`` and apply ``TOLLWAY_*`` overrides
    (``tollway.settings.load_settings`` with the whole configuration).

    ``path`` defaults to ``$TOLLWAY_CONFIG``, else ``tollway.toml`` in the
    home: ``$TOLLWAY_HOME`` or the current directory. A missing default file
    means built-in defaults, a missing explicit file is an error. A relative
    SQLite path is taken from the home (``$TOLLWAY_HOME``, else the config
    file's directory), so every command finds the same database wherever it runs.
    """
    env = os.environ if env is None else env
    explicit = path is not None or "TOLLWAY_CONFIG" in env
    home = env.get("TOLLWAY_HOME")
    default = str(Path(home) / DEFAULT_PATH) if home else DEFAULT_PATH
    file = Path(path if path is not None else env.get("TOLLWAY_CONFIG", default))
    data: dict[str, Any] = {}
    if file.exists():
        try:
            data = tomllib.loads(file.read_text())
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(str(file), "", f"not valid TOML: {e}") from None
        except OSError as e:
            raise ConfigError(str(file), "", f"cannot read: {e.strerror}") from None
    elif explicit:
        raise ConfigError(str(file), "", "file not found (run `tollway init` to write one)")
    overrides, origin = _env_overrides(
        {k: v for k, v in env.items() if k not in ("TOLLWAY_CONFIG", "TOLLWAY_HOME")}
    )
    merged = _merge(data, overrides)
    try:
        settings = model.model_validate(merged)
    except ValidationError as e:
        err = e.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        source = origin.get(key, str(file))
        reason = err["msg"]
        if err["type"] == "extra_forbidden":
            reason = "unknown key"
        elif "input" in err and not isinstance(err["input"], dict):
            reason = f"{reason} (got {err['input']!r})"
        raise ConfigError(source, key, reason) from None
    base = Path(home) if home else (file.parent if file.exists() else Path("."))
    settings.database.url = anchored_sqlite(settings.database.url, base)
    return settings


def anchored_sqlite(url: str, base: Path) -> str:
    """A relative ``sqlite:///path`` taken from ``base``; any other URL as is."""
    prefix = "sqlite:///"
    rest = url[len(prefix) :] if url.startswith(prefix) else None
    if rest is None or rest.startswith("/") or rest in ("", ":memory:") or base == Path("."):
        return url
    return prefix + str((base / rest).absolute())


def sqlite_file(url: str) -> Path | None:
    """The file a ``sqlite:///`` URL names (None for PostgreSQL or memory)."""
    prefix = url.split("://", 1)[0]
    rest = url.split(":///", 1)[1] if ":///" in url else ""
    if not prefix.startswith("sqlite") or rest in ("", ":memory:"):
        return None
    return Path(rest.split("?", 1)[0])
