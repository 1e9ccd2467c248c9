"""What the read commands do: show, calls, flow, export and index. Output is printed here.

Each opens the table with the backend's reader (store/backends.py), which creates
nothing: a missing SQLite file or table is one line of error. ``index`` is the one that
writes (the call index; ClickHouse has none and needs none).
"""

import dataclasses
import shutil
import sys
from pathlib import Path

import typer

from siptrace.errors import ConfigError
from siptrace.store.backends import open_reader
from siptrace.store.text import clean_text, text_to_msg
from siptrace.view import tables
from siptrace.view.search import CallFilter

INDEX_CHUNK = 5_000  # rows read per step by `siptrace index`
RECALL_ROWS = 256  # rows before where the last run stopped, read again to know copies
MAX_CALLS_PER_FLOW = 16  # a glob given to flow/export resolves to at most this many calls


def _width(stream=sys.stdout) -> int | None:
    """The terminal's width; None (nothing cut) when the output is not a terminal."""
    if not stream.isatty():
        return None
    return shutil.get_terminal_size((80, 24)).columns


def _emit(text: str, *, json: bool = False) -> None:
    """Print ``text``: stored values as their bytes (store/text.py's escape reversed, so
    that a Call-ID that is not UTF-8 prints as it was on the wire); JSON stays UTF-8,
    its values keep the escape."""
    if text:
        typer.echo(text if json else text_to_msg(text))


def _typed(filt: CallFilter) -> CallFilter:
    """A filter as typed (argv holds undecodable bytes as surrogates) in stored form."""
    return dataclasses.replace(filt, callid=clean_text(filt.callid),
                               from_user=clean_text(filt.from_user),
                               to_user=clean_text(filt.to_user), user=clean_text(filt.user))


def check_readable(settings) -> None:
    """Fail now, in one line, when the table cannot be read (before serving it)."""
    with open_reader(settings.db_url, settings.table):
        pass


def show_command(settings, *, callid: str | None, limit: int, full: bool, json_out: bool):
    with open_reader(settings.db_url, settings.table) as reader:
        rows = reader.rows(callid=clean_text(callid) if callid else None, limit=limit)
    if json_out:
        _emit(tables.as_json([tables.row_dict(m, with_msg=full) for m in rows]), json=True)
        return
    if not rows:
        typer.echo("no rows" + (f" for Call-ID {callid}" if callid else ""), err=True)
        return
    if not full:
        _emit(tables.rows_table(rows, _width()))
        return
    for m in rows:
        _emit(tables.rows_table([m], _width()))
        typer.echo(m.msg.decode("utf-8", "replace"))


def calls_command(settings, filt: CallFilter, *, output: str):
    with open_reader(settings.db_url, settings.table) as reader:
        calls = reader.search(_typed(filt))
        lag = reader.index_lag()
    if lag:
        typer.echo(f"note: {lag} rows of {settings.table} are not in the call index yet: "
                   "run `siptrace index`", err=True)
    if output == "json":
        _emit(tables.as_json([c.as_dict() for c in calls]), json=True)
    elif output == "csv":
        _emit(tables.as_csv([c.as_dict() for c in calls]).rstrip("\n"))
    elif not calls:
        typer.echo("no calls match", err=True)
    else:
        _emit(tables.calls_table(calls, _width()))
        if len(calls) == filt.limit:
            typer.echo(f"(first {filt.limit}; --limit for more)", err=True)


def resolve_callids(reader, patterns: list[str], related: bool) -> list[str]:
    """Call-IDs as given (in stored form); a glob (* or ?) resolves through the call index."""
    from siptrace.view.search import parse_filter

    callids: list[str] = []
    for pattern in map(clean_text, patterns):
        if "*" in pattern or "?" in pattern:
            found = [c.callid for c in reader.search(
                parse_filter(callid=pattern, limit=MAX_CALLS_PER_FLOW + 1))]
            if not found:
                raise ConfigError(f"no call matches {pattern!r}")
            if len(found) > MAX_CALLS_PER_FLOW:
                raise ConfigError(f"{pattern!r} matches more than {MAX_CALLS_PER_FLOW} calls: "
                                  "narrow it down")
            callids += found
        else:
            callids.append(pattern)
    if related:
        callids = [leg for callid in callids for leg in reader.related(callid)]
    return list(dict.fromkeys(callids))


