"""Mirroring traced messages: duplicate_uri copies (sip:) and HEPv3 (hep:) over UDP."""

from siptrace.mirror.destinations import Destination, parse_destinations
from siptrace.mirror.hep import DEFAULT_CAPTURE_ID, encode_hep3
from siptrace.mirror.sender import Mirror, format_stats

__all__ = ["DEFAULT_CAPTURE_ID", "Destination", "Mirror", "encode_hep3", "format_stats",
           "parse_destinations"]
