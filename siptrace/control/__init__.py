"""The sidecar's sockets: the proxy's decisions in, the on/off/status control."""

from siptrace.control.control import ControlServer, send_command
from siptrace.control.decisions import (DecisionRecorder, DecisionSocket,
                                        read_recorded_decisions, replay_tracer)

__all__ = ["ControlServer", "send_command", "DecisionSocket", "DecisionRecorder",
           "read_recorded_decisions", "replay_tracer"]
