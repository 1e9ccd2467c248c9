"""The call ladder: layout, terminal text, SVG and HTML, from hand-built stored messages."""

import ast
import re
import xml.etree.ElementTree as ET
from datetime import datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path

import pytest

import siptrace.view.ladder
import siptrace.view.svg
from siptrace.view.ladder import build_ladder, render_text
from siptrace.view.model import StoredMessage
from siptrace.view.svg import render_html, render_svg

UAC, PROXY, UAS = "udp:10.0.0.1:5060", "udp:10.0.0.2:5060", "udp:10.0.0.3:5060"
START = datetime(2024, 3, 1, 12, 0, 0)
ANSI = re.compile(r"\x1b\[[0-9;]*m")
SVG = "{http://www.w3.org/2000/svg}"


def message(seconds, src, dst, start_line, *, callid="call-1@uac", cseq="1 INVITE",
            id=None, traced_user=""):
    """A stored message: method or status taken from its start line."""
    is_reply = start_line.startswith("SIP/2.0 ")
    raw = (f"{start_line}\r\nVia: SIP/2.0/UDP {src.split(':', 1)[1]};branch=z9hG4bK{cseq[0]}\r\n"
           f"Call-ID: {callid}\r\nCSeq: {cseq}\r\nContent-Length: 0\r\n\r\n").encode()
    message.count += 1
    return StoredMessage(
        id=id if id is not None else message.count,
        date=START + timedelta(seconds=seconds), callid=callid,
        method=cseq.split()[1] if is_reply else start_line.split()[0],
        status=start_line.split()[1] if is_reply else "",
        fromip=src, toip=dst, fromtag="a1", direction="", traced_user=traced_user, msg=raw)


message.count = 0


def proxy_call(callid="call-1@uac"):
    """UAC -> proxy -> UAS: set up, the UAC's INVITE retransmitted once, torn down."""
    m = lambda *args, **kw: message(*args, callid=callid, **kw)  # noqa: E731
    invite = "INVITE sip:bob@10.0.0.3 SIP/2.0"
    return [
        m(0.000, UAC, PROXY, invite),
        m(0.010, PROXY, UAC, "SIP/2.0 100 Trying"),
        m(0.020, PROXY, UAS, invite),
        m(0.030, UAS, PROXY, "SIP/2.0 100 Trying"),
        m(0.500, UAC, PROXY, invite),
        m(1.000, UAS, PROXY, "SIP/2.0 180 Ringing"),
        m(1.010, PROXY, UAC, "SIP/2.0 180 Ringing"),
        m(3.000, UAS, PROXY, "SIP/2.0 200 OK"),
        m(3.010, PROXY, UAC, "SIP/2.0 200 OK"),
        m(3.020, UAC, PROXY, "ACK sip:bob@10.0.0.3 SIP/2.0", cseq="1 ACK"),
        m(3.030, PROXY, UAS, "ACK sip:bob@10.0.0.3 SIP/2.0", cseq="1 ACK"),
        m(10.000, UAC, PROXY, "BYE sip:bob@10.0.0.3 SIP/2.0", cseq="2 BYE"),
        m(10.010, PROXY, UAS, "BYE sip:bob@10.0.0.3 SIP/2.0", cseq="2 BYE"),
        m(10.020, UAS, PROXY, "SIP/2.0 200 OK", cseq="2 BYE"),
        m(10.030, PROXY, UAC, "SIP/2.0 200 OK", cseq="2 BYE"),
    ]


def arrow_lines(text):
    """The ladder's arrow lines: those starting with the time margin."""
    return [line for line in text.splitlines() if re.match(r"\s*(#\d+\s+)?\+\d+\.\d{3}s", line)]


# Layout


def test_columns_are_addresses_in_order_of_first_appearance():
    assert build_ladder(proxy_call()).columns == ["10.0.0.1:5060", "10.0.0.2:5060", "10.0.0.3:5060"]
    reply_first = [message(0, UAS, PROXY, "SIP/2.0 180 Ringing"), *proxy_call()]
    assert build_ladder(reply_first).columns == ["10.0.0.3:5060", "10.0.0.2:5060", "10.0.0.1:5060"]


def test_arrows_go_from_the_source_column_to_the_destination_column():
    ladder = build_ladder(proxy_call())
    assert [(a.src_column, a.dst_column, a.message.label) for a in ladder.arrows[:4]] == [
        (0, 1, "INVITE"), (1, 0, "100 Trying"), (1, 2, "INVITE"), (2, 1, "100 Trying")]
    assert [a.index for a in ladder.arrows] == list(range(15))


