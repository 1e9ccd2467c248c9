"""`siptrace run --hep-listen`: HEP agents send to siptrace, which traces the messages
inside as if captured (HEP's addresses, transport and time), through the same decoder.

The HEP packets are the fixtures' (pcaps/hep2.pcap: Kamailio's HEPv2 layout, which
Kamailio's sipcapture decodes the same way, tests/test_hep_decode_kamailio.py;
pcaps/hep3.pcap: siptrace's HEPv3 encoder), sent over UDP and TCP.
"""

import os
import signal
import socket
import sqlite3
import sys
import time

import pytest

from conftest import PCAPS, missing
from kamailio_lab import Lab, siptrace_status, wait_for
from siptrace.capture.hep_listener import parse_listen
from siptrace.errors import ConfigError
from test_hep_decode_kamailio import hep_datagrams

sys.path[:0] = [str(PCAPS)]
import crafted_tunnels  # noqa: E402

LISTEN_IP = "127.0.0.45"
UDP_PORT, TCP_PORT = 19060, 19061


def test_listen_addresses_parse_or_fail_in_one_line():
    assert parse_listen("udp:127.0.0.1:9060") == ("udp", "127.0.0.1", 9060)
    assert parse_listen("tcp:[::1]:9061") == ("tcp", "::1", 9061)
    for bad in ("127.0.0.1:9060", "sctp:127.0.0.1:9060", "udp:127.0.0.1", "udp:host:1"):
        with pytest.raises(ConfigError, match="hep_listen"):
            parse_listen(bad)


def test_run_traces_what_hep_agents_send_over_udp_and_tcp(tmp_path):
    if os.geteuid() != 0:
        missing("siptrace run captures live: needs root (CAP_NET_RAW)")
    control = tmp_path / "control.sock"
    records = crafted_tunnels.hep_records(29) + crafted_tunnels.hep_records(30)
    with Lab(tmp_path) as lab:
        proc = lab.siptrace_run(
            ["--interface", "lo", "--proxy", "198.51.100.20", "--proxy", "2001:db8:1::20",
             "--db-url", f"sqlite:///{tmp_path / 'trace.db'}",
             "--decision-socket", str(tmp_path / "decisions.sock"),
             "--control-socket", str(control), "--grace", "1", "--trace-all",
             "--trace-on", "1", "--hep-listen", f"udp:{LISTEN_IP}:{UDP_PORT}",
             "--hep-listen", f"tcp:{LISTEN_IP}:{TCP_PORT}"], control)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            for datagram in hep_datagrams("hep2.pcap"):
                udp.sendto(datagram, (LISTEN_IP, UDP_PORT))
                time.sleep(0.001)
            udp.sendto(b"not HEP at all", (LISTEN_IP, UDP_PORT))
        with socket.create_connection((LISTEN_IP, TCP_PORT)) as tcp:
            stream = b"".join(hep_datagrams("hep3.pcap"))
            for i in range(0, len(stream), 700):  # HEP packets cut across segments
                tcp.sendall(stream[i:i + 700])
                time.sleep(0.001)
        assert wait_for(lambda: siptrace_status(control)["sip_messages"] == 28)
        status = siptrace_status(control)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, lab.output("siptrace")
    hep = status["hep"]
    assert (hep["datagrams"], hep["tcp_packets"], hep["hep_received"]) == (15, 15, 28)
    assert (hep["hep_received_not_hep"], hep["hep_received_not_sip"]) == (1, 1)
    with sqlite3.connect(tmp_path / "trace.db") as conn:
        rows = conn.execute("SELECT date, callid, fromip, toip, direction, msg "
                            "FROM sip_trace ORDER BY id").fetchall()
    assert len(rows) == 28
    expected = sorted(
        (time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(msg_ts // 10**9))
         + f".{msg_ts // 1000 % 10**6:06d}",
         f"{transport}:{src if family == 4 else f'[{src}]'}:{sport}",
         f"{transport}:{dst if family == 4 else f'[{dst}]'}:{dport}",
         "in" if dst in ("198.51.100.20", "2001:db8:1::20") else "out", raw.decode())
        for _, transport, family, src, sport, dst, dport, raw, msg_ts in records)
    assert sorted((r[0], r[2], r[3], r[4], r[5]) for r in rows) == expected
