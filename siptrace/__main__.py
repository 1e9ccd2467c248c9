"""The siptrace command and ``python -m siptrace``."""

import sys


def main() -> None:
    """The command line; a Ctrl-C while it loads exits 130 quietly, as one later does."""
    try:
        from siptrace.cli import main as cli_main
    except KeyboardInterrupt:
        sys.exit(130)
    cli_main()


if __name__ == "__main__":
    main()
