"""`nvfabric rr`: an RFC 4456 route reflector for l2vpn/evpn and IPv4/IPv6 unicast (docs/rr.md).

  config.py  typed configuration, errors name the field
  policy.py  pure reflection rules (RFC 4456 section 6) and loop checks (section 8)
  rtc.py     route targets read from raw attributes; the per-peer route-target filter
  table.py   the raw Loc-RIB: NLRI kept as received bytes, attributes shared per UPDATE
  daemon.py  wiring: the speaker with a raw decoder, the table, batching, update groups, reload
  api.py     aiohttp REST + Prometheus /metrics
  cli.py     `nvfabric rr --config FILE`, `nvfabric rr status --api URL`
"""
