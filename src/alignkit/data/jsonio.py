"""Strict JSON and JSON Lines reading for data files (training data and prompt files alike).

``json.loads`` accepts some input silently and fails on other input with a bare Python exception:

- duplicate keys in one object: it keeps the last value;
- a lone UTF-16 surrogate escape (``"\\ud800"``): it returns a string that no tokenizer can encode;
- arrays or objects nested ~1000 deep: ``RecursionError``;
- an integer longer than Python's int string-conversion limit (4300 digits): ``ValueError``.

:func:`loads` refuses all four with a :class:`JSONValueError` that names the value's path (``chosen``,
``prompt[0].content``) or, for nesting, its line. Good data pays almost nothing: duplicate keys are caught by an
``object_pairs_hook`` that builds each object once, and the other checks run only when the parser fails or the
text holds a surrogate escape. :func:`jsonl_rows` reads JSON Lines with :func:`loads` and turns every problem into a
:class:`~alignkit.data.records.DataError` naming ``file:line``.
"""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import re
import sys
from pathlib import Path
from typing import Any, Callable, Iterator, NoReturn

from alignkit.data.records import DataError

__all__ = ["BOM", "COMPRESSIONS", "JSONValueError", "OnError", "canonical_json", "data_suffix", "decode_utf8",
           "field_name", "jsonl_rows", "loads", "read_bytes"]

BOM = b"\xef\xbb\xbf"
JSONPath = tuple[str | int, ...]

_SURROGATE = re.compile("[\ud800-\udfff]")
_HIGH, _LOW = r"\\u[dD][89abAB][0-9a-fA-F]{2}", r"\\u[dD][c-fC-F][0-9a-fA-F]{2}"
# a high escape not followed by a low one, or a low one not preceded by a high one; every branch starts with "\u" so
# the search skips ahead fast. It may over-match (after an escaped backslash): the exact check follows.
_LONE_SURROGATE_ESCAPE = re.compile(rf"\\u[dD](?:[89abAB][0-9a-fA-F]{{2}}(?!{_LOW})"
                                    rf"|[c-fC-F][0-9a-fA-F]{{2}}(?<!{_HIGH}{_LOW}))")
_STRING_OR_BRACKET = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]')


class JSONValueError(ValueError):
    """A value valid JSON allows but data files must not hold; ``path`` leads to it, ``line`` (1-based, within the
    parsed text) says where it is when there is no path."""

    def __init__(self, message: str, path: JSONPath = (), line: int | None = None):
        super().__init__(message)
        self.message, self.path, self.line = message, path, line

    @property
    def field(self) -> str | None:
        return field_name(self.path)


def field_name(path: JSONPath) -> str | None:
    """``("prompt", 0, "content")`` -> ``"prompt[0].content"`` (the field names used in every error)."""
    name = ""
    for part in path:
        if isinstance(part, str):
            part = _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", part)  # printable, as in the file
        name += f"[{part}]" if isinstance(part, int) else (f".{part}" if name else part)
    return name or None


def canonical_json(value: Any) -> str:
    """One string per value, for equality and de-duplication; values JSON lacks (a Parquet timestamp) as ``str``."""
    return json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)


# ------------------------------------------------------------------------------------------------ parsing
class _DuplicateKey(Exception):
    """Raised by the object hook; :func:`loads` re-parses to find the key's path."""


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise _DuplicateKey
    return obj


class _MarkedObject(dict):
    """An object of the re-parse, remembering the first key it held twice."""

    repeated: str | None = None


