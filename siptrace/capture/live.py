"""Live capture: whole packets from AF_PACKET sockets, filtered in the kernel.

scapy (through libpcap) compiles the filter expression and the socket gets it
attached; receiving is a plain ``recvmsg`` loop, because scapy's per-packet
dissection manages only a few thousand packets a second. Records are the same
``(ts_ns, linktype, data)`` tuples the capture-file readers yield.

Loopback (and ``any``) shows every packet twice: once as the sender's outgoing
copy, once as received. The outgoing copy on a loopback device is dropped in
the kernel by a few instructions put in front of the compiled filter; genuine
retransmissions are distinct packets and stay.
"""

import ctypes
import select
import socket
import struct
import time
from collections import Counter
from pathlib import Path
from threading import Event
from typing import Iterable, Iterator

from siptrace.direction import normalize_ip
from siptrace.errors import ConfigError, SiptraceError

# <linux/if_ether.h>, <linux/if_packet.h>, <linux/if_arp.h>
ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_STATISTICS = 6  # struct tpacket_stats {u32 tp_packets; u32 tp_drops}; reading resets
PACKET_OUTGOING = 4
ARPHRD_ETHER = 1
ARPHRD_LOOPBACK = 772  # Ethernet-framed on Linux
# <asm-generic/socket.h>
SO_ATTACH_FILTER = 26
SO_RCVBUFFORCE = 33  # needs CAP_NET_ADMIN; goes past net.core.rmem_max
SO_TIMESTAMPNS = 35  # also the SCM_ type of the ancillary struct timespec

# LINKTYPE_ values (tcpdump.org/linktypes.html). A SOCK_DGRAM (cooked) socket gives the
# packet from its IP header: LINKTYPE_RAW, what libpcap calls DLT_RAW when compiling.
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
DLT_RAW = 12

# Classic BPF (linux/filter.h, linux/bpf_common.h): opcodes and ancillary loads.
BPF_LD_W_ABS = 0x20
BPF_JEQ_K = 0x15
BPF_RET_K = 0x06
SKF_AD_OFF = -0x1000
SKF_AD_PKTTYPE = 4
SKF_AD_HATYPE = 28
WHOLE_PACKET = 0xFFFFFFFF  # a filter's accept length; the kernel keeps min(this, packet)

# "if this is the outgoing copy on a loopback device, drop it", then the compiled program.
SKIP_LOOPBACK_OUTGOING = (
    (BPF_LD_W_ABS, 0, 0, (SKF_AD_OFF + SKF_AD_PKTTYPE) & 0xFFFFFFFF),
    (BPF_JEQ_K, 0, 3, PACKET_OUTGOING),
    (BPF_LD_W_ABS, 0, 0, (SKF_AD_OFF + SKF_AD_HATYPE) & 0xFFFFFFFF),
    (BPF_JEQ_K, 0, 1, ARPHRD_LOOPBACK),
    (BPF_RET_K, 0, 0, 0),
)

BPF_INSN = struct.Struct("HBBI")  # struct sock_filter
SOCK_FPROG = struct.Struct("HL")  # struct sock_fprog {u16 len; struct sock_filter *filter}
TIMESPEC = struct.Struct("qq")

DEFAULT_BUFFER = 64 << 20  # kernel receive buffer per socket
MIN_FRAME = 65536 + 64  # largest IP packet plus link header; GRO/GSO stay under it
ANCILLARY_SPACE = socket.CMSG_SPACE(TIMESPEC.size)
MAX_BATCH = 512  # packets read from one socket before looking at the others
KERNEL_STATS_EVERY_NS = 1_000_000_000

# Fragments that carry no port: non-first IPv4 fragments; IPv6 packets whose first next
# header is an extension header (RFC 8200 section 4: hop-by-hop 0, routing 43, fragment
# 44, destination options 60, AH 51), so a fragment header after others passes too, in any
# order (BPF cannot walk the chain; such packets are rare, the decoder walks it), and so
# does UDP/TCP behind them, which libpcap's "udp port" does not see.
FRAGMENTS = ("(ip[6:2] & 0x1fff != 0) or (ip6 and (ip6[6] == 44 or ip6[6] == 0 "
             "or ip6[6] == 43 or ip6[6] == 60 or ip6[6] == 51))")
# Encapsulations whose inner addresses a BPF filter cannot reach: passed whole, the
# decoder opens them and keeps the SIP it finds. GRE (ERSPAN, IP or Ethernet inside),
# IP-in-IP, the UDP tunnels by destination port: GTP-U, VXLAN, Geneve, HEP; MPLS by its
# EtherTypes (unicast, multicast), and VLAN tags the kernel left in the frame (QinQ:
# 802.1ad, the old 0x9100, and the inner 802.1Q tag once the outer one is stripped),
# by EtherType too: libpcap's `mpls` and `vlan` would shift the offsets of every clause
# after them, for all packets.
TUNNELS = ("ip proto 47 or ip6 proto 47 or ip proto 4 or ip proto 41 or ip6 proto 4 "
           "or ip6 proto 41 or udp dst port 2152 or udp dst port 4789 "
           "or udp dst port 6081 or udp dst port 9060 or ether proto 0x8847 "
           "or ether proto 0x8848 or ether proto 0x8100 or ether proto 0x88a8 "
           "or ether proto 0x9100")


