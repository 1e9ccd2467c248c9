"""Recorded decisions applied to a capture: the live correlation, replayed. No I/O.

Live, the correlator is fed each decision at the time siptrace received it and
each packet at its capture time (or a little later); an on/off switch at the time
it was applied. A recording keeps those receive times (``rt``), so replay merges
the two streams by time and feeds every event at its own time: the correlator
then sees what it saw live, and the grace windows close at the same moments.
"""

from collections import Counter
from typing import Iterable, Iterator, NamedTuple

from siptrace.correlate.correlator import Correlator, Traced
from siptrace.correlate.decision import Decision


class RecordedEvent(NamedTuple):
    """One line of a decisions recording: a decision, or an on/off switch."""

    rt_ns: int  # when siptrace received it (epoch nanoseconds)
    decision: Decision | None = None
    trace_on: bool | None = None


class DecisionReplayTracer:
    """replay's tracer interface (``on_packet``, ``finish``) over recorded events.

    Before each packet, the events received up to its capture time are applied (an
    event before a packet captured at the same instant). ``stats`` are the
    correlator's; ``recording_stats`` what reading the recording counted.
    """

    def __init__(self, correlator: Correlator, events: Iterable[RecordedEvent],
                 recording_stats: Counter | None = None):
        self.correlator = correlator
        self.recording_stats = Counter() if recording_stats is None else recording_stats
        self._events = iter(events)
        self._next = next(self._events, None)
        self._last_ns = 0

    @property
    def stats(self) -> Counter:
        return self.correlator.stats

    def on_packet(self, wire, now_ns: int | None = None) -> list[Traced]:
        """A wire message, applied at its capture time (``now_ns`` is not needed)."""
        ts = wire.ts_ns
        out = self._apply_until(ts) if self._next is not None else []
        self._last_ns = max(self._last_ns, ts)
        out += self.correlator.on_packet(wire, ts)
        return out

    def finish(self, now_ns: int | None = None) -> list[Traced]:
        """The events left after the last packet, then the end of input."""
        out = self._apply_until(None)
        return out + self.correlator.finish(max(self._last_ns, now_ns or 0))

    def _apply_until(self, ts_ns: int | None) -> list[Traced]:
        out: list[Traced] = []
        event = self._next
        while event is not None and (ts_ns is None or event.rt_ns <= ts_ns):
            out += apply_event(self.correlator, event)
            self._last_ns = max(self._last_ns, event.rt_ns)
            event = next(self._events, None)
        self._next = event
        return out


def correlate_offline(correlator: Correlator, wires: Iterable,
                      events: Iterable[RecordedEvent]) -> Iterator[Traced]:
    """Traced outputs for wire messages in capture order and events in receive order."""
    tracer = DecisionReplayTracer(correlator, events)
    for wire in wires:
        yield from tracer.on_packet(wire)
    yield from tracer.finish()


def apply_event(correlator: Correlator, event: RecordedEvent) -> list[Traced]:
    """Feed one recorded event at its receive time."""
    if event.decision is not None:
        return correlator.on_decision(event.decision, event.rt_ns)
    if event.trace_on is not None:
        correlator.set_trace_on(event.trace_on, event.rt_ns)
    return correlator.tick(event.rt_ns)
