"""Whole numbers in paths and query strings are ASCII digits only.

Python's int() and the `\\d` of regular expressions accept every Unicode decimal digit, so `\u0661\u0662`
(Arabic-Indic) reads as 12 and `/outbox/\u0661/replay` would act on entry 1. The route converter and the
query-string field here accept [0-9] alone; create_app installs the converter as `int`, so every
`<int:...>` route, the console's included, uses it.
"""

from __future__ import annotations

import re
from typing import Any

from marshmallow import fields
from werkzeug.routing import IntegerConverter, ValidationError

ASCII_INTEGER = re.compile(r"-?[0-9]{1,20}")  # no whole number planbridge reads has more than 19 digits


def is_ascii_integer(text: str) -> bool:
    """Tell whether text is an optional minus sign and 1 to 20 ASCII digits, nothing else."""
    return ASCII_INTEGER.fullmatch(text) is not None


class AsciiIntConverter(IntegerConverter):
    """The `int` route converter, matching ASCII digits only (werkzeug's matches any Unicode digit)."""

    regex = r"[0-9]+"
    signed_regex = r"-?[0-9]+"

    def to_python(self, value: str) -> Any:
        """Read the matched digits (the regex already refused anything else)."""
        if not value.isascii():
            raise ValidationError()
        return super().to_python(value)


class AsciiInteger(fields.Integer):
    """A marshmallow Integer that reads strings of ASCII digits only (query-string values are strings)."""

    def _validated(self, value: Any) -> int:
        if isinstance(value, str) and not is_ascii_integer(value):
            raise self.make_error("invalid")
        return super()._validated(value)
