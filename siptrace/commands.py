"""What the CLI commands do: build sources and sinks, run, print the outcome."""

from pathlib import Path

import typer

from siptrace.errors import CaptureFormatError, ConfigError
from siptrace.replay import ReplaySummary, Tracer, replay_files


def check_capture_paths(files: list[Path]) -> list[Path]:
    """Every file must exist and be a regular file: one clear line otherwise."""
    for path in files:
        if not path.exists():
            raise CaptureFormatError(f"{path}: no such file")
        if path.is_dir():
            raise CaptureFormatError(f"{path}: is a directory, not a capture file")
    return files


def replay_command(files, settings, *, decisions, progress):
    from siptrace.store.process import ProcessWriter

    paths = check_capture_paths(files)
    tracer = _tracer(settings, decisions)
    mirror = _open_mirror(settings)
    writer = ProcessWriter(settings.db_url, settings.table, settings.call_index)
    bar = None
    try:
        if progress:
            total = sum(p.stat().st_size for p in paths)
            bar = typer.progressbar(length=total, label="replaying", file=None)
            bar.__enter__()
        summary = replay_files(paths, tracer=tracer, row_sink=writer,
                               mirror=mirror, on_progress=bar.update if bar else None)
    finally:
        if bar is not None:
            bar.__exit__(None, None, None)
        if mirror is not None:
            mirror.close()
        writer.close(timeout=None)
    _print_summary(summary, writer.stats, mirror.stats() if mirror else None)


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
                         traced_user_avp=settings.traced_user_avp, grace_ns=settings.grace_ns)


def _open_mirror(settings):
    if not settings.duplicate_uri:
        return None
    from siptrace.mirror import Mirror

    # The auth key is a secret: from the file or the environment, never argv (ps).
    return Mirror(list(settings.duplicate_uri), hep_capture_id=settings.hep_capture_id,
                  hep_auth_key=settings.hep_auth_key or None)


def _print_summary(summary: ReplaySummary, store_stats: dict, mirror_stats) -> None:
    echo = typer.echo
    for warning in summary.warnings:
        echo(f"warning: {warning}", err=True)
    echo(f"files read:          {summary.files}")
    echo(f"packets read:        {summary.packets}")
    echo(f"SIP messages:        {summary.sip_messages}")
    echo(f"messages traced:     {summary.traced_messages}")
    echo(f"rows stored:         {store_stats['rows_written']}")
    if store_stats.get("index_errors"):
        echo(f"warning: the call index missed {store_stats['index_errors']} batches "
             f"({store_stats.get('last_index_error', '')}); `siptrace index --rebuild` "
             "repairs it", err=True)
    echo(f"non-SIP skipped:     {summary.non_sip}")
    echo(f"malformed:           {summary.malformed} (packets {summary.counters['malformed']}"
         f" + {summary.counters['truncated']} cut short, SIP rejected "
         f"{summary.counters['malformed_sip']}, SIP stored with defects "
         f"{summary.counters['sip_defects']})")
    for sample in summary.malformed_samples:
        echo(f"  e.g. {sample}")
    echo(f"incomplete fragments: {summary.fragments_incomplete}")
    echo(f"incomplete streams:  {summary.streams_incomplete}")
    if mirror_stats:
        from siptrace.mirror import format_stats

        for line in format_stats(mirror_stats):
            echo(line)
    echo(f"elapsed:             {summary.elapsed:.2f} s")
    echo(f"messages/s:          {summary.messages_per_second:,.0f}")


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
