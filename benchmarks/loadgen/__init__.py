"""Load-generator worker: one process, one Trio loop, steered by the coordinator.

    python -m benchmarks.loadgen JOB_JSON

``common`` holds the pieces every program uses (the control channel, opening streams in bulk,
holding them, paced publishing); ``streams`` the programs for idle, ping, fan-out and
slow-consumer trials; ``rpc`` the request/response clients.

The coordinator (``benchmarks.workers``) starts several of these so the client side can use more
than one core, and so its CPU can be measured apart from the server's. They talk in JSON lines:
the worker prints ``{"event": ...}`` reports on stdout and waits for ``{"cmd": ...}`` lines on
stdin at each barrier ("next", "start", "stop"), which keeps all workers in step while the
coordinator samples the server. A worker stops by itself when its job deadline passes or stdin
closes, so a dead coordinator never leaves load running.

Each report carries the worker's own CPU seconds (``getrusage``) so a client bottleneck shows up
in the results next to the server's figures.
"""
