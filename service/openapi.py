"""Each daemon's routes declared once, with their schemas: the aiohttp router and the OpenAPI 3 document
(served at /v1/openapi.json) are both made from the same list of Operations, so a handler cannot exist
without its documentation or the other way round.

The error answers every operation shares (service/rest.py's error model) are added here, not repeated by
each daemon: 401 unless the operation is public, 400 when it takes parameters or a body, 404 when its path
names something, 413 and 415 when it takes a body, and 500 (a bug, logged) everywhere.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from nvfabric.service.rest import Handler

Schema = dict[str, Any]
DOCUMENT_PATH = "/v1/openapi.json"

ERROR: Schema = {
    "type": "object", "required": ["error", "problem"],
    "properties": {
        "error": {"type": "string", "description": "the kind of refusal (invalid, conflict, not-found, ...)"},
        "problem": {"type": "string", "description": "one sentence saying what is wrong"},
        "field": {"type": "string", "description": "the field (dotted path into the body or the query) at fault"},
        "value": {"type": "string", "description": "the refused value, as Python's repr"},
        "etag": {"anyOf": [{"type": "string"}, {"type": "null"}],
                 "description": "412: the object's current ETag (null: it does not exist)"},
    },
}
_ERROR_REASONS = {400: "invalid value, query or body (the field is named)", 401: "missing or wrong bearer token",
                  404: "no such name", 409: "conflicts with existing state", 413: "body too large",
                  412: "a precondition (If-Match, If-None-Match) failed: the body names the current ETag",
                  415: "the body is not application/json", 422: "the kernel refused the change (reverted)",
                  500: "a bug: logged under the incident named in the body",
                  503: "the daemon is not running or cannot keep the change (nothing applied)"}


# -------------------------------------------------------------------------- schema helpers


def obj(required: Sequence[str] = (), closed: bool = False, **properties: Schema) -> Schema:
    """A JSON object; `closed`: no other keys (request bodies, whose unknown keys the model refuses)."""
    out: Schema = {"type": "object", "properties": properties}
    if required:
        out["required"] = list(required)
    if closed:
        out["additionalProperties"] = False
    return out


def array(items: Schema, **extra: Any) -> Schema:
    return {"type": "array", "items": items, **extra}


def nullable(schema: Schema) -> Schema:
    return {"anyOf": [schema, {"type": "null"}]}


STRING: Schema = {"type": "string"}
INTEGER: Schema = {"type": "integer"}
BOOLEAN: Schema = {"type": "boolean"}
NUMBER: Schema = {"type": "number"}
ANY_OBJECT: Schema = {"type": "object"}


@dataclass(frozen=True)
class Param:
    name: str
    schema: Schema = field(default_factory=lambda: dict(STRING))
    description: str = ""
    required: bool = False


@dataclass(frozen=True)
class Operation:
    """One method on one path: the handler, its inputs, and its answers (status -> JSON schema, None for no
    body). `errors` are the refusals beyond the common ones (409, 422, 503, ...)."""

    method: str
    path: str
    handler: Handler
    summary: str
    answers: Mapping[int, Schema | None]
    query: tuple[Param, ...] = ()
    body: Schema | None = None
    errors: tuple[int, ...] = ()
    public: bool = False  # served without the token (/metrics, the health probes)
    text: bool = False  # the success body is text/plain (Prometheus)
    conditional: bool = False  # one object with its ETag: If-Match / If-None-Match (service/conditional.py)
    describe: Mapping[int, str] = field(default_factory=dict)  # an answer's meaning, where not the common one

    @property
    def path_params(self) -> list[str]:
        return [part[1:-1] for part in self.path.split("/") if part.startswith("{") and part.endswith("}")]


# -------------------------------------------------------------------------- the document


def _error_statuses(op: Operation) -> list[int]:
    statuses = set(op.errors) | {500}
    if not op.public:
        statuses.add(401)
    if op.query or op.body is not None or op.path_params:
        statuses.add(400)
    if op.path_params:
        statuses.add(404)
    if op.body is not None:
        statuses |= {413, 415}
    if op.conditional:
        statuses |= {400, 412}  # 400: an If-Match or If-None-Match that is not a list of entity tags
    return sorted(statuses - set(op.answers))


_ETAG_HEADER: Schema = {"description": "the object's strong entity tag (a hash of its content)", "required": True,
                        "schema": {"type": "string"}}


def _conditional_params(op: Operation) -> list[Schema]:
    """The request headers of a conditional operation: If-Match on every method, If-None-Match on reads and
    replacements (a DELETE "unless it exists" means nothing)."""
    out = [{"name": "If-Match", "in": "header", "required": False, "schema": {"type": "string"},
            "description": 'only if the object\'s ETag is one of these ("*": only if it exists), else 412'}]
    if op.method == "GET":
        out.append({"name": "If-None-Match", "in": "header", "required": False, "schema": {"type": "string"},
                    "description": "unless the object's ETag is one of these, else 304 Not Modified"})
    elif op.method == "PUT":
        out.append({"name": "If-None-Match", "in": "header", "required": False, "schema": {"type": "string"},
                    "description": 'unless the object exists ("*": create only) or its ETag is one of these, '
                                   'else 412'})
    return out


def _operation(op: Operation) -> Schema:
    out: Schema = {"summary": op.summary, "operationId": f"{op.method.lower()}{op.path}"}
    params = [{"name": p, "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}}
              for p in op.path_params]
    params += [{"name": p.name, "in": "query", "required": p.required, "schema": p.schema,
                **({"description": p.description} if p.description else {})} for p in op.query]
    if op.conditional:
        params += _conditional_params(op)
    if params:
        out["parameters"] = params
    if op.body is not None:
        out["requestBody"] = {"required": True, "content": {"application/json": {"schema": op.body}}}
    responses: Schema = {}
    for status, schema in op.answers.items():
        answer: Schema = {"description": op.describe.get(status) or
                          ("OK" if status < 300 else _ERROR_REASONS.get(status, "refused"))}
        if schema is not None:
            kind = "text/plain" if op.text and status < 300 else "application/json"
            answer["content"] = {kind: {"schema": schema}}
            if op.conditional and status < 300:
                answer["headers"] = {"ETag": _ETAG_HEADER}
        responses[str(status)] = answer
    if op.conditional and op.method == "GET":
        responses["304"] = {"description": "Not Modified: the client's copy (If-None-Match) is current",
                            "headers": {"ETag": _ETAG_HEADER}}
    for status in _error_statuses(op):
        responses[str(status)] = {"description": _ERROR_REASONS.get(status, "refused"),
                                  "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    out["responses"] = responses
    if op.public:
        out["security"] = []
    return out


def document(title: str, description: str, operations: Sequence[Operation]) -> Schema:
    """The OpenAPI 3.0 document of `operations`."""
    paths: dict[str, Schema] = {}
    for op in operations:
        paths.setdefault(op.path, {})[op.method.lower()] = _operation(op)
    return {
        "openapi": "3.0.3",
        "info": {"title": title, "version": "1", "description": description},
        "paths": paths,
        "components": {
            "schemas": {"Error": ERROR},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
    }


def register(app: web.Application, title: str, description: str, operations: Sequence[Operation]) -> Schema:
    """Add every operation to `app`'s router, and GET /v1/openapi.json serving their document (itself
    included); returns the document."""
    ops: list[Operation] = list(operations)

    async def get_document(request: web.Request) -> web.Response:
        return web.json_response(doc)

    ops.append(Operation("GET", DOCUMENT_PATH, get_document, "this document (OpenAPI 3)", {200: ANY_OBJECT}))
    doc = document(title, description, ops)
    for op in ops:
        # GET routes get no automatic HEAD: the document lists exactly what is served
        app.router.add_route(op.method, op.path, op.handler)
    return doc
