"""The web view's Starlette application: search, call, message and pcap routes.

Routes (GET only; Call-IDs hold any character, so they travel as query parameters):

``/``             search form and the calls found, newest first
``/call``         ``?callid=X[&legs=1]``: summary, related legs, ladder, messages
``/message``      ``?id=N``: one stored message, whole
``/call.pcap``    ``?callid=X[&legs=1]``: the call (with its related legs) as pcap
``/calls.pcap``   the search's query: the calls found, as pcap
``/static/...``   the style sheet

Each request opens its own reader (store/backends.py) in a worker thread (SQLite connections are
per thread). ConfigError is a 400 page, StorageError a 503 page, one line each.
"""

import base64
import binascii
import hmac
import logging
import re
import tempfile
from datetime import datetime, timezone
from http import HTTPStatus
from ipaddress import ip_address
from pathlib import Path
from urllib.parse import urlencode

import jinja2
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from siptrace.errors import ConfigError, StorageError
from siptrace.redact import scrub
from siptrace.store.backends import open_reader
from siptrace.view.ladder import build_ladder
from siptrace.view.pcapout import write_capture
from siptrace.view.search import DEFAULT_LIMIT, parse_filter
from siptrace.view.summary import summarize
from siptrace.view.svg import render_svg

HERE = Path(__file__).resolve().parent
SECURITY_HEADERS = {
    "content-security-policy": "default-src 'none'; style-src 'self' 'unsafe-inline'; "
                               "img-src 'self' data:",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
    "cache-control": "no-store",  # traces are personal data: no copies in shared caches
}
PCAP_TYPE = "application/vnd.tcpdump.pcap"  # IANA media type
PCAP_CHUNK = 1 << 16
SPOOL_BYTES = 16 << 20  # a pcap bigger than this is built in a temporary file
MAX_PCAP_MESSAGES = 200_000  # a search's pcap is built in memory first: bound it
# The form's fields: query parameter -> parse_filter keyword.
FORM = {"since": "since", "until": "until", "from": "from_user", "to": "to_user",
        "user": "user", "callid": "callid", "ip": "ip", "method": "method",
        "status": "status", "limit": "limit"}
_ARROW = re.compile(r'(<g id="msg-\d+"[^>]*? data-row-id="(\d+)"[^>]*>.*?</g>)', re.S)
log = logging.getLogger("uvicorn.error")  # formatted and shown as uvicorn's own


# -- formatting ------------------------------------------------------------------------

def _when(date: datetime | None, precise: bool = False) -> str:
    if date is None:
        return ""
    return date.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] if precise else \
        date.strftime("%Y-%m-%d %H:%M:%S")


def _clock(date: datetime) -> str:
    return date.strftime("%H:%M:%S.%f")[:-3]


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s" if seconds >= 10 else f"{seconds:.2f} s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def _url(path: str, **params) -> str:
    """``path?query`` with every value percent-encoded (Call-IDs hold ``&``, ``#``...)."""
    query = urlencode({k: v for k, v in params.items() if v not in (None, "")})
    return f"{path}?{query}" if query else path


def _text(msg: bytes) -> str:
    return msg.decode("utf-8", "replace").replace("\r\n", "\n")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)[:60].strip("._") or "call"


