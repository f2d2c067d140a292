"""The operator's client of a daemon's REST API (`nvfabric ctl`, `nvfabric ctl gateway`, `nvfabric rr status`).

It sends what it is given and prints what the API answers: the API is the one place where bodies are
validated, so a refusal reads the same here, in curl and in an orchestrator (field, problem, status).
Tables by default, `-o json` or `-o yaml` for the API's body (`--json`: the deprecated alias of `-o json`,
kept for the scripts that use it). Exit status (`exit_codes`, in every command's --help): 0 done, 1 the API
refused (its message on stderr), 2 a usage error (no token, unreadable file), 3 the API cannot be reached.

Each daemon has its own pair of environment variables, NVFABRIC_{RR,AGENT,GATEWAY}_{API,TOKEN}: one shell
can drive the three with different tokens. The agent's client also reads the older NVFABRIC_API and
NVFABRIC_TOKEN when its own are not set (they were the agent's before the other daemons had a client).

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
OUTPUTS = ("table", "json", "yaml")


def exit_codes(daemon: Daemon) -> str:
    """The epilog of every client command's --help."""
    return (f"exit status:\n  0  done\n  1  the {daemon.name} API refused the request (its message on stderr)\n"
            f"  2  usage: a bad option, no token, an unreadable file\n"
            f"  3  the {daemon.name} API cannot be reached (is `{daemon.command}` running?)")


class CtlError(Exception):
    """A failure to report on stderr, with the exit status it means."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Daemon:
    """Which daemon a client talks to, for its messages: `command` runs it (`unit` as a service), the
    environment variables stand for --api and --token (the first one set wins)."""

    name: str  # "agent"
    command: str  # "nvfabric agent"
    unit: str  # "nvfabric-agent"
    api_env: tuple[str, ...]  # ("NVFABRIC_AGENT_API", "NVFABRIC_API")
    token_env: tuple[str, ...]  # ("NVFABRIC_AGENT_TOKEN", "NVFABRIC_TOKEN")
    default_api: str  # "http://127.0.0.1:8500"

    def env(self, names: tuple[str, ...]) -> str | None:
        return next((os.environ[n] for n in names if os.environ.get(n)), None)


def options(daemon: Daemon, defaults: bool) -> argparse.ArgumentParser:
    """--api, --token, -o/--output (--json the same as -o json). With `defaults` False every option
    defaults to SUPPRESS: a parent parser's value given before the subcommand is then not overwritten by
    the subcommand's default (`ctl -o json ports` and `ctl ports -o json` both work)."""
    def default(value: Any) -> Any:
        return value if defaults else argparse.SUPPRESS

    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--api", default=default(None),
                   help=f"the {daemon.name}'s API URL (env {' or '.join(daemon.api_env)}; default "
                        f"{daemon.default_api})")
    p.add_argument("--token", default=default(None),
                   help=f"the {daemon.name}'s api.token (env {' or '.join(daemon.token_env)})")
    p.add_argument("-o", "--output", choices=OUTPUTS, default=default("table"),
                   help="table (default), or the API's body as json or yaml")
    p.add_argument("--json", dest="output", action="store_const", const="json", default=default("table"),
                   help="deprecated: -o json")
    return p


def parser(parent: argparse._SubParsersAction, daemon: Daemon, name: str, **kwargs: Any) -> argparse.ArgumentParser:
    """A client command's parser, its exit statuses in its --help."""
    return parent.add_parser(name, epilog=exit_codes(daemon), formatter_class=argparse.RawDescriptionHelpFormatter,
                             **kwargs)


Action = Callable[["Client", argparse.Namespace], None]


def command(parent: argparse._SubParsersAction, common: argparse.ArgumentParser,
            run: Callable[[argparse.Namespace], int], name: str, help: str, action: Action,
            daemon: Daemon) -> argparse.ArgumentParser:
    """A subcommand `name` with the common options, run as `run(args)` with `args.action` = `action`; its
    messages start with its own name (`nvfabric gateway tenants: ...`)."""
    p = parser(parent, daemon, name, help=help, parents=[common])
    p.set_defaults(func=run, action=action, prog=p.prog)
    return p


def run(daemon: Daemon, prog: str, action: Action, args: argparse.Namespace) -> int:
    """Run `action` with a client of `daemon` made from the options (or their environment variables)."""
    prog = getattr(args, "prog", None) or prog
    api = getattr(args, "api", None) or daemon.env(daemon.api_env) or daemon.default_api
    if getattr(args, "output", None) is None:
        args.output = "table"
    try:
        action(Client(daemon, api, getattr(args, "token", None) or daemon.env(daemon.token_env)), args)
    except CtlError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return exc.status
    return 0


# ---------------------------------------------------------------------- HTTP


class Client:
    def __init__(self, daemon: Daemon, api: str, token: str | None) -> None:
        if not token:
            raise CtlError(f"no API token: pass --token or set {daemon.token_env[0]} (the {daemon.name}'s "
                           f"api.token)", EXIT_USAGE)
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
            d = self.daemon
            raise CtlError(f"cannot reach the {d.name} API at {self.api}: {reason}\n  start the {d.name} "
                           f"(`systemctl start {d.unit}`, or `{d.command}` in a terminal), or point --api or "
                           f"{d.api_env[0]} at its api.listen", EXIT_UNREACHABLE) from None

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
    """The API's body with -o json or -o yaml, else the tables `tables()` makes (one or a list)."""
    if args.output in ("json", "yaml"):
        print_body(args, body)
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


def print_body(args: argparse.Namespace, body: Any) -> None:
    """`body` as -o asks: YAML (block style, the API's key order) or JSON (also for -o table: a command
    whose answer has no table prints nothing else)."""
    if args.output == "yaml":
        import yaml  # noqa: PLC0415 - only for -o yaml

        print(yaml.safe_dump(body, sort_keys=False, default_flow_style=False), end="")
    else:
        print_json(body)


def done(args: argparse.Namespace, body: Any, text: str) -> None:
    """The answer of a change: `text` as a table would say it, or `body` as -o json/yaml asks."""
    if args.output in ("json", "yaml"):
        print_body(args, body)
    else:
        print(text)
