"""Generate ``mbpoll.json``: register words next to what mbpoll itself decodes them to.

Run by hand, not in CI (needs ``/usr/bin/mbpoll``)::

    .venv/bin/python tests/golden/codec/make_mbpoll_vectors.py

An in-process pymodbus TCP server on 127.0.0.1 (ephemeral port) holds known register words;
mbpoll reads them back as 16-bit registers (``-t 3``, ``-t 4``, ``-t 4:hex``), as 32-bit
integers and as 32-bit floats, each with ``-B`` (big-endian word order: our ABCD) and
without (mbpoll's default, low word first: our CDAB). The words are built with ``struct``
here, never with ``agent.drivers.modbus_codec``: the vectors must not come from the code they
test. mbpoll prints floats with C's ``%g`` (6 significant digits), so a float vector is
``"exact"`` only when mbpoll's text parses back to the very value the words hold; otherwise
the test compares at ``%g`` precision and does not encode.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any, cast

from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

MBPOLL = "/usr/bin/mbpoll"
OUT = Path(__file__).with_name("mbpoll.json")
UNIT = 1

WORDS_16 = [0x0000, 0x0001, 0x00FF, 0x075B, 0x1234, 0x7FFF, 0x8000, 0xABCD, 0xCD15, 0xFF00, 0xFFFF]

INTS_32 = [0, 1, -1, 255, 65535, 65536, 123456789, -123456789, 0x12345678, 2**31 - 1, -(2**31)]

FLOATS_32 = [
    0.0,
    -0.0,
    1.0,
    -2.5,
    25.0,
    0.15625,
    123456.0,
    100000.0,
    -1024.75,
    math.pi,  # not exact at %g
    0.1,  # not exact at %g
    3.4028234663852886e38,  # largest float32
    1.1754943508222875e-38,  # smallest normal float32
    1.401298464324817e-45,  # smallest subnormal float32
]
# Raw float32 bit patterns that are not finite numbers (our decode refuses them).
SPECIAL_32 = {0x7FC00000: "nan", 0xFFC00000: "-nan", 0x7F800000: "inf", 0xFF800000: "-inf"}


def pair_abcd(raw32: int) -> list[int]:
    """A 32-bit pattern as two registers, high word first (ABCD)."""
    return [raw32 >> 16, raw32 & 0xFFFF]


def swap_words(pair: list[int]) -> list[int]:
    """ABCD registers to CDAB registers (low word first)."""
    return [pair[1], pair[0]]


def build_table() -> tuple[list[int], list[dict[str, Any]]]:
    """Lay out every section's words from address 0; return all words and the section list."""
    words: list[int] = []
    sections: list[dict[str, Any]] = []

    def add(kind: str, block: list[int]) -> None:
        sections.append({"kind": kind, "address": len(words), "registers": len(block)})
        words.extend(block)

    add("16", list(WORDS_16))
    ints: list[int] = []
    for value in INTS_32:
        pair = pair_abcd(struct.unpack(">I", struct.pack(">i", value))[0])
        ints += pair + swap_words(pair)
    add("int", ints)
    floats: list[int] = []
    for f in FLOATS_32:
        pair = pair_abcd(struct.unpack(">I", struct.pack(">f", f))[0])
        floats += pair + swap_words(pair)
    for raw in SPECIAL_32:
        floats += pair_abcd(raw) + swap_words(pair_abcd(raw))
    add("float", floats)
    return words, sections


async def run_mbpoll(port: int, table: str, ref: int, count: int, big_endian: bool) -> tuple[str, str]:
    """Run mbpoll once; return (its argument string without host/port, its stdout)."""
    args = ["-a", str(UNIT), "-r", str(ref), "-c", str(count), "-t", table, *(["-B"] if big_endian else [])]
    proc = await asyncio.create_subprocess_exec(
        MBPOLL, "-m", "tcp", "-p", str(port), *args, "-1", "-o", "2", "127.0.0.1",
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"mbpoll {' '.join(args)} failed ({proc.returncode}): {err.decode()}")
    return " ".join(args), out.decode()


LINE = re.compile(r"^\[(\d+)\]:\s+(.*?)\s*$")


def parse(stdout: str) -> list[tuple[int, str]]:
    """mbpoll's value lines ``[ref]: <tab>text`` after the ``-- Polling slave`` line."""
    _, _, body = stdout.partition("-- Polling slave")
    return [(int(m[1]), m[2]) for line in body.splitlines() if (m := LINE.match(line))]


def hexwords(ws: list[int]) -> list[str]:
    """Words as the JSON spells them."""
    return [f"0x{w:04X}" for w in ws]