TEMPLATES = jinja2.Environment(
    loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True,
    undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
TEMPLATES.filters.update(when=_when, clock=_clock, duration=_duration, text=_text)
TEMPLATES.globals.update(url=_url)


def render(template: str, status_code: int = 200, **context) -> HTMLResponse:
    return HTMLResponse(TEMPLATES.get_template(template).render(**context),
                        status_code=status_code)


def error_page(status: int, message: str) -> HTMLResponse:
    return render("error.html", status, status=status, phrase=HTTPStatus(status).phrase,
                  message=message)


def link_arrows(svg: str) -> str:
    """Each arrow group of the (escaped) SVG wrapped in a link to its message."""
    return _ARROW.sub(lambda m: f'<a href="{_url("/message", id=m[2])}">{m[1]}</a>', svg)


# -- reading ---------------------------------------------------------------------------

async def _read(request: Request, work):
    """``work(reader)`` in a worker thread, on a reader of its own."""
    state = request.app.state

    def run():
        with open_reader(state.db_url, state.table) as reader:
            return work(reader)
    return await run_in_threadpool(run)


def _search_form(request: Request) -> dict[str, str]:
    return {name: request.query_params.get(name, "") for name in FORM}


def _filter(form: dict[str, str]):
    return parse_filter(**{FORM[name]: value for name, value in form.items()})


def _callid(request: Request) -> str:
    callid = request.query_params.get("callid", "")
    if not callid:
        raise ConfigError("callid: missing (use /call?callid=...)")
    return callid


# -- pages -----------------------------------------------------------------------------

async def search_page(request: Request) -> HTMLResponse:
    form = _search_form(request)
    page = {"form": form, "query": {k: v for k, v in form.items() if v},
            "default_limit": DEFAULT_LIMIT, "calls": None, "error": "", "lag": 0}
    try:
        filt = _filter(form)
    except ConfigError as exc:
        return render("search.html", 400, **{**page, "error": str(exc)})
    calls, lag = await _read(request, lambda reader: (reader.search(filt), reader.index_lag()))
    return render("search.html", **{**page, "calls": calls, "limit": filt.limit, "lag": lag})


async def call_page(request: Request) -> HTMLResponse:
    callid = _callid(request)
    legs = request.query_params.get("legs") == "1"

    def work(reader):
        related = reader.related(callid) or [callid]
        return related, reader.messages(related)

    related, messages = await _read(request, work)
    calls = summarize(messages)
    if callid not in calls:
        raise HTTPException(404, "no call with this Call-ID")
    shown = related if legs else [callid]
    if not legs:
        messages = [m for m in messages if m.callid == callid]
    svg = link_arrows(render_svg(build_ladder(messages, callids=shown)))
    others = [calls[c] for c in related[1:] if c in calls]
    return render("call.html", call=calls[callid], legs=others, with_legs=legs,
                  shown=shown, messages=messages, svg=svg)


async def message_page(request: Request) -> HTMLResponse:
    text = request.query_params.get("id", "")
    if not (text.isascii() and text.isdigit()) or len(text) > 20 or int(text) >= 1 << 64:
        raise ConfigError("id: a stored message's row id (a number) is needed")

    def work(reader):
        message = reader.message(int(text))
        if message is None:
            return None
        return message, reader.messages([message.callid])

    found = await _read(request, work)
    if found is None:
        raise HTTPException(404, f"no message with id {text}")
    message, siblings = found
    ids = [m.id for m in siblings]
    index = ids.index(message.id) if message.id in ids else -1
    before = siblings[index - 1] if index > 0 else None
    after = siblings[index + 1] if 0 <= index < len(siblings) - 1 else None
    return render("message.html", message=message, index=index, count=len(siblings),
                  before=before, after=after)


# -- captures ----------------------------------------------------------------------------

def _spooled(messages) -> tuple:
    """The messages written as pcap into a spooled temporary file: (file, size)."""
    spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES)
    try:
        write_capture(spool, messages)
        size = spool.tell()
        spool.seek(0)
        return spool, size
    except BaseException:
        spool.close()
        raise


async def _pcap(request: Request, work, filename: str) -> StreamingResponse:
    """The messages ``work(reader)`` returns, as a pcap download."""
    spool, size = await _read(request, lambda reader: _spooled(work(reader)))

    def chunks():
        try:
            while block := spool.read(PCAP_CHUNK):
                yield block
        finally:
            spool.close()
    headers = {"content-disposition": f'attachment; filename="{filename}"',
               "content-length": str(size)}
    return StreamingResponse(chunks(), media_type=PCAP_TYPE, headers=headers)


async def call_pcap(request: Request) -> StreamingResponse:
    callid = _callid(request)
    legs = request.query_params.get("legs") == "1"

    def work(reader):
        callids = (reader.related(callid) or [callid]) if legs else [callid]
        return reader.messages(callids)
    name = f"siptrace-{_slug(callid)}{'-legs' if legs else ''}.pcap"
    return await _pcap(request, work, name)


