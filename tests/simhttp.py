"""Plain HTTP to the simulator, for tests that check what it answers byte for byte (the
official SDK would hide a wrong status or header)."""
import base64
import contextlib
import io
import json
import signal
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from PIL import Image

TOKEN = "sim-token"


class Answer:
    def __init__(self, status: int, headers, body: bytes):
        self.status, self.headers, self.body = status, headers, body

    def json(self):
        return json.loads(self.body)


def call(url: str, body=None, *, token=TOKEN, method=None, raw: bytes = None,
         content_type: str = "application/json", timeout: float = 30) -> Answer:
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    headers = {"Content-Type": content_type} if data is not None else {}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return Answer(resp.status, resp.headers, resp.read())
    except urllib.error.HTTPError as err:
        return Answer(err.code, err.headers, err.read())


def decode(b64: str) -> Image.Image:
    im = Image.open(io.BytesIO(base64.b64decode(b64, validate=True)))
    im.load()
    return im


def assert_openai_error(ans: Answer, status: int, *, code=None, param=None, type="invalid_request_error"):
    assert ans.status == status, ans.body
    assert ans.headers["x-request-id"]
    err = ans.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["message"] and err["type"] == type
    assert err["code"] == code and err["param"] == param


def multipart(fields: dict, files) -> tuple[bytes, str]:
    """A multipart/form-data body and its Content-Type; ``files`` maps a field to (filename,
    bytes), or is a list of (field, filename, bytes) when a field repeats (``image[]``)."""
    boundary = uuid.uuid4().hex
    out = io.BytesIO()
    for name, value in fields.items():
        out.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    items = [(k, *v) for k, v in files.items()] if isinstance(files, dict) else files
    for name, filename, data in items:
        out.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"'
                  f'\r\nContent-Type: application/octet-stream\r\n\r\n'.encode() + data + b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue(), f"multipart/form-data; boundary={boundary}"


def png(size=(64, 64), color=(200, 30, 30), alpha: int = None) -> bytes:
    """A small PNG made with Pillow (RGBA when ``alpha`` is given)."""
    mode, fill = ("RGB", color) if alpha is None else ("RGBA", (*color, alpha))
    out = io.BytesIO()
    Image.new(mode, size, fill).save(out, "PNG")
    return out.getvalue()


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


@dataclass
class SimulateProcess:
    """`batchgen simulate` running as a process: the two URLs it printed; once the block ends
    (with a SIGINT), what it wrote and its exit status."""
    proc: subprocess.Popen
    acedata_url: str = ""
    base_url: str = ""
    out: str = ""
    err: str = ""
    returncode: Optional[int] = None


@contextlib.contextmanager
def simulate_process(*args: str):
    """Run `batchgen simulate ARGS` for the block, then stop it with Ctrl-C (SIGINT)."""
    code = "from batchgen.cli.simulate import simulate; simulate(prog_name='batchgen simulate')"
    proc = subprocess.Popen([sys.executable, "-c", code, *args], cwd=Path(__file__).resolve().parents[1],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    served = SimulateProcess(proc)
    try:
        served.acedata_url = proc.stdout.readline().strip()
        served.base_url = proc.stdout.readline().strip()
        yield served
        proc.send_signal(signal.SIGINT)
        served.out, served.err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    served.returncode = proc.returncode
