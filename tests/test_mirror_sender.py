"""The Mirror sink against real UDP listeners on loopback (IPv4 and ::1)."""

import logging
import os
import signal
import sys
import time
from contextlib import contextmanager

import pytest

from siptrace.errors import ConfigError
from siptrace.mirror import Mirror, encode_hep3, format_stats
from mirror_support import (UdpListener, free_udp_port, real_wires, sample_sip, wire)

BATCH = 25  # messages sent before the listeners read: far below any receive buffer


@pytest.fixture
def listeners():
    opened = []

    def open_listener(host="127.0.0.1"):
        opened.append(UdpListener(host))
        return opened[-1]
    yield open_listener
    for listener in opened:
        listener.close()


@contextmanager
def sender_held_back():
    """Keeps the sender thread off the interpreter while the block runs.

    Nothing in the block releases the GIL, and a thread asking for it waits one
    switch interval, so the sender cannot run until the block ends.
    """
    interval = sys.getswitchinterval()
    sys.setswitchinterval(30.0)
    try:
        yield
    finally:
        sys.setswitchinterval(interval)


def mirror_in_batches(mirror, wires, listeners) -> list[list[bytes]]:
    """Sends wires, BATCH at a time, and collects what each listener received."""
    received = [[] for _ in listeners]
    for start in range(0, len(wires), BATCH):
        batch = wires[start:start + BATCH]
        for message in batch:
            mirror.send(message)
        for got, listener in zip(received, listeners):
            got.extend(listener.receive(len(batch)))
    return received


def real_messages():
    return (real_wires("aboutsip_pkts__sipp.pcap")
            + real_wires("sipcapture_heplify__sip_ipv6.pcap")
            + real_wires("sipcapture_heplify__sip_ipv4_tcp.pcap"))


def test_duplicate_uri_sends_each_message_byte_for_byte_in_order(listeners):
    wires = real_messages()
    v4, v6 = listeners(), listeners("::1")
    with Mirror(f"sip:127.0.0.1:{v4.port},sip:[::1]:{v6.port}") as mirror:
        got_v4, got_v6 = mirror_in_batches(mirror, wires, [v4, v6])
    expected = [w.sip.raw for w in wires]
    assert got_v4 == expected and got_v6 == expected
    v4.assert_nothing_more()
    v6.assert_nothing_more()
    assert mirror.stats() == {
        f"sip:127.0.0.1:{v4.port}": {"sent": len(wires), "failed": 0, "dropped": 0},
        f"sip:[::1]:{v6.port}": {"sent": len(wires), "failed": 0, "dropped": 0}}


def test_mixed_destinations_and_one_that_is_down(listeners):
    wires = real_messages()
    sip4, sip6, hep4, hep6 = listeners(), listeners("::1"), listeners(), listeners("::1")
    down = free_udp_port()
    spec = (f"hep:127.0.0.1:{hep4.port}, sip:127.0.0.1:{down}, sip:127.0.0.1:{sip4.port},"
            f"hep:[::1]:{hep6.port},sip:[::1]:{sip6.port}")
    with Mirror(spec, hep_capture_id=42, hep_auth_key="k") as mirror:
        assert mirror.mirror_addresses() == [
            ("127.0.0.1", hep4.port), ("127.0.0.1", down), ("127.0.0.1", sip4.port),
            ("::1", hep6.port), ("::1", sip6.port)]
        got = mirror_in_batches(mirror, wires, [sip4, sip6, hep4, hep6])
    raw = [w.sip.raw for w in wires]
    hep = [encode_hep3(w, 42, "k") for w in wires]
    assert got == [raw, raw, hep, hep]
    stats = mirror.stats()
    for listener, kind in [(sip4, "sip"), (sip6, "sip"), (hep4, "hep"), (hep6, "hep")]:
        assert stats[f"{kind}:{listener.label}:{listener.port}"] == {
            "sent": len(wires), "failed": 0, "dropped": 0}
    # Nothing listens: loopback answers ICMP port unreachable, the next send fails.
    dead = stats[f"sip:127.0.0.1:{down}"]
    assert dead["sent"] + dead["failed"] == len(wires) and dead["failed"] > 0
    assert dead["dropped"] == 0


def test_a_full_queue_drops_and_counts_per_destination(listeners):
    first, second = listeners(), listeners("::1")
    wires = [wire(sample_sip(n, "full")) for n in range(100)]
    mirror = Mirror(f"sip:127.0.0.1:{first.port},hep:[::1]:{second.port}", queue_size=10)
    with sender_held_back():
        for message in wires:
            mirror.send(message)
    mirror.close()
    assert first.receive(10) == [w.sip.raw for w in wires[:10]]
    assert second.receive(10) == [encode_hep3(w) for w in wires[:10]]
    first.assert_nothing_more()
    assert list(mirror.stats().values()) == [{"sent": 10, "failed": 0, "dropped": 90}] * 2