async def search_pcap(request: Request) -> StreamingResponse:
    filt = _filter(_search_form(request))

    def work(reader):
        calls = reader.search(filt)
        total = sum(call.msg_count for call in calls)
        if total > MAX_PCAP_MESSAGES:
            raise ConfigError(f"these {len(calls)} calls hold {total} messages, more than "
                              f"{MAX_PCAP_MESSAGES} for one download: narrow the search")
        return reader.messages([call.callid for call in calls])
    name = f"siptrace-search-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}.pcap"
    return await _pcap(request, work, name)


# -- errors ------------------------------------------------------------------------------

async def _bad_request(request: Request, exc: ConfigError) -> HTMLResponse:
    return error_page(400, str(exc))


async def _unavailable(request: Request, exc: StorageError) -> HTMLResponse:
    line = scrub(str(exc), request.app.state.password)
    log.warning("database unavailable: %s", line)
    return error_page(503, line)


async def _http_error(request: Request, exc: HTTPException) -> HTMLResponse:
    response = error_page(exc.status_code, exc.detail)
    response.headers.update(exc.headers or {})
    return response


# -- the guard: security headers, authentication, Host names ------------------------------

def _is_loopback_host(host: str) -> bool:
    """Whether a Host header names this machine's loopback (not a rebound DNS name)."""
    name = host.strip().lower()
    if name.startswith("["):
        name = name[1:].partition("]")[0]
    elif name.count(":") == 1:
        name = name.partition(":")[0]
    if name == "localhost":
        return True
    try:
        return ip_address(name).is_loopback
    except ValueError:
        return False


class Guard:
    """ASGI middleware: security headers on every response; with a password, HTTP Basic
    (``user:password``) or ``Authorization: Bearer <password>``; without one, only
    loopback Host names, so a rebound DNS name cannot read a local server."""

    def __init__(self, app, user: str, password: str | None):
        self.app = app
        self.user = user.encode("utf-8")
        self.password = password.encode("utf-8") if password else None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def send_secured(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers[name] = value
            await send(message)

        try:
            refusal = self._refusal(Headers(scope=scope))
            await (refusal or self.app)(scope, receive, send_secured)
        except Exception:
            if started:
                raise
            await error_page(500, "internal error (see the server's log)")(
                scope, receive, send_secured)
            raise

    def _refusal(self, headers: Headers):
        if self.password is None:
            if _is_loopback_host(headers.get("host", "")):
                return None
            return error_page(400, "this server answers to loopback names only "
                                   "(set web_password to serve others)")
        if self._authorized(headers.get("authorization", "")):
            return None
        response = error_page(401, "authentication required")
        response.headers["www-authenticate"] = 'Basic realm="siptrace", charset="UTF-8"'
        return response

    def _authorized(self, value: str) -> bool:
        scheme, _, credentials = value.strip().partition(" ")
        credentials = credentials.strip().encode("latin-1")  # the header's bytes again
        if scheme.lower() == "bearer":
            return hmac.compare_digest(credentials, self.password)
        if scheme.lower() != "basic":
            return False
        try:
            user, sep, password = base64.b64decode(credentials, validate=True).partition(b":")
        except (binascii.Error, ValueError):
            return False
        user_ok = hmac.compare_digest(user, self.user)
        password_ok = hmac.compare_digest(password, self.password)
        return bool(sep) and user_ok and password_ok


def create_app(db_url: str, table: str, *, user: str = "siptrace",
               password: str | None = None) -> Starlette:
    """The web view of ``table`` in ``db_url``; ``password`` turns authentication on."""
    routes = [
        Route("/", search_page),
        Route("/call", call_page),
        Route("/message", message_page),
        Route("/call.pcap", call_pcap),
        Route("/calls.pcap", search_pcap),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    app = Starlette(
        routes=routes,
        middleware=[Middleware(Guard, user=user, password=password or None)],
        exception_handlers={ConfigError: _bad_request, StorageError: _unavailable,
                            HTTPException: _http_error})
    app.state.db_url, app.state.table, app.state.password = db_url, table, password
    return app
