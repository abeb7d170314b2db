"""The fast JSON path reads and writes what the standard library did."""
import json

import pytest

from batchgen.sending.client import parse_generation
from batchgen.util import fastjson


@pytest.mark.parametrize("text", [
    b'{"created": NaN}', b'{"t": "\\ud800 alone"}',
    b'[' * 2000 + b']' * 2000,
])
def test_what_orjson_refuses_is_read_as_the_standard_library_reads_it(text):
    try:
        expected = json.loads(text)
    except RecursionError:
        with pytest.raises(RecursionError):
            fastjson.loads(text)
        return
    got = fastjson.loads(text)
    assert json.dumps(got) == json.dumps(expected)


def test_bad_json_and_bad_utf8_raise_value_errors():
    for text in (b"{", b"\xff\xfe{}", b"<html>"):
        with pytest.raises(ValueError):
            fastjson.loads(text)


def test_a_journal_line_is_one_compact_line_that_reads_back():
    record = {"task_id": "00000000000000ab", "status": "ok", "prompt": "café \n \"quoted\"", "cost": 0.016}
    line = fastjson.dumps_line(record)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert line.startswith(b'{"task_id":"00000000000000ab","status":"ok",')
    assert json.loads(line) == record


def test_what_orjson_cannot_write_is_written_by_the_standard_library():
    line = fastjson.dumps_line({"big": 2 ** 70, "lone": "\ud800"})
    assert line.count(b"\n") == 1
    assert json.loads(line) == {"big": 2 ** 70, "lone": "\ud800"}


def test_an_answer_with_a_huge_number_is_judged_as_before_not_as_garbage():
    raw = b'{"created": 123456789012345678901234567890, "data": [{"b64_json": "iVBORw0KGgo="}]}'
    generation = parse_generation(200, {}, raw)
    assert generation.created is None and generation.images[0].data.startswith(b"\x89PNG")
