"""`python -m bench.access_log_micro [--lines N] [--callgrind]`: the access log's cost per request.

Two ways to write the same line, measured in one run:
* `logging`: one `logging.info` per request on a logger with the `weir serve` format
  (`%(asctime)s %(levelname)s %(name)s: %(message)s`) and a StreamHandler (what Weir did);
* `batched`: `AccessLog.add` per request and one `flush` per 1000 (what Weir does: the
  service task writes once a second).
Both write to a file in a temporary directory. Printed: CPU µs per line for each. For
instructions, run one way at a time under callgrind; `--callgrind` switches instrumentation
on around the measured loop only (divide the total by `--lines`)::

    valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file=/tmp/cg-al.out \\
        python -m bench.access_log_micro --way batched --lines 2000 --callgrind
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from proxy.access_log import AccessLog, Entry

_FIELDS = (
    "5c0f1e2d3c4b5a69",
    "198.51.100.7",
    "POST",
    "/v1/chat/completions",
    "mock-gpt",
    "mock",
    200,
    True,
    "completed",
    15,
    3.14159,
    1.93,
)


def _logging_way(path: Path) -> Callable[[], None]:
    logger = logging.getLogger("bench.access")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    handler = logging.StreamHandler(open(path, "w"))  # noqa: SIM115 (closed at exit)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger.addHandler(handler)

    def one() -> None:
        f = _FIELDS
        logger.info(
            "request_id=%s client=%s method=%s path=%s model=%s upstream=%s status=%s stream=%s"
            " outcome=%s events=%d ms=%.1f ttft_ms=%s",
            f[0],
            f[1],
            f[2],
            f[3],
            f[4],
            f[5],
            f[6],
            f[7],
            f[8],
            f[9],
            f[10],
            f"{f[11]:.1f}",
        )

    return one


def _batched_way(path: Path) -> Callable[[], None]:
    stream = open(path, "w")  # noqa: SIM115
    log = AccessLog(lambda: stream)
    count = 0

    def one() -> None:
        nonlocal count
        entry: Entry = (time.time(), *_FIELDS)
        log.add(entry)
        count += 1
        if count % 1000 == 0:
            log.flush()

    return one


def _instrument(on: bool, state: str) -> None:
    if on:
        subprocess.run(["callgrind_control", "-i", state, str(os.getpid())], check=True, capture_output=True)


def main() -> None:
    """Measure both ways and print CPU µs per line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=20_000)
    parser.add_argument("--way", choices=("logging", "batched", "both"), default="both")
    parser.add_argument("--callgrind", action="store_true", help="instrument only the measured loop")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for name, make in (("logging", _logging_way), ("batched", _batched_way)):
            if args.way not in (name, "both"):
                continue
            one = make(Path(tmp) / f"{name}.log")
            for _ in range(200):  # warm up
                one()
            _instrument(args.callgrind, "on")
            start = time.process_time()
            for _ in range(args.lines):
                one()
            cpu = time.process_time() - start
            _instrument(args.callgrind, "off")
            print(f"{name:8s} {cpu / args.lines * 1e6:7.2f} µs CPU per line ({args.lines} lines)")


if __name__ == "__main__":
    main()
