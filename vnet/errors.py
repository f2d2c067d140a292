"""Typed errors of the virtual-network model: each names the field and says what is wrong with it."""

from __future__ import annotations

from typing import Any


class ModelError(ValueError):
    """A value of the model is invalid; `field` is a dotted path into the input (e.g. `subnets[1].vsid`)."""

    def __init__(self, field: str, value: Any, problem: str) -> None:
        self.field = field
        self.value = value
        self.problem = problem
        super().__init__(f"{field}: {problem} (got {value!r})")

    def within(self, where: str) -> ModelError:
        """The same error with its field path prefixed by the enclosing object's path."""
        if not where or self.field.startswith(where):
            return self
        return ModelError(f"{where}.{self.field}", self.value, self.problem)

    def as_dict(self) -> dict[str, Any]:
        return {"error": "invalid", "field": self.field, "problem": self.problem, "value": repr(self.value)}


class ConflictError(ModelError):
    """The value is valid on its own but conflicts with existing state (a duplicate CA, a VSID in use)."""


class NotStarted(RuntimeError):
    """A valid change was requested before the daemon started (or after it stopped)."""


class KernelError(RuntimeError):
    """The kernel refused the change; it was reverted. `messages` are the kernel's own."""

    def __init__(self, what: str, messages: tuple[str, ...]) -> None:
        super().__init__(f"{what}: kernel refused, change reverted: {'; '.join(messages[:3])}")
        self.messages = messages
