"""Recorded decisions applied to a capture: the live correlation, replayed. No I/O.

Live, the correlator is fed each decision at the time siptrace received it and
each packet at its capture time (or a little later); an on/off switch at the time
it was applied. A recording keeps those receive times (``rt``), so replay merges
the two streams by time and feeds every event at its own time: the correlator
then sees what it saw live, and the grace windows close at the same moments.
"""

from typing import Iterable, Iterator, NamedTuple

from siptrace.correlate.correlator import Correlator, Traced
from siptrace.correlate.decision import Decision


class RecordedEvent(NamedTuple):
    """One line of a decisions recording: a decision, or an on/off switch."""

    rt_ns: int  # when siptrace received it (epoch nanoseconds)
    decision: Decision | None = None
    trace_on: bool | None = None


def correlate_offline(correlator: Correlator, wires: Iterable,
                      events: Iterable[RecordedEvent]) -> Iterator[Traced]:
    """Traced outputs for wire messages in capture order and events in receive order.

    An event is applied before a packet captured at the same instant or later. The
    end of input closes every window (``correlator.finish``).
    """
    events = iter(events)
    event = next(events, None)
    last_ns = 0
    for wire in wires:
        ts = wire.ts_ns
        while event is not None and event.rt_ns <= ts:
            yield from apply_event(correlator, event)
            event = next(events, None)
        last_ns = ts
        yield from correlator.on_packet(wire, ts)
    while event is not None:
        yield from apply_event(correlator, event)
        last_ns = max(last_ns, event.rt_ns)
        event = next(events, None)
    yield from correlator.finish(last_ns)


def apply_event(correlator: Correlator, event: RecordedEvent) -> list[Traced]:
    """Feed one recorded event at its receive time."""
    if event.decision is not None:
        return correlator.on_decision(event.decision, event.rt_ns)
    if event.trace_on is not None:
        correlator.set_trace_on(event.trace_on, event.rt_ns)
    return correlator.tick(event.rt_ns)
