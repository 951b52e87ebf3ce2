"""``python -m lsr`` (and ``torchrun -m lsr``) run the CLI."""

from lsr.cli import main

main()