def test_messages_are_put_in_time_order_and_stored_copies_shown_once():
    messages = proxy_call()
    copies = [message(0.0, UAC, PROXY, "INVITE sip:bob@10.0.0.3 SIP/2.0", id=99,
                      traced_user="alice")]
    copies[0].msg = messages[0].msg
    ladder = build_ladder(list(reversed(messages)) + copies)
    assert [a.message.id for a in ladder.arrows] == [m.id for m in messages]


def test_only_a_message_sent_again_with_the_same_bytes_is_a_retransmission():
    ladder = build_ladder(proxy_call())
    assert [a.index for a in ladder.arrows if a.retransmission] == [4]


def test_times_are_seconds_since_the_first_message_and_since_the_previous_one():
    arrows = build_ladder(proxy_call()).arrows
    assert arrows[0].since_first == 0 and arrows[0].since_previous == 0
    assert arrows[5].since_first == pytest.approx(1.0)
    assert arrows[5].since_previous == pytest.approx(0.5)


def test_call_index_follows_the_callids_given_then_those_seen():
    messages = proxy_call("leg-a") + proxy_call("leg-b")
    assert build_ladder(messages).callids == ["leg-a", "leg-b"]
    ladder = build_ladder(messages, ["leg-b"])
    assert ladder.callids == ["leg-b", "leg-a"]
    assert {a.message.callid: a.call_index for a in ladder.arrows} == {"leg-b": 0, "leg-a": 1}


# Terminal text


def test_text_has_a_summary_a_header_and_one_arrow_line_per_message():
    text = render_text(build_ladder(proxy_call()), width=100)
    lines = text.splitlines()
    assert lines[0].startswith("2024-03-01 12:00:00.000 UTC  15 messages  Call-ID call-1@uac")
    assert re.search(r"10\.0\.0\.1:5060 +10\.0\.0\.2:5060 +10\.0\.0\.3:5060", text)
    assert len(arrow_lines(text)) == 15


def test_requests_point_right_and_replies_left_with_their_label_between_the_lines():
    lines = arrow_lines(render_text(build_ladder(proxy_call()), width=100))
    assert re.search(r"\|-+ INVITE -+>\| +\|$", lines[0])
    assert re.search(r"\|<-+ 100 Trying -+\| +\|$", lines[1])
    assert re.search(r"\| +\|-+ INVITE -+>\|$", lines[2])
    assert re.search(r"\| +\|<-+ 180 Ringing -+\|$", lines[5])


def test_an_arrow_crosses_the_columns_between_its_ends():
    ladder = build_ladder([*proxy_call(), message(20, UAC, UAS, "OPTIONS sip:x SIP/2.0")])
    assert re.search(r"\|-+ OPTIONS -+>\|$", arrow_lines(render_text(ladder))[-1])


def test_a_message_to_its_own_address_is_a_loop():
    ladder = build_ladder([*proxy_call(), message(20, PROXY, PROXY, "OPTIONS sip:x SIP/2.0")])
    assert re.search(r"\|<-\) OPTIONS +\|$", arrow_lines(render_text(ladder))[-1])


def test_the_margin_shows_time_since_the_first_message_and_the_delta():
    lines = arrow_lines(render_text(build_ladder(proxy_call()), width=100))
    assert lines[0].split()[:2] == ["+0.000s", "+0.000"]
    assert lines[5].split()[:2] == ["+1.000s", "+0.500"]
    assert lines[-1].split()[:2] == ["+10.030s", "+0.010"]


def test_a_retransmission_is_marked_and_dotted():
    lines = arrow_lines(render_text(build_ladder(proxy_call()), width=100))
    assert [i for i, line in enumerate(lines) if "INVITE (retrans)" in line] == [4]
    assert re.search(r"\|\.+ INVITE \(retrans\) \.+>\|", lines[4])


def test_a_retransmission_stays_marked_when_its_label_is_cut():
    lines = arrow_lines(render_text(build_ladder(proxy_call()), width=40))
    assert "(retrans)" not in lines[4] and re.search(r"\|\.+\w+…?\.*>\|", lines[4])


@pytest.mark.parametrize("width", [80, 120])
@pytest.mark.parametrize("color", [False, True])
def test_every_line_fits_the_width(width, color):
    text = render_text(build_ladder(proxy_call()), width=width, color=color, full=True)
    assert max(len(ANSI.sub("", line)) for line in text.splitlines()) <= width


