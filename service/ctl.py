"""The operator's client of a daemon's REST API (`nvfabric ctl`, `nvfabric ctl gateway`, `nvfabric rr status`).

It sends what it is given and prints what the API answers: the API is the one place where bodies are
validated, so a refusal reads the same here, in curl and in an orchestrator (field, problem, status).
Tables by default, `-o json` for the API's JSON. Exit status: 0 done, 1 the API refused (its message on
stderr), 2 a usage error (no token, unreadable file), 3 the API cannot be reached.

Plain urllib, not aiohttp: one request per run, and a quick start (Python starts slowly in the VM).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TIMEOUT = 120.0  # seconds: an agent's PUT returns only once the port is programmed and announced

EXIT_REFUSED, EXIT_USAGE, EXIT_UNREACHABLE = 1, 2, 3


class CtlError(Exception):
    """A failure to report on stderr, with the exit status it means."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Daemon:
    """Which daemon a client talks to, for its messages: `command` runs it, `api_env` overrides --api."""

    name: str  # "agent"
    command: str  # "nvfabric agent"
    api_env: str  # "NVFABRIC_API"
    default_api: str  # "http://127.0.0.1:8500"


def options(daemon: Daemon, defaults: bool) -> argparse.ArgumentParser:
    """--api, --token, -o/--output (--json the same as -o json). With `defaults` False every option
    defaults to SUPPRESS: a parent parser's value given before the subcommand is then not overwritten by
    the subcommand's default (`ctl -o json ports` and `ctl ports -o json` both work)."""
    def default(value: Any) -> Any:
        return value if defaults else argparse.SUPPRESS

    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--api", default=default(None),
                   help=f"the {daemon.name}'s API URL (env {daemon.api_env}; {daemon.default_api})")
    p.add_argument("--token", default=default(None), help="bearer token (env NVFABRIC_TOKEN)")
    p.add_argument("-o", "--output", choices=("table", "json"), default=default("table"))
    p.add_argument("--json", dest="output", action="store_const", const="json", default=default("table"),
                   help="the same as -o json")
    return p


Action = Callable[["Client", argparse.Namespace], None]


def command(parent: argparse._SubParsersAction, common: argparse.ArgumentParser,
            run: Callable[[argparse.Namespace], int], name: str, help: str, action: Action) -> argparse.ArgumentParser:
    """A subcommand `name` with the common options, run as `run(args)` with `args.action` = `action`."""
    p = parent.add_parser(name, help=help, parents=[common])
    p.set_defaults(func=run, action=action)
    return p


def run(daemon: Daemon, prog: str, action: Action, args: argparse.Namespace) -> int:
    """Run `action` with a client of `daemon` made from the options (or their environment variables)."""
    api = getattr(args, "api", None) or os.environ.get(daemon.api_env) or daemon.default_api
    if getattr(args, "output", None) is None:
        args.output = "table"
    try:
        action(Client(daemon, api, getattr(args, "token", None) or os.environ.get("NVFABRIC_TOKEN")), args)
    except CtlError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return exc.status
    return 0


# ---------------------------------------------------------------------- HTTP


class Client:
    def __init__(self, daemon: Daemon, api: str, token: str | None) -> None:
        if not token:
            raise CtlError(f"no API token: pass --token or set NVFABRIC_TOKEN (the {daemon.name}'s api.token)",
                           EXIT_USAGE)
        self.daemon, self.api, self.token = daemon, api.rstrip("/"), token

    def request(self, method: str, path: str, body: Any = None, query: dict[str, str] | None = None) -> tuple[int, Any]:
        url = self.api + path
        if query:
            url += "?" + urllib.parse.urlencode(query)
        headers = {"Authorization": f"Bearer {self.token}", "Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(url, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=TIMEOUT) as response:
                raw = response.read()
                return response.status, json.loads(raw) if raw else None
        except urllib.error.HTTPError as exc:
            raise CtlError(f"{method} {path}: {refusal(exc.code, exc.read())}", EXIT_REFUSED) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise CtlError(f"cannot reach the {self.daemon.name} API at {self.api}: {reason} (is "
                           f"`{self.daemon.command}` running? --api or {self.daemon.api_env})",
                           EXIT_UNREACHABLE) from None

    def every_page(self, path: str, key: str, query: dict[str, str] | None = None) -> dict[str, Any]:
        """A paged list (service/pages.py) read to its end, following `next`: {key: every item}."""
        items: list[Any] = []
        params = dict(query or {})
        while True:
            _, body = self.request("GET", path, query=params)
            items += body[key]
            if not body.get("next"):
                return {key: items}
            params["after"] = body["next"]


def refusal(status: int, raw: bytes) -> str:
    """The API's JSON error as one line: `400 invalid: addresses[0]: is not ... (got '10.1.0.300')`."""
    try:
        body = json.loads(raw)
        error, problem = body["error"], body["problem"]
    except (ValueError, KeyError, TypeError):
        return f"{status}: {raw.decode(errors='replace')[:200] or 'no body'}"
    if "field" in body:
        problem = f"{body['field']}: {problem}" + (f" (got {body['value']})" if "value" in body else "")
    for message in body.get("messages", []):
        problem += f"\n  kernel: {message}"
    return f"{status} {error}: {problem}"


def segment(name: str) -> str:
    """A name as one URL path segment."""
    return urllib.parse.quote(name, safe="")


def file_body(path: str | None) -> dict[str, Any]:
    """The object in a JSON or YAML file ('-' for stdin); {} without a file."""
    if path is None:
        return {}
    import yaml  # noqa: PLC0415 - only when a file is given

    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
    except OSError as exc:
        raise CtlError(f"{path}: cannot read: {exc.strerror}", EXIT_USAGE) from None
    try:
        # JSON is (nearly) YAML; parse .json strictly so that a JSON file gets JSON's error messages
        body = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise CtlError(f"{path}: not valid {'JSON' if path.endswith('.json') else 'YAML'}: {exc}", EXIT_USAGE) from None
    if not isinstance(body, dict):
        raise CtlError(f"{path}: must hold one object (a mapping), not {type(body).__name__}", EXIT_USAGE)
    return body


# ---------------------------------------------------------------------- output


def show(args: argparse.Namespace, body: Any, tables: Callable[[], Any]) -> None:
    """The API's JSON with -o json, else the tables `tables()` makes (one or a list)."""
    if args.output == "json":
        print_json(body)
        return
    from rich.console import Console  # noqa: PLC0415 - tables only

    made = tables()
    # no emoji codes (":b:" in fd00:b::/64 is one), no markup or highlighting of the data
    console = Console(width=None if sys.stdout.isatty() else 200, soft_wrap=False, emoji=False, markup=False,
                      highlight=False)
    for one in made if isinstance(made, list) else [made]:
        console.print(one)


def table(title: str, columns: list[str], rows: list[list[str]]) -> Any:
    from rich.table import Table  # noqa: PLC0415

    out = Table(title=title, show_header=any(columns), title_justify="left")
    for column in columns:
        out.add_column(column, overflow="fold")
    for row in rows:
        out.add_row(*row)
    return out


def print_json(body: Any) -> None:
    print(json.dumps(body, indent=2))
