"""``python -m pmrun``: the same as the ``pmrun`` command."""

from pmrun.cli import main

main()
