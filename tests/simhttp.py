"""Plain HTTP to the simulator, for tests that check what it answers byte for byte (the
official SDK would hide a wrong status or header)."""
import base64
import io
import json
import urllib.error
import urllib.request

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
