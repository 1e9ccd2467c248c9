"""pcaps/ stays honest: every capture is in pcaps/README.md with the SIP tshark finds in it,
the crafted files are exactly what pcaps/make_fixtures.py makes, and the lab that records
the real calls (Kamailio between two SIPp) still works.
"""

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
import subprocess
import sys

import pytest

from conftest import PCAPS, missing, require_tool

sys.path[:0] = [str(PCAPS)]
import make_fixtures  # noqa: E402
import lab  # noqa: E402

CAPTURE_SUFFIXES = (".pcap", ".pcapng")
# Ports for the lab smoke test: below Linux's ephemeral range, away from 5060/5070/5080
# (make_fixtures.py's own) so a hand run of the script and the tests never collide.
TEST_LAB_PORTS = lab.LabPorts(proxy=25060, uas=25080, uac=25070)


def readme_table() -> dict[str, tuple[int, int]]:
    """file -> (SIP frames, SIP messages) from the generated table in README.md."""
    text = (PCAPS / "README.md").read_text(encoding="utf-8")
    _, _, rest = text.partition(make_fixtures.TABLE_BEGIN)
    table, _, _ = rest.partition(make_fixtures.TABLE_END)
    rows = {}
    for line in table.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) >= 5 and cells[0].endswith(CAPTURE_SUFFIXES):
            rows[cells[0]] = (int(cells[3]), int(cells[4]))
    return rows


def fixture_files() -> list[Path]:
    return sorted(p for p in PCAPS.iterdir() if p.suffix in CAPTURE_SUFFIXES)


def test_readme_lists_exactly_the_fixture_files():
    listed = set(readme_table())
    present = {p.name for p in fixture_files()}
    assert present, "no captures in pcaps/"
    assert listed == present, (f"in README only: {sorted(listed - present)}; "
                               f"files only: {sorted(present - listed)}")


def test_every_fixture_has_sip_messages_in_the_readme():
    empty = [name for name, (frames, messages) in readme_table().items()
             if frames < 1 or messages < frames]
    assert not empty, f"README rows with no SIP or fewer messages than frames: {empty}"


def test_tshark_finds_the_readme_counts_in_every_fixture():
    require_tool("tshark")
    table = readme_table()
    # HEP: no dissector in Wireshark 4.0; test_fidelity checks them against what was encoded
    files = [p for p in fixture_files() if p.name not in make_fixtures.WITHOUT_WIRESHARK_DISSECTOR]
    with ThreadPoolExecutor(max_workers=2) as pool:
        counts = pool.map(make_fixtures.tshark_sip_counts, files)
        found = dict(zip((p.name for p in files), counts))
    wrong = {name: {"readme": table.get(name), "tshark": counts}
             for name, counts in found.items() if table.get(name) != counts}
    assert not wrong, f"(SIP frames, SIP messages) differ from pcaps/README.md: {wrong}"


def test_kamailio_captures_hold_whole_calls():
    """13 messages a call through the proxy, 5 calls, over UDP and TCP."""
    table = readme_table()
    for name in make_fixtures.LAB_FIXTURES:
        assert table[name][1] == make_fixtures.LAB_CALLS * make_fixtures.LAB_MESSAGES_PER_CALL


@pytest.mark.parametrize("fixture", make_fixtures.CRAFTED, ids=lambda f: f.name)
def test_crafted_fixture_is_what_the_script_makes(fixture):
    built = fixture.build()
    assert built == fixture.build(), "not deterministic"
    assert (PCAPS / fixture.name).read_bytes() == built, (
        f"pcaps/{fixture.name} differs from its builder: run pcaps/make_fixtures.py")


def test_lab_config_is_valid():
    require_tool("kamailio")
    result = subprocess.run(["kamailio", "-c", "-f", str(lab.LAB_CONFIG)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_lab_records_real_calls_through_kamailio(tmp_path, transport):
    """One call, SIPp -> Kamailio -> SIPp on loopback, all 13 messages on the wire."""
    for tool in ("tshark", *lab.TOOLS):
        require_tool(tool)
    pcap = tmp_path / "lab.pcap"
    try:
        with lab.SipLab(pcap, transport, tmp_path, TEST_LAB_PORTS, buffer_kib=2048) as sip_lab:
            result = sip_lab.run_calls(calls=1, rate=10, timeout_s=20)
    except lab.LabError as err:
        if "already in use" in str(err) or "missing tools" in str(err):
            missing(str(err))
        raise
    assert (result.successful, result.failed) == (1, 0)
    assert sip_lab.capture.dropped == 0
    frames, messages = make_fixtures.tshark_sip_counts(pcap)
    assert messages == make_fixtures.LAB_MESSAGES_PER_CALL
    assert not lab.bound_ports(transport) & {TEST_LAB_PORTS.proxy, TEST_LAB_PORTS.uas}, \
        "a lab process still holds its port"


def test_parse_sipp_output_reads_the_final_screens():
    """The figures SIPp prints at the end (its layout, copied from a real run)."""
    screen = """------------------------------ Scenario Screen -------- [1-9]: Change Screen --
                                 Messages  Retrans   Timeout   Unexpected-Msg
      INVITE ---------->         5         2         0
         100 <----------         5         0         0         0
         200 <----------  E-RTD1 5         0         0         0
         ACK ---------->         5         0
       Pause [    100ms]         5                             0
         BYE ---------->         5         1         0
  Successful call        |        0                  |        4
  Failed call            |        0                  |        1
"""
    earlier_screen = "Scenario Screen\n  INVITE ---------->  9  9  0\n"
    result = lab.parse_sipp_output(earlier_screen + screen, 1.0)
    assert (result.successful, result.failed, result.retransmissions) == (4, 1, 3)
    uas_screen = """------------------------------ Scenario Screen -------- [1-9]: Change Screen --
                                 Messages  Retrans   Timeout   Unexpected-Msg
  ----------> INVITE             7         0         0         0
  <---------- 180                7         0
  <---------- 200                7         2         0
  ----------> ACK         E-RTD1 7         0         0         0
  [   4000ms] Pause              7                             0
"""
    assert lab.parse_sipp_output(uas_screen, 0.0).retransmissions == 2
