"""Bounded pages on list endpoints, the same on every daemon: `?limit=N` (1..MAX_PAGE, default MAX_PAGE; 400
beyond) and `?after=CURSOR`, the `next` of the previous answer (null on the last page). A cursor is the
sort key of the last item returned, so a page is stable while items are added or removed elsewhere in the
list (keyset pagination: no offset that shifts under a concurrent change)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from nvfabric.service.openapi import INTEGER, STRING, Param, nullable
from nvfabric.service.rest import ApiError

MAX_PAGE = 1000  # items per answer: a few hundred kB of JSON at most
PARAMS = (Param("limit", {**INTEGER, "minimum": 1, "maximum": MAX_PAGE},
                f"items per page, 1..{MAX_PAGE} (default {MAX_PAGE})"),
          Param("after", {**STRING, "minLength": 1}, "the `next` cursor of the previous page"))
NEXT = nullable(STRING)  # the schema of `next` in a page's answer
T = TypeVar("T")


@dataclass(frozen=True)
class PageRequest:
    limit: int
    after: str | None


def page_request(params: Mapping[str, str]) -> PageRequest:
    """`limit` and `after` from already checked query parameters (service.rest.query)."""
    text = params.get("limit")
    if text is None:
        limit = MAX_PAGE
    elif not text.isascii() or not text.isdigit() or not 1 <= int(text) <= MAX_PAGE:
        raise ApiError.invalid("limit", text, f"must be an integer 1..{MAX_PAGE}")
    else:
        limit = int(text)
    after = params.get("after")
    if after is not None and not after:
        raise ApiError.invalid("after", after, "must be the `next` of a previous page, not empty")
    return PageRequest(limit, after)


def page(items: Iterable[tuple[str, T]], request: PageRequest) -> tuple[list[T], str | None]:
    """The items (sorted by their key) after the cursor, at most `limit`, and the next cursor."""
    out: list[T] = []
    last: str | None = None
    for key, item in items:
        if request.after is not None and key <= request.after:
            continue
        if len(out) == request.limit:
            return out, last
        out.append(item)
        last = key
    return out, None
