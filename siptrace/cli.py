"""The siptrace command line: a thin typer app; the work is done elsewhere."""

import sys
from pathlib import Path
from typing import List, Optional

import typer

from siptrace.config import Settings
from siptrace.errors import SiptraceError

app = typer.Typer(
    help="Passive SIP trace collector: the OpenSER siptrace module as a sidecar.\n\n"
         "Example:\n\n  siptrace replay call.pcap --proxy 10.0.0.1:5060",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

DB_URL_HELP = ("Database URL (module parameter db_url): sqlite:///PATH, mysql://USER@HOST/DB, "
               "postgres://USER@HOST/DB, clickhouse://USER@HOST[:9000]/DB. A password "
               "belongs in the config file (db_url = mysql://USER:PASSWORD@HOST/DB) "
               "or SIPTRACE_DB_URL, never here (ps shows "
               "arguments); percent-encode / ? # @ % and spaces in it (%2F %3F %23 %40 %25 %20). "
               f"Default {Settings.db_url}.")
TABLE_HELP = f"Table name (module parameter table; default {Settings.table})."
PROXY_HELP = "The proxy's address IP[:PORT]; sets direction in/out. Repeatable."
CONFIG_HELP = ("INI file, section \\[siptrace]; keys as the options "
               "(file < SIPTRACE_* environment < command line). Default: $SIPTRACE_CONFIG.")

ConfigOpt = typer.Option(None, "--config", help=CONFIG_HELP)
DbUrlOpt = typer.Option(None, "--db-url", help=DB_URL_HELP)
TableOpt = typer.Option(None, "--table", help=TABLE_HELP)


def _version(value: bool) -> None:
    if value:
        from siptrace import __version__

        typer.echo(f"siptrace {__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")):
    """Options before the command (the app's help is the Typer's)."""


def _settings(config: Optional[Path], **given):
    """Settings as every command reads them: file, then SIPTRACE_*, then the flags given."""
    from siptrace.config import load_settings

    return load_settings(config, cli_overrides=given)


StreamBufferOpt = typer.Option(
    None, "--stream-buffer-bytes", help="Bytes TCP streams may hold over all of them; past "
    f"it the oldest incomplete message is cut (default {Settings.stream_buffer_bytes >> 20}M).")
DecisionBufferOpt = typer.Option(
    None, "--decision-buffer-bytes", help="Bytes decisions waiting and transactions may hold "
    f"(default {Settings.decision_buffer_bytes >> 20}M).")


@app.command()
def replay(
    files: List[Path] = typer.Argument(..., help="pcap or pcapng files, replayed in order."),
    config: Optional[Path] = ConfigOpt,
    db_url: Optional[str] = DbUrlOpt,
    table: Optional[str] = TableOpt,
    proxy: Optional[List[str]] = typer.Option(None, "--proxy", help=PROXY_HELP),
    duplicate_uri: Optional[List[str]] = typer.Option(
        None, "--duplicate-uri",
        help="Mirror traced messages: sip:host[:port] (UDP copy) and/or hep:host:port; "
             "repeatable or comma-separated."),
    hep_capture_id: Optional[int] = typer.Option(
        None, "--hep-capture-id", help="HEP capture agent id (module parameter hep_capture_id, "
        f"default {Settings.hep_capture_id}). The auth key comes from the config file or "
        "SIPTRACE_HEP_AUTH_KEY."),
    decisions: Optional[Path] = typer.Option(
        None, "--decisions",
        help="Decisions recorded by `siptrace run --record-decisions`: store only what "
             "the proxy decided to trace."),
    trace_flag: Optional[int] = typer.Option(
        None, "--trace-flag", help="With --decisions: the flag that traces a transaction."),
    traced_user_avp: Optional[int] = typer.Option(
        None, "--traced-user-avp", help="With --decisions: AVP id of the traced users "
        f"(default {Settings.traced_user_avp})."),
    call_index: Optional[bool] = typer.Option(
        None, "--call-index/--no-call-index", help="Keep the call index (<table>_calls) that "
        "`siptrace calls` and the web view search (setting call_index, default on)."),
    stream_buffer_bytes: Optional[str] = StreamBufferOpt,
    decision_buffer_bytes: Optional[str] = DecisionBufferOpt,
    progress: bool = typer.Option(True, "--progress/--no-progress",
                                  help="Progress bar (only shown on a terminal)."),
):
    """Store every SIP message of capture files in the sip_trace table.

    The summary says what became of every packet read. Exit status:

      0    every file was read whole, and stored

      2    some input could not be read, each a warning: a file damaged, cut short
    or not a capture, packets of a link type siptrace does not decode; the rest
    was stored

      1    no file is a capture siptrace can read, or an error (database,
    parameters): one line

      130  interrupted (Ctrl-C): what was decoded until then is stored and summed
    up; Ctrl-C again stops at once

    Example:

      siptrace replay trace.pcapng --db-url sqlite:///siptrace.db --proxy 10.0.0.1:5060
    """
    from siptrace.commands import replay_command

    settings = _settings(config, db_url=db_url, table=table, proxy=proxy or None,
                         duplicate_uri=duplicate_uri or None, hep_capture_id=hep_capture_id,
                         trace_flag=trace_flag, traced_user_avp=traced_user_avp,
                         call_index=call_index, stream_buffer_bytes=stream_buffer_bytes,
                         decision_buffer_bytes=decision_buffer_bytes)
    status = replay_command(files, settings, decisions=decisions,
                            progress=progress and sys.stderr.isatty())
    if status:
        raise typer.Exit(status)


