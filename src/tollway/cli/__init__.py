"""The ``tollway`` command."""

import gc


def run() -> None:
    """The console script: the command, with the cyclic collector off while it loads.

    Start-up allocates tens of thousands of objects that live as long as the
    process (modules, classes, routes, schemas); the collector's passes over
    them while they are made cost ~15% of the imports here
    (``docs/benchmarks.md``, "Start-up") and free nothing. Every command but
    ``serve`` turns it back on before it runs (``tollway.cli.main.main``);
    ``serve`` does once its start-up objects are frozen out of it (the app's
    lifespan, ``tollway.api.app``).
    """
    gc.disable()
    from tollway.cli.main import app

    app()
