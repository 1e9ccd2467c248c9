"""siptrace's HEP decoder against Kamailio's sipcapture module, the decoder Homer
collectors run: every HEP datagram of pcaps/hep2.pcap (Kamailio's HEPv2 layout) and
pcaps/hep3.pcap (siptrace's HEPv3 encoder) is sent to a real Kamailio, and what it stores
(db_flatstore, one line a message) must be what siptrace decodes from the capture: the
message bytes, the time to the microsecond, addresses, ports, transport and family.
Wireshark 4.0 has no HEP dissector, so this is the independent check for HEP.
"""

import socket
import time

import pytest

from conftest import PCAPS
from mirror_support import KAMAILIO_PROTO, KamailioSipcapture, sipcapture_fields, unescape_flatstore
from siptrace.capture.files import open_capture
from siptrace.decode.hep import HEP_PORT
from siptrace.extract import SipExtractor

HEP_CAPTURES = ["hep2.pcap", "hep3.pcap"]
UDP_PAYLOAD_AT = 14 + 20 + 8  # Ethernet, IPv4 without options, UDP: as the fixtures are built


def hep_datagrams(name: str) -> list[bytes]:
    """The HEP payloads of a fixture's datagrams to the HEP port, in capture order."""
    out = []
    for _, _, data in open_capture(PCAPS / name):
        assert data[12:14] == b"\x08\x00" and data[14] == 0x45 and data[23] == 17
        if int.from_bytes(data[36:38], "big") == HEP_PORT:
            out.append(data[UDP_PAYLOAD_AT:])
    return out


def siptrace_decodes(name: str) -> list:
    extractor = SipExtractor()
    wires = []
    for ts_ns, linktype, data in open_capture(PCAPS / name):
        wires += extractor.feed(ts_ns, linktype, data)
    return wires + extractor.finish()


@pytest.mark.parametrize("name", HEP_CAPTURES)
def test_kamailio_sipcapture_stores_what_siptrace_decodes(name, tmp_path):
    wires = siptrace_decodes(name)
    assert len(wires) == 14
    with KamailioSipcapture(tmp_path) as kamailio:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            for datagram in hep_datagrams(name):
                sock.sendto(datagram, ("127.0.0.1", kamailio.port))
                time.sleep(0.002)  # one child: keep the order
        kamailio.wait_for(len(wires))
        time.sleep(0.3)  # anything more (the RTCP report must not become a SIP row)
    lines = kamailio.lines()
    assert len(lines) == len(wires)
    for wire, line in zip(wires, lines):
        field = sipcapture_fields(line)
        assert unescape_flatstore(field["msg"]) == wire.sip.raw
        assert int(field["micro_ts"]) == wire.ts_ns // 1000
        assert (field["source_ip"].decode(), int(field["source_port"])) == (wire.src, wire.sport)
        assert (field["destination_ip"].decode(), int(field["destination_port"])) == (
            wire.dst, wire.dport)
        assert field["proto"] == KAMAILIO_PROTO[wire.transport]
        assert field["family"] == {4: b"2", 6: b"10"}[wire.family]
