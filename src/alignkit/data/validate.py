"""One validator for prompts and chat messages, shared by training data (``formats.py``) and prompt files
(``prompts.py``), so both accept and refuse the same things with the same messages.

- Text is a string. Text holding only whitespace and invisible characters (zero-width spaces and joiners, U+FEFF,
  U+2060, bidi marks, ...) is blank, and a blank prompt or response is empty.
- Messages are a non-empty list of objects with a ``role`` (system, user, assistant, tool) and a ``content``: a
  string, or a list of text parts ``[{"type": "text", "text": ...}]`` (the TRL / HF multimodal layout), joined into
  one string here because text-only chat templates would render the list itself. alignkit trains text-only models:
  any other part (``image``, ``audio``, ...) is an error. Other keys (``tool_calls``, ``name``) are kept, null ones
  dropped. Two assistant messages in a row are an error.
- A prompt is text or messages and not blank; a conversational prompt ends with a non-assistant message, the turn
  being answered.

Every error is a :class:`~alignkit.data.records.DataError` naming the source (``file:line``) and the field
(``prompt[1].role``).
"""

from __future__ import annotations

from typing import Any

from alignkit.data.records import DataError, Message, Text

__all__ = ["RESPONSE_ROLES", "ROLES", "check_prompt", "is_blank", "parse_messages", "parse_prompt", "parse_text",
           "type_name", "has_visible_text"]

ROLES = ("system", "user", "assistant", "tool")
RESPONSE_ROLES = ("assistant", "tool")

_ZERO_WIDTH = ("\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b\u180c\u180d\u180e\u200b\u200c\u200d\u200e\u200f"
               "\u202a\u202b\u202c\u202d\u202e\u2060\u2061\u2062\u2063\u2064\u2066\u2067\u2068\u2069\u206a\u206b"
               "\u206c\u206d\u206e\u206f\u2800\u3164\ufe00\ufe01\ufe02\ufe03\ufe04\ufe05\ufe06\ufe07\ufe08\ufe09"
               "\ufe0a\ufe0b\ufe0c\ufe0d\ufe0e\ufe0f\ufeff\uffa0")
_INVISIBLE = "".join(chr(c) for c in range(0x3001) if chr(c).isspace()) + _ZERO_WIDTH  # all whitespace is < U+3001


def type_name(value: Any) -> str:
    """The JSON name of a value's type, for messages (``null``, ``object``, ...)."""
    names = {type(None): "null", bool: "bool", int: "int", float: "float", str: "string", list: "list",
             dict: "object"}
    return names.get(type(value), type(value).__name__)


def is_blank(text: str) -> bool:
    """True for text with nothing visible: only whitespace and invisible (zero-width, format) characters."""
    stripped = text.strip()
    return not stripped or not stripped.strip(_INVISIBLE)


def has_visible_text(value: Text) -> bool:
    """Whether a prompt or response shows anything: non-blank text, or a message with text or a tool call."""
    if isinstance(value, str):
        return not is_blank(value)
    return any(m.get("tool_calls") or not is_blank(m["content"]) for m in value)


def _text_parts(parts: list[Any], field: str, source: str) -> str:
    """The text of content parts ``[{"type": "text", "text": ...}, ...]``; any other part is an error."""
    texts = []
    for i, part in enumerate(parts):
        where = f"{field}[{i}]"
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise DataError(f"expected a content part {{\"type\": \"text\", \"text\": ...}}, got {type_name(part)}",
                            source=source, field=where)
        if part["type"] != "text":
            raise DataError(f"content part of type {part['type']!r}: alignkit trains text-only models, so message "
                            "content must be a string or 'text' parts", source=source, field=where)
        if not isinstance(part.get("text"), str):
            raise DataError(f"expected a string, got {type_name(part.get('text'))}", source=source,
                            field=f"{where}.text")
        texts.append(part["text"])
    return "".join(texts)


def _message(value: Any, field: str, source: str) -> Message:
    if not isinstance(value, dict):
        raise DataError(f"expected a message object with 'role' and 'content', got {type_name(value)}",
                        source=source, field=field)
    for key in ("role", "content"):
        if value.get(key) is None:
            raise DataError(f"message has no '{key}'", source=source, field=f"{field}.{key}")
    role, content = value["role"], value["content"]
    if not isinstance(role, str) or role not in ROLES:
        raise DataError(f"unknown role {role!r}; expected one of {', '.join(ROLES)}", source=source,
                        field=f"{field}.role")
    if not isinstance(content, str):
        if not isinstance(content, list):
            raise DataError(f"expected a string or a list of content parts, got {type_name(content)}",
                            source=source, field=f"{field}.content")
        content = _text_parts(content, f"{field}.content", source)
    if len(value) == 2:  # the usual message: nothing else to keep
        return {"role": role, "content": content}
    extra = {k: v for k, v in value.items() if k not in ("role", "content") and v is not None}
    return {"role": role, "content": content, **extra}


def _check_turn_order(messages: list[Message], field: str, source: str) -> None:
    for i in range(1, len(messages)):
        if messages[i]["role"] == "assistant" == messages[i - 1]["role"]:
            raise DataError(f"two assistant messages in a row ({field}[{i - 1}] and {field}[{i}]); merge them or "
                            "put the user turn between them", source=source, field=f"{field}[{i}].role")


def parse_messages(value: Any, field: str, source: str) -> list[Message]:
    """A validated list of chat messages (content parts joined into strings)."""
    if not isinstance(value, list):
        raise DataError(f"expected a list of messages, got {type_name(value)}", source=source, field=field)
    if not value:
        raise DataError("empty list of messages", source=source, field=field)
    messages = [_message(m, f"{field}[{i}]", source) for i, m in enumerate(value)]
    _check_turn_order(messages, field, source)
    return messages


def parse_text(value: Any, field: str, source: str) -> Text:
    """Text or a validated list of messages."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return parse_messages(value, field, source)
    raise DataError(f"expected a string or a list of messages, got {type_name(value)}", source=source, field=field)


def check_prompt(prompt: Text, field: str, source: str) -> None:
    """A prompt has visible text and, when conversational, ends with the turn being answered."""
    if isinstance(prompt, list) and prompt[-1]["role"] == "assistant":
        raise DataError("a conversational prompt must end with a non-assistant message, the turn being answered",
                        source=source, field=field)
    if not has_visible_text(prompt):
        raise DataError("empty prompt (no visible text)", source=source, field=field)


def parse_prompt(value: Any, field: str, source: str) -> Text:
    """A validated prompt: text or messages (see the module docstring)."""
    prompt = parse_text(value, field, source)
    check_prompt(prompt, field, source)
    return prompt
