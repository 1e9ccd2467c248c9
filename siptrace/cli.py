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
    trace_flag: int = typer.Option(0, "--trace-flag", min=0, max=31,
                                   help="With --decisions: the flag that traces a transaction."),
    traced_user_avp: int = typer.Option(6843, "--traced-user-avp",
                                        help="With --decisions: AVP id of the traced users."),
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
                   decisions=decisions, trace_flag=trace_flag,
                   traced_user_avp=traced_user_avp,
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


@app.command()
def run(
    config: Optional[Path] = typer.Option(
        None, "--config", help="INI file, section \\[siptrace]; keys as these options "
        "(file < SIPTRACE_* environment < command line)."),
    interface: Optional[List[str]] = typer.Option(
        None, "--interface", "-i", help="Capture interface, repeatable; 'any' for all."),
    proxy: Optional[List[str]] = typer.Option(
        None, "--proxy", help="The proxy's address: IP (every port; use this with TCP), "
        "IP:PORT or [IPv6]:PORT. Repeatable. Builds the capture filter and sets in/out."),
    db_url: Optional[str] = typer.Option(None, "--db-url", help=DB_URL_HELP),
    table: Optional[str] = typer.Option(None, "--table", help=TABLE_HELP),
    trace_flag: Optional[int] = typer.Option(
        None, "--trace-flag", help="Module parameter trace_flag: the flag (0..31) that "
        "marks a transaction for tracing in the proxy's decisions. Default 0."),
    trace_on: Optional[str] = typer.Option(
        None, "--trace-on", help="Module parameter trace_on: 1/on to trace from the start "
        "(default 0); `siptrace on|off` switches it at run time."),
    traced_user_avp: Optional[int] = typer.Option(
        None, "--traced-user-avp", help="Module parameter traced_user_avp (default 6843): "
        "one more row per value of this AVP; 0 for none."),
    duplicate_uri: Optional[List[str]] = typer.Option(
        None, "--duplicate-uri", help="Module parameter duplicate_uri: sip:host[:port] "
        "(UDP copy) and/or hep:host[:port] (HEPv3). Repeatable."),
    decision_socket: Optional[str] = typer.Option(
        None, "--decision-socket", help="Unix datagram socket for the proxy's decisions "
        "(default /run/siptrace/decisions.sock, mode 0660)."),
    control_socket: Optional[str] = typer.Option(
        None, "--control-socket", help="Unix socket for `siptrace on|off|status` "
        "(default /run/siptrace/control.sock, mode 0600)."),
    record_decisions: Optional[str] = typer.Option(
        None, "--record-decisions", help="Append every decision received (JSON lines, with "
        "receive time) for `siptrace replay --decisions`."),
    grace: Optional[str] = typer.Option(
        None, "--grace", help="How long a packet waits for its decision (default 2 s; "
        "e.g. 0.5, 500ms)."),
    trace_all: Optional[bool] = typer.Option(
        None, "--trace-all/--no-trace-all", help="Store every SIP message to or from the "
        "proxy, no decisions needed."),
    hep_capture_id: Optional[int] = typer.Option(
        None, "--hep-capture-id", help="HEP capture agent id (default 1). The auth key "
        "comes from the file or SIPTRACE_HEP_AUTH_KEY."),
    spool_dir: Optional[str] = typer.Option(
        None, "--spool-dir", help="Keep rows here while the database is down."),
    spool_max_bytes: Optional[str] = typer.Option(
        None, "--spool-max-bytes", help="Spool bound (default 1G)."),
):
    """Capture the proxy's SIP traffic live; store what its decisions say to trace.

    Runs beside the proxy until SIGTERM or SIGINT, then stores every row pending.
    Needs root or CAP_NET_RAW (+ CAP_NET_ADMIN for a large capture buffer).

    Example:

      siptrace run -i eth0 --proxy 10.0.0.1 --trace-flag 22 --trace-on 1 --db-url sqlite:///t.db
    """
    from siptrace.sidecar import run_command

    run_command(config, {
        "interface": interface or None, "proxy": proxy or None, "db_url": db_url,
        "table": table, "trace_flag": trace_flag, "trace_on": trace_on,
        "traced_user_avp": traced_user_avp, "duplicate_uri": duplicate_uri or None,
        "decision_socket": decision_socket, "control_socket": control_socket,
        "record_decisions": record_decisions, "grace": grace, "trace_all": trace_all,
        "hep_capture_id": hep_capture_id, "spool_dir": spool_dir,
        "spool_max_bytes": spool_max_bytes})


@app.command()
def purge(
    older_than: str = typer.Option(..., "--older-than",
                                   help="Age of the rows to delete: 7d, 12h, 30m, 1w, 1d12h."),
    db_url: str = typer.Option("sqlite:///siptrace.db", "--db-url", help=DB_URL_HELP),
    table: str = typer.Option("sip_trace", "--table", help=TABLE_HELP),
    batch: int = typer.Option(10_000, "--batch", min=1,
                              help="Rows deleted per transaction (through the date index)."),
):
    """Delete rows older than a given age, in bounded batches.

    On a PostgreSQL table created with daily partitions, whole old partitions are dropped.

    Example:

      siptrace purge --older-than 7d --db-url postgres://siptrace@db/traces
    """
    from siptrace.store import purge_url

    result = purge_url(db_url, table, older_than, batch)
    typer.echo(f"deleted {result.rows_deleted} rows older than {result.cutoff:%Y-%m-%d %H:%M:%S}"
               + (f", dropped {result.partitions_dropped} partitions"
                  if result.partitions_dropped else ""))


CONTROL_SOCKET = typer.Option("/run/siptrace/control.sock", "--control-socket",
                              help="The control socket of the running `siptrace run`.")


@app.command()
def on(control_socket: Path = CONTROL_SOCKET):
    """Switch tracing on at run time, like `openserctl fifo sip_trace on`.

    Example:

      siptrace on --control-socket /run/siptrace/control.sock
    """
    from siptrace.commands import control_command

    control_command(control_socket, "on")


@app.command()
def off(control_socket: Path = CONTROL_SOCKET):
    """Switch tracing off at run time: nothing is stored or mirrored until `on`.

    Example:

      siptrace off --control-socket /run/siptrace/control.sock
    """
    from siptrace.commands import control_command

    control_command(control_socket, "off")


@app.command()
def status(control_socket: Path = CONTROL_SOCKET,
           json_output: bool = typer.Option(False, "--json", help="The reply as JSON.")):
    """Show trace state and counters of the running sidecar.

    traced_requests and traced_replies (the module's statistics), rows stored and
    pending, packets captured, kernel drops, decisions, mirror and spool counters.

    Example:

      siptrace status --control-socket /run/siptrace/control.sock
    """
    from siptrace.commands import control_command

    control_command(control_socket, "status", as_json=json_output)


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
