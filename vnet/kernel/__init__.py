"""The kernel side of vnet: owned netlink objects, observed, diffed and applied (docs/dataplane.md).

One job per module: `messages` (wire format, incl. what pyroute2 0.9.7 lacks), `objects` (keyed values),
`netns` (sockets bound to a namespace), `observe` (dumps), `diff` (pure plan), `encode` (one encoder per
kind), `apply` (the only writer).
"""
