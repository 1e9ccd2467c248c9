"""msg text fidelity: exact for UTF-8, a reversible escape for anything else."""

from hypothesis import given, settings
from hypothesis import strategies as st

from siptrace.store import TraceStore, msg_to_text, text_to_msg
from storefixtures import any_db, make_rows  # noqa: F401  (fixtures)

SAMPLES = [
    "INVITE sip:bob@x SIP/2.0\r\nFrom: \"Jürgen Müller\" <sip:j@x>\r\n\r\n".encode(),
    "From: \"王小明\" <sip:w@x>\r\nTo: \"Дмитрий\" <sip:d@x>\r\nX: \"محمد\" 🎉\r\n".encode(),
    b"latin-1 \xe9t\xe9 \xff\xfe invalid \x80",
    b"NUL \x00 inside, and \x00\x00",
    "genuine private use \uef00 \uef80 \uefff".encode(),
    b"\xed\xa0\x80 encoded surrogate, \xf4\x90\x80\x80 beyond U+10FFFF",
    bytes(range(256)),
    b"big " + "ü".encode() * 40_000,  # 80 KB: past MySQL TEXT's 64 KB
]


@given(st.binary(max_size=2000))
@settings(max_examples=500)
def test_any_bytes_round_trip_and_give_storable_text(raw):
    text = msg_to_text(raw)
    assert text_to_msg(text) == raw
    assert "\x00" not in text
    text.encode("utf-8")  # strict: no lone surrogates


@given(st.text(max_size=500))
def test_utf8_without_reserved_code_points_is_stored_as_is(value):
    raw = value.encode("utf-8", "surrogatepass")
    if "\x00" in value or any(0xEF00 <= ord(c) <= 0xEFFF or 0xD800 <= ord(c) <= 0xDFFF for c in value):
        return
    assert msg_to_text(raw) == value


def test_samples_round_trip():
    for raw in SAMPLES:
        assert text_to_msg(msg_to_text(raw)) == raw


def test_round_trip_through_the_database(any_db):
    rows = make_rows(len(SAMPLES))
    rows = [r._replace(msg=raw) for r, raw in zip(rows, SAMPLES)]
    with TraceStore(any_db.url) as store:
        store.insert(rows)
    stored = any_db.query("SELECT callid, msg FROM sip_trace ORDER BY id")
    assert [text_to_msg(m) for _, m in stored] == SAMPLES
    assert stored[0][1] == SAMPLES[0].decode() and stored[1][1] == SAMPLES[1].decode()


def every_byte_rows(backslash: bool = True) -> list:
    """Rows whose Call-IDs and messages hold every byte value 0-255, each one also next
    to quotes and backslashes (``backslash=False``: every byte but the backslash)."""
    values = [b for b in range(256) if backslash or b != 0x5C]
    raws = [bytes(values[i:i + 64]) for i in range(0, len(values), 64)]  # within 254 characters
    if backslash:
        raws += [b"\\" + bytes([b]) + b"'" + bytes([b]) + b"\\" for b in values]
        raws += [b"\\", b"'", b"\\'", b"'\\", b"''\\\\", b"end\\", b"\\0\\n\\Z\\%\\_\\b"]
    else:
        raws += [b"'" + bytes([b]) + b"''" + bytes([b]) for b in values]
    msgs = [bytes(values), bytes(reversed(values))] + raws
    rows = make_rows(len(msgs), "bytes")
    return [r._replace(callid=raws[i % len(raws)].decode("utf-8", "surrogateescape"), msg=msg)
            for i, (r, msg) in enumerate(zip(rows, msgs))]


def stored_bytes(db) -> list:
    """(Call-ID, msg) of every row, as the bytes they stand for, in id order."""
    return [(text_to_msg(c), text_to_msg(m)) for c, m in db.query("SELECT callid, msg FROM sip_trace ORDER BY id")]


def as_bytes(rows) -> list:
    return [(r.callid.encode("utf-8", "surrogateescape"), r.msg) for r in rows]


def test_every_byte_value_round_trips_in_call_id_and_msg(any_db):
    rows = every_byte_rows(backslash=False) + every_byte_rows()
    with TraceStore(any_db.url) as store:
        store.insert(rows[:300])
        store.insert(rows[300:])
    assert stored_bytes(any_db) == as_bytes(rows)


# A DBA's sql_mode under a running writer: the session's own mode changed between
# batches (NO_BACKSLASH_ESCAPES on and off, ANSI quoting, strict), and the global mode
# changed before a reconnect.
SESSION_MODES = ["", "NO_BACKSLASH_ESCAPES", "ANSI", "ANSI,NO_BACKSLASH_ESCAPES", "TRADITIONAL"]