def _marked_object(pairs: list[tuple[str, Any]]) -> _MarkedObject:
    obj = _MarkedObject(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        obj.repeated = next(key for key, _ in pairs if key in seen or seen.add(key))
    return obj


class _LongInt(str):
    """The digits of an integer past the int string-conversion limit (the re-parse keeps them as text)."""


def _int_or_long(digits: str) -> int | _LongInt:
    limit = sys.get_int_max_str_digits()
    return _LongInt(digits) if limit and len(digits.lstrip("-")) > limit else int(digits)


_DECODER = json.JSONDecoder(object_pairs_hook=_unique_object)
_MARKING_DECODER = json.JSONDecoder(object_pairs_hook=_marked_object, parse_int=_int_or_long)


def loads(text: str) -> Any:
    """``json.loads(text)``, refusing duplicate keys, lone surrogates, deep nesting and over-long integers with a
    :class:`JSONValueError`. Malformed JSON raises ``json.JSONDecodeError`` as usual."""
    try:
        value = _DECODER.decode(text)
    except RecursionError:
        raise _nesting_error(text) from None
    except json.JSONDecodeError:
        raise
    except (_DuplicateKey, ValueError) as exc:  # ValueError: an integer past the int string-conversion limit
        _raise_first_problem(text, exc)
    if _may_hold_lone_surrogate(text):
        problem = _first_problem(value)
        if problem is not None:
            raise problem
    return value


def _may_hold_lone_surrogate(text: str) -> bool:
    """Only a ``\\ud800``-``\\udfff`` escape that is not half of a pair makes a lone surrogate (UTF-8 cannot)."""
    return ("\\ud" in text or "\\uD" in text) and _LONE_SURROGATE_ESCAPE.search(text) is not None


def _raise_first_problem(text: str, original: Exception) -> NoReturn:
    """Parse again keeping duplicate keys and long integers as markers, and raise for the first one found."""
    start = len(text) - len(text.lstrip(" \t\n\r"))
    try:
        value, _ = _MARKING_DECODER.raw_decode(text, start)  # raw: a problem in the first of several values
    except RecursionError:
        raise _nesting_error(text) from None
    problem = _first_problem(value)
    if problem is None:
        raise original
    raise problem from None


def _first_problem(value: Any) -> JSONValueError | None:
    """The first duplicate key, long integer or lone surrogate in document order (iterative: any depth)."""
    stack: list[tuple[JSONPath, Any]] = [((), value)]
    while stack:
        path, node = stack.pop()
        if isinstance(node, dict):
            repeated = getattr(node, "repeated", None)
            if repeated is not None:
                return JSONValueError(f"duplicate key {repeated!r} in one JSON object (each key may appear once)",
                                      path + (repeated,))
            for key in node:
                if _SURROGATE.search(key):
                    return _surrogate_error(key, path + (key,))
            stack.extend((path + (k,), v) for k, v in reversed(node.items()))
        elif isinstance(node, list):
            stack.extend((path + (i,), node[i]) for i in reversed(range(len(node))))
        elif isinstance(node, _LongInt):
            return JSONValueError(f"integer with {len(node.lstrip('-'))} digits is too long (at most "
                                  f"{sys.get_int_max_str_digits()} digits)", path)
        elif isinstance(node, str) and _SURROGATE.search(node):
            return _surrogate_error(node, path)
    return None


def _surrogate_error(text: str, path: JSONPath) -> JSONValueError:
    code = ord(_SURROGATE.search(text).group())
    return JSONValueError(f"invalid unicode: lone surrogate \\u{code:04x} (an escape in \\ud800-\\udfff must be "
                          "half of a surrogate pair)", path)


def _nesting_error(text: str) -> JSONValueError:
    """Arrays/objects nested past what the parser can take: how deep, and the line where the deepest point is."""
    depth = deepest = deepest_at = 0
    for match in _STRING_OR_BRACKET.finditer(text):
        token = match.group()
        if token in ("[", "{"):
            depth += 1
            if depth > deepest:
                deepest, deepest_at = depth, match.start()
        elif token in ("]", "}"):
            depth -= 1
    return JSONValueError(f"JSON nested too deeply: arrays/objects {deepest} levels deep",
                          line=text.count("\n", 0, deepest_at) + 1)


# ------------------------------------------------------------------------------------------------ files
#: compressed-file suffix -> the stdlib module that opens it (``.jsonl.gz`` reads as ``.jsonl``)
COMPRESSIONS = {".gz": gzip, ".bz2": bz2, ".xz": lzma}


def data_suffix(path: Path) -> str:
    """The suffix that says how to parse ``path``, below any compression: ``a.jsonl.gz`` -> ``.jsonl``."""
    suffix = path.suffix.lower()
    return Path(path.stem).suffix.lower() if suffix in COMPRESSIONS else suffix


def read_bytes(path: Path) -> bytes:
    """The file's bytes, decompressed when its name ends in ``.gz``, ``.bz2`` or ``.xz`` (so line numbers in every
    error are those of the uncompressed text). An unreadable file (permissions, a directory, an I/O error) or a
    corrupt or truncated compressed one is a DataError naming it; a missing one stays ``FileNotFoundError``."""
    compression = COMPRESSIONS.get(path.suffix.lower())
    try:
        return compression.decompress(path.read_bytes()) if compression else path.read_bytes()
    except FileNotFoundError:
        raise
    except (EOFError, ValueError, lzma.LZMAError) as exc:  # cut short (EOFError; bz2: ValueError), garbled .xz
        raise DataError(f"cannot decompress the file ({path.suffix[1:]}): {str(exc).lower() or 'corrupt data'}",
                        source=str(path)) from None
    except OSError as exc:  # gzip and bz2 report garbled data as OSError (gzip.BadGzipFile)
        reason = (exc.strerror or str(exc)).lower()
        what = f"decompress the file ({path.suffix[1:]})" if compression and exc.errno is None else "read the file"
        raise DataError(f"cannot {what}: {reason}", source=str(path)) from None


def decode_utf8(raw: bytes, name: str, line: int, offset: int) -> str:
    """Decode one line as UTF-8; ``offset`` is the line's byte offset in the file."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"not valid UTF-8: byte 0x{raw[e.start]:02x} at byte offset {offset + e.start} "
                        f"(column {e.start + 1}); save the file as UTF-8", source=f"{name}:{line}") from None


OnError = Callable[[DataError], None]


def jsonl_rows(data: bytes, name: str, on_error: OnError | None = None) -> Iterator[tuple[str, Any]]:
    """``(file:line, value)`` for every non-blank line of JSON Lines ``data``; a UTF-8 BOM at the start is skipped.
    Lines are split at ``\\n`` only (U+2028 and U+2029 are ordinary characters inside a JSON string). A line that is
    not valid UTF-8 or JSON raises its DataError, or, with ``on_error``, is handed to it and skipped (lines are
    independent, so reading goes on: ``data.on_invalid: skip``)."""
    offset = 0
    for line, raw in enumerate(data.split(b"\n"), 1):
        start, offset = offset, offset + len(raw) + 1
        if line == 1 and raw.startswith(BOM):
            raw, start = raw[len(BOM):], start + len(BOM)
        try:
            parsed = _jsonl_line(raw, name, line, start)
        except DataError as error:
            if on_error is None:
                raise
            on_error(error)
            continue
        if parsed is not None:
            yield parsed


def _jsonl_line(raw: bytes, name: str, line: int, start: int) -> tuple[str, Any] | None:
    """``(file:line, value)`` of one line, None for a blank one."""
    text = decode_utf8(raw, name, line, start)
    if not text.strip():
        return None
    source = f"{name}:{line}"
    try:
        return source, loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"invalid JSON: {e.msg} (column {e.colno})", source=source) from None
    except JSONValueError as e:
        raise DataError(e.message, source=source, field=e.field) from None