def flow_command(settings, patterns: list[str], *, related: bool, full: bool,
                 svg: Path | None, html: Path | None, color: bool | None):
    from siptrace.view.ladder import build_ladder, render_text

    with open_reader(settings.db_url, settings.table) as reader:
        callids = resolve_callids(reader, patterns, related)
        messages = reader.messages(callids)
    if not messages:
        raise ConfigError("no messages for " + ", ".join(callids))
    ladder = build_ladder(messages, callids)
    if svg or html:
        from siptrace.view.svg import render_html, render_svg

        if svg:
            _write_text(svg, render_svg(ladder))
        if html:
            _write_text(html, render_html(ladder, title="Call flow: " + ", ".join(callids)))
        return
    color = sys.stdout.isatty() if color is None else color
    _emit(render_text(ladder, width=_width() or 100, color=color, full=full))


def _write_text(path: Path, text: str) -> None:
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror}") from None
    typer.echo(f"wrote {path}", err=True)


def export_command(settings, patterns: list[str], filt: CallFilter | None, *, output: str,
                   fmt: str, related: bool):
    from siptrace.view.pcapout import write_capture

    with open_reader(settings.db_url, settings.table) as reader:
        callids = resolve_callids(reader, patterns, False) if patterns else []
        if filt is not None:
            callids += [c.callid for c in reader.search(_typed(filt))]
        if related:
            callids = list(dict.fromkeys(leg for c in callids for leg in reader.related(c)))
        if not callids:
            raise ConfigError("no calls match: nothing to export")
        messages = reader.messages(callids)
    if output == "-":
        if sys.stdout.isatty():
            raise ConfigError("refusing to write a capture to a terminal: use -o FILE")
        counts = write_capture(sys.stdout.buffer, messages, fmt)
    else:
        try:
            with open(output, "wb") as out:
                counts = write_capture(out, messages, fmt)
        except OSError as exc:
            raise ConfigError(f"{output}: {exc.strerror}") from None
    skipped = {k: v for k, v in counts.items() if k not in ("messages", "packets") and v}
    typer.echo(f"exported {counts['messages']} messages of "
               f"{len(callids)} calls in {counts['packets']} packets"
               + (f" to {output}" if output != "-" else "")
               + ("; skipped " + ", ".join(f"{v} {k}" for k, v in skipped.items()) if skipped else ""),
               err=True)


def _as_row(m) -> tuple:
    """A stored message in the column order the call index folds, its date as the
    column's text (a driver returns a datetime)."""
    return (str(m.date), m.callid, m.traced_user, m.msg, m.method, m.status, m.fromip, m.toip)


def index_command(settings, *, rebuild: bool):
    """Build or bring up to date the call index of a table (any writer's)."""
    from siptrace.store.callindex import CallIndexer, columns_of
    from siptrace.store.schema import index_state_model
    from siptrace.store.urls import storage_error

    with open_reader(settings.db_url, settings.table) as reader:
        if reader.url.dialect == "clickhouse":
            raise ConfigError("a ClickHouse table has no call index and needs none: its "
                              "searches read the table itself")
        indexer = CallIndexer(reader.database, settings.table)
        state = index_state_model(reader.database)
        try:
            indexer.create()
            if rebuild:
                with reader.database.atomic():
                    indexer.model.delete().execute()
                    state.delete().where(state.table_name == settings.table).execute()
            found = state.select(state.last_id).where(state.table_name == settings.table).scalar()
        except Exception as exc:
            raise storage_error(reader.url, "create the call index", exc) from None
        last_id = found or 0
        if last_id:  # the copies of the last messages folded may come after them
            previous = reader.rows(up_to_id=last_id, limit=RECALL_ROWS)[::-1]
            indexer.recall([_as_row(m) for m in previous])
        rows = calls = 0
        while True:
            chunk = reader.rows(after_id=last_id, limit=INDEX_CHUNK, newest_first=False)
            if not chunk:
                break
            last_id = chunk[-1].id
            try:
                calls += indexer.update(columns_of([_as_row(m) for m in chunk]), last_id)
            except Exception as exc:
                raise storage_error(reader.url, "update the call index", exc) from None
            rows += len(chunk)
    typer.echo(f"indexed {rows} rows ({reader.flavour} table {settings.table}); "
               f"{calls} call updates; up to row id {last_id}")