def test_mysql_literals_do_not_depend_on_the_sql_mode(tmp_path):
    from siptrace.store.urls import MYSQL_SQL_MODE
    from storefixtures import ScratchDatabase, my_admin

    db = ScratchDatabase("mysql", tmp_path)
    admin = my_admin()
    cursor = admin.cursor()
    cursor.execute("SELECT @@GLOBAL.sql_mode")
    (global_mode,) = cursor.fetchone()
    plain, with_backslashes = every_byte_rows(backslash=False), every_byte_rows()
    sent = []
    store = TraceStore(db.url)
    try:
        session_mode = lambda: set(store.database.execute_sql(  # noqa: E731
            "SELECT @@SESSION.sql_mode").fetchone()[0].split(","))
        store.connect()
        assert session_mode() == set(MYSQL_SQL_MODE.split(","))
        for mode in SESSION_MODES:
            store.database.execute_sql("SET SESSION sql_mode = %s", (mode,))
            for rows in (plain, with_backslashes):  # both ways of building the statement
                store.insert(rows)
                sent += rows
        for extra in (",NO_BACKSLASH_ESCAPES", ",ANSI_QUOTES"):
            cursor.execute(f"SET GLOBAL sql_mode = CONCAT(@@GLOBAL.sql_mode, '{extra}')")
            try:
                store.close()
                store.insert(with_backslashes)  # reconnects: siptrace's mode, not the global one
                sent += with_backslashes
                assert session_mode() == set(MYSQL_SQL_MODE.split(","))
            finally:
                cursor.execute("SET GLOBAL sql_mode = %s", (global_mode,))
        store.close()
        assert stored_bytes(db) == as_bytes(sent)
    finally:
        cursor.execute("SET GLOBAL sql_mode = %s", (global_mode,))
        admin.close()
        store.close()
        db.drop()


# Call-IDs and tags that are not UTF-8, from a capture to each real database and back
# through the read commands. The Call-ID also holds a genuine U+EF00 (EE BC 80), which
# the escape must keep apart from the bytes it stands for.
ODD_CALLID = b"1-\xff\xe9\xee\xbc\x80~@127.0.0.1"
ODD_TAG = b"\xfe8455SIPpTag001"


def odd_capture(path):
    """kamailio-udp.pcap with call 1's Call-ID and From tag made of odd bytes (same
    lengths: the UDP and IP lengths hold)."""
    import struct

    from conftest import PCAPS
    from siptrace.capture.files import CaptureFile

    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1)]
    for ts, _, data in CaptureFile(PCAPS / "kamailio-udp.pcap"):
        data = data.replace(b"1-28455@127.0.0.1", ODD_CALLID).replace(b"28455SIPpTag001", ODD_TAG)
        sec, ns = divmod(ts, 10**9)
        out.append(struct.pack("<IIII", sec, ns // 1000, len(data), len(data)) + data)
    path.write_bytes(b"".join(out))
    return path


def siptrace_bytes(*args) -> bytes:
    """A siptrace command's standard output; str arguments may hold surrogates (bytes)."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "siptrace", *args], capture_output=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_call_ids_and_tags_keep_their_bytes_through_storage_and_the_read_commands(
        any_db, tmp_path):
    import os

    from siptrace.capture.files import CaptureFile

    capture = odd_capture(tmp_path / "odd.pcap")
    url = ["--db-url", any_db.url]
    siptrace_bytes("replay", str(capture), *url)
    stored = any_db.query("SELECT callid, fromtag FROM sip_trace ORDER BY id")
    odd = [(text_to_msg(c), text_to_msg(t)) for c, t in stored if text_to_msg(c) == ODD_CALLID]
    assert len(odd) == 13  # the call's 13 messages, none with U+FFFD
    assert {t for _, t in odd} >= {ODD_TAG}
    assert all("\ufffd" not in c + t for c, t in stored)

    callid = os.fsdecode(ODD_CALLID)  # as a shell passes the bytes
    shown = siptrace_bytes("show", "--callid", callid, "--limit", "50", *url)
    assert shown.count(ODD_CALLID) == 13
    for rebuilt in (False, True):  # the index kept by replay, then by `siptrace index`
        if rebuilt:
            siptrace_bytes("index", "--rebuild", *url)
        assert ODD_CALLID in siptrace_bytes("calls", "--callid", callid, *url)
        assert ODD_CALLID in siptrace_bytes("calls", "--callid", os.fsdecode(b"1-\xff*"),
                                            "--csv", *url)
    assert b"13 messages" in siptrace_bytes("flow", callid, *url)
    exported = tmp_path / "call.pcap"
    siptrace_bytes("export", callid, "-o", str(exported), *url)
    messages = [data[42:] for _, _, data in CaptureFile(exported)]
    assert len(messages) == 13
    assert all(b"Call-ID: " + ODD_CALLID + b"\r\n" in m for m in messages)
    assert b"tag=" + ODD_TAG in messages[0]
