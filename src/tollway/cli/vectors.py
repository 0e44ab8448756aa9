"""``tollway vectors indexes|create|delete|query``: a customer's vector indexes."""

from __future__ import annotations

from typing import Any

import orjson
import typer

from tollway.cli.main import JsonOpt, _with_runtime, app
from tollway.cli.output import emit_json, out, table
from tollway.core.errors import invalid
from tollway.runtime import Runtime

vectors_app = typer.Typer(help="Vector indexes (the Vectorize API).", no_args_is_help=True)
app.add_typer(vectors_app, name="vectors")

CustomerOpt = typer.Option(..., "--customer", help="The customer's id (cus_...).")


@vectors_app.command("indexes")
def indexes(customer: str = CustomerOpt, as_json: bool = JsonOpt) -> None:
    """A customer's indexes."""

    async def go(rt: Runtime) -> list[dict[str, Any]]:
        return [i.to_dict() for i in await rt.vectors.list_indexes(customer)]

    rows = _with_runtime(as_json, go)
    if as_json:
        emit_json({"object": "list", "data": rows})
        return
    table(
        "vector indexes",
        ["name", "dimensions", "metric", "created"],
        [[r["name"], r["config"]["dimensions"], r["config"]["metric"], r["created_on"]] for r in rows],
    )


@vectors_app.command("create")
def create(
    name: str = typer.Argument(..., help="The index's name."),
    customer: str = CustomerOpt,
    dimensions: int = typer.Option(..., "--dimensions", help="1 to 4,096."),
    metric: str = typer.Option("cosine", "--metric", help="cosine, euclidean or dot-product."),
    description: str = typer.Option("", "--description"),
    as_json: bool = JsonOpt,
) -> None:
    """Create an index (its dimensions and metric are fixed)."""

    async def go(rt: Runtime) -> dict[str, Any]:
        return (await rt.vectors.create_index(customer, name, dimensions, metric, description)).to_dict()

    r = _with_runtime(as_json, go)
    if as_json:
        emit_json(r)
    else:
        out.print(f"created {r['name']} ({r['config']['dimensions']} dimensions, {r['config']['metric']})")


@vectors_app.command("delete")
def delete(name: str = typer.Argument(...), customer: str = CustomerOpt, as_json: bool = JsonOpt) -> None:
    """Delete an index and its vectors."""

    async def go(rt: Runtime) -> None:
        await rt.vectors.delete_index(customer, name)

    _with_runtime(as_json, go)
    if as_json:
        emit_json({"deleted": True, "name": name})
    else:
        out.print(f"deleted {name}")


@vectors_app.command("query")
def query(
    name: str = typer.Argument(...),
    customer: str = CustomerOpt,
    vector: str = typer.Option(None, "--vector", help="A JSON list of numbers."),
    id: str = typer.Option(None, "--id", help="Query with a stored vector's id."),
    top_k: int = typer.Option(5, "--top-k"),
    namespace: str = typer.Option(None, "--namespace"),
    filter: str = typer.Option(None, "--filter", help='A JSON metadata filter, e.g. {"k": {"$gt": 1}}.'),
    metadata: str = typer.Option("none", "--metadata", help="none, indexed or all."),
    as_json: bool = JsonOpt,
) -> None:
    """The nearest vectors to a vector (or to a stored vector's id)."""

    def parse(raw: str | None, param: str) -> Any:
        if raw is None:
            return None
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise invalid("invalid_json", f"--{param} is not valid JSON", param) from None

    async def go(rt: Runtime) -> dict[str, Any]:
        return await rt.vectors.query(
            customer,
            name,
            parse(vector, "vector"),
            id=id,
            topK=top_k,
            namespace=namespace,
            filter=parse(filter, "filter"),
            returnMetadata=metadata,
        )

    r = _with_runtime(as_json, go)
    if as_json:
        emit_json(r)
        return
    table(
        f"{name}: {r['count']} matches",
        ["id", "score", "namespace", "metadata"],
        [
            [m["id"], f"{m['score']:.6f}", m.get("namespace", ""), orjson.dumps(m.get("metadata")).decode()]
            for m in r["matches"]
        ],
    )
