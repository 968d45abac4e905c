"""``python -m llavakit`` = the ``llavakit`` command."""

from llavakit.cli import main

main()
