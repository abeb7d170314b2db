"""A small server that misbehaves on purpose, for what the simulator does not do: odd values in
well-formed answers, echoed tokens, compressed bombs, wrong status codes. Real HTTP on loopback,
in a thread of its own; each test says how it answers."""
import asyncio
import base64
import io
import json
import threading

from aiohttp import web
from PIL import Image


def png(size=(8, 8), colour=(200, 40, 40)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "PNG")
    return buf.getvalue()


def b64_png() -> str:
    return base64.b64encode(png()).decode()


def generation(**fields) -> dict:
    """A well-formed answer with one image; `fields` override or add top-level keys, and
    `image` (a dict) the image's."""
    image = {"b64_json": b64_png(), **fields.pop("image", {})}
    return {"created": 1_700_000_000, "data": [image], **fields}


class Hostile:
    """`answer(request, body, count)` -> web.Response for POST …/images/generations (count
    starts at 1); GET routes in `files` serve bytes."""

    def __init__(self, answer, files=None):
        self.answer = answer
        self.files = files or {}
        self.requests = 0
        self.bodies = []
        self._ready = threading.Event()

    async def _generate(self, request):
        self.requests += 1
        body = await request.read()
        self.bodies.append(body)
        return await self._call(request, body)

    async def _call(self, request, body):
        result = self.answer(request, body, self.requests)
        if asyncio.iscoroutine(result):
            result = await result
        return result

    async def _file(self, request):
        data = self.files.get(request.path)
        return web.Response(body=data, content_type="image/png") if data is not None else web.Response(status=404)

    def __enter__(self):
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("the hostile server did not start")
        return self

    def _run(self):
        self.loop = asyncio.new_event_loop()
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/images/generations", self._generate)
        app.router.add_get("/{tail:.*}", self._file)
        self.runner = web.AppRunner(app)
        self.loop.run_until_complete(self.runner.setup())
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        self.loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self._ready.set()
        self.loop.run_forever()

    def __exit__(self, *exc):
        async def stop():
            await self.runner.cleanup()
        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(30)


def json_response(payload, status=200, headers=None) -> web.Response:
    return web.Response(status=status, body=json.dumps(payload).encode(), content_type="application/json",
                        headers=headers)
