"""The siptrace command line: a thin typer app; the work is done elsewhere."""

import sys
from pathlib import Path
from typing import List, Optional

import typer

from siptrace.errors import SiptraceError

app = typer.Typer(
    help="Passive SIP trace collector: the OpenSER siptrace module as a sidecar.\n\n"
         "Example:\n\n  siptrace replay call.pcap --proxy 10.0.0.1:5060",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

DB_URL_HELP = "Database URL (module parameter db_url): sqlite:///PATH, mysql://, postgres://"
TABLE_HELP = "Table name (module parameter table)."
PROXY_HELP = "The proxy's address IP[:PORT]; sets direction in/out. Repeatable."


@app.command()
def replay(
    files: List[Path] = typer.Argument(..., help="pcap or pcapng files, replayed in order."),
    db_url: str = typer.Option("sqlite:///siptrace.db", "--db-url", help=DB_URL_HELP),
    table: str = typer.Option("sip_trace", "--table", help=TABLE_HELP),
    proxy: List[str] = typer.Option([], "--proxy", help=PROXY_HELP),
    duplicate_uri: Optional[str] = typer.Option(
        None, "--duplicate-uri",
        help="Mirror traced messages: sip:host[:port] (UDP copy) and/or hep:host:port, "
             "comma-separated."),
    hep_capture_id: int = typer.Option(
        1, "--hep-capture-id", help="HEP capture agent id (module parameter hep_capture_id). "
        "The auth key comes from SIPTRACE_HEP_AUTH_KEY."),
    decisions: Optional[Path] = typer.Option(
        None, "--decisions",
        help="Decisions recorded by `siptrace run --record-decisions`: store only what "
             "the proxy decided to trace."),
    progress: bool = typer.Option(True, "--progress/--no-progress",
                                  help="Progress bar (only shown on a terminal)."),
):
    """Store every SIP message of capture files in the sip_trace table.

    Example:

      siptrace replay trace.pcapng --db-url sqlite:///siptrace.db --proxy 10.0.0.1:5060
    """
    from siptrace.commands import replay_command

    replay_command(files, db_url=db_url, table=table, proxy=proxy,
                   duplicate_uri=duplicate_uri, hep_capture_id=hep_capture_id,
                   decisions=decisions,
                   progress=progress and sys.stderr.isatty())


@app.command()
def show(
    db_url: str = typer.Option("sqlite:///siptrace.db", "--db-url", help=DB_URL_HELP),
    table: str = typer.Option("sip_trace", "--table", help=TABLE_HELP),
    callid: Optional[str] = typer.Option(None, "--callid", help="Only this Call-ID."),
    limit: int = typer.Option(50, "--limit", min=1, help="At most this many rows."),
    full: bool = typer.Option(False, "--full", help="Print whole messages too."),
):
    """Print stored rows, oldest first.

    Example:

      siptrace show --db-url sqlite:///siptrace.db --callid abc@host --full
    """
    from siptrace.commands import show_command

    show_command(db_url=db_url, table=table, callid=callid, limit=limit, full=full)


def main() -> None:
    """Console entry point: library errors become one line and exit status 1."""
    try:
        app()
    except SiptraceError as exc:
        typer.echo(f"siptrace: {exc}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        typer.echo("siptrace: interrupted", err=True)
        sys.exit(130)
