"""How vnet's typed errors answer over HTTP: the refusals the agent's and the gateway's APIs hand to the app
factory (service/rest.py), so an invalid value, a conflict, an unknown name, a daemon not running and a
change the kernel refused read the same on both APIs."""

from __future__ import annotations

from nvfabric.service.rest import ApiError
from nvfabric.vnet.catalog import NotFound
from nvfabric.vnet.errors import ConflictError, KernelError, ModelError, NotStarted


def model_refusal(exc: Exception) -> ApiError | None:
    """ModelError 400, ConflictError 409, NotFound 404; None for any other exception."""
    if isinstance(exc, ModelError):  # a ConflictError is a ModelError with another status
        status, error = (409, "conflict") if isinstance(exc, ConflictError) else (400, "invalid")
        return ApiError(status, error, exc.problem, field=exc.field, value=repr(exc.value))
    if isinstance(exc, NotFound):
        return ApiError(404, "not-found", str(exc), kind=exc.kind, name=exc.name)
    return None


def daemon_refusal(exc: Exception) -> ApiError | None:
    """A change while the daemon is not running 503; one the kernel refused (and the daemon reverted: lo as a
    port, say) 422, not 500: 500 is reserved for our bugs, and a 5xx invites a blind retry that would be
    refused the same way."""
    if isinstance(exc, NotStarted):
        return ApiError(503, "not-running", str(exc))
    if isinstance(exc, KernelError):
        return ApiError(422, "kernel-refused", str(exc), messages=list(exc.messages))
    return None


REFUSALS = (model_refusal, daemon_refusal)
