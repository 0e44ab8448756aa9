"""CLI output: rich tables for people, ``--json`` for programs, one error format."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from tollway.core.config import ConfigError
from tollway.core.errors import TollwayError
from tollway.core.money import format_usd

# Pipes get wide lines rather than ids folded over several rows.
out = Console() if sys.stdout.isatty() else Console(width=200)
err = Console(stderr=True) if sys.stderr.isatty() else Console(stderr=True, width=200)


def emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=False) + "\n")


def table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    t = Table(title=title, title_justify="left")
    for c in columns:
        t.add_column(c, justify="right" if c in MONEY_COLUMNS else "left", overflow="fold")
    for r in rows:
        t.add_row(*("" if v is None else str(v) for v in r))
    out.print(t)


MONEY_COLUMNS = {"balance", "available", "reserved", "amount", "debits", "credits"}


def usd(micros: int) -> str:
    return format_usd(micros)


def fail(e: Exception, as_json: bool) -> NoReturn:
    if isinstance(e, ConfigError):
        if as_json:
            emit_json(
                {
                    "error": {
                        "type": "config_error",
                        "code": "invalid_config",
                        "message": str(e),
                        "param": e.key or None,
                    }
                }
            )
        else:
            err.print(f"[bold red]config error[/] {e}")
        raise typer.Exit(2)
    if isinstance(e, TollwayError):
        if as_json:
            emit_json(e.to_dict())
        else:
            where = f" ({e.param})" if e.param else ""
            err.print(f"[bold red]error[/] {e.code}{where}: {e.message}")
        raise typer.Exit(1)
    raise e