def build_filter(proxies: Iterable[tuple[str | None, int | None]] = (),
                 exclude: Iterable[tuple[str, int | None]] = ()) -> str:
    """The capture filter for a proxy's SIP traffic, as a libpcap expression.

    ``proxies`` are ``(ip, port)`` pairs (either may be None). With an address, all
    of its TCP is kept too: the proxy opens outgoing SIP/TCP connections from
    ephemeral ports (content detection drops the streams that are not SIP).
    SCTP is kept like UDP (SIP over SCTP, RFC 4168). IP fragments, IPv6 extension
    headers and tunnels (TUNNELS) always pass. ``exclude`` lists destinations never
    captured: mirror targets (no loops), the database server.
    """
    ports_by_host: dict[str | None, set[int | None]] = {}
    for host, port in proxies:
        ports_by_host.setdefault(_bare_ip(host) if host else None, set()).add(port)
    clauses = []
    for host, ports in ports_by_host.items():
        if host is None:
            clauses += [f"port {p}" if p else "udp or tcp or sctp"
                        for p in sorted(ports, key=str)]
            continue
        if None in ports:
            clauses.append(f"host {host} and (udp or tcp or sctp)")
        else:
            udp = " or ".join(f"udp port {p} or sctp port {p}" for p in sorted(ports))
            clauses.append(f"host {host} and ({udp} or tcp)")
    if not clauses:
        clauses.append("udp or tcp or sctp")
    keep = " or ".join(f"({c})" for c in clauses + [FRAGMENTS, TUNNELS])
    drops = [f"not (dst host {_bare_ip(h)}" + (f" and dst port {p})" if p else ")")
             for h, p in exclude]
    return " and ".join([f"({keep})"] + drops)


def _bare_ip(host: str) -> str:
    """An address as libpcap wants it: brackets and IPv6 zone removed, validated."""
    ip = normalize_ip(host)
    if ip is None:
        raise ConfigError(f"capture filter: {host!r} is not an IP address")
    return ip


class LiveCapture:
    """Captures whole packets on interfaces ('any' allowed) through a kernel filter.

    ``read(timeout)`` returns the records that arrived, as a list (empty on
    timeout). ``stats`` counts packets (records returned), truncated,
    loopback_copies (outgoing copies that reached user space anyway) and, read
    from the kernel about once a second, kernel_packets and kernel_drops
    (cumulative). Needs root or CAP_NET_RAW (+ CAP_NET_ADMIN for big buffers).
    """

    def __init__(self, interfaces: Iterable[str], filter_expr: str, *,
                 buffer_bytes: int = DEFAULT_BUFFER):
        names = list(dict.fromkeys(interfaces)) or ["any"]
        if "any" in names and len(names) > 1:
            raise ConfigError("interface: 'any' already covers every interface; "
                              "give it alone")
        self.filter_expr = filter_expr
        self.interfaces = names
        self.stats: Counter = Counter()
        self._taps: list[_Tap] = []
        self._poll = select.poll()
        self._next_kernel_stats = 0
        try:
            for name in names:
                tap = _Tap(name, filter_expr, buffer_bytes)
                self._taps.append(tap)
                self._poll.register(tap.sock.fileno(), select.POLLIN)
        except BaseException:
            self.close()
            raise
        self._by_fd = {tap.sock.fileno(): tap for tap in self._taps}

    def read(self, timeout: float) -> list[tuple[int, int, bytes]]:
        """Waits up to ``timeout`` seconds; returns what arrived, oldest first per socket."""
        records: list = []
        ready = self._poll.poll(int(timeout * 1000))
        for fd, _ in ready:
            self._by_fd[fd].drain(records, self.stats)
        if len(ready) > 1:
            records.sort(key=_timestamp)
        self.stats["packets"] += len(records)
        now = time.monotonic_ns()
        if now >= self._next_kernel_stats:
            self._next_kernel_stats = now + KERNEL_STATS_EVERY_NS
            self.read_kernel_stats()
        return records

    def records(self, stop: Event, poll_interval: float = 0.2) -> Iterator[tuple[int, int, bytes]]:
        """Yields records one by one until ``stop`` is set."""
        while not stop.is_set():
            yield from self.read(poll_interval)

    def read_kernel_stats(self) -> tuple[int, int]:
        """Adds the kernel's counters since the last call; cumulative (packets, drops)."""
        for tap in self._taps:
            packets, drops = tap.kernel_stats()
            self.stats["kernel_packets"] += packets
            self.stats["kernel_drops"] += drops
        return self.stats["kernel_packets"], self.stats["kernel_drops"]

    def close(self) -> None:
        if self._taps:
            try:
                self.read_kernel_stats()
            except OSError:
                pass
        for tap in self._taps:
            tap.sock.close()
        self._taps = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _timestamp(record) -> int:
    return record[0]