@app.command()
def show(
    config: Optional[Path] = ConfigOpt,
    db_url: Optional[str] = DbUrlOpt,
    table: Optional[str] = TableOpt,
    callid: Optional[str] = typer.Option(None, "--callid", help="Only this Call-ID."),
    limit: int = typer.Option(50, "--limit", min=1, help="At most this many rows."),
    full: bool = typer.Option(False, "--full", help="Print whole messages too."),
    json_out: bool = typer.Option(False, "--json", help="JSON: one object per row."),
):
    """Print stored rows, newest first.

    Example:

      siptrace show --callid abc@host --full
    """
    from siptrace.reading import show_command

    show_command(_settings(config, db_url=db_url, table=table), callid=callid, limit=limit,
                 full=full, json_out=json_out)


SinceOpt = typer.Option(None, "--since", help="Calls active since: an age (30m, 1h, 2d) or a "
                        "UTC time (2024-05-01 12:00).")
UntilOpt = typer.Option(None, "--until", help="Calls active until: an age or a UTC time.")
FromOpt = typer.Option(None, "--from", help="Caller: part of the From user or display name.")
ToOpt = typer.Option(None, "--to", help="Callee: part of the To user (number) or display name.")
UserOpt = typer.Option(None, "--user", help="Part of the From or To user or display name.")
CallidOpt = typer.Option(None, "--callid", help="Call-ID, or a glob (* any text, ? one character).")
IpOpt = typer.Option(None, "--ip", help="An IP address any message of the call was sent from or to.")
MethodOpt = typer.Option(None, "--method", help="A method any message of the call has (INVITE, BYE...).")
StatusOpt = typer.Option(None, "--status", help="Final status: a code (487) or a class (4xx).")


def _filter(since, until, from_user, to_user, user, callid, ip, method, status, limit):
    from siptrace.view.search import parse_filter

    return parse_filter(since=since, until=until, from_user=from_user, to_user=to_user,
                        user=user, callid=callid, ip=ip, method=method, status=status,
                        limit=limit)


