"""What checking an SVG or GIF answer costs when it is kept (keeping.store.ImageStore.save), beside
a PNG's: the simulator's 1024x1024 PNG, its 4-frame 1024x1024 GIF and its SVG, a 1 MB and a 10 MB
SVG of many shapes (the largest accepted), and the refusal of a billion-laughs SVG. In one
process (the checks are CPU work; no server is needed); prints the median ms per save.

    .venv/bin/python bench/outputs.py [--rounds N]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time

from batchgen.exceptions import BadResponse
from batchgen.keeping.imagecheck import MAX_SVG_BYTES
from batchgen.keeping.store import ImageStore
from batchgen.simulator.images import ImageMaker
from batchgen.simulator.validation import parse_request


def shapes_svg(size: int) -> bytes:
    head = b'<svg xmlns="http://www.w3.org/2000/svg" width="1024" height="1024">'
    shape = b'<circle cx="%d" cy="%d" r="7" fill="#a3c"/>'
    parts, total, i = [head], len(head) + 6, 0
    while total < size - 64:
        part = shape % (i % 1024, i // 1024 % 1024)
        parts.append(part)
        total += len(part)
        i += 1
    return b"".join(parts) + b"</svg>"


def laughs() -> bytes:
    decls = b"".join(b'<!ENTITY %c "%s">' % (98 + i, b"&%c;" % (97 + i) * 10) for i in range(8))
    return (b'<?xml version="1.0"?><!DOCTYPE svg [<!ENTITY a "aaaaaaaaaa">' + decls
            + b']><svg xmlns="http://www.w3.org/2000/svg">&i;</svg>')


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    maker = ImageMaker(False, 1 << 28)

    def simulated(fmt: str) -> bytes:
        req = parse_request({"prompt": "a fox", "model": "gpt-image-2.6-flare", "output_format": fmt,
                             "size": "1024x1024"})
        return maker.get("a fox", 0, req).data

    cases = {"png 1024x1024 (simulator)": simulated("png"), "gif 1024x1024, 4 frames (simulator)": simulated("gif"),
             "svg (simulator)": simulated("svg"), "svg 1 MB of shapes": shapes_svg(1 << 20),
             "svg 10 MB of shapes": shapes_svg(MAX_SVG_BYTES), "svg billion laughs (refused)": laughs()}
    with tempfile.TemporaryDirectory() as tmp:
        store = ImageStore(tmp)
        for name, data in cases.items():
            times = []
            for r in range(args.rounds):
                start = time.perf_counter()
                try:
                    store.save(f"{r:016x}", 0, 1, data)
                except BadResponse:
                    pass
                times.append(time.perf_counter() - start)
            print(f"{name:40s} {len(data):>11,} bytes  {statistics.median(times) * 1000:8.2f} ms per save "
                  f"(median of {args.rounds})")


if __name__ == "__main__":
    main()
