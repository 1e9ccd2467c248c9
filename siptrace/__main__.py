"""python -m siptrace: the same as the siptrace command."""

from siptrace.cli import main

main()
