"""An OPC UA server for the benchmarks, run in its own process so its CPU and memory are not ours.

::

    python -m bench.opcua_server --nodes 1000 --rate 10

Serves ``--nodes`` Double variables (``nsu=urn:edge-agent:bench;s=v<i>``, no security) and
changes every one of them ``--rate`` times a second (new value, new SourceTimestamp). Prints
one JSON line once it serves (``endpoint``, ``namespace``, ``nodes``, ``rate_hz``,
``startup_s``), then, when stopped (SIGTERM, SIGINT or stdin closed), a last JSON line with
what it did: ``ticks``, ``values`` written, ``seconds``, ``late_ticks`` (ticks that started
after the next one was due: the server could not keep the rate).

The standard address space is built once into a shelf in the temp directory and loaded
lazily afterwards (the approach of ``tests/opcua/conftest.py``): start-up takes a fraction of a
second instead of about 1.6 s.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import asyncua
from asyncua import Server, ua

NAMESPACE = "urn:edge-agent:bench"


def node_id(i: int) -> str:
    """The node id of variable ``i`` as the agent configures it (by namespace URI)."""
    return f"nsu={NAMESPACE};s=v{i}"


async def _shelf() -> Path:
    """The standard address space as a shelf, built once per asyncua version."""
    base = Path(tempfile.gettempdir()) / f"edge-agent-bench-aspace-{asyncua.__version__}"
    path = base / "standard"
    if await asyncio.to_thread(path.exists):
        return path
    tmp = Path(tempfile.mkdtemp(prefix="aspace-", dir=tempfile.gettempdir()))
    server = Server()
    await server.init(tmp / "standard")
    server.iserver.aspace._nodes = {}  # the shelf is written; this server is not used
    await asyncio.to_thread(_publish, tmp, base)
    return path


def _publish(tmp: Path, base: Path) -> None:
    (tmp / "standard").touch()  # asyncua looks for the shelf by this name (dbm writes .dat/.dir)
    try:
        tmp.rename(base)
    except OSError:  # another process built it first
        shutil.rmtree(tmp, ignore_errors=True)


async def serve(nodes: int, rate: float, port: int) -> None:
    t0 = time.perf_counter()
    server = Server()
    await server.init(await _shelf())
    endpoint = f"opc.tcp://127.0.0.1:{port}/bench/"
    server.set_endpoint(endpoint)
    server.set_server_name("edge-agent bench")
    server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
    server.set_identity_tokens([ua.AnonymousIdentityToken])
    idx = await server.register_namespace(NAMESPACE)
    folder = await server.nodes.objects.add_folder(ua.NodeId("Bench", idx), "Bench")
    ids = []
    for i in range(nodes):
        value = ua.Variant(float(i), ua.VariantType.Double)
        var = await folder.add_variable(ua.NodeId(f"v{i}", idx), f"v{i}", value)
        ids.append(var.nodeid)
    aspace = server.iserver.aspace
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_reader(sys.stdin.fileno(), lambda: stop.set() if not os.read(sys.stdin.fileno(), 1) else None)
    async with server:
        print(
            json.dumps(
                {
                    "endpoint": endpoint,
                    "namespace": NAMESPACE,
                    "nodes": nodes,
                    "rate_hz": rate,
                    "startup_s": time.perf_counter() - t0,
                }
            ),
            flush=True,
        )
        interval = 1.0 / rate
        ticks = values = late = 0
        start = time.monotonic()
        while not stop.is_set():
            now = datetime.now(UTC)
            for i, nid in enumerate(ids):
                value = ua.Variant(i + ticks * 1e-3, ua.VariantType.Double)
                dv = ua.DataValue(value, SourceTimestamp=now, ServerTimestamp=now)
                await aspace.write_attribute_value(nid, ua.AttributeIds.Value, dv)
            ticks += 1
            values += len(ids)
            delay = start + ticks * interval - time.monotonic()
            if delay < 0:
                late += 1
                continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await stop.wait()
        elapsed = time.monotonic() - start
    print(json.dumps({"ticks": ticks, "values": values, "seconds": elapsed, "late_ticks": late}), flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--rate", type=float, default=10.0, help="changes of every variable per second")
    ap.add_argument("--port", type=int, default=0, help="0 = a free port")
    args = ap.parse_args(argv)
    logging.getLogger("asyncua").setLevel(logging.ERROR)
    port = args.port
    if port == 0:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
    asyncio.run(serve(args.nodes, args.rate, port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
