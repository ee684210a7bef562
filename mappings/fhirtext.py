"""What characters FHIR R4 text may hold: one rule for the event schemas and the structure validator.

https://hl7.org/fhir/R4/datatypes.html#primitive: a `string` holds no character below U+0020 other
than tab, CR and LF, and has non-whitespace content; a `code` has no leading, trailing or double
whitespace and only single spaces inside; a `uri` holds no whitespace; an `id` is 1-64 of
`[A-Za-z0-9-.]`. Whitespace is what Python's `\\s` and JavaScript's `\\s` (which a strict server
such as Medplum's, under fhir-server/, uses) call whitespace: Python's plus U+FEFF. A lone UTF-16
surrogate (from a `\\ud800` escape in JSON) is refused everywhere: FHIR JSON is UTF-8, which cannot
carry it. Patterns are anchored with `fullmatch`, never with `$`, which also matches before a final
newline.
"""

from __future__ import annotations

import re

WHITESPACE = r"\s\ufeff"
FORBIDDEN = r"\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff"  # C0 controls but tab, LF, CR; lone surrogates
CODE = rf"[^{WHITESPACE}{FORBIDDEN}]+( [^{WHITESPACE}{FORBIDDEN}]+)*"
URI = rf"[^{WHITESPACE}{FORBIDDEN}]+"
ID = r"[A-Za-z0-9\-.]{1,64}"

_FORBIDDEN = re.compile(f"[{FORBIDDEN}]")
_CONTENT = re.compile(f"[^{WHITESPACE}]")


def string_problem(value: str) -> str | None:
    """Return why `value` is not the content of a FHIR string (empty included), or None when it is."""
    bad = _FORBIDDEN.search(value)
    if bad is not None:
        char = ord(bad.group())
        if 0xD800 <= char <= 0xDFFF:
            return f"holds an unpaired surrogate U+{char:04X} at {bad.start()}, which UTF-8 cannot carry"
        return f"holds the control character U+{char:04X} at {bad.start()}: only tab, CR and LF are allowed"
    if _CONTENT.search(value) is None:
        return "a string of only whitespace is not a valid string" if value else "an empty string is not valid"
    return None
