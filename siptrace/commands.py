"""What the CLI commands do: build sources and sinks, run, print the outcome."""

import contextlib
import signal
from pathlib import Path

import typer

from siptrace.errors import CaptureFormatError, ConfigError, SiptraceError
from siptrace.replay import ReplaySummary, Tracer, replay_files


def check_capture_paths(files: list[Path]) -> list[Path]:
    """Every file must exist and be a regular file: one clear line otherwise."""
    for path in files:
        if not path.exists():
            raise CaptureFormatError(f"{path}: no such file")
        if path.is_dir():
            raise CaptureFormatError(f"{path}: is a directory, not a capture file")
    return files


# replay's exit statuses (documented in `siptrace replay --help`, README.md, docs)
EXIT_INCOMPLETE = 2  # some input could not be read; everything else was stored
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT): what was decoded was stored


class _Interrupt:
    """SIGINT during replay: the first stops reading (what was decoded is stored and
    summed up); another one aborts at once."""

    def __init__(self):
        self.requested = False

    def __call__(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True


def replay_command(files, settings, *, decisions, progress) -> int:
    """Replay, print the summary; the exit status: 0 when every file was read whole,
    EXIT_INCOMPLETE when something could not be read, EXIT_INTERRUPTED after Ctrl-C.
    No file that is a capture at all is a CaptureFormatError (exit status 1)."""
    paths = check_capture_paths(files)
    tracer = _tracer(settings, decisions)
    interrupt = _Interrupt()
    previous = signal.signal(signal.SIGINT, interrupt)
    try:
        summary, writer, mirror = _replay(paths, settings, tracer, progress,
                                          lambda: interrupt.requested)
    except KeyboardInterrupt:
        typer.echo("siptrace: interrupted twice: stopped without storing what was on its "
                   "way to the database", err=True)
        return EXIT_INTERRUPTED
    finally:
        signal.signal(signal.SIGINT, previous)
    if not summary.files and summary.warnings and not interrupt.requested:
        raise CaptureFormatError("; ".join(summary.warnings))
    _print_summary(summary, writer.stats, mirror.stats() if mirror else None,
                   interrupted=interrupt.requested)
    if decisions is not None:
        read = tracer.recording_stats
        typer.echo(f"decisions read:      {read['decisions']} (switches {read['switches']}, "
                   f"malformed lines skipped {read['bad_lines']})")
    if interrupt.requested:
        return EXIT_INTERRUPTED
    return EXIT_INCOMPLETE if summary.warnings else 0


def _replay(paths, settings, tracer, progress: bool, stop):
    """replay_files into the store (and the mirror), both closed after: the summary
    and the two sinks. When it fails or is aborted, the sinks stop without waiting."""
    from siptrace.store.process import ProcessWriter

    # The children must not take the terminal's Ctrl-C before they ignore it: they
    # start with SIGINT ignored (exec keeps that; Python then leaves it alone). Here
    # it is blocked meanwhile, so that a Ctrl-C waits instead of being lost.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    handler = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        mirror = _open_mirror(settings)
        writer = ProcessWriter(settings.db_url, settings.table, settings.call_index)
    finally:
        signal.signal(signal.SIGINT, handler)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    bar = None
    try:
        if progress:
            total = sum(p.stat().st_size for p in paths)
            bar = typer.progressbar(length=total, label="replaying", file=None)
            bar.__enter__()
        summary = replay_files(paths, tracer=tracer, row_sink=writer, mirror=mirror,
                               on_progress=bar.update if bar else None, stop=stop,
                               stream_buffer_bytes=settings.stream_buffer_bytes)
        if bar is not None:
            bar.__exit__(None, None, None)
            bar = None
        if mirror is not None:
            mirror.close()
        writer.close(timeout=None)  # a second Ctrl-C here aborts (KeyboardInterrupt)
    except BaseException:  # the store failed, or a second Ctrl-C
        if bar is not None:
            bar.__exit__(None, None, None)
        for sink in (mirror, writer):
            if sink is not None:
                with contextlib.suppress(SiptraceError):
                    sink.close(timeout=0)
        raise
    return summary, writer, mirror


def _tracer(settings, decisions: Path | None):
    """Every message (no decisions), or what the recorded decisions say, with the
    settings' trace_flag, traced_user_avp and grace as the live run had them."""
    proxies = settings.proxy_addresses
    if decisions is None:
        return Tracer(proxies)
    if not decisions.is_file():
        raise ConfigError(f"decisions: {decisions}: no such file")
    from siptrace.control.decisions import replay_tracer

    return replay_tracer(decisions, proxies, trace_flag=settings.trace_flag,
                         traced_user_avp=settings.traced_user_avp, grace_ns=settings.grace_ns,
                         max_decision_bytes=settings.decision_buffer_bytes)


def _open_mirror(settings):
    if not settings.duplicate_uri:
        return None
    from siptrace.mirror import Mirror

    # The auth key is a secret: from the file or the environment, never argv (ps).
    return Mirror(list(settings.duplicate_uri), hep_capture_id=settings.hep_capture_id,
                  hep_auth_key=settings.hep_auth_key or None)


def _print_summary(summary: ReplaySummary, store_stats: dict, mirror_stats,
                   interrupted: bool = False) -> None:
    """Every packet's fate (they add up to the packets read), then messages and rows;
    each warning first, on stderr."""
    from siptrace.extract import ENCAPSULATIONS, FATES, TCP_LOSSES

    echo = typer.echo
    for warning in summary.warnings:
        echo(f"warning: {warning}", err=True)
    if interrupted:
        echo("warning: interrupted (SIGINT): what was decoded until then is stored", err=True)
    echo(f"files read:          {summary.files}")
    echo(f"packets read:        {summary.packets}")
    for fate, count in summary.fates.items():
        if count:
            label = f"  {FATES[fate]}:"
            extra = (f" (datagrams never whole: {summary.fragments_incomplete})"
                     if fate == "ip_fragments" and summary.fragments_incomplete else "")
            echo(f"{label:<21}{count}{extra}")
    seen = [f"{label} {summary.counters[key]}" for key, label in ENCAPSULATIONS.items()
            if summary.counters[key]]
    if seen:
        echo("encapsulations:      " + ", ".join(seen))
    for line in not_sip_lines(summary.not_sip, summary.sip_messages):
        echo(line, err=line.startswith("warning"))
    echo(f"SIP messages:        {summary.sip_messages}")
    echo(f"messages traced:     {summary.traced_messages}")
    echo(f"rows stored:         {store_stats['rows_written']}")
    if store_stats.get("index_errors"):
        echo(f"warning: the call index missed {store_stats['index_errors']} batches "
             f"({store_stats.get('last_index_error', '')}); `siptrace index --rebuild` "
             "repairs it", err=True)
    if summary.tcp_losses:
        echo("TCP, not stored:     " + ", ".join(
            f"{TCP_LOSSES[key]} {count}" for key, count in summary.tcp_losses.items()))
    echo(f"SIP malformed:       {summary.malformed} (rejected "
         f"{summary.counters['malformed_sip']}, stored with defects "
         f"{summary.counters['sip_defects']})")
    for sample in summary.malformed_samples:
        echo(f"  e.g. {sample}")
    if mirror_stats:
        from siptrace.mirror import format_stats

        for line in format_stats(mirror_stats):
            echo(line)
    echo(f"elapsed:             {summary.elapsed:.2f} s")
    echo(f"messages/s:          {summary.messages_per_second:,.0f}")


def not_sip_lines(not_sip: dict, sip_messages: int) -> list[str]:
    """What the traffic that is not SIP seems to carry, and, when there is no SIP at
    all, a line that says so and why (encrypted SIP cannot be read)."""
    from siptrace.decode.payloads import ENCRYPTED, KINDS

    udp, tcp = not_sip.get("udp", {}), not_sip.get("tcp", {})
    parts = [f"{KINDS[kind]} {count} datagrams" for kind, count in udp.items()]
    parts += [f"{KINDS[kind]} {count} one-way TCP streams" for kind, count in tcp.items()]
    if not parts:
        return []
    lines = ["not SIP:             " + ", ".join(parts)]
    if not sip_messages:
        encrypted = [KINDS[k] for k in ENCRYPTED if k in udp or k in tcp]
        lines.append("warning: no SIP found" + (
            f"; {' and '.join(encrypted)} may carry SIP, encrypted: it cannot be read"
            if encrypted else ""))
    return lines


def control_command(control_socket: Path, command: str, as_json: bool = False) -> None:
    """on / off / status against a running sidecar; a refusal is one line (ControlError)."""
    import json

    from siptrace.control.control import send_command

    reply = send_command(control_socket, command)
    if as_json:
        typer.echo(json.dumps(reply, indent=2, sort_keys=True, default=str))
        return
    if command != "status":
        typer.echo(f"tracing {'on' if reply.get('trace_on') else 'off'}")
        return
    for key, value in _flatten(reply.get("status", reply)):
        typer.echo(f"{key}: {value}")


def _flatten(mapping: dict, prefix: str = ""):
    for key, value in mapping.items():
        if key == "ok":
            continue
        if isinstance(value, dict):
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value