def vectors_16(words: list[int], runs: dict[str, tuple[str, str]]) -> list[dict[str, Any]]:
    """int16/uint16 vectors from ``-t 3``, ``-t 4`` (``52501 (-13035)``) and ``-t 4:hex``."""
    out: list[dict[str, Any]] = []
    for table, (args, stdout) in runs.items():
        for ref, text in parse(stdout):
            word = words[ref - 1]
            source = f"mbpoll {args} (ref {ref}) printed {text!r}"
            if table == "4:hex":
                out.append(_vector("uint16", None, [word], int(text, 16), source, args, ref, text))
                continue
            m = re.fullmatch(r"(\d+)(?: \((-\d+)\))?", text)
            if not m:
                raise ValueError(f"unexpected 16-bit output {text!r}")
            out.append(_vector("uint16", None, [word], int(m[1]), source, args, ref, text))
            signed = int(m[2]) if m[2] else int(m[1])
            out.append(_vector("int16", None, [word], signed, source, args, ref, text))
    return out


def vectors_32(words: list[int], kind: str, runs: dict[str, tuple[str, str]]) -> list[dict[str, Any]]:
    """int32 or float32 vectors: ``-B`` output is our ABCD, the default output our CDAB."""
    out: list[dict[str, Any]] = []
    for order, (args, stdout) in runs.items():
        for ref, text in parse(stdout):
            pair = words[ref - 1 : ref + 1]
            source = f"mbpoll {args} (ref {ref}) printed {text!r}"
            abcd = pair if order == "ABCD" else swap_words(pair)
            raw = struct.pack(">HH", *abcd)
            if kind == "int":
                out.append(_vector("int32", order, pair, int(text), source, args, ref, text))
                continue
            actual = struct.unpack(">f", raw)[0]
            if not math.isfinite(actual):
                if text.lstrip("-") not in ("nan", "inf"):
                    raise ValueError(f"mbpoll printed {text!r} for a non-finite pattern")
                vec = _vector("float32", order, pair, None, source, args, ref, text)
                vec["error"] = "not finite"
            else:
                vec = _vector("float32", order, pair, float(text), source, args, ref, text)
                parsed = float(text)
                vec["exact"] = parsed == actual and math.copysign(1, parsed) == math.copysign(1, actual)
            out.append(vec)
    return out


def _vector(
    dtype: str, order: str | None, pair: list[int], value: Any, source: str, args: str, ref: int, text: str
) -> dict[str, Any]:
    """One JSON vector."""
    name = f"mbpoll_{dtype}_{order or 'AB'}_ref{ref}_{args.split('-t ')[1].split()[0].replace(':', '_')}"
    vec: dict[str, Any] = {"name": name, "type": dtype}
    if order:
        vec["order"] = order
    vec.update({"words": hexwords(pair), "value": value, "source": source, "mbpoll_text": text})
    return vec


def mbpoll_version() -> tuple[str, str]:
    """What ``mbpoll -V`` prints, and the Debian package version (mbpoll -V says 1.0-0)."""
    version = subprocess.run([MBPOLL, "-V"], capture_output=True, text=True, check=True).stdout.strip()
    package = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Version}", "mbpoll"], capture_output=True, text=True, check=False
    ).stdout.strip()
    return version, package


async def main() -> None:
    """Serve the table, poll it with mbpoll, write the JSON."""
    words, sections = build_table()
    version, package = await asyncio.to_thread(mbpoll_version)
    device = SimDevice(id=UNIT, simdata=[SimData(address=0, values=words, datatype=DataType.REGISTERS)])
    server = ModbusTcpServer(device, address=("127.0.0.1", 0))  # must be built inside the loop
    await server.serve_forever(background=True)  # listens, returns at once
    port = cast(asyncio.Server, server.transport).sockets[0].getsockname()[1]
    try:
        vectors: list[dict[str, Any]] = []
        for section in sections:
            ref = section["address"] + 1  # mbpoll -r is 1-based
            n = section["registers"]
            if section["kind"] == "16":
                runs = {t: await run_mbpoll(port, t, ref, n, False) for t in ("3", "4", "4:hex")}
                vectors += vectors_16(words, runs)
            else:
                table = "4:int" if section["kind"] == "int" else "4:float"
                runs = {
                    "ABCD": await run_mbpoll(port, table, ref, n // 2, True),
                    "CDAB": await run_mbpoll(port, table, ref, n // 2, False),
                }
                vectors += vectors_32(words, section["kind"], runs)
    finally:
        await server.shutdown()  # type: ignore[no-untyped-call]
    doc = {
        "description": (
            "Register words and mbpoll's own decoding of them, read from an in-process pymodbus "
            "TCP server. -B = big-endian word order (our ABCD); mbpoll's default = low word "
            "first (our CDAB). Floats are printed with %g: 'exact' false means compare at %g "
            "precision only. Generated by make_mbpoll_vectors.py; do not edit by hand."
        ),
        "generator": "tests/golden/codec/make_mbpoll_vectors.py",
        "tool": f"mbpoll (-V prints {version!r}; Debian package {package or 'unknown'})",
        "vectors": vectors,
    }
    OUT.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {len(vectors)} vectors to {OUT}", file=sys.stderr)


if __name__ == "__main__":
    asyncio.run(main())
