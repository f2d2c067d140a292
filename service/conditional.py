"""Conditional requests, the same on every daemon: an ETag on every object an API serves at its own path (a
port, a routing domain, a tenant, a neighbour), `If-Match` and `If-None-Match` on reading, replacing and
deleting it (RFC 9110 section 13), so that two orchestrators updating one object cannot silently overwrite
each other.

An ETag is strong and made from the object's content: a hash of its canonical JSON (sorted keys, no
spaces), so it is the same after a restart, on the other gateway of a pair, and for the same object written
twice. For an object that is written (port, routing domain, tenant) the content is what PUT takes, without
the read-only `status`: a counter going up must not fail every conditional update.

The decision (`decide`) is pure. `write` makes the check and the change of a PUT or DELETE one step, under
the app's write lock (service/rest.py WRITES): the daemons apply one change at a time anyway (the agent's
and the gateway's own locks), but a check made outside that order could pass against a value another
request is replacing while the kernel is being programmed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from nvfabric.service.rest import WRITES, ApiError

ANY = "*"
ETAG = "etag"  # the read-only key of an object's view (a list's items carry it too); a PUT ignores it


def etag(content: Any) -> str:
    """The strong entity tag (quoted, as in the header) of `content`, a JSON value."""
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    # 128 bits of SHA-256: collisions are out of reach, and the header stays short
    return f'"{hashlib.sha256(canonical.encode()).hexdigest()[:32]}"'


@dataclass(frozen=True)
class Preconditions:
    """The request's `If-Match` and `If-None-Match`: None when absent, else the quoted tags or `*`; weak tags
    keep their `W/` (they never match `If-Match`, which compares strongly)."""

    if_match: tuple[str, ...] | None = None
    if_none_match: tuple[str, ...] | None = None


def preconditions(request: web.Request) -> Preconditions:
    """Parsed with aiohttp's entity-tag parser; a header it cannot read is refused, not taken as "no tag":
    an unquoted tag (a common slip) would otherwise fail every update or, worse, pass every read."""
    out = []
    for header in ("If-Match", "If-None-Match"):
        raw = request.headers.get(header)
        parsed = request.if_match if header == "If-Match" else request.if_none_match
        if raw is None or not raw.strip():
            out.append(None)
            continue
        if not parsed:
            raise ApiError.invalid(header, raw, 'must be "*" or a list of quoted entity tags ("..."), as an ETag '
                                               'header gives them')
        out.append(tuple(ANY if t.value == ANY else f'{"W/" if t.is_weak else ""}"{t.value}"' for t in parsed))
    return Preconditions(out[0], out[1])


def _strong(tag: str) -> str | None:
    return None if tag.startswith("W/") else tag


def _weak(tag: str) -> str:
    return tag[2:] if tag.startswith("W/") else tag


def decide(pre: Preconditions, current: str | None, read: bool) -> int | None:
    """RFC 9110 13.2.2 for one object whose ETag is `current` (None: it does not exist): None to go on, 412
    (the precondition failed), or 304 for a `read` (GET) whose If-None-Match names the current ETag."""
    if pre.if_match is not None:
        if current is None:
            return 412  # nothing matches a missing object, `*` included
        if ANY not in pre.if_match and current not in {_strong(t) for t in pre.if_match}:
            return 412
    if pre.if_none_match is not None and current is not None:
        if ANY in pre.if_none_match or _weak(current) in {_weak(t) for t in pre.if_none_match}:
            return 304 if read else 412
    return None


def refused(current: str | None, path: str) -> ApiError:
    """The 412 answer: the one error body, naming the current ETag (null: the object does not exist)."""
    if current is None:
        problem = f"{path} does not exist: the precondition (If-Match) requires it to"
    else:
        problem = f"{path} is not in the state the precondition (If-Match, If-None-Match) names: its ETag is {current}"
    return ApiError(412, "precondition-failed", problem, etag=current)


def read(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
    """The answer of a GET of one object: `body` carries its `etag`; 304 when the client holds this version
    (If-None-Match), 412 when it asked for another one (If-Match)."""
    current = body[ETAG]
    verdict = decide(preconditions(request), current, read=True)
    if verdict == 304:
        return web.Response(status=304, headers={"ETag": current})
    if verdict == 412:
        raise refused(current, request.path)
    return web.json_response(body, headers={"ETag": current})


@asynccontextmanager
async def write(request: web.Request, current: Callable[[], str | None]) -> AsyncIterator[None]:
    """A PUT or DELETE of one object: its preconditions checked against `current()` (its ETag now, None when
    it does not exist), then the body of the `with` (the change), both under the app's write lock."""
    pre = preconditions(request)  # a malformed header refused before waiting for anything
    async with request.app[WRITES]:
        now = current()
        if decide(pre, now, read=False) is not None:
            raise refused(now, request.path)
        yield


def written(request: web.Request, created: bool, body: dict[str, Any]) -> web.Response:
    """The answer of a PUT: the object as it is now, with its ETag; 201 and its Location when created."""
    headers = {"ETag": body[ETAG]}
    if created:
        return web.json_response(body, status=201, headers={**headers, "Location": request.path})
    return web.json_response(body, status=200, headers=headers)


def without_read_only(body: Any, *keys: str) -> Any:
    """A PUT body without the read-only keys of a GET's view (`etag`, and `keys`: `status`), so that a view
    PUT back is accepted; anything but an object is left to the model to refuse."""
    if isinstance(body, dict):
        return {k: v for k, v in body.items() if k != ETAG and k not in keys}
    return body
