"""``python -m cli``: the same as the ``pushq`` console script."""

from cli import main

main(prog_name="pushq")
