"""The ``pixpress`` command: upload a CSV, follow it, list requests, see what failed, take the output CSV away.

Output for scripts goes to stdout (a request id, ``--json`` bodies, the output CSV with ``-o -``); everything
meant for a person (progress, tables, summaries, errors) goes to stderr, drawn for a terminal only when stderr
is one.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import wraps
from pathlib import Path
from typing import IO, Any, TypeVar, cast

import click
from rich.console import Console

from pixpress_cli import render
from pixpress_cli.api import REQUESTS_PAGE, Api, ExitCode, Refused, Unreachable
from pixpress_cli.progress import FINAL, watcher_for
from shared.api_models import StatusView
from shared.messages import RequestStatus

DEFAULT_API = "http://127.0.0.1:5000"
UNREACHABLE_PATIENCE = 60.0  # seconds --wait keeps polling an API that stopped answering before it gives up
MAX_LIST = 10_000

EXIT_CODES = """\b
Exit codes:
  0  the request Completed (or the command did what it was asked)
  1  the request Failed
  2  refused or unusable input: a CSV the API refused, an unknown or malformed
     id, a wrong API key, an output CSV not ready yet, bad arguments
  3  cannot reach the API: connection refused, timeouts, 5xx answers
"""

Command = TypeVar("Command", bound=Callable[..., Any])


def _console(stream: IO[str]) -> Console:
    """Drawn for a terminal only when ``stream`` is one, whatever FORCE_COLOR or TERM say: a log never gets escape
    sequences."""
    terminal = stream.isatty()
    # a log has no width: rich would fold tables at 80 columns unless COLUMNS says otherwise
    width = None if terminal or os.environ.get("COLUMNS") else 160
    return Console(file=stream, force_terminal=terminal, force_interactive=terminal, width=width)


def err_console() -> Console:
    return _console(sys.stderr)


def out_console() -> Console:
    return _console(sys.stdout)


def exits_on_api_errors(command: Command) -> Command:
    """Turns the API's refusals and absences into messages and exit codes 2 and 3."""

    @wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except Refused as refused:
            console = err_console()
            console.print(render.cell(f"pixpress: refused: {refused}"))
            if refused.errors:
                render.row_errors(console, refused.errors)
            sys.exit(ExitCode.REFUSED)
        except Unreachable as unreachable:
            err_console().print(render.cell(f"pixpress: {unreachable}"))
            sys.exit(ExitCode.UNREACHABLE)

    return cast(Command, wrapper)


def outcome(status: StatusView) -> ExitCode:
    return ExitCode.FAILED if status.status == RequestStatus.FAILED else ExitCode.COMPLETED


