"""php_json_encode against vectors made by real PHP (tests/vectors/make_vectors.php)."""

from __future__ import annotations

import json
import random
import subprocess
from pathlib import Path

import pytest
from helpers import need_binary
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.phpjson import php_json_encode
from exporter.scaleengine import build_request, encode_body, sign

VECTORS = json.loads((Path(__file__).parent / "vectors" / "php_vectors.json").read_text())


@pytest.mark.parametrize("case", VECTORS["encode"], ids=lambda c: c["name"])
def test_encode_vectors(case):
    value = json.loads(case["input"])
    assert php_json_encode(value) == case["php"]


@pytest.mark.parametrize("case", VECTORS["requests"], ids=lambda c: c["name"])
def test_request_vectors(case):
    request = json.loads(case["input"])
    assert php_json_encode(request) == case["php"]
    assert sign(request, case["secret"]) == case["signature"]
    assert encode_body(request, case["secret"]) == case["body"]
    # build_request puts the keys in the same (documented) order as the PHP vectors
    built = build_request(
        request["api_key"],
        request["cdn"],
        request["app"],
        request.get("url"),
        request["year"],
        request["month"],
        request.get("day"),
        request.get("limit", 1000),
        request.get("offset", 0),
        request["timestamp"],
    )
    if "limit" in request:
        assert php_json_encode(built) == case["php"]
        assert encode_body(built, case["secret"]) == case["body"]


def test_vector_file_covers_what_it_must():
    names = {c["name"] for c in VECTORS["encode"]}
    assert {"ascii", "slash", "e_acute", "cjk", "emoji", "quotes", "backslash", "controls"} <= names
    assert {"ints", "nested_lists"} <= names
    assert {"day", "month", "urls"} <= {c["name"] for c in VECTORS["requests"]}


def test_basics():
    assert php_json_encode({"app": "a/b", "x": "é"}) == '{"app":"a\\/b","x":"\\u00e9"}'
    assert php_json_encode("😀") == '"\\ud83d\\ude00"'
    assert php_json_encode("\x1f\x7f") == '"\\u001f\x7f"'
    assert php_json_encode("\\u007f") == '"\\\\u007f"'  # a literal backslash-u007f stays
    assert php_json_encode("\\\x7f") == '"\\\\\x7f"'
    assert php_json_encode({}) == "[]"
    assert php_json_encode({"0": "a", "1": "b"}) == '["a","b"]'
    assert php_json_encode({"1": "a"}) == '{"1":"a"}'
    assert php_json_encode((1, 2)) == "[1,2]"
    assert php_json_encode(b"caf\xc3\xa9") == '"caf\\u00e9"'


@pytest.mark.parametrize(
    "bad",
    ["\ud800", "a\udfffb", "\ud83d\ude00", {"k": ["x", "\udc80"]}, {"\ud800": 1}, b"\xff"],
)
def test_invalid_utf8_raises(bad):
    with pytest.raises(ValueError):
        php_json_encode(bad)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), 2**63, -(2**63) - 1])
def test_unencodable_numbers_raise(bad):
    with pytest.raises(ValueError):
        php_json_encode([bad])


def test_unsupported_type():
    with pytest.raises(TypeError):
        php_json_encode(object())


def _not_php_list(d: dict) -> bool:
    return list(d) != [str(i) for i in range(len(d))]


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**63 - 1) | st.text(),
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.text(max_size=8), children, min_size=1, max_size=5).filter(_not_php_list),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(_json_values)
def test_roundtrip_property(value):
    out = php_json_encode(value)
    assert json.loads(out) == value
    assert out.isascii()
    assert "/" not in out.replace("\\/", "")


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_string_property(s):
    out = php_json_encode(s)
    assert out.isascii()
    assert json.loads(out) == s
    # every "/" is escaped: no "/" that is not preceded by an escaping backslash
    i = out.find("/")
    while i != -1:
        assert out[i - 1] == "\\"
        i = out.find("/", i + 1)


def test_random_strings_against_real_php():
    need_binary("php", "php-cli")  # scripts/test.sh installs it
    rng = random.Random(1234)
    pools = [
        [chr(c) for c in range(0, 128)],
        [chr(c) for c in range(0x80, 0x800)],
        [chr(c) for c in range(0x800, 0xD800)] + [chr(c) for c in range(0xE000, 0x10000)],
        [chr(c) for c in range(0x10000, 0x110000, 97)],
        list('/\\"\x7f\x00\n\t'),
    ]
    strings = [
        "".join(rng.choice(rng.choice(pools)) for _ in range(rng.randint(0, 20)))
        for _ in range(300)
    ]
    script = (
        "$a = json_decode(stream_get_contents(STDIN), true);"
        'foreach ($a as $s) { echo json_encode($s), "\\n"; }'
    )
    proc = subprocess.run(
        ["php", "-r", script],
        input=json.dumps(strings).encode(),
        capture_output=True,
        check=True,
        timeout=30,
    )
    lines = proc.stdout.decode("ascii").split("\n")[:-1]
    # DEL is written raw by PHP; split on "\n" is safe since newlines are escaped
    assert len(lines) == len(strings)
    for s, php in zip(strings, lines, strict=True):
        assert php_json_encode(s) == php, s
