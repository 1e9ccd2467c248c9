"""`siptrace status` says what became of every packet captured, as the replay summary does.

SIP and non-SIP datagrams and a non-SIP TCP connection to a "proxy" on 127.0.0.45 (an
address of its own: no other test's traffic reaches this capture).
"""

import os
import socket

import pytest

from conftest import missing
from kamailio_lab import Lab, siptrace_status, wait_for
from siptrace.extract import FATES

PROXY, PEER = "127.0.0.45", "127.0.0.46"
PORT = 15360


@pytest.fixture(autouse=True)
def _needs_root():
    if os.geteuid() != 0:
        missing("live capture needs root (CAP_NET_RAW)")


def message(i: int) -> bytes:
    return (f"OPTIONS sip:{PROXY}:{PORT} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {PEER}:{PORT};branch=z9hG4bKf{i}\r\nFrom: <sip:a@{PEER}>;tag=f{i}\r\nTo: <sip:{PROXY}>\r\nCall-ID: fate-{i}\r\n"
            "CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n").encode()


def test_status_counts_every_packet_by_its_fate(tmp_path):
    control = tmp_path / "control.sock"
    with Lab(tmp_path) as lab, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as proxy_udp, \
            socket.socket() as proxy_tcp:
        peer.bind((PEER, PORT))
        proxy_udp.bind((PROXY, PORT))
        proxy_tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a rerun's TIME_WAIT
        proxy_tcp.bind((PROXY, PORT))
        proxy_tcp.listen()
        proc = lab.siptrace_run(["--interface", "lo", "--proxy", PROXY, "--trace-all",
                                 "--trace-on", "1", "--db-url", f"sqlite:///{tmp_path / 't.db'}",
                                 "--decision-socket", str(tmp_path / "d.sock"),
                                 "--control-socket", str(control)], control)
        for i in range(10):
            peer.sendto(message(i), (PROXY, PORT))
        for _ in range(5):
            peer.sendto(b"\x00\x01\x00\x00 not SIP", (PROXY, PORT))
        with socket.create_connection((PROXY, PORT), source_address=(PEER, 0)) as client:
            server, _ = proxy_tcp.accept()
            client.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            server.recv(100)
        server.recv(100)  # the client's FIN: the client, not the port, waits in TIME_WAIT
        server.close()

        def settled():
            status = siptrace_status(control)
            fates = status["packets"]
            done = (fates["sip_udp"] == 10 and fates["udp_not_sip"] == 5
                    and status["tcp_not_stored"].get("non_sip_streams")
                    and sum(fates.values())
                    == status["packets_captured"] - status["capture_queue_drops"])
            return status if done else None

        status = wait_for(settled)
        assert lab.stop(proc) == 0
    assert status, "the counts never added up"
    assert list(status["packets"]) == list(FATES)
    assert status["packets"]["tcp_segments"] >= 4  # handshake, request, FIN... both ways
    assert status["tcp_not_stored"]["non_sip_bytes"] >= len(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status["sip_messages"] == 10
