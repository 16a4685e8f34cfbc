"""``python -m pixpress_cli``: the same as the ``pixpress`` command."""

from pixpress_cli.entry import main

main()