def test_close_waits_a_bounded_time_and_counts_the_rest_as_dropped(listeners):
    listener = listeners()
    mirror = Mirror(f"sip:127.0.0.1:{listener.port}")
    with sender_held_back():
        for n in range(50):
            mirror.send(wire(sample_sip(n)))
    mirror.close(timeout=0)
    assert mirror._worker.process.exitcode is not None
    (counts,) = mirror.stats().values()
    assert counts["sent"] + counts["dropped"] == 50 and counts["failed"] == 0
    mirror.send(wire(sample_sip(99)))  # after close: counted, not raised
    mirror.close()
    assert mirror.stats()[f"sip:127.0.0.1:{listener.port}"]["dropped"] == counts["dropped"] + 1


def test_bad_messages_are_counted_as_failed_and_the_others_still_go(listeners, caplog):
    sip, hep = listeners(), listeners()
    big = wire(b"INVITE sip:a@b SIP/2.0\r\n" + b"x" * 70_000)  # past UDP's and HEP's limit
    wrong_family = wire(sample_sip(1), family=5)
    not_a_message = object()
    unpicklable = wire(sample_sip(3))
    unpicklable.sip.raw = memoryview(unpicklable.sip.raw)  # cannot reach the worker
    good = wire(sample_sip(2))
    caplog.set_level(logging.WARNING, logger="siptrace.mirror")
    with Mirror(f"sip:127.0.0.1:{sip.port},hep:127.0.0.1:{hep.port}",
                hep_auth_key="very-secret") as mirror:
        for message in (big, wrong_family, not_a_message, unpicklable, good):
            mirror.send(message)
    assert sip.receive(2) == [wrong_family.sip.raw, good.sip.raw]
    assert hep.receive(1) == [encode_hep3(good, 1, "very-secret")]
    assert mirror.stats() == {
        f"sip:127.0.0.1:{sip.port}": {"sent": 2, "failed": 3, "dropped": 0},
        f"hep:127.0.0.1:{hep.port}": {"sent": 1, "failed": 4, "dropped": 0}}
    assert caplog.records, "the first failure of each kind is logged"
    for record in caplog.records:
        assert record.exc_info is None and "\n" not in record.getMessage()
        assert "very-secret" not in record.getMessage()


def test_the_auth_key_never_shows(listeners, caplog):
    down = free_udp_port()
    caplog.set_level(logging.DEBUG, logger="siptrace.mirror")
    with Mirror(f"hep:127.0.0.1:{down}", hep_auth_key="very-secret") as mirror:
        for n in range(4):
            mirror.send(wire(sample_sip(n)))
    assert mirror.stats()[f"hep:127.0.0.1:{down}"]["failed"] > 0
    shown = [repr(mirror), str(mirror.stats()), caplog.text, *format_stats(mirror.stats())]
    assert not any("very-secret" in text for text in shown)
    assert "<redacted>" in repr(mirror)


def test_a_worker_that_dies_costs_only_the_later_copies(listeners, caplog):
    listener = listeners()
    caplog.set_level(logging.WARNING, logger="siptrace.mirror")
    mirror = Mirror(f"sip:127.0.0.1:{listener.port}")
    for n in range(3):
        mirror.send(wire(sample_sip(n)))
    assert len(listener.receive(3)) == 3
    name = f"sip:127.0.0.1:{listener.port}"
    deadline = time.monotonic() + 10  # the worker reports its counters every 0.25 s
    while mirror.stats()[name]["sent"] < 3:
        assert time.monotonic() < deadline, mirror.stats()
        time.sleep(0.01)
    os.kill(mirror._worker.process.pid, signal.SIGKILL)
    mirror._worker.process.join()
    for n in range(5):
        mirror.send(wire(sample_sip(n)))
    mirror.close()
    assert list(mirror.stats().values()) == [{"sent": 3, "failed": 0, "dropped": 5}]
    assert "mirror worker stopped" in caplog.text


def test_format_stats_lines():
    stats = {"sip:127.0.0.1:5060": {"sent": 3, "failed": 1, "dropped": 2}}
    assert format_stats(stats) == ["mirror sip:127.0.0.1:5060: sent 3, failed 1, dropped 2"]


@pytest.mark.parametrize("arguments, says", [
    ({"destinations": "sip:no-such-host.invalid"}, "cannot resolve host"),
    ({"destinations": ""}, "empty item"),
    ({"destinations": []}, "no destination"),
    ({"destinations": "sip:127.0.0.1", "hep_capture_id": -1}, "hep_capture_id"),
    ({"destinations": "sip:127.0.0.1", "hep_capture_id": 2**32}, "hep_capture_id"),
    ({"destinations": "sip:127.0.0.1", "queue_size": 0}, "queue size"),
    ({"destinations": "sip:127.0.0.1", "hep_auth_key": "k" * 1025}, "hep_auth_key: longer"),
])
def test_bad_configuration_is_a_config_error_at_start(arguments, says):
    with pytest.raises(ConfigError, match=says):
        Mirror(**arguments)
