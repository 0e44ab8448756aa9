"""The web console at ``/console`` (docs/console.md): server-rendered pages
(Jinja2, htmx, uPlot vendored under static/vendor), sessions in the database,
CSRF checked on every action, the overview read from hourly rollups. Also the
local assets of ``/docs`` and ``/redoc``."""
