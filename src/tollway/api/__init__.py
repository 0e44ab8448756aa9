"""The HTTP API: one ASGI app, routers per face, one error shape."""
