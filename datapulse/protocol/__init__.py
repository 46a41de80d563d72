"""The MCP protocol layer: one ``Dispatcher`` per server, one ``McpSession`` per MCP session.

Modules, lowest first (each imports only those before it): ``state`` (what a session knows of
its client, storable), ``call`` (one request in flight), ``session`` (``McpSession``: routing,
cancellation, error mapping), ``methods`` (what each MCP method means), ``dispatch``
(``Dispatcher``: server-wide settings and the method tables). Nothing is re-exported here, so
importing one module never drags in the others.
"""
