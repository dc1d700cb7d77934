"""How fast a PostgreSQL relay can be in Python on this machine: the ceiling under postgres_proxy.py's part 1.

``pgbench -S`` against the same database through, interleaved:

- direct, for reference;
- socat (one process per connection), the yardstick of issue 4's goals;
- an asyncio *Protocol* relay: ``data_received`` straight into the other
  transport's ``write``, nothing parsed (a child process);
- an asyncio *streams* relay: ``read``, ``write``, ``drain`` per direction,
  nothing parsed; the I/O model the proxy uses today (a child process);
- the proxy's loopback listener with guardrails, masking and audit, in this
  process, as in postgres_proxy.py.

Each path is reported as a ratio to socat. The two bare relays bound what any
proxy built on that I/O model can reach before it inspects a byte.

``.venv/bin/python benchmarks/pg_relay_ceiling.py [--seconds 8] [--runs 2]``
``python benchmarks/pg_relay_ceiling.py relay protocol|streams LISTEN_PORT TARGET_PORT`` (the child)
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from _pg_support import bench_db, finish, launch, parse_tps, pgbench_binary, socat, spawn
from _support import Lab, free_port, median, run_main, table, wait_for_port
from postgres_proxy import make_bastion, start_proxy

# -- the two bare relays (run in a child process of their own) --------------------------------------


class _Upstream(asyncio.Protocol):
    def __init__(self, client: asyncio.Transport) -> None:
        self.client = client
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.client.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.client.close()


class _Client(asyncio.Protocol):
    """One client connection: held until its upstream is open, then bytes in both directions, as they come."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.early: list[bytes] = []
        self.upstream: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        asyncio.get_running_loop().create_task(self._open())

    async def _open(self) -> None:
        loop = asyncio.get_running_loop()
        upstream, _ = await loop.create_connection(lambda: _Upstream(self.transport), "127.0.0.1", self.target)
        self.upstream = upstream
        for data in self.early:
            upstream.write(data)

    def data_received(self, data: bytes) -> None:
        if self.upstream is None:
            self.early.append(data)
        else:
            self.upstream.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.upstream is not None:
            self.upstream.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(256 * 1024):
        writer.write(data)
        await writer.drain()
    writer.close()


async def _relay(mode: str, listen: int, target: int) -> None:
    loop = asyncio.get_running_loop()
    if mode == "protocol":
        server = await loop.create_server(lambda: _Client(target), "127.0.0.1", listen)
    else:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", target)
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))

        server = await asyncio.start_server(handle, "127.0.0.1", listen)
    await server.serve_forever()


# -- the benchmark ------------------------------------------------------------------------------------


def start_relay(lab: Lab, mode: str, target: int) -> int:
    port = free_port()
    log = lab.tmp / "relays" / f"{mode}.log"
    proc = spawn(lab, [sys.executable, __file__, "relay", mode, str(port), str(target)], log)
    wait_for_port(port, proc, log)
    return port


async def run(args: argparse.Namespace) -> int:
    with Lab() as lab:
        print("setting up: PostgreSQL, pgbench -i, socat, two bare relays, the proxy", flush=True)
        db = bench_db(lab)
        ports = {"direct": db.port, "socat": socat(lab, db.port),
                 "asyncio Protocol relay": start_relay(lab, "protocol", db.port),
                 "asyncio streams relay": start_relay(lab, "streams", db.port)}
        server, ports["proxy (inspecting)"], _ = await start_proxy(lab, make_bastion(lab, db))
        lab.callback(server.close)
        tps: dict[str, list[float]] = {name: [] for name in ports}
        print(f"\npgbench -S -c 8 -j 2 -T {args.seconds}, interleaved", flush=True)
        for _ in range(args.runs):
            for name, port in ports.items():
                log = lab.tmp / "pgbench" / f"{name.split(' (')[0].replace(' ', '-')}-{len(tps[name])}.log"
                proc = spawn(lab, [pgbench_binary(db.server), "-n", "-S", "-c", "8", "-j", "2",
                                   "-T", str(args.seconds), "-p", str(port)], log, env=db.env())
                if await finish(proc, args.seconds + 60) != 0:
                    raise RuntimeError(f"pgbench via {name} failed:\n{log.read_text(errors='replace')[-2000:]}")
                tps[name].append(parse_tps(log.read_text(errors="replace")))
                print(f"  {name:<24} {tps[name][-1]:>9.0f} tps", flush=True)
        base = median(tps["socat"])
        rows = [[name, " / ".join(f"{v:.0f}" for v in values), f"{median(values):.0f}", f"{median(values) / base:.2f}x"]
                for name, values in tps.items()]
        print("\n" + table(["path (pgbench -S)", "tps per run", "median", "÷ socat"], rows), flush=True)
        return 0


def main() -> int:
    if sys.argv[1:2] == ["relay"]:
        if len(sys.argv) != 5 or sys.argv[2] not in ("protocol", "streams"):
            sys.exit(f"usage: {sys.argv[0]} relay protocol|streams LISTEN_PORT TARGET_PORT")
        asyncio.run(_relay(sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=8, help="pgbench -T per run (default 8)")
    parser.add_argument("--runs", type=int, default=2, help="runs per path (default 2)")
    parser.add_argument("--budget", type=float, default=200, help="stop everything after this many seconds")
    return launch(run, parser.parse_args(), tools={"socat": "socat"})


if __name__ == "__main__":
    run_main(main)
