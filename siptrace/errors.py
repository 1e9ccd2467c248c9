"""The one error hierarchy: anything else escaping a public function is a bug."""


class SiptraceError(Exception):
    """Base of every error siptrace reports to the user as one line."""


class CaptureFormatError(SiptraceError):
    """A file is not a capture siptrace can read, or its header is damaged."""


class TruncatedCapture(SiptraceError):
    """A capture file ends inside a record; the records before it were read."""


class DecodeError(SiptraceError):
    """A packet or message is malformed: counted and skipped, never fatal."""


class TruncatedPacket(DecodeError):
    """A packet is shorter than its headers say (snap length, damaged capture)."""


class SipParseError(DecodeError):
    """Bytes that start like SIP but are not a well-formed SIP message."""


class ConfigError(SiptraceError):
    """A bad parameter value; the message names the key."""


class StorageError(SiptraceError):
    """The database refused or could not be reached; wraps the driver's error."""


class ControlError(SiptraceError):
    """The control socket could not be reached, or refused a command."""
