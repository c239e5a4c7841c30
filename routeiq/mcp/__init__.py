"""The MCP gateway: one ``/mcp`` endpoint in front of the registered MCP servers' tools.

- ``guard``: the SSRF guard for registered URLs.
- ``store``: where the registry lives (SQLite with ``local``, etcd with ``etcd``).
- ``upstream``: one supervised session per registered server (reconnects, health, tools).
- ``aggregator``: the MCP server clients talk to (namespaced union, forwarding, validation).
- ``component``: how the lifecycle builds, serves and drains all of it.
- ``admin``: ``/_admin/mcp/servers``.

The ``routeiq.mcp`` settings and the shape of one registered server belong to the config
(``routeiq.config.mcp``). Importing this package imports neither the ``mcp`` SDK nor anything
that opens a socket.
"""

__all__: list[str] = []