@pytest.mark.parametrize("width", [80, 120])
def test_eight_columns_fit_with_names_and_labels_cut(width):
    hosts = [f"udp:[2001:db8:0:1234::{i}]:5060" for i in range(1, 9)]
    messages = [message(i, hosts[i], hosts[i + 1], "INVITE sip:x SIP/2.0") for i in range(7)]
    messages += [message(10 + i, hosts[i + 1], hosts[i], "SIP/2.0 183 Session Progress")
                 for i in range(7)]
    text = render_text(build_ladder(messages), width=width)
    lines = text.splitlines()
    assert max(map(len, lines)) <= width
    assert len(arrow_lines(text)) == 14
    assert all(line.count("|") == 8 for line in arrow_lines(text))
    assert "…" in "\n".join(lines[1:3])  # column names cut
    assert all(re.search(r"<-+ ?183", line) for line in arrow_lines(text)[7:])


def test_far_too_many_columns_still_fit_and_say_so():
    hosts = [f"udp:10.0.0.{i}:5060" for i in range(1, 41)]
    messages = [message(i, hosts[i], hosts[i + 1], "INFO sip:x SIP/2.0") for i in range(39)]
    text = render_text(build_ladder(messages), width=80)
    assert max(map(len, text.splitlines())) <= 80
    assert "columns cut" in text.splitlines()[0]


def test_no_ansi_codes_without_color_and_some_with_it():
    ladder = build_ladder(proxy_call())
    assert "\x1b" not in render_text(ladder, color=False, full=True)
    coloured = render_text(ladder, color=True)
    assert ANSI.search(coloured)
    assert ANSI.sub("", coloured) == render_text(ladder, color=False)


def test_requests_and_replies_are_coloured_differently():
    lines = arrow_lines(render_text(build_ladder(proxy_call()), color=True))
    request = re.search(r"\x1b\[([0-9;]+)mINVITE", lines[0]).group(1)
    reply = re.search(r"\x1b\[([0-9;]+)m100 Trying", lines[1]).group(1)
    assert request != reply


def test_full_prints_each_message_indented_under_its_arrow():
    ladder = build_ladder(proxy_call())
    lines = render_text(ladder, full=True).splitlines()
    first = next(i for i, line in enumerate(lines) if "INVITE" in line and "-->" in line)
    assert lines[first + 1] == "    INVITE sip:bob@10.0.0.3 SIP/2.0"
    assert lines[first + 3] == "    Call-ID: call-1@uac"
    assert sum(line.startswith("    Via: SIP/2.0/UDP") for line in lines) == 15
    assert "Via:" not in render_text(ladder)


def test_two_calls_get_a_legend_and_a_colour_each():
    ladder = build_ladder(proxy_call("leg-a") + proxy_call("leg-b"))
    plain = render_text(ladder)
    assert "call 1: leg-a" in plain and "call 2: leg-b" in plain
    coloured = render_text(ladder, color=True).splitlines()
    legend = {m.group(2): m.group(1) for line in coloured
              if (m := re.match(r"\x1b\[([0-9;]+)mcall \d: (leg-\w)", line))}
    assert len(set(legend.values())) == 2
    lines = arrow_lines("\n".join(coloured))
    assert all(f"\x1b[{legend['leg-a']}m--" in line for line in lines[:15:2])
    assert not any(f"\x1b[{legend['leg-a']}m" in line for line in lines[1:15:2])


def test_hostile_text_cannot_reach_the_terminal_as_control_sequences():
    hostile = message(0, UAC, PROXY, "SIP/2.0 200 \x1b]0;pwned\x07\x1b[2J OK")
    text = render_text(build_ladder([hostile]), width=80, color=False, full=True)
    assert "\x1b" not in text and "\x07" not in text
    assert max(map(len, text.splitlines())) <= 80


def test_an_empty_ladder_says_so():
    assert render_text(build_ladder([])) == "no messages  0 messages\n"


# SVG


def hostile_messages():
    evil = '<script>alert("x")</script> & "quoted"'
    first = message(0, "udp:<script>\"&:5060", PROXY, f"SIP/2.0 200 {evil}\x00\x1b",
                    callid='<b id="x">&amp;')
    first.method, first.status = "INVITE", "200"
    second = message(1, PROXY, "tcp:x\"><script>:1", f"{evil} sip:x SIP/2.0", callid="c2")
    second.method = evil
    return [first, second]


def test_svg_parses_with_one_arrow_group_per_message():
    ladder = build_ladder(proxy_call())
    root = ET.fromstring(render_svg(ladder))
    assert root.tag == f"{SVG}svg"
    groups = [g for g in root.iter(f"{SVG}g") if g.get("id", "").startswith("msg-")]
    assert [g.get("id") for g in groups] == [f"msg-{i}" for i in range(15)]
    assert [g.get("data-row-id") for g in groups] == [str(a.message.id) for a in ladder.arrows]
    assert groups[0].find(f"{SVG}title").text == "INVITE sip:bob@10.0.0.3 SIP/2.0"
    names = [t.text for t in root.iter(f"{SVG}text")][:3]
    assert names == ladder.columns


