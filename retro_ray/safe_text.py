"""Text that every sink can store: no lone surrogates.

JSON may carry ``"\\ud800"`` (a UTF-16 surrogate without its pair); Python decodes it into a
``str`` that cannot be encoded as UTF-8, so Parquet, Arrow and most files refuse it and the write
fails. Models and providers do emit such text now and then (a token split inside an emoji). A
lone surrogate is replaced with U+FFFD; a proper pair that arrived as two code points is joined
into its character.
"""

from __future__ import annotations

from typing import Any

REPLACEMENT = "\ufffd"


def sanitize_text(text: str) -> str:
    """``text`` as valid Unicode: unchanged (and not copied) when it already is."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        pass
    # surrogatepass keeps the surrogates as UTF-16 code units: pairs decode to their character,
    # lone ones to U+FFFD.
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


def sanitize_value(value: Any) -> Any:
    """``sanitize_text`` applied to a string or to the strings of a list; anything else as is."""
    if isinstance(value, str):
        return sanitize_text(value)
    if isinstance(value, list) and any(isinstance(v, str) for v in value):
        return [sanitize_text(v) if isinstance(v, str) else v for v in value]
    return value
