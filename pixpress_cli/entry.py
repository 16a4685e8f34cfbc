"""The ``pixpress`` console script. The command's libraries come with the ``cli`` extra, which the service image
leaves out: there, say how to get them instead of failing with a traceback."""

from __future__ import annotations

import sys


def main() -> None:
    try:
        from pixpress_cli.commands import cli
    except ImportError as missing:
        sys.stderr.write(f"pixpress: the command line needs the 'cli' extra: pip install 'pixpress[cli]' ({missing})\n")
        sys.exit(2)
    cli(prog_name="pixpress")
