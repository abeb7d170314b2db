"""A small Batch API server that misbehaves as a test asks: it forgets batches, answers statuses
batchgen does not know, stays stuck past expires_at, loses output files, invents custom_ids,
refuses large uploads, fails uploads and creates, lists thousands of newer batches. Real HTTP on
loopback, in a thread of its own. It also serves the live generations endpoint, and counts every
request it runs by prompt (live or in a batch), so a test can say nothing ran twice."""
import asyncio
import base64
import json
import threading
import time
import uuid
from collections import Counter

from aiohttp import web
from hostile import png

TOKEN = "good-token"


def ok_body(prompt: str) -> dict:
    return {"created": 1_700_000_000, "data": [{"b64_json": base64.b64encode(png()).decode()}],
            "usage": {"input_tokens": 10, "output_tokens": 100, "total_tokens": 110}}


def output_line(custom_id, status=200, body=None) -> bytes:
    body = body if body is not None else ok_body("")
    return (json.dumps({"id": f"batch_req_{uuid.uuid4().hex}", "custom_id": custom_id,
                        "response": {"status_code": status, "request_id": "req_1", "body": body},
                        "error": None}) + "\n").encode()


class BatchServer:
    """Batches complete at their first read unless `hold` is set. Knobs (set by the test):
    `hold` (batches stay in_progress), `status` (batch id -> the status to answer), `forget`
    (batch ids answering 404), `lose_output` (batch ids whose output file answers 404),
    `lines` (a function (batch, [(custom_id, prompt)]) -> output lines, for invented ids),
    `fail` (route -> statuses to answer before working: "upload", "create", "create_after"
    makes the batch then fails), `max_upload` (bytes; larger: 413), `expires_in` (seconds),
    `on_content` and `on_poll` (called once, in a thread, before an output file is served or a
    batch is read), `upload_latency`."""

    def __init__(self):
        self.files: dict = {}
        self.batches: dict = {}      # id -> dict, in creation order
        self.executions: Counter = Counter()     # prompt -> times run (live or batch)
        self.hold = False
        self.status: dict = {}
        self.forget: set = set()
        self.lose_output: set = set()
        self.lines = None
        self.fail: dict = {}
        self.max_upload = None
        self.expires_in = 24 * 3600
        self.cancels: list = []
        self.uploads = 0
        self.upload_latency = 0.0    # seconds the server takes to answer an upload
        self.on_poll = None          # called (in a thread) as a batch is read, once
        self.on_content = None       # called (in a thread: it may wait) before an output file is served, once
        self._ready = threading.Event()

    # ---- the routes ----

    def _authorised(self, request) -> bool:
        return request.headers.get("Authorization") == f"Bearer {TOKEN}"

    def _refuse(self):
        return error(401, "invalid_api_key", "Incorrect API key provided.")

    def _fails(self, route):
        queue = self.fail.get(route)
        return queue.pop(0) if queue else None

    async def upload(self, request):
        if not self._authorised(request):
            return self._refuse()
        data = b""
        reader = await request.multipart()
        async for part in reader:
            if part.name == "file":
                data = await part.read()
        await asyncio.sleep(self.upload_latency)     # the simulated server taking its time (a latency, not a wait)
        if self.max_upload is not None and len(data) > self.max_upload:
            return error(413, "file_too_large", "The file is too large.")
        failed = self._fails("upload")
        if failed:
            return error(failed, "server_error", "The server had an error.")
        self.uploads += 1
        file_id = f"file-{uuid.uuid4().hex}"
        self.files[file_id] = data
        return json_answer({"id": file_id, "object": "file", "purpose": "batch", "bytes": len(data)})

    async def create(self, request):
        if not self._authorised(request):
            return self._refuse()
        failed = self._fails("create")
        if failed:
            return error(failed, "server_error", "The server had an error.")
        doc = await request.json()
        batch = self.add_batch(doc["input_file_id"], doc.get("metadata") or {})
        failed = self._fails("create_after")
        if failed:
            return error(failed, "server_error", "The server had an error.")
        return json_answer(self.as_object(batch))

    def add_batch(self, input_file_id, metadata, created_at=None) -> dict:
        batch = {"id": f"batch_{uuid.uuid4().hex}", "input_file_id": input_file_id, "metadata": metadata,
                 "created_at": int(created_at or time.time()), "status": "in_progress",
                 "output_file_id": None, "error_file_id": None}
        batch["expires_at"] = batch["created_at"] + self.expires_in
        self.batches[batch["id"]] = batch
        return batch

    def _advance(self, batch):
        if batch["id"] in self.status:
            batch["status"] = self.status[batch["id"]]
            return
        if batch["status"] != "in_progress" or self.hold or batch["input_file_id"] not in self.files:
            return
        requests = [json.loads(line) for line in self.files[batch["input_file_id"]].splitlines() if line.strip()]
        asked = [(r["custom_id"], r["body"]["prompt"]) for r in requests]
        for _, prompt in asked:
            self.executions[prompt] += 1
        lines = self.lines(batch, asked) if self.lines else [output_line(cid) for cid, _ in asked]
        output = f"file-{uuid.uuid4().hex}"
        self.files[output] = b"".join(lines)
        batch.update(status="completed", output_file_id=output)

    def as_object(self, batch) -> dict:
        return {"id": batch["id"], "object": "batch", "endpoint": "/v1/images/generations",
                "status": batch["status"], "input_file_id": batch["input_file_id"],
                "output_file_id": batch["output_file_id"], "error_file_id": batch["error_file_id"],
                "created_at": batch["created_at"], "expires_at": batch["expires_at"],
                "request_counts": {"total": 0, "completed": 0, "failed": 0}, "metadata": batch["metadata"]}

    async def retrieve(self, request):
        if not self._authorised(request):
            return self._refuse()
        batch = self.batches.get(request.match_info["batch_id"])
        if batch is None or batch["id"] in self.forget:
            return error(404, "not_found", "No batch found.")
        if self.on_poll is not None:
            call, self.on_poll = self.on_poll, None
            await asyncio.get_running_loop().run_in_executor(None, call)
        self._advance(batch)
        return json_answer(self.as_object(batch))

    async def cancel(self, request):
        if not self._authorised(request):
            return self._refuse()
        batch = self.batches.get(request.match_info["batch_id"])
        if batch is None:
            return error(404, "not_found", "No batch found.")
        self.cancels.append(batch["id"])
        if batch["status"] == "completed":
            return error(409, "invalid_request", "Cannot cancel a completed batch.")
        batch["status"] = "cancelled"
        self.status.pop(batch["id"], None)
        return json_answer(self.as_object(batch))

    async def list_batches(self, request):
        if not self._authorised(request):
            return self._refuse()
        limit = int(request.query.get("limit", "20"))
        newest_first = sorted(self.batches.values(), key=lambda b: -b["created_at"])
        ids = [b["id"] for b in newest_first]
        start = ids.index(request.query["after"]) + 1 if "after" in request.query else 0
        page = newest_first[start:start + limit]
        return json_answer({"object": "list", "data": [self.as_object(b) for b in page],
                            "has_more": start + limit < len(newest_first)})

    async def content(self, request):
        if not self._authorised(request):
            return self._refuse()
        file_id = request.match_info["file_id"]
        owner = next((b for b in self.batches.values() if b["output_file_id"] == file_id), None)
        if file_id not in self.files or (owner is not None and owner["id"] in self.lose_output):
            return error(404, "not_found", "No such file.")
        if self.on_content is not None:
            call, self.on_content = self.on_content, None
            await asyncio.get_running_loop().run_in_executor(None, call)     # it may block
        return web.Response(body=self.files[file_id], content_type="application/octet-stream")

    async def generate(self, request):
        if not self._authorised(request):
            return self._refuse()
        body = await request.json()
        self.executions[body["prompt"]] += 1
        return json_answer(ok_body(body["prompt"]))

    # ---- serving ----

    def __enter__(self):
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("the batch server did not start")
        return self

    def _run(self):
        self.loop = asyncio.new_event_loop()
        app = web.Application(client_max_size=256 * 1024 * 1024)
        app.router.add_post("/v1/files", self.upload)
        app.router.add_get("/v1/files/{file_id}/content", self.content)
        app.router.add_post("/v1/batches", self.create)
        app.router.add_get("/v1/batches", self.list_batches)
        app.router.add_get("/v1/batches/{batch_id}", self.retrieve)
        app.router.add_post("/v1/batches/{batch_id}/cancel", self.cancel)
        app.router.add_post("/v1/images/generations", self.generate)
        self.runner = web.AppRunner(app)
        self.loop.run_until_complete(self.runner.setup())
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        self.loop.run_until_complete(site.start())
        self.base_url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/v1"
        self._ready.set()
        self.loop.run_forever()

    def __exit__(self, *exc):
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(30)


def json_answer(payload, status=200) -> web.Response:
    return web.Response(status=status, body=json.dumps(payload).encode(), content_type="application/json")


def error(status, code, message) -> web.Response:
    return json_answer({"error": {"message": message, "type": "invalid_request_error", "param": None,
                                  "code": code}}, status)