@app.command()
def calls(
    config: Optional[Path] = ConfigOpt,
    db_url: Optional[str] = DbUrlOpt,
    table: Optional[str] = TableOpt,
    since: Optional[str] = SinceOpt,
    until: Optional[str] = UntilOpt,
    from_user: Optional[str] = FromOpt,
    to_user: Optional[str] = ToOpt,
    user: Optional[str] = UserOpt,
    callid: Optional[str] = CallidOpt,
    ip: Optional[str] = IpOpt,
    method: Optional[str] = MethodOpt,
    status: Optional[str] = StatusOpt,
    limit: int = typer.Option(50, "--limit", min=1, max=100_000, help="At most this many calls."),
    json_out: bool = typer.Option(False, "--json", help="JSON: one object per call."),
    csv_out: bool = typer.Option(False, "--csv", help="CSV with a header line."),
):
    """Search calls, newest first: one line per Call-ID with From, To, status and state.

    Searches the call index (never the messages). Legs of one call across a B2BUA
    are linked: `siptrace flow --related CALLID` shows them together.

    Examples:

      siptrace calls --to 0049301234 --since 2h --status 4xx

      siptrace calls --ip 192.0.2.10 --method INVITE --json
    """
    from siptrace.reading import calls_command

    if json_out and csv_out:
        raise typer.BadParameter("--json and --csv exclude each other")
    filt = _filter(since, until, from_user, to_user, user, callid, ip, method, status, limit)
    calls_command(_settings(config, db_url=db_url, table=table), filt,
                  output="json" if json_out else "csv" if csv_out else "table")


@app.command()
def flow(
    callids: List[str] = typer.Argument(..., help="Call-IDs (or globs: 'abc*')."),
    config: Optional[Path] = ConfigOpt,
    db_url: Optional[str] = DbUrlOpt,
    table: Optional[str] = TableOpt,
    related: bool = typer.Option(False, "--related", help="Add the linked legs (X-CID, Session-ID)."),
    full: bool = typer.Option(False, "--full", help="Print each message after its arrow."),
    svg: Optional[Path] = typer.Option(None, "--svg", help="Write the ladder as SVG to this file."),
    html: Optional[Path] = typer.Option(None, "--html", help="Write the ladder and the messages as "
                                        "one HTML page to this file."),
    color: Optional[bool] = typer.Option(None, "--color/--no-color",
                                         help="Colours (default: only on a terminal)."),
):
    """Show a call's ladder: one column per address, one arrow per message.

    Time since the first message and since the previous one on the left;
    retransmissions are marked.

    Examples:

      siptrace flow 1-28455@127.0.0.1 --related

      siptrace flow 'a84b4c76e66710*' --html call.html
    """
    from siptrace.reading import flow_command

    flow_command(_settings(config, db_url=db_url, table=table), callids, related=related,
                 full=full, svg=svg, html=html, color=color)


@app.command()
def export(
    callids: Optional[List[str]] = typer.Argument(None, help="Call-IDs (or globs); or use the "
                                                  "search options."),
    output: str = typer.Option(..., "--output", "-o", help="The capture file to write; - for "
                               "standard output."),
    fmt: str = typer.Option("pcap", "--format", help="pcap or pcapng."),
    config: Optional[Path] = ConfigOpt,
    db_url: Optional[str] = DbUrlOpt,
    table: Optional[str] = TableOpt,
    related: bool = typer.Option(False, "--related", help="Add the linked legs."),
    since: Optional[str] = SinceOpt,
    until: Optional[str] = UntilOpt,
    from_user: Optional[str] = FromOpt,
    to_user: Optional[str] = ToOpt,
    user: Optional[str] = UserOpt,
    callid: Optional[str] = CallidOpt,
    ip: Optional[str] = IpOpt,
    method: Optional[str] = MethodOpt,
    status: Optional[str] = StatusOpt,
    limit: int = typer.Option(50, "--limit", min=1, max=100_000,
                              help="With search options: at most this many calls."),
):
    """Write calls as a capture file: one packet per stored message.

    Each packet has the message's stored time, addresses, ports and transport
    (TCP with coherent sequence numbers, IPv6 where stored), for Wireshark,
    sngrep or a carrier's ticket.

    Examples:

      siptrace export 1-28455@127.0.0.1 -o call.pcap

      siptrace export --to 0049301234 --since 1d --status 4xx -o failed.pcapng --format pcapng
    """
    from siptrace.reading import export_command

    if fmt not in ("pcap", "pcapng"):
        raise typer.BadParameter("--format is pcap or pcapng")
    searching = any(v is not None for v in (since, until, from_user, to_user, user, callid, ip,
                                             method, status))
    if not callids and not searching:
        raise typer.BadParameter("give Call-IDs or search options (--to, --since ...)")
    filt = (_filter(since, until, from_user, to_user, user, callid, ip, method, status, limit)
            if searching else None)
    export_command(_settings(config, db_url=db_url, table=table), callids or [], filt,
                   output=output, fmt=fmt, related=related)


