"""The kit published as contrib/kamailio/README.md says for Kamailio 5.3+'s
`setflag(22); sip_trace();`: each transaction as TM traces it, plus every request as
received, and replies stored once (no "trace" on reply decisions).

Same lab as test_kamailio_e2e.py (its addresses and harness): SIPp -> Kamailio with
the kit -> SIPp, `siptrace run` capturing on lo.
"""

import os

import pytest

from conftest import missing
from kamailio_lab import Lab
from test_kamailio_e2e import Run, by_call, call_shape, check_row_contents, expected

TRANSACTION_TRACE = "WITH_TRANSACTION_TRACE"


@pytest.fixture(autouse=True)
def _needs_root():
    if os.geteuid() != 0:
        missing("live capture needs root (CAP_NET_RAW)")


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_kamailio_5_setflag_and_sip_trace(tmp_path, transport):
    with Lab(tmp_path) as lab:
        run = Run(lab, tmp_path, transport, [TRANSACTION_TRACE])
        port, pid = run.call(2)
        rows, status = run.finish()
    calls = by_call(rows)
    assert len(calls) == 2
    call = call_shape(transport, port, rows)
    requests_as_received = [r for r in call.sip_trace_rows() if r[1] == ""]
    for got in calls.values():
        assert sorted(got) == sorted(expected(call.flag_rows() + requests_as_received).elements())
    check_row_contents(rows)
