"""CLI output: rich tables for people, ``--json`` for programs, one error format."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NoReturn, cast

import typer

from tollway.core.config import ConfigError
from tollway.core.errors import TollwayError
from tollway.core.money import format_usd

if TYPE_CHECKING:
    from rich.console import Console


class _LazyConsole:
    """A rich ``Console`` made on first use: `tollway serve` prints nothing with
    it when all is well, and importing rich is ~3% of its start-up."""

    def __init__(self, stderr: bool) -> None:
        self._stderr = stderr
        self._console: Console | None = None

    def __getattr__(self, name: str) -> Any:
        if self._console is None:
            from rich.console import Console

            tty = (sys.stderr if self._stderr else sys.stdout).isatty()
            # Pipes get wide lines rather than ids folded over several rows.
            self._console = Console(stderr=self._stderr, width=None if tty else 200)
        return getattr(self._console, name)


out = cast("Console", _LazyConsole(stderr=False))
err = cast("Console", _LazyConsole(stderr=True))


def emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=False) + "\n")


def table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    from rich.table import Table

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
