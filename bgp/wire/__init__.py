"""The BGP codec: bytes on the wire <-> the typed values of bgp/routes.py.

Use it as `from bgp import wire` (wire.encode_update, wire.decode_update, ...): this module re-exports
the public API of the package. One module per job:

  exa.py         the only module of nvfabric that imports ExaBGP (tests/unit/test_layers.py
                 enforces it): ExaBGP set-up and the EVPN NEXT-HOP FIX, the OPEN and path attributes
                 ExaBGP builds for us, and the reference encoder/decoder ours is tested against
  framing.py     the header, split_messages, KEEPALIVE, NOTIFICATION, ROUTE-REFRESH, End-of-RIB
  open.py        capabilities, encode/decode OPEN, negotiate -> Negotiated
  attributes.py  path attributes: the RFC 7606 walk over an UPDATE's attribute list
  nlri.py        NLRI bytes <-> routes and keys (EVPN type 2 and 5, unicast prefixes)
  update.py      encode_update / decode_update
  raw.py         the route reflector's path: decode_raw_update, reflect_attributes, encode_raw_update
  result.py      UpdateResult, UpdateError and the RFC 7606 actions

ExaBGP builds the OPEN and the path attributes we send. The NLRI and MP_REACH/MP_UNREACH framing are
packed by us (ExaBGP's Update.messages sorts NLRI at ~17k routes/s). What we receive is parsed by us
from bytes: it is the hot path (ExaBGP's decoder builds objects and JSON we do not need, ~30k routes/s)
and RFC 7606 wants a malformed attribute or NLRI to degrade to treat-as-withdraw, where ExaBGP raises
and the session would reset.
"""

from nvfabric.bgp.errors import MessageHeaderError, NotificationDecodeError, OpenError, RouteValueError
from nvfabric.bgp.wire.attributes import EVPN_NEXT_HOP_LENGTHS, NVGRE_TUNNEL_TYPE
from nvfabric.bgp.wire.exa import exabgp_parse_update, reference_decode_update, reference_encode_update
from nvfabric.bgp.wire.framing import (
    HEADER_LENGTH,
    MARKER,
    MAX_MESSAGE_LENGTH,
    MessageType,
    Notification,
    decode_notification,
    decode_route_refresh,
    encode_eor,
    encode_keepalive,
    encode_notification,
    encode_route_refresh,
    split_messages,
)
from nvfabric.bgp.wire.open import (
    AS_TRANS,
    Capabilities,
    GracefulRestart,
    Negotiated,
    decode_open,
    encode_open,
    negotiate,
)
from nvfabric.bgp.wire.raw import (
    RawNlri,
    RawUpdate,
    decode_raw_update,
    encode_raw_update,
    reflect_attributes,
    typed_key,
)
from nvfabric.bgp.wire.result import (
    ATTRIBUTE_DISCARD,
    SESSION_RESET,
    SUBCODE_INVALID_NETWORK_FIELD,
    SUBCODE_MALFORMED_ATTRIBUTE_LIST,
    SUBCODE_OPTIONAL_ATTRIBUTE_ERROR,
    TREAT_AS_WITHDRAW,
    UpdateError,
    UpdateResult,
)
from nvfabric.bgp.wire.update import decode_update, encode_update

__all__ = [
    "AS_TRANS",
    "ATTRIBUTE_DISCARD",
    "EVPN_NEXT_HOP_LENGTHS",
    "HEADER_LENGTH",
    "MARKER",
    "MAX_MESSAGE_LENGTH",
    "NVGRE_TUNNEL_TYPE",
    "SESSION_RESET",
    "SUBCODE_INVALID_NETWORK_FIELD",
    "SUBCODE_MALFORMED_ATTRIBUTE_LIST",
    "SUBCODE_OPTIONAL_ATTRIBUTE_ERROR",
    "TREAT_AS_WITHDRAW",
    "Capabilities",
    "GracefulRestart",
    "MessageHeaderError",
    "MessageType",
    "Negotiated",
    "Notification",
    "NotificationDecodeError",
    "OpenError",
    "RawNlri",
    "RawUpdate",
    "RouteValueError",
    "UpdateError",
    "UpdateResult",
    "decode_notification",
    "decode_open",
    "decode_raw_update",
    "decode_route_refresh",
    "decode_update",
    "encode_eor",
    "encode_keepalive",
    "encode_notification",
    "encode_open",
    "encode_raw_update",
    "encode_route_refresh",
    "encode_update",
    "exabgp_parse_update",
    "negotiate",
    "reference_decode_update",
    "reference_encode_update",
    "reflect_attributes",
    "split_messages",
    "typed_key",
]
