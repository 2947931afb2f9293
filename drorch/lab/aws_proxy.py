"""One lab region's AWS API endpoint: a TCP relay in front of the lab's moto server.

Real regions fail one at a time: us-east-1's SSM can be down while us-west-2's
answers. The lab has one moto server for every region, so each region gets a
relay of its own (``aws.region_endpoints`` in the runbook), and ``drorch lab fail
REGION --mode aws-down`` freezes that relay with SIGSTOP: connections still open
(the kernel accepts them into the backlog) but no request is answered, the hard
case where a client waits for its own deadline. ``heal`` sends SIGCONT.

    python -m drorch.lab.aws_proxy --listen 127.0.0.1:25001 --upstream 127.0.0.1:25000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib

from drorch.lab.services import configure_process_logging

_CHUNK = 64 * 1024


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(_CHUNK):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


async def _relay(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter,
                 upstream: tuple[str, int]) -> None:
    try:
        up_r, up_w = await asyncio.open_connection(*upstream)
    except OSError:
        client_w.close()
        return
    await asyncio.gather(_pipe(client_r, up_w), _pipe(up_r, client_w))


async def serve(listen: tuple[str, int], upstream: tuple[str, int]) -> None:
    server = await asyncio.start_server(lambda r, w: _relay(r, w, upstream), *listen)
    async with server:
        await server.serve_forever()


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host or "127.0.0.1", int(port)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--listen", required=True, help="HOST:PORT this region's endpoint")
    ap.add_argument("--upstream", required=True, help="HOST:PORT of the moto server")
    args = ap.parse_args()
    configure_process_logging()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(_address(args.listen), _address(args.upstream)))


if __name__ == "__main__":
    main()
