"""Run a script as W data-parallel ranks on this machine over MLX's ring backend (localhost), as
`mlx.launch -n W --backend ring` does, minus its output-forwarding loop: on this 2-core VM (mlx
0.32.4) that loop kept 65-100% of a core busy, the core a rank computes on. The ranks write to this
process's own stdout and stderr, and it exits with the first non-zero status of theirs.

    python scripts/ranks.py -n 2 scripts/build_tiny_model.py --out base
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile


def ring_hosts(world: int) -> list[list[str]]:
    """A free localhost port per rank, as a ring hostfile lists them."""
    sockets = [socket.socket() for _ in range(world)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    hosts = [[f"127.0.0.1:{s.getsockname()[1]}"] for s in sockets]
    for s in sockets:
        s.close()
    return hosts


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", "--ranks", type=int, default=2)
    parser.add_argument("script", help="the Python script every rank runs")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="its arguments")
    args = parser.parse_args(argv)
    if args.ranks < 1:
        parser.error("--ranks must be at least 1")
    with tempfile.NamedTemporaryFile("w", prefix="ring-", suffix=".json", delete=False) as hostfile:
        json.dump(ring_hosts(args.ranks), hostfile)
    procs = [
        subprocess.Popen(
            [sys.executable, args.script, *args.args],
            env={**os.environ, "MLX_RANK": str(rank), "MLX_HOSTFILE": hostfile.name},
        )
        for rank in range(args.ranks)
    ]
    try:
        codes = [p.wait() for p in procs]
    except KeyboardInterrupt:
        for p in procs:
            p.terminate()
        codes = [p.wait() for p in procs]
    finally:
        os.unlink(hostfile.name)
    return next((code for code in codes if code), 0)


if __name__ == "__main__":
    sys.exit(main())