@app.command()
def index(
    config: Optional[Path] = ConfigOpt,
    db_url: Optional[str] = DbUrlOpt,
    table: Optional[str] = TableOpt,
    rebuild: bool = typer.Option(False, "--rebuild", help="Start again from the first row."),
):
    """Build the call index of a table, or bring it up to date.

    siptrace keeps the index of the rows it writes; run this for a sip_trace table
    that Kamailio's or OpenSER's own siptrace module writes (from cron, say: each run
    goes on from where the last one stopped). It creates <table>_calls beside it.

    Example:

      siptrace index --db-url mysql://kamailio@db/kamailio
    """
    from siptrace.reading import index_command

    index_command(_settings(config, db_url=db_url, table=table), rebuild=rebuild)


@app.command()
def web(
    config: Optional[Path] = ConfigOpt,
    db_url: Optional[str] = DbUrlOpt,
    table: Optional[str] = TableOpt,
    listen: Optional[str] = typer.Option(
        None, "--listen", help="IP:PORT to serve on (setting web_listen, default "
        f"{Settings.web_listen}). Any other address than loopback needs web_password, from the "
        "config file or SIPTRACE_WEB_PASSWORD."),
):
    """Serve a read-only web view: search, call list, ladder, messages, pcap download.

    Example:

      siptrace web --listen 127.0.0.1:8080
    """
    from siptrace.reading import check_readable
    from siptrace.web.server import serve

    settings = _settings(config, db_url=db_url, table=table, web_listen=listen)
    check_readable(settings)
    serve(settings)


@app.command()
def run(
    config: Optional[Path] = ConfigOpt,
    interface: Optional[List[str]] = typer.Option(
        None, "--interface", "-i", help="Capture interface, repeatable; 'any' for all."),
    proxy: Optional[List[str]] = typer.Option(
        None, "--proxy", help="The proxy's address: IP (every port; use this with TCP), "
        "IP:PORT or [IPv6]:PORT. Repeatable. Builds the capture filter and sets in/out."),
    db_url: Optional[str] = typer.Option(None, "--db-url", help=DB_URL_HELP),
    table: Optional[str] = typer.Option(None, "--table", help=TABLE_HELP),
    trace_flag: Optional[int] = typer.Option(
        None, "--trace-flag", help="Module parameter trace_flag: the flag (0..31) that "
        "marks a transaction for tracing in the proxy's decisions. "
        f"Default {Settings.trace_flag}."),
    trace_on: Optional[str] = typer.Option(
        None, "--trace-on", help="Module parameter trace_on: 1/on to trace from the start "
        f"(default {int(Settings.trace_on)}); `siptrace on|off` switches it at run time."),
    traced_user_avp: Optional[int] = typer.Option(
        None, "--traced-user-avp", help="Module parameter traced_user_avp (default "
        f"{Settings.traced_user_avp}): one more row per value of this AVP; 0 for none."),
    duplicate_uri: Optional[List[str]] = typer.Option(
        None, "--duplicate-uri", help="Module parameter duplicate_uri: sip:host[:port] "
        "(UDP copy) and/or hep:host[:port] (HEPv3). Repeatable."),
    decision_socket: Optional[str] = typer.Option(
        None, "--decision-socket", help="Unix datagram socket for the proxy's decisions "
        f"(default {Settings.decision_socket}, mode 0660)."),
    control_socket: Optional[str] = typer.Option(
        None, "--control-socket", help="Unix socket for `siptrace on|off|status` "
        f"(default {Settings.control_socket}, mode 0600)."),
    record_decisions: Optional[str] = typer.Option(
        None, "--record-decisions", help="Append every decision received (JSON lines, with "
        "receive time) for `siptrace replay --decisions`."),
    grace: Optional[str] = typer.Option(
        None, "--grace", help="How long a packet waits for its decision (default "
        f"{Settings.grace:g} s; e.g. 0.5, 500ms)."),
    trace_all: Optional[bool] = typer.Option(
        None, "--trace-all/--no-trace-all", help="Store every SIP message to or from the "
        "proxy, no decisions needed; from the start, unless --trace-on 0 is given."),
    hep_capture_id: Optional[int] = typer.Option(
        None, "--hep-capture-id", help="HEP capture agent id (default "
        f"{Settings.hep_capture_id}). The auth key comes from the file or "
        "SIPTRACE_HEP_AUTH_KEY."),
    hep_listen: Optional[List[str]] = typer.Option(
        None, "--hep-listen", help="Also take HEP from agents (Kamailio, OpenSIPS, "
        "FreeSWITCH, heplify): udp:IP:PORT (HEPv1-v3) or tcp:IP:PORT (HEPv3). Repeatable."),
    spool_dir: Optional[str] = typer.Option(
        None, "--spool-dir", help="Keep rows here while the database is down."),
    spool_max_bytes: Optional[str] = typer.Option(
        None, "--spool-max-bytes",
        help=f"Spool bound (default {Settings.spool_max_bytes >> 20}M; e.g. 512M, 2G)."),
    call_index: Optional[bool] = typer.Option(
        None, "--call-index/--no-call-index", help="Keep the call index (<table>_calls) that "
        "`siptrace calls` and the web view search (setting call_index, default on)."),
    stream_buffer_bytes: Optional[str] = StreamBufferOpt,
    decision_buffer_bytes: Optional[str] = DecisionBufferOpt,
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
        "hep_capture_id": hep_capture_id, "hep_listen": hep_listen or None,
        "spool_dir": spool_dir,
        "spool_max_bytes": spool_max_bytes, "call_index": call_index,
        "stream_buffer_bytes": stream_buffer_bytes, "decision_buffer_bytes": decision_buffer_bytes})


