"""replay_files: the plain Tracer's fast path stores what the general path stores."""

from siptrace.direction import ProxyAddresses
from siptrace.replay import Tracer, replay_files

from conftest import PCAPS


class ListSink:
    def __init__(self):
        self.rows = []

    def put(self, rows):
        self.rows += rows


class GeneralTracer(Tracer):
    """The same decisions as Tracer, taken through on_packet (the general path)."""


def replay(tracer):
    sink = ListSink()
    paths = [PCAPS / "kamailio-udp.pcap", PCAPS / "kamailio-tcp.pcap", PCAPS / "frag-ipv6.pcap"]
    summary = replay_files(paths, tracer=tracer, row_sink=sink)
    return summary, sink.rows


def test_the_fast_path_stores_the_same_rows_as_the_general_path():
    proxy = ProxyAddresses.parse(["127.0.0.1:5060"])
    fast_summary, fast = replay(Tracer(proxy))
    general_summary, general = replay(GeneralTracer(proxy))
    assert len(fast) == 65 + 65 + 7
    assert fast == general
    assert fast_summary.traced_messages == general_summary.traced_messages == len(fast)
    assert fast_summary.rows == general_summary.rows == len(fast)
