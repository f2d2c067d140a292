"""How the model's typed errors answer over HTTP: the refusal every daemon's API hands to the app factory
(service/rest.py), so an invalid value, a conflict and an unknown name read the same on every API."""

from __future__ import annotations

from nvfabric.service.rest import ApiError
from nvfabric.vnet.catalog import NotFound
from nvfabric.vnet.errors import ConflictError, ModelError


def model_refusal(exc: Exception) -> ApiError | None:
    """ModelError 400, ConflictError 409, NotFound 404; None for any other exception."""
    if isinstance(exc, ModelError):  # a ConflictError is a ModelError with another status
        status, error = (409, "conflict") if isinstance(exc, ConflictError) else (400, "invalid")
        return ApiError(status, error, exc.problem, field=exc.field, value=repr(exc.value))
    if isinstance(exc, NotFound):
        return ApiError(404, "not-found", str(exc), kind=exc.kind, name=exc.name)
    return None
