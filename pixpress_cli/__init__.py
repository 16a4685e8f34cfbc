"""``pixpress``, the command line of pixpress: a client of its HTTP API only (it imports nothing from services/).

Installed with the ``cli`` extra (``pip install 'pixpress[cli]'``); the service image does not carry its
dependencies. Usage and exit codes: docs/cli.md, or ``pixpress --help``.
"""
