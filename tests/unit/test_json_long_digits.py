"""json_loads finds 19 digits in a row (left to the json module) without a regex: the same answer as the regex."""

from __future__ import annotations

import json
import random
import re

import pytest

from service.store.db import has_long_digits, json_loads

REGEX = re.compile(r"[0-9]{19}")
PIECES = ["0", "7", "9", "12345", "1" * 18, "1" * 19, "١٢٣", "é", "€", "😀", "\ud800", " ", "a", "/", ":", '"', "\x00"]


def texts() -> list[str]:
    rng = random.Random(15)
    out = ["", "1" * 18, "1" * 19, "x" + "2" * 19 + "x", "1" * 9 + "é" + "1" * 10, "1" * 18 + "\ud800" + "1"]
    out += ["".join(rng.choice(PIECES) for _ in range(rng.randrange(1, 30))) for _ in range(3000)]
    return out


@pytest.mark.parametrize("kind", ["str", "bytes"])
def test_has_long_digits_answers_as_the_regex(kind: str) -> None:
    for text in texts():
        if kind == "str":
            assert has_long_digits(text) is (REGEX.search(text) is not None), repr(text)
        else:
            raw = text.encode("utf-8", "surrogatepass")
            assert has_long_digits(raw) is (re.search(rb"[0-9]{19}", raw) is not None), repr(raw)


def test_json_loads_keeps_integers_past_64_bits_exact() -> None:
    big = '{"n": 123456789012345678901234567890, "s": "12345678901234567890"}'
    assert json_loads(big) == json.loads(big)
    assert json_loads(big.encode())["n"] == 123456789012345678901234567890
    assert json_loads('{"n": 123456789012345678}') == {"n": 123456789012345678}
