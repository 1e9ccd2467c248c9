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
