"""How user text (a subject, a request id) becomes part of a store key, reversibly.

A Redis Cluster hashes a key by its *hash tag*: the text between the first ``{`` and the
first ``}`` after it. Every key of a subject is ``tw:{TAG}`` or ``tw:{TAG}:SUFFIX``, with
``TAG = key_text(subject)``. `key_text` escapes the three characters that could move the tag
or forge another key: ``%`` (the escape itself) as ``%25``, ``{`` as ``%7B``, ``}`` as
``%7D``; nothing else changes. So:

- the tag never holds a brace: it is exactly the encoded subject, and every key of one
  subject is in one slot, whatever the subject holds;
- the mapping is injective (`text_of` undoes it), so no subject's keys are another's, and
  the first ``}`` ends the tag, so no subject can write a suffix of another;
- a subject without ``%{}`` (letters, digits, ``_-.:@/``, spaces, any other Unicode) is
  its own tag, byte for byte as before this encoding existed: stores keep working.

Subjects holding ``%``, ``{`` or ``}`` were stored unescaped before (and could collide);
their counters start afresh under the escaped tag.

**Tenants.** ``[store] prefix = "acme"`` puts ``acme:`` before every key a Redis store
writes (``acme:tw:{TAG}``, ``acme:tw:events:3``, ``acme:tw:key:{ID}``...). The prefix is
``[A-Za-z0-9_-]{1,32}``: no ``:`` (so the first ``:`` ends it, and two prefixes never make
one key) and no brace (so the hash tag is still the subject's: the same slot as without a
prefix). Two prefixed keys of different prefixes differ before their first ``:``; a
prefixed key and an unprefixed one differ too: every unprefixed key is ``tw:`` then ``{``,
``key:`` or ``events:``, never ``tw:tw:`` (what prefix ``tw`` makes). So the mapping
(prefix, key) -> stored key is injective, and no prefix (the default) leaves every key as
it was: existing data stays readable. The memory store is one process's own: it has no
prefix.
"""

from __future__ import annotations

import re
from typing import Final

MAX_SUBJECT: Final = 1024
"""The most characters a subject may have (its key then holds at most about 4 KB)."""

_ESCAPES: Final = {"%": "%25", "{": "%7B", "}": "%7D"}
_UNESCAPES: Final = {code: char for char, code in _ESCAPES.items()}
_ESCAPED: Final = re.compile(r"%(?:25|7B|7D)")
_SPECIAL: Final = re.compile(r"[%{}]")


PREFIX_PATTERN: Final = r"^[A-Za-z0-9_-]{1,32}$"
_PREFIX: Final = re.compile(r"[A-Za-z0-9_-]{1,32}")


def check_prefix(value: str) -> str:
    """``value`` if it is a valid key prefix, else `ValueError` saying what is expected."""
    if not _PREFIX.fullmatch(value):
        raise ValueError(
            f'{value!r} is not a key prefix; expected 1 to 32 letters, digits, "_" or "-"'
        )
    return value


def prefixed(prefix: str, key: str) -> str:
    """``key`` in the namespace of ``prefix`` (``""``: no namespace, the key itself)."""
    return f"{prefix}:{key}" if prefix else key


def key_text(text: str) -> str:
    """``text`` as it appears in a store key: without ``{`` or ``}``, reversible by `text_of`."""
    if "%" not in text and "{" not in text and "}" not in text:
        return text  # the common case, and the one that keeps old keys readable
    return _SPECIAL.sub(lambda found: _ESCAPES[found.group()], text)


def text_of(part: str) -> str | None:
    """The text whose `key_text` is ``part``; None when no text encodes to it (a brace, or a
    ``%`` that starts no escape: a key of another layout)."""
    if "%" not in part:
        return None if "{" in part or "}" in part else part
    if "{" in part or "}" in part:
        return None
    text = _ESCAPED.sub(lambda found: _UNESCAPES[found.group()], part)
    return text if key_text(text) == part else None


__all__ = ["MAX_SUBJECT", "PREFIX_PATTERN", "check_prefix", "key_text", "prefixed", "text_of"]
