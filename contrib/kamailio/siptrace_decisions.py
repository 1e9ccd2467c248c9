"""Kamailio (app_python3): publish the tracing decision of the current message to siptrace.

siptrace runs beside the proxy and sniffs its SIP traffic; this module tells it what
the routing script decided, one JSON object per datagram on siptrace's Unix socket
(docs/decisions.md):

    {"callid": ..., "cseq": "1 INVITE", "branch": <top Via branch as received>,
     "kind": "request"|"reply", "status": 200, "flags": <$mf>,
     "avps": {"6843": ["sip:alice@example.com", ...]}, "trace": true|false,
     "src": "udp:10.0.0.1:5060", "ts": 1700000000.123}

In kamailio.cfg:

    loadmodule "app_python3.so"
    modparam("app_python3", "load", "/usr/share/siptrace/siptrace_decisions.py")
    siptrace.decision_socket = "/run/siptrace/decisions.sock" desc "siptrace decisions"
    siptrace.avps = "6843" desc "AVP ids published (comma-separated): traced_user_avp"
    ...
    python_exec("siptrace_publish");           # after setflag()/AVPs: the flag decides
    python_exec("siptrace_publish", "trace");  # the sip_trace() equivalent

Call it once per message, in request_route and in the reply route armed with
t_on_reply() (there $mf and the AVPs are the transaction's). Publishing never
blocks and never fails the script: when siptrace is down or its socket is full
the decision is dropped, counted, and logged at most once a minute per process.
"""

import json
import os
import socket
import time

import KSR

DEFAULT_SOCKET = "/run/siptrace/decisions.sock"
DEFAULT_AVPS = ("6843",)  # siptrace's traced_user_avp default, as the module's
MAX_AVP_VALUES = 32  # values published per AVP id
MAX_DATAGRAM = 65536  # siptrace drops larger datagrams
WARN_EVERY_S = 60.0

MSG_REQUEST = 1  # $mt
MSG_REPLY = 2


def mod_init():
    """app_python3 entry point: the object whose methods python_exec() calls."""
    return SiptraceDecisions()


class SiptraceDecisions:
    """One instance per Kamailio process (created before the workers fork)."""

    def __init__(self):
        self.sock = None
        self.pid_of_sock = None
        self.path = None
        self.avp_ids = None
        self.has_via0 = True
        self.sent = 0
        self.failed = 0
        self.last_warning = 0.0

    def child_init(self, rank):
        return 0

    def siptrace_publish(self, msg, arg=None):
        """python_exec("siptrace_publish"[, "trace"]): always returns 1 (true)."""
        try:
            self._publish(arg == "trace")
        except Exception as exc:  # noqa: BLE001 - a tracing aid must never break routing
            self._failed(f"siptrace_publish: {exc!r}")
        return 1

    def _publish(self, trace):
        if self.path is None:
            self._read_settings()
        pv = KSR.pv.get
        kind = pv("$mt")
        decision = {
            "callid": pv("$ci") or "",
            "cseq": f"{pv('$cs')} {pv('$rm')}",
            "branch": self._branch(pv),
            "kind": "reply" if kind == MSG_REPLY else "request",
            "flags": int(pv("$mf") or 0),
            "avps": self._avps(pv),
            "trace": trace,
            "src": _endpoint(pv("$pr"), pv("$si"), pv("$sp")),
            "ts": time.time(),
        }
        if kind == MSG_REPLY:
            decision["status"] = int(pv("$rs") or 0)
        payload = json.dumps(decision, separators=(",", ":")).encode()
        if len(payload) > MAX_DATAGRAM:
            self._failed("decision larger than 64 KB, not sent")
            return
        self._send(payload)

    def _branch(self, pv):
        """$via0(branch) (Kamailio >= 5.5), else parsed from the first Via header."""
        if self.has_via0:
            try:
                branch = pv("$via0(branch)")
            except Exception:  # noqa: BLE001 - an older Kamailio: no $via0
                branch = None
            if branch is not None:
                return branch
        branch = _top_branch(pv("$hdr(Via)") or "")
        if branch:  # there is a branch that $via0 did not give: stop asking for it
            self.has_via0 = False
        return branch

    def _avps(self, pv):
        avps = {}
        for avp_id in self.avp_ids:
            values = []
            for index in range(MAX_AVP_VALUES):
                value = pv(f"$(avp(i:{avp_id})[{index}])")
                if value is None:
                    break
                values.append(str(value))
            if values:
                avps[avp_id] = values
        return avps

    def _send(self, payload):
        # A socket per process: the workers fork after mod_init.
        if self.sock is None or self.pid_of_sock != os.getpid():
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self.sock.setblocking(False)
            self.pid_of_sock = os.getpid()
        try:
            self.sock.sendto(payload, self.path)
            self.sent += 1
        except OSError as exc:  # not running, socket full, permission
            self._failed(f"cannot send to {self.path}: {exc.strerror or exc}")

    def _read_settings(self):
        path = _cfg_get("decision_socket")
        self.path = path or DEFAULT_SOCKET
        avps = _cfg_get("avps")
        ids = [a.strip() for a in str(avps).split(",")] if avps else DEFAULT_AVPS
        self.avp_ids = tuple(a for a in ids if a.isdigit())

    def _failed(self, why):
        self.failed += 1
        now = time.monotonic()
        if now - self.last_warning >= WARN_EVERY_S:
            self.last_warning = now
            KSR.warn(f"siptrace: {why} ({self.failed} decisions lost so far)\n")


def _cfg_get(name):
    """A custom cfg parameter siptrace.NAME, or None when the script declares none."""
    try:
        return KSR.pv.get(f"$sel(cfg_get.siptrace.{name})")
    except Exception:  # noqa: BLE001
        return None


def _top_branch(via):
    """The branch parameter of the first Via value of a Via header body."""
    first = via.split(",", 1)[0]
    for param in first.split(";")[1:]:
        name, _, value = param.partition("=")
        if name.strip().lower() == "branch":
            return value.strip()
    return ""


def _endpoint(proto, ip, port):
    if not ip:
        return ""
    if ":" in ip and not ip.startswith("["):
        ip = f"[{ip}]"
    return f"{proto or 'udp'}:{ip}:{port}"
