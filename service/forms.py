"""Form-field parsing shared by the routes: every refusal names its field."""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import UploadFile
from pydantic import AfterValidator

from grader.errors import ControlCharacters, TextTooLong, UploadTooLarge

#: control characters (NUL included) never belong in an identifier or a name; a database or a log
#: line could choke on them
CONTROL = re.compile(r"[\x00-\x1f\x7f]")
CONTROL_BUT_LINES = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def _plain(v: str | None) -> str | None:
    if v is not None and CONTROL.search(v):
        raise ValueError("must not contain control characters")
    return v


def _note(v: str | None) -> str | None:
    if v is not None and CONTROL_BUT_LINES.search(v):
        raise ValueError("must not contain control characters other than line breaks and tabs")
    return v


#: a name or identifier in a JSON body: no control characters
PlainText = Annotated[str, AfterValidator(_plain)]
#: free text (a note): line breaks and tabs allowed, other control characters not
NoteText = Annotated[str, AfterValidator(_note)]


def physical_field(name: str, raw: str | None) -> float | None:
    """An optional form or query field holding a physical quantity, checked against its
    plausible range (service/limits.py); OutOfRange (422) naming the field otherwise."""
    from .limits import parse

    return parse(name, raw)


def text_field(name: str, raw: str | None, max_len: int = 100) -> str | None:
    if raw is None or raw.strip() == "":
        return None
    if len(raw) > max_len:
        raise TextTooLong(f"{name} is longer than {max_len} characters", field=name)
    if CONTROL.search(raw):
        raise ControlCharacters(f"{name} must not contain control characters", field=name)
    return raw.strip()


async def read_limited(upload: UploadFile, limit: int, field: str = "image", kind: str = "image") -> bytes:
    """An uploaded file's bytes; 413 ``<kind>_too_large`` naming the field past ``limit``."""
    data = await upload.read(limit + 1)
    if len(data) > limit:
        raise UploadTooLarge(f"{field} is larger than the limit of {limit} bytes", field=field, code=f"{kind}_too_large")
    return data
