"""The floor: the least a Python client can do to turn a CSV of prompts into image files.

One aiohttp ClientSession (TCPConnector limit = concurrency), an asyncio.Semaphore(concurrency),
for each prompt: POST it, parse the JSON, base64-decode ``data[0].b64_json``, write the bytes to
``OUT/<i>.png``.  No retries, no journal, no results table.  ``bench/overhead.py`` compares
``batchgen run`` with it (target: runner throughput >= 0.8 x floor).

With ``--fast`` it parses and decodes with the libraries batchgen uses (orjson, pybase64)
instead of the standard library's json and base64: the same work done as fast as batchgen
does it, so that ``batchgen run`` against it shows batchgen's own overhead alone.

Run it on its own against a running simulator (``python -m batchgen simulate --port 0``):

    .venv/bin/python bench/floor.py DATA.csv --out DIR \
        --url http://127.0.0.1:P/openai/images/generations --concurrency 32 [--fast]

It prints ``floor: N ok, F failed in S s (R img/s)`` and exits 1 if any request failed.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import csv
import json
import os
import sys
import time


def read_prompts(path: str | os.PathLike, column: str = "prompt") -> list:
    with open(path, newline="", encoding="utf-8") as f:
        return [row[column] for row in csv.DictReader(f)]


async def generate_all(prompts: list, out: str | os.PathLike, url: str, token: str = "sim-token",
                       concurrency: int = 32, model: str = "dall-e-3",
                       size: str = "1024x1024", fast: bool = False) -> tuple:
    """Send every prompt; returns (ok, failed)."""
    import aiohttp
    loads, b64decode = json.loads, base64.b64decode
    if fast:
        import orjson
        import pybase64
        loads = orjson.loads

        def b64decode(text):
            return pybase64.b64decode(text, validate=True)    # its fast path, as batchgen calls it

    out = os.fspath(out)
    os.makedirs(out, exist_ok=True)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    sem = asyncio.Semaphore(concurrency)
    ok = failed = 0

    async def one(session, i: int, prompt: str) -> None:
        nonlocal ok, failed
        body = json.dumps({"model": model, "prompt": prompt, "n": 1, "size": size,
                           "response_format": "b64_json"})
        async with sem:
            try:
                async with session.post(url, data=body, headers=headers) as resp:
                    raw = await resp.read()
                    if resp.status != 200:
                        failed += 1
                        return
                doc = loads(raw)
                data = b64decode(doc["data"][0]["b64_json"])
                with open(os.path.join(out, f"{i}.png"), "wb") as f:
                    f.write(data)
                ok += 1
            except Exception:
                failed += 1

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(one(session, i, p) for i, p in enumerate(prompts)))
    return ok, failed


def run_floor(csv_path: str | os.PathLike, out: str | os.PathLike, url: str,
              token: str = "sim-token", concurrency: int = 32, model: str = "dall-e-3",
              size: str = "1024x1024", fast: bool = False) -> tuple:
    """Synchronous entry point: (ok, failed, wall seconds)."""
    t0 = time.perf_counter()
    prompts = read_prompts(csv_path)
    ok, failed = asyncio.run(generate_all(prompts, out, url, token, concurrency, model, size, fast))
    return ok, failed, time.perf_counter() - t0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="The floor: a minimal aiohttp image client.")
    p.add_argument("csv", help="CSV with a `prompt` column")
    p.add_argument("--out", required=True, help="folder for <i>.png")
    p.add_argument("--url", required=True, help="the AceData endpoint …/openai/images/generations")
    p.add_argument("--token", default=os.environ.get("ACEDATA_API_TOKEN", "sim-token"))
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--model", default="dall-e-3")
    p.add_argument("--size", default="1024x1024")
    p.add_argument("--fast", action="store_true", help="parse with orjson and decode with pybase64, as batchgen does")
    a = p.parse_args(argv)
    ok, failed, wall = run_floor(a.csv, a.out, a.url, a.token, a.concurrency, a.model, a.size, a.fast)
    print(f"floor: {ok} ok, {failed} failed in {wall:.2f} s ({ok / wall:.0f} img/s)", flush=True)
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