@click.group(epilog=EXIT_CODES, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option(
    "--api",
    "api_url",
    envvar="PIXPRESS_API_URL",
    default=DEFAULT_API,
    show_default=True,
    show_envvar=True,
    help="Base URL of the pixpress API.",
)
@click.option(
    "--api-key",
    envvar="PIXPRESS_API_KEY",
    show_envvar=True,
    default=None,
    help="Sent as X-API-Key, for a server that sets PIXPRESS_API_KEY.",
)
@click.version_option(package_name="pixpress", prog_name="pixpress")
@click.pass_context
def cli(context: click.Context, api_url: str, api_key: str | None) -> None:
    """Upload CSVs of product images to pixpress, follow them, and take the output CSV away."""
    context.obj = Api(api_url, api_key or None)


def request_id_argument(command: Command) -> Command:
    return click.argument("request_id", metavar="ID")(command)


@cli.command()
@click.argument("csv_file", metavar="FILE.csv", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--webhook", metavar="URL", help="POSTed the final status once the request ends.")
@click.option("--wait", is_flag=True, help="Follow the request until it ends; the exit code says how it ended.")
@click.option(
    "--every",
    default=10.0,
    show_default=True,
    metavar="SECONDS",
    help="With --wait, off a terminal: seconds between lines.",
)
@click.pass_obj
@exits_on_api_errors
def upload(api: Api, csv_file: Path, webhook: str | None, wait: bool, every: float) -> None:
    """Upload FILE.csv; print its request id (on stdout, alone).

    A refused file prints every problem the API found as a table (row, column, message) and exits 2. With
    --wait, a progress bar on a terminal (plain lines in a log) until the request ends, then a summary; exits 0
    when it Completed, 1 when it Failed.
    """
    accepted = api.upload(csv_file, webhook)
    click.echo(accepted.request_id)
    if not wait:
        return
    status = follow(api, accepted.request_id, every)
    summarize(status)
    sys.exit(outcome(status))


def follow(api: Api, request_id: str, every: float) -> StatusView:
    """Poll the status once a second until the request ends; an API that stops answering is polled again for a
    minute before giving up (exit 3)."""
    watcher = watcher_for(err_console(), every)
    unreachable_since: float | None = None
    try:
        while True:
            try:
                status = api.status(request_id)
            except Unreachable as unreachable:
                now = time.monotonic()
                unreachable_since = unreachable_since or now
                if now - unreachable_since > UNREACHABLE_PATIENCE:
                    raise
                click.echo(f"pixpress: {unreachable}; trying again", err=True)
                time.sleep(2)
                continue
            unreachable_since = None
            watcher.update(status)
            if status.status in FINAL:
                return status
            time.sleep(1)
    except KeyboardInterrupt:
        watcher.close()  # the bar first, then the message under it
        click.echo(f"\nstopped following; the request goes on: pixpress status {request_id}", err=True)
        sys.exit(130)
    finally:
        watcher.close()


def summarize(status: StatusView) -> None:
    progress = status.progress
    saved = "" if progress.savings_percent is None else f", saved {progress.savings_percent:.1f} %"
    line = f"{status.status.value}: {progress.images_done} of {progress.images_total} images done"
    line += f", {progress.images_failed} failed{saved}"
    if progress.images_cached:
        line += f", {progress.images_cached} reused"
    console = err_console()
    console.print(render.cell(line))
    if status.output_csv_url:
        console.print(render.cell(f"output CSV: {status.output_csv_url}"))
    if status.error:
        console.print(render.cell(f"error: {status.error}"))


@cli.command()
@request_id_argument
@click.option("--json", "as_json", is_flag=True, help="Print the API's status body as JSON (stdout).")
@click.pass_obj
@exits_on_api_errors
def status(api: Api, request_id: str, as_json: bool) -> None:
    """Show a request's status and progress. Exits 1 when it Failed, else 0."""
    if as_json:
        body = api.status_json(request_id)
        click.echo(render.pretty_json(body))
        sys.exit(ExitCode.FAILED if body["status"] == RequestStatus.FAILED.value else ExitCode.COMPLETED)
    current = api.status(request_id)
    render.status_table(out_console(), current)
    sys.exit(outcome(current))


@cli.command(name="ls")
@click.option(
    "--limit",
    default=20,
    show_default=True,
    type=click.IntRange(1, MAX_LIST),
    help="How many requests, newest first (pages through GET /requests).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the requests as a JSON array (stdout).")
@click.pass_obj
@exits_on_api_errors
def list_requests(api: Api, limit: int, as_json: bool) -> None:
    """List requests, newest first."""
    statuses: list[StatusView] = []
    bodies: list[dict[str, Any]] = []
    path: str | None = f"/requests?limit={min(limit, REQUESTS_PAGE)}"
    while path and len(statuses) < limit:
        page, items = api.requests_page(path)
        statuses += page.items
        bodies += items
        path = page.next
    if as_json:
        click.echo(render.pretty_json(bodies[:limit]))
    else:
        render.requests_table(out_console(), statuses[:limit])


@cli.command()
@request_id_argument
@click.option("--json", "as_json", is_flag=True, help="Print the failed images as a JSON array (stdout).")
@click.pass_obj
@exits_on_api_errors
def failures(api: Api, request_id: str, as_json: bool) -> None:
    """List a request's failed images with the reason each failed (every page of its products)."""
    found: list[dict[str, Any]] = []
    for page in api.products(request_id):
        for product in page.items:
            found += render.failed_images(product)
    if as_json:
        click.echo(render.pretty_json(found))
        return
    if found:
        render.failures_table(out_console(), found)
    else:
        click.echo("no failed images", err=True)
    current = api.status(request_id)
    if current.status not in FINAL:
        click.echo(f"the request is still {current.status.value}: more images may fail", err=True)


@cli.command()
@request_id_argument
@click.option(
    "-o",
    "--output",
    metavar="FILE",
    help="Where to write the output CSV ('-' for stdout).  [default: ID.csv]",
)
@click.pass_obj
@exits_on_api_errors
def download(api: Api, request_id: str, output: str | None) -> None:
    """Download a request's output CSV (exits 2 while it is not ready)."""
    url = api.output_csv_location(request_id)
    if output == "-":
        api.download(url, sys.stdout.buffer)
        sys.stdout.flush()
        return
    target = Path(output or f"{request_id}.csv")
    with atomic_file(target) as out:
        size = api.download(url, out)
    click.echo(f"{target} ({size:,} bytes) from {url}", err=True)


@contextmanager
def atomic_file(target: Path) -> Iterator[IO[bytes]]:
    """A file that appears at ``target`` complete or not at all."""
    descriptor, temporary = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(descriptor, "wb") as out:
            yield out
        os.replace(temporary, target)
    except BaseException:
        os.unlink(temporary)
        raise