@app.command()
def purge(
    older_than: str = typer.Option(..., "--older-than",
                                   help="Age of the rows to delete: 7d, 12h, 30m, 1w, 1d12h."),
    config: Optional[Path] = ConfigOpt,
    db_url: Optional[str] = DbUrlOpt,
    table: Optional[str] = TableOpt,
    batch: int = typer.Option(10_000, "--batch", min=1,
                              help="Rows deleted per transaction (through the date index)."),
):
    """Delete rows older than a given age, in bounded batches (and their calls' index).

    Example:

      siptrace purge --older-than 7d --db-url postgres://siptrace@db/traces
    """
    from siptrace.store import purge_url

    settings = _settings(config, db_url=db_url, table=table)
    result = purge_url(settings.db_url, settings.table, older_than, batch)
    typer.echo(f"deleted {result.rows_deleted} rows older than {result.cutoff:%Y-%m-%d %H:%M:%S}")


@app.command()
def deadletter(
    action: str = typer.Argument(..., help="list: show the rows set aside; replay: store "
                                 "them again (those still refused stay)."),
    config: Optional[Path] = ConfigOpt,
    spool_dir: Optional[str] = typer.Option(
        None, "--spool-dir", help="The spool directory of `siptrace run` (setting spool_dir)."),
    db_url: Optional[str] = DbUrlOpt,
    table: Optional[str] = TableOpt,
):
    """Rows the database refused for good (a CHECK constraint, a trigger), set aside
    by `siptrace run` in its spool directory's dead-letter file.

    Examples:

      siptrace deadletter list --spool-dir /var/spool/siptrace

      siptrace deadletter replay --config /etc/siptrace.ini
    """
    from siptrace.errors import ConfigError
    from siptrace.store.deadletter import describe, read_deadletter, replay_with_settings

    if action not in ("list", "replay"):
        raise typer.BadParameter("the action is list or replay")
    settings = _settings(config, spool_dir=spool_dir, db_url=db_url, table=table)
    if not settings.spool_dir:
        raise ConfigError("spool_dir: not set (--spool-dir, SIPTRACE_SPOOL_DIR or the "
                          "config file)")
    if action == "list":
        for entry in read_deadletter(settings.spool_dir):
            typer.echo(describe(entry))
        return
    tried, stored = replay_with_settings(settings)
    typer.echo(f"rows stored: {stored} of {tried}; still refused: {tried - stored}")


CONTROL_SOCKET = typer.Option(Settings.control_socket, "--control-socket",
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
