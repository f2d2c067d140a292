"""What every nvfabric daemon shares as a service (host agent, gateway, route reflector).

  rest.py    the aiohttp app factory: bearer-token auth, one JSON error body, JSON bodies, serving
  daemon.py  the daemon runner: logging, configuration errors, signals, exit statuses
  ctl.py     the operator's HTTP client of those APIs, its refusal messages, tables and JSON output
  config.py  the API's configuration (listen address, token)

A leaf: it imports no other nvfabric package, so the reflector, vnet and both daemons can all use it.
A daemon's own typed errors reach HTTP through the refusal functions it hands to the app factory.
"""
