"""siptrace: a passive SIP trace collector, the OpenSER siptrace module as a sidecar."""

__version__ = "0.1.0"