class _Tap:
    """One AF_PACKET socket: Ethernet frames, or IP packets (cooked) for other links."""

    def __init__(self, name: str, filter_expr: str, buffer_bytes: int):
        self.name = name
        if name == "any":
            hatype, mtu = None, 0
        else:
            hatype, mtu = _interface_info(name)
        self.cooked = hatype not in (ARPHRD_ETHER, ARPHRD_LOOPBACK)
        self.linktype = LINKTYPE_RAW if self.cooked else LINKTYPE_ETHERNET
        self.frame_size = max(MIN_FRAME, mtu + 64)
        program = compile_program(filter_expr, DLT_RAW if self.cooked else LINKTYPE_ETHERNET)
        kind = socket.SOCK_DGRAM if self.cooked else socket.SOCK_RAW
        try:
            # Protocol 0 receives nothing until bind(): the filter is in place first.
            # 'any' cannot be bound, so it listens at once and is drained after.
            self.sock = socket.socket(socket.AF_PACKET, kind,
                                      socket.htons(ETH_P_ALL) if name == "any" else 0)
        except PermissionError:
            raise SiptraceError(f"capture on {name}: needs root or CAP_NET_RAW") from None
        try:
            self._set_buffer(buffer_bytes)
            self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            attach_program(self.sock, program)
            if name != "any":
                self.sock.bind((name, ETH_P_ALL))
            self.sock.setblocking(False)
            if name == "any":
                self._discard_unfiltered()
        except OSError as exc:
            self.sock.close()
            raise SiptraceError(f"capture on {name}: {exc.strerror or exc}") from None

    def _set_buffer(self, size: int) -> None:
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, size)
        except PermissionError:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)

    def _discard_unfiltered(self) -> None:
        while True:
            try:
                self.sock.recv(1)
            except BlockingIOError:
                return

    def drain(self, out: list, stats: Counter) -> None:
        """Appends up to MAX_BATCH records waiting on this socket."""
        recvmsg, frame, linktype = self.sock.recvmsg, self.frame_size, self.linktype
        unpack_ts = TIMESPEC.unpack_from
        append = out.append
        for _ in range(MAX_BATCH):
            try:
                data, ancillary, flags, addr = recvmsg(frame, ANCILLARY_SPACE)
            except BlockingIOError:
                return
            except InterruptedError:
                continue
            # addr: (ifname, protocol, pkttype, hatype, hardware address)
            if addr[2] == PACKET_OUTGOING and addr[3] == ARPHRD_LOOPBACK:
                stats["loopback_copies"] += 1
                continue
            if ancillary:
                sec, nsec = unpack_ts(ancillary[0][2])
                ts_ns = sec * 1_000_000_000 + nsec
            else:
                ts_ns = time.time_ns()
            if flags & socket.MSG_TRUNC:
                stats["truncated"] += 1
            append((ts_ns, linktype, data))

    def kernel_stats(self) -> tuple[int, int]:
        raw = self.sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8)
        return struct.unpack("II", raw)


def _interface_info(name: str) -> tuple[int, int]:
    """(ARPHRD type, MTU) of an interface, from sysfs."""
    try:
        socket.if_nametoindex(name)
        base = Path("/sys/class/net") / name
        return int((base / "type").read_text()), int((base / "mtu").read_text())
    except (OSError, ValueError):
        raise ConfigError(f"interface: no network interface named {name!r}") from None


def compile_program(filter_expr: str, linktype: int) -> list[tuple[int, int, int, int]]:
    """scapy/libpcap compiles the expression; returns the instructions, whole-packet
    accepts, with the loopback-copy check in front."""
    from scapy.arch.common import compile_filter
    from scapy.error import Scapy_Exception

    try:
        program = compile_filter(filter_expr, linktype=linktype)
    except Scapy_Exception as exc:
        raise ConfigError(f"capture filter {filter_expr!r}: {exc}") from None
    except ImportError as exc:
        raise SiptraceError(f"capture filter: {exc}") from None
    raw = ctypes.string_at(ctypes.cast(program.bf_insns, ctypes.c_void_p).value,
                           program.bf_len * BPF_INSN.size)
    compiled = [BPF_INSN.unpack_from(raw, i * BPF_INSN.size) for i in range(program.bf_len)]
    # libpcap accepts with its snap length; the kernel would cut packets there.
    compiled = [(code, jt, jf, WHOLE_PACKET if code == BPF_RET_K and k else k)
                for code, jt, jf, k in compiled]
    return list(SKIP_LOOPBACK_OUTGOING) + compiled


def attach_program(sock: socket.socket, program: list[tuple[int, int, int, int]]) -> None:
    """SO_ATTACH_FILTER: the kernel copies the instructions during the call."""
    code = ctypes.create_string_buffer(b"".join(BPF_INSN.pack(*i) for i in program))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER,
                    SOCK_FPROG.pack(len(program), ctypes.addressof(code)))
