"""What decoding an UPDATE returns: UpdateResult and its UpdateErrors, each carrying the RFC 7606 action.

_Reset is raised inside the decoders when the NLRI cannot be located any more (session reset); the
public decoders catch it and return it as an error, never raise it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from nvfabric.bgp.routes import Family, Path, RouteKey

TREAT_AS_WITHDRAW = "treat-as-withdraw"
ATTRIBUTE_DISCARD = "attribute-discard"
SESSION_RESET = "session-reset"

# RFC 4271 section 6.3 UPDATE Message Error subcodes used for a session reset.
SUBCODE_MALFORMED_ATTRIBUTE_LIST = 1
SUBCODE_OPTIONAL_ATTRIBUTE_ERROR = 9
SUBCODE_INVALID_NETWORK_FIELD = 10


@dataclass(frozen=True, slots=True)
class UpdateError:
    """One problem found in an UPDATE and what RFC 7606 says to do about it.

    action: "treat-as-withdraw" (the UPDATE's routes are withdrawn, session stays up),
    "attribute-discard" (the attribute is ignored) or "session-reset" (send NOTIFICATION 3/subcode).
    raw: hex of the offending bytes, for the log.
    """

    action: str
    reason: str
    raw: str
    subcode: int = 0


@dataclass(slots=True)
class UpdateResult:
    """A decoded UPDATE: announced paths, withdrawn keys, End-of-RIB family, errors.

    ignored counts EVPN NLRI of route types we do not model (1, 3, 4, ...), which RFC 7606 section 5.4
    says to discard.
    """

    announced: list[Path] = field(default_factory=list)
    withdrawn: list[RouteKey] = field(default_factory=list)
    eor: Family | None = None
    errors: list[UpdateError] = field(default_factory=list)
    ignored: int = 0

    @property
    def session_reset(self) -> UpdateError | None:
        """The error that requires a NOTIFICATION and session reset, if any."""
        for error in self.errors:
            if error.action == SESSION_RESET:
                return error
        return None


class _Reset(Exception):
    def __init__(self, subcode: int, reason: str, raw: bytes = b"") -> None:
        super().__init__(reason)
        self.error = UpdateError(SESSION_RESET, reason, raw.hex(), subcode)

