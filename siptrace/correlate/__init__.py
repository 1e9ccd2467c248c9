"""Joining wire messages with the proxy's decisions; clock injected, no I/O."""

from siptrace.correlate.correlator import Correlator, Traced
from siptrace.correlate.decision import (MAX_DECISION_BYTES, Decision, decision_from_object,
                                         parse_decision)
from siptrace.correlate.offline import (DecisionReplayTracer, RecordedEvent, apply_event,
                                        correlate_offline)

__all__ = ["Correlator", "Traced", "Decision", "parse_decision", "decision_from_object",
           "MAX_DECISION_BYTES", "RecordedEvent", "DecisionReplayTracer", "apply_event",
           "correlate_offline"]
