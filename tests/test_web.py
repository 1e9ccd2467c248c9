"""`siptrace web` over HTTP: a real uvicorn server, urllib as the client.

(starlette's TestClient needs httpx, which is not installed.) The data: the SIPp calls
of pcaps/kamailio-udp.pcap replayed by the real command, plus two B2BUA legs stored
through TraceStore whose Call-ID, From display name and reason phrase are hostile.
"""

import base64
import html
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import datetime, timedelta
from types import SimpleNamespace

import markupsafe
import pytest
import uvicorn

from conftest import PCAPS
from siptrace.errors import ConfigError
from siptrace.rows import TraceRow
from siptrace.store.tracestore import TraceStore
from siptrace.web import app as web_app
from siptrace.web.app import create_app
from siptrace.web.server import serve

HOSTILE = "<script>alert(1)</script>"
EVIL_CALLID = f"evil{HOSTILE}\"'&x=1#f+%20 @h"  # query and fragment characters too
LEG_B = "leg-b@b2bua.example"
SIPP_CALLS = [f"{i}-28455@127.0.0.1" for i in range(1, 6)]
PASSWORD = "s3cret-Pa55"
START_TIMEOUT = 20
SECURITY_HEADERS = {
    "content-security-policy": "default-src 'none'; style-src 'self' 'unsafe-inline'; "
                               "img-src 'self' data:",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
}
WELL_FORMED_TAG = re.compile(r'<[a-z0-9]+(\s+[A-Za-z0-9:-]+(="[^"]*")?)*\s*/?>')
PCAP_MAGICS = (b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\xc3\xd4")


# -- data ----------------------------------------------------------------------------------

def _message(first: str, callid: str, from_name: str, extra: str = "") -> bytes:
    user = "mallory@10.9.9.9" if extra == "" else "b2bua@10.0.0.1"
    return (f"{first}\r\nVia: SIP/2.0/UDP 10.9.9.9:5060;branch=z9hG4bK1\r\n"
            f"From: \"{from_name}\" <sip:{user}>;tag=t1\r\n"
            f"To: <sip:victim@example.com>\r\nCall-ID: {callid}\r\nCSeq: 1 INVITE\r\n"
            f"{extra}Content-Length: 0\r\n\r\n").encode()


def hostile_rows() -> list[TraceRow]:
    """Leg A (hostile Call-ID) 10.9.9.9 -> proxy; leg B proxy -> 10.0.0.2 with X-CID: A."""
    start = datetime(2024, 5, 1, 12, 0, 0)
    name = f"{HOSTILE}\\\"'"
    reason = f"Busy {HOSTILE}\"'"

    def row(ms, callid, msg, method, status, src, dst):
        return TraceRow(str(start + timedelta(milliseconds=ms)), callid, "", msg, method, status,
                        src, dst, "t1", "in")
    a, b, proxy = "udp:10.9.9.9:5060", "udp:10.0.0.2:5060", "udp:10.0.0.1:5060"
    xcid = f"X-CID: {EVIL_CALLID}\r\n"
    return [
        row(0, EVIL_CALLID, _message("INVITE sip:victim@example.com SIP/2.0", EVIL_CALLID, name),
            "INVITE", "", a, proxy),
        row(5, LEG_B, _message("INVITE sip:victim@10.0.0.2 SIP/2.0", LEG_B, "proxy", xcid),
            "INVITE", "", proxy, b),
        row(20, LEG_B, _message(f"SIP/2.0 486 {reason}", LEG_B, "proxy", xcid),
            "INVITE", "486", b, proxy),
        row(25, EVIL_CALLID, _message(f"SIP/2.0 486 {reason}", EVIL_CALLID, name),
            "INVITE", "486", proxy, a),
    ]


def replay_database(path) -> str:
    """A SQLite file holding the replayed SIPp calls and the hostile legs; its db_url."""
    url = f"sqlite:///{path}"
    subprocess.run([sys.executable, "-m", "siptrace", "replay", str(PCAPS / "kamailio-udp.pcap"),
                    "--db-url", url, "--proxy", "127.0.0.1:5060", "--no-progress"],
                   check=True, capture_output=True, timeout=120)
    with TraceStore(url) as store:
        store.insert(hostile_rows())
    return url


# -- a server in this process ----------------------------------------------------------------

class ThreadServer:
    """uvicorn serving ``app`` on 127.0.0.1 (a free port) in a thread."""

    def __init__(self, app):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.base = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + START_TIMEOUT
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the web server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()


class Reply:
    def __init__(self, status: int, headers, body: bytes):
        self.status, self.headers, self.body = status, headers, body

    @property
    def text(self) -> str:
        return self.body.decode("utf-8")


def get(url: str, headers: dict | None = None, method: str = "GET") -> Reply:
    request = urllib.request.Request(url, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return Reply(response.status, response.headers, response.read())
    except urllib.error.HTTPError as error:
        with error:
            return Reply(error.code, error.headers, error.read())


def call_links(page: str) -> list[str]:
    """The Call-IDs the page links to, in order, once each."""
    found = re.findall(r'href="/call\?callid=([^"&]*)"', page)
    return list(dict.fromkeys(urllib.parse.unquote_plus(html.unescape(c)) for c in found))


@pytest.fixture(scope="module")
def db_url(tmp_path_factory):
    return replay_database(tmp_path_factory.mktemp("web") / "trace.db")


@pytest.fixture(scope="module")
def web(db_url):
    with ThreadServer(create_app(db_url, "sip_trace")) as server:
        yield server


@pytest.fixture(scope="module")
def guarded(db_url):
    with ThreadServer(create_app(db_url, "sip_trace", user="ops", password=PASSWORD)) as server:
        yield server


def search(web, **params) -> Reply:
    return get(f"{web.base}/?{urllib.parse.urlencode(params)}")


# -- searching -------------------------------------------------------------------------------

def test_search_lists_calls_newest_first(web):
    reply = search(web)
    assert reply.status == 200
    assert reply.headers["content-type"] == "text/html; charset=utf-8"
    assert call_links(reply.text) == SIPP_CALLS[::-1] + [LEG_B, EVIL_CALLID]
    for column in ("time", "from", "to", "method", "status", "state", "duration", "msgs"):
        assert f">{column}</th>" in reply.text
    assert "200 OK" in reply.text and "completed" in reply.text
    assert '<td class="num mono">13</td>' in reply.text  # messages per SIPp call


@pytest.mark.parametrize("params, expected", [
    ({"callid": "2-*"}, [SIPP_CALLS[1]]),
    ({"callid": "?-28455@127.0.0.1", "limit": "2"}, [SIPP_CALLS[4], SIPP_CALLS[3]]),
    ({"status": "4xx"}, [LEG_B, EVIL_CALLID]),
    ({"status": "486"}, [LEG_B, EVIL_CALLID]),
    ({"status": "200", "method": "bye"}, SIPP_CALLS[::-1]),
    ({"ip": "10.0.0.2"}, [LEG_B]),
    ({"from": "MALLORY"}, [EVIL_CALLID]),
    ({"from": "script>alert"}, [EVIL_CALLID]),
    ({"to": "service", "callid": "1-*"}, [SIPP_CALLS[0]]),
    ({"user": "victim"}, [LEG_B, EVIL_CALLID]),
    ({"since": "2026-11-30 00:00"}, SIPP_CALLS[::-1]),
    ({"until": "2024-05-02"}, [LEG_B, EVIL_CALLID]),
    ({"method": "CANCEL"}, []),
])
def test_search_filters(web, params, expected):
    reply = search(web, **params)
    assert reply.status == 200
    assert call_links(reply.text) == expected
    if not expected:
        assert "No call matches." in reply.text


def test_search_keeps_the_form_and_says_when_the_limit_is_reached(web):
    page = search(web, limit="2", callid="*28455*").text
    assert len(call_links(page)) == 2
    assert "limit of 2 reached" in page
    assert 'name="callid" value="*28455*"' in page and 'name="limit" value="2"' in page


@pytest.mark.parametrize("params, message", [
    ({"status": "9"}, "status &#39;9&#39;: use a code (487) or a class (4xx)"),
    ({"ip": "nope"}, "ip &#39;nope&#39; is not an IP address"),
    ({"method": "IN VITE"}, "is not a SIP method"),
    ({"limit": "0"}, "limit must be 1 to"),
    ({"limit": "lots"}, "is not a number"),
    ({"since": "yesterday"}, "yesterday"),
    ({"since": "1h", "until": "2h"}, "--since is after --until"),
])
def test_a_bad_filter_is_400_with_its_one_line(web, params, message):
    reply = search(web, **params)
    assert reply.status == 400
    assert re.search(r'<p class="error" role="alert">[^<\n]*' + re.escape(message), reply.text)
    assert "Traceback" not in reply.text
    assert '<form class="search"' in reply.text  # the form stays, to fix the value


# -- a call, its messages, its legs ------------------------------------------------------------

def test_call_page_shows_the_ladder_and_every_message(web):
    page = get(f"{web.base}/call?callid={urllib.parse.quote(SIPP_CALLS[0])}").text
    assert "<svg" in page and "</svg>" in page
    arrows = re.findall(r'<a href="/message\?id=(\d+)"><g id="msg-(\d+)"[^>]* data-row-id="(\d+)"',
                        page)
    assert [int(index) for _, index, _ in arrows] == list(range(13))
    assert all(link == row for link, _, row in arrows)
    rows = re.findall(r'<tr id="row-(\d+)">', page)
    assert rows == [row for _, _, row in arrows]
    assert "INVITE" in page and "180 Ringing" in page and "BYE" in page
    assert "None found" in page  # no related legs


def test_message_page_shows_the_whole_message(web):
    call = get(f"{web.base}/call?callid={urllib.parse.quote(SIPP_CALLS[0])}").text
    first, second = re.findall(r'<tr id="row-(\d+)">', call)[:2]
    reply = get(f"{web.base}/message?id={second}")
    assert reply.status == 200
    body = re.search(r'<pre class="msg">(.*?)</pre>', reply.text, re.S)[1]
    text = html.unescape(body)
    assert text.startswith("SIP/2.0 100 ") and f"Call-ID: {SIPP_CALLS[0]}\n" in text
    assert "<sip:" not in body and "&lt;sip:" in body  # escaped
    assert f'href="/message?id={first}"' in reply.text  # previous
    assert "message 2 of 13" in reply.text


def test_related_legs_are_linked_both_ways(web):
    page_a = get(f"{web.base}/call?callid={urllib.parse.quote(EVIL_CALLID)}").text
    assert call_links(page_a)[:1] == [LEG_B]
    assert len(re.findall(r'<g id="msg-', page_a)) == 2
    with_legs = get(f"{web.base}/call?callid={urllib.parse.quote(EVIL_CALLID)}&legs=1").text
    assert len(re.findall(r'<g id="msg-', with_legs)) == 4
    assert 'data-call="2"' in with_legs
    page_b = get(f"{web.base}/call?callid={urllib.parse.quote(LEG_B)}").text
    assert EVIL_CALLID in call_links(page_b)


@pytest.mark.parametrize("path, status, message", [
    ("/call?callid=no-such-call", 404, "no call with this Call-ID"),
    ("/call", 400, "callid: missing"),
    ("/message?id=999999", 404, "no message with id 999999"),
    ("/message?id=x", 400, "row id"),
    ("/message?id=%C2%B2", 400, "row id"),
    ("/message?id=18446744073709551616", 400, "row id"),  # 2**64: no backend's id
    ("/message?id=9223372036854775808", 404, "no message with id"),  # beyond a BIGINT
    ("/nowhere", 404, "Not Found"),
])
def test_missing_things_are_one_line(web, path, status, message):
    reply = get(web.base + path)
    assert reply.status == status
    assert message in reply.text and "Traceback" not in reply.text


def test_the_view_is_read_only(web):
    for method in ("POST", "PUT", "DELETE"):
        assert get(web.base + "/", method=method).status == 405


# -- pcap downloads ----------------------------------------------------------------------------

def pcap_packets(data: bytes) -> list[bytes]:
    """The packets of a classic pcap file (little-endian, as siptrace writes)."""
    assert data[:4] in PCAP_MAGICS
    packets, offset = [], 24
    while offset < len(data):
        caplen = struct.unpack_from("<I", data, offset + 8)[0]
        packets.append(data[offset + 16:offset + 16 + caplen])
        offset += 16 + caplen
    assert offset == len(data)
    return packets


@pytest.mark.parametrize("query, count, callids", [
    (f"/call.pcap?callid={urllib.parse.quote(SIPP_CALLS[2])}", 13, [SIPP_CALLS[2]]),
    (f"/call.pcap?callid={urllib.parse.quote(EVIL_CALLID)}", 2, [EVIL_CALLID]),
    (f"/call.pcap?callid={urllib.parse.quote(EVIL_CALLID)}&legs=1", 4, [EVIL_CALLID, LEG_B]),
    ("/calls.pcap?status=4xx", 4, [EVIL_CALLID, LEG_B]),
    ("/calls.pcap?callid=*28455*&limit=2", 26, SIPP_CALLS[3:]),
])
def test_pcap_downloads(web, query, count, callids):
    reply = get(web.base + query)
    assert reply.status == 200
    assert reply.headers["content-type"] == "application/vnd.tcpdump.pcap"
    disposition = reply.headers["content-disposition"]
    assert re.fullmatch(r'attachment; filename="siptrace-[A-Za-z0-9._-]+\.pcap"', disposition)
    assert int(reply.headers["content-length"]) == len(reply.body)
    packets = pcap_packets(reply.body)
    assert len(packets) == count
    for callid in callids:
        assert any(f"Call-ID: {callid}\r\n".encode() in p for p in packets)


def test_a_bad_search_pcap_is_400(web):
    reply = get(web.base + "/calls.pcap?status=9")
    assert reply.status == 400 and "use a code (487)" in reply.text


def test_a_search_pcap_is_bounded(web, monkeypatch):
    monkeypatch.setattr(web_app, "MAX_PCAP_MESSAGES", 30)
    reply = get(web.base + "/calls.pcap?callid=*28455*")
    assert reply.status == 400
    assert "these 5 calls hold 65 messages, more than 30 for one download" in reply.text
    assert get(web.base + "/calls.pcap?callid=*28455*&limit=2").status == 200


# -- hostile content and headers ---------------------------------------------------------------

def hostile_pages(web) -> list[str]:
    quoted = urllib.parse.quote(EVIL_CALLID, safe="")
    paths = ["/", "/?status=4xx", f"/?callid={quoted}", f"/?from={urllib.parse.quote(HOSTILE)}",
             f"/?ip={urllib.parse.quote(HOSTILE)}", f"/call?callid={quoted}",
             f"/call?callid={quoted}&legs=1", f"/call?callid={urllib.parse.quote(LEG_B)}",
             f"/call?callid={quoted}x", f"/message?id={urllib.parse.quote(HOSTILE)}"]
    call = get(f"{web.base}/call?callid={quoted}").text
    paths += [f"/message?id={row}" for row in re.findall(r'<tr id="row-(\d+)">', call)]
    return paths


def test_hostile_content_is_escaped_in_every_page(web):
    for path in hostile_pages(web):
        reply = get(web.base + path)
        assert reply.status in (200, 400, 404), path
        lowered = reply.text.lower()
        assert "<script" not in lowered, path
        assert "alert(1)" not in lowered or "&lt;script&gt;alert(1)&lt;/script&gt;" in lowered, path
        # no attribute is broken out of: every quote inside a tag belongs to an attribute
        for tag in re.findall(r"<[a-z][^>]*>", reply.text):
            assert WELL_FORMED_TAG.fullmatch(tag), (path, tag)


def test_a_hostile_callid_round_trips_through_its_link(web):
    page = search(web, status="4xx").text
    assert EVIL_CALLID in call_links(page)
    link = html.unescape(re.findall(r'href="(/call\?callid=evil[^"]*)"', page)[0])
    reply = get(web.base + link)
    assert reply.status == 200
    assert str(markupsafe.escape(EVIL_CALLID)) in reply.text  # the <h1>
    assert "486 Busy &lt;script&gt;" in reply.text


@pytest.mark.parametrize("path", ["/", "/?status=9", "/nowhere", "/static/style.css",
                                  f"/call.pcap?callid={SIPP_CALLS[0]}"])
def test_security_headers_on_every_response(web, path):
    reply = get(web.base + path)
    for name, value in SECURITY_HEADERS.items():
        assert reply.headers[name] == value, (path, name)


def test_without_a_password_only_loopback_host_names_are_served(web):
    for host, status in ((f"127.0.0.1:{web.port}", 200), (f"localhost:{web.port}", 200),
                         (f"[::1]:{web.port}", 200), ("rebound.example.com", 400),
                         (f"evil.example:{web.port}", 400)):
        reply = get(web.base + "/", headers={"Host": host})
        assert reply.status == status, host
    assert "loopback names only" in reply.text


# -- authentication ----------------------------------------------------------------------------

def basic(user: str, password: str) -> dict:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


@pytest.mark.parametrize("headers, status", [
    ({}, 401),
    (basic("ops", PASSWORD), 200),
    ({"Authorization": f"Bearer {PASSWORD}"}, 200),
    ({"Authorization": f"bearer {PASSWORD}"}, 200),
    (basic("ops", "wrong"), 401),
    (basic("siptrace", PASSWORD), 401),
    (basic("ops", PASSWORD + "x"), 401),
    ({"Authorization": "Bearer wrong"}, 401),
    ({"Authorization": "Basic !!notbase64"}, 401),
    ({"Authorization": "Basic " + base64.b64encode(PASSWORD.encode()).decode()}, 401),
    ({"Authorization": f"Digest {PASSWORD}"}, 401),
])
def test_a_password_is_required_when_set(guarded, headers, status):
    for path in ("/", f"/call?callid={SIPP_CALLS[0]}", "/static/style.css", "/calls.pcap"):
        reply = get(guarded.base + path, headers=headers)
        assert reply.status == status, path
        if status == 401:
            assert reply.headers["www-authenticate"] == 'Basic realm="siptrace", charset="UTF-8"'
            assert PASSWORD not in reply.text
            assert reply.headers["x-content-type-options"] == "nosniff"


def test_a_non_ascii_password_is_utf_8(db_url):
    password = "pässwörd-日本"
    with ThreadServer(create_app(db_url, "sip_trace", password=password)) as server:
        token = base64.b64encode(f"siptrace:{password}".encode()).decode()
        assert get(server.base + "/", headers={"Authorization": f"Basic {token}"}).status == 200
        bearer = b"Bearer " + password.encode()
        assert get(server.base + "/", headers={"Authorization": bearer}).status == 200
        assert get(server.base + "/", headers={"Authorization": "Bearer pässwörd"}).status == 401


def test_with_a_password_any_host_name_is_served(guarded):
    reply = get(guarded.base + "/", headers={"Host": "traces.example.com",
                                             **basic("ops", PASSWORD)})
    assert reply.status == 200


# -- database trouble --------------------------------------------------------------------------

@pytest.mark.parametrize("url, secret", [
    ("sqlite:////nonexistent/dir/trace.db", None),
    ("postgresql://u:pw-in-url@127.0.0.1:1/trace?connect_timeout=2", "pw-in-url"),
    ("mysql://u:pw-in-url@127.0.0.1:1/trace", "pw-in-url"),
])
def test_a_database_down_is_a_503_line(url, secret):
    with ThreadServer(create_app(url, "sip_trace")) as server:
        for path in ("/", f"/call?callid={SIPP_CALLS[0]}", "/message?id=1", "/calls.pcap"):
            reply = get(server.base + path)
            assert reply.status == 503, path
            line = re.search(r'<p class="error" role="alert">([^<]*)</p>', reply.text)[1]
            assert line and "\n" not in line
            assert "<h1>503 Service Unavailable</h1>" in reply.text
            assert "Traceback" not in reply.text
            if secret:
                assert secret not in reply.text


def test_an_unexpected_error_is_a_500_line(db_url, monkeypatch):
    class Broken:
        def __init__(self, *args):
            raise RuntimeError("a bug")
    monkeypatch.setattr(web_app, "open_reader", Broken)
    with ThreadServer(create_app(db_url, "sip_trace")) as server:
        reply = get(server.base + "/")
    assert reply.status == 500
    assert "internal error (see the server&#39;s log)" in reply.text
    assert "a bug" not in reply.text and "Traceback" not in reply.text
    assert reply.headers["content-security-policy"] == SECURITY_HEADERS["content-security-policy"]


def test_a_missing_table_is_a_503_line(db_url):
    with ThreadServer(create_app(db_url, "no_such_table")) as server:
        reply = get(server.base + "/")
        assert reply.status == 503 and "no_such_table" in reply.text


# -- serving -----------------------------------------------------------------------------------

def settings(**values):
    base = {"db_url": "sqlite:///x.db", "table": "sip_trace", "web_listen": "127.0.0.1:8080",
            "web_user": "siptrace", "web_password": ""}
    return SimpleNamespace(**{**base, **values})


@pytest.mark.parametrize("listen", ["0.0.0.0:8080", "10.1.2.3:80", "[::]:8080"])
def test_serve_refuses_a_public_address_without_a_password(listen):
    with pytest.raises(ConfigError, match="web_password is required to listen on"):
        serve(settings(web_listen=listen))


def test_serve_refuses_a_bad_listen_value():
    with pytest.raises(ConfigError, match="web_listen: 'localhost:80' is not IP:PORT"):
        serve(settings(web_listen="localhost:80"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cli_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIPTRACE_")}
    return {**env, **extra}


def test_the_command_refuses_a_public_address_without_a_password(db_url):
    done = subprocess.run([sys.executable, "-m", "siptrace", "web", "--db-url", db_url,
                           "--listen", f"0.0.0.0:{free_port()}"],
                          env=cli_env(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and "web_password is required" in done.stderr


def wait_until_serving(proc, url: str, headers: dict) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        try:
            get(url, headers=headers)
            return
        except (urllib.error.URLError, ConnectionError):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("siptrace web did not start")
            time.sleep(0.05)


def test_the_command_serves_a_public_address_with_a_password(db_url, tmp_path):
    port = free_port()
    out, err = tmp_path / "out.log", tmp_path / "err.log"
    with open(out, "wb") as stdout, open(err, "wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "siptrace", "web", "--db-url", db_url,
             "--listen", f"0.0.0.0:{port}"],
            env=cli_env(SIPTRACE_WEB_PASSWORD=PASSWORD, SIPTRACE_WEB_USER="ops"),
            stdout=stdout, stderr=stderr)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until_serving(proc, base + "/", basic("ops", PASSWORD))
        assert get(base + "/").status == 401
        assert get(base + "/", headers=basic("ops", PASSWORD)).status == 200
        assert get(base + "/", headers={"Authorization": f"Bearer {PASSWORD}"}).status == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    printed = out.read_text()
    logs = printed + err.read_text()
    assert printed.splitlines()[0] == (f"siptrace web: serving sip_trace of {db_url} "
                                       f"on http://0.0.0.0:{port}/")
    assert '"GET / HTTP/1.1" 401' in logs and '"GET / HTTP/1.1" 200' in logs  # access log
    assert PASSWORD not in logs
    assert base64.b64encode(f"ops:{PASSWORD}".encode()).decode() not in logs
    assert "authorization" not in logs.lower()


def test_the_command_says_so_when_the_port_is_taken(db_url):
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "siptrace", "web", "--db-url", db_url,
                               "--listen", f"127.0.0.1:{port}"],
                              env=cli_env(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr.strip() == (f"siptrace: web_listen: cannot listen on "
                                   f"http://127.0.0.1:{port}/: Address already in use")
    assert done.stdout == ""
