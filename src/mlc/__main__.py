"""`python -m mlc`."""

from mlc.cli import main

main()