def test_svg_retransmissions_are_dashed():
    root = ET.fromstring(render_svg(build_ladder(proxy_call())))
    dashed = [g.get("id") for g in root.iter(f"{SVG}g")
              if (line := g.find(f"{SVG}line")) is not None and line.get("stroke-dasharray")
              and g.get("id", "").startswith("msg-")]
    assert dashed == ["msg-4"]


def test_svg_gives_each_call_leg_its_colour():
    root = ET.fromstring(render_svg(build_ladder(proxy_call("leg-a") + proxy_call("leg-b"))))
    colours = {}
    for g in root.iter(f"{SVG}g"):
        if g.get("data-call"):
            colours.setdefault(g.get("data-call"), set()).add(g.find(f"{SVG}line").get("stroke"))
    assert len(colours["1"]) == len(colours["2"]) == 1 and colours["1"] != colours["2"]


def test_svg_grows_with_columns_and_messages():
    small = ET.fromstring(render_svg(build_ladder(proxy_call()[:2])))
    large = ET.fromstring(render_svg(build_ladder(proxy_call())))
    assert float(large.get("width")) > float(small.get("width"))
    assert float(large.get("height")) > float(small.get("height"))


def test_svg_escapes_hostile_text():
    svg = render_svg(build_ladder(hostile_messages()))
    root = ET.fromstring(svg)  # well-formed, control characters included
    assert "<script" not in svg and "<b " not in svg
    titles = [t.text for t in root.iter(f"{SVG}title")]
    assert any('<script>alert("x")</script> & "quoted"' in (t or "") for t in titles)
    assert len([g for g in root.iter(f"{SVG}g") if g.get("data-row-id")]) == 2


# HTML


class PageParser(HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids, self.hrefs, self.tags, self.pre = [], [], [], []
        self._in_pre = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append(tag)
        if "id" in attrs:
            self.ids.append(attrs["id"])
        if "href" in attrs:
            self.hrefs.append(attrs["href"])
        if tag == "pre":
            self._in_pre = True
            self.pre.append("")

    def handle_endtag(self, tag):
        if tag == "pre":
            self._in_pre = False

    def handle_data(self, data):
        if self._in_pre:
            self.pre[-1] += data


def parse_page(page):
    parser = PageParser()
    parser.feed(page)
    parser.close()
    return parser


def test_html_links_every_arrow_to_its_message_and_back():
    ladder = build_ladder(proxy_call())
    page = render_html(ladder, "Call call-1@uac")
    assert page.startswith("<!DOCTYPE html>")
    parsed = parse_page(page)
    arrow_links = [h for h in parsed.hrefs if h.startswith("#msg-")]
    assert arrow_links == [f"#msg-{i}" for i in range(15)]
    assert all(link[1:] in parsed.ids for link in arrow_links)
    assert all(h[1:] in parsed.ids for h in parsed.hrefs if h.startswith("#arrow-"))
    assert len(parsed.ids) == len(set(parsed.ids))
    assert parsed.pre[0] == proxy_call()[0].msg.decode().replace("\r\n", "\n")
    assert "script" not in parsed.tags


def test_html_without_full_messages_has_the_ladder_only():
    parsed = parse_page(render_html(build_ladder(proxy_call()), "t", full_messages=False))
    assert parsed.pre == [] and not [h for h in parsed.hrefs if h.startswith("#")]
    assert "svg" in parsed.tags


def test_html_escapes_hostile_text():
    page = render_html(build_ladder(hostile_messages()), "<script>alert(1)</script>")
    parsed = parse_page(page)
    assert "script" not in parsed.tags and "x" not in parsed.ids
    assert "\x00" not in page and "\x1b" not in page
    assert any('<script>alert("x")</script>' in pre for pre in parsed.pre)


def test_the_view_modules_do_no_io():
    """Checked on the source: they import only pure modules."""
    allowed = {"collections.abc", "dataclasses", "html", "re", "unicodedata",
               "siptrace.view.ladder", "siptrace.view.model"}
    for module in (siptrace.view.ladder, siptrace.view.svg):
        tree = ast.parse(Path(module.__file__).read_text())
        names = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                 for alias in node.names}
        names |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        assert names <= allowed, module.__name__
        calls = {node.func.id for node in ast.walk(tree)
                 if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)}
        assert not calls & {"open", "print", "input"}, module.__name__
