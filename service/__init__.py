"""What every nvfabric daemon shares as a service (host agent, gateway, route reflector).

  rest.py    the aiohttp app factory: bearer-token auth, one JSON error body, JSON bodies, serving
  daemon.py  the daemon runner: options, configuration errors, signals, exit statuses, sd_notify
  notify.py  systemd's readiness protocol (READY=1, RELOADING=1, STOPPING=1, STATUS=)
  logs.py    the log lines: JSON for the journal, text at a terminal
  ctl.py     the operator's HTTP client of those APIs, its refusal messages, tables and JSON output
  config.py  the API's configuration (listen address, token)

A leaf: it imports no other nvfabric package, so the reflector, vnet and both daemons can all use it.
A daemon's own typed errors reach HTTP through the refusal functions it hands to the app factory.
"""

from importlib import metadata


def version() -> str:
    """The installed distribution's version (pyproject.toml), as `--version` and nvfabric_build_info say it."""
    try:
        return metadata.version("nvfabric")
    except metadata.PackageNotFoundError:  # run from a checkout that was never installed
        return "0+unknown"
