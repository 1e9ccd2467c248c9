"""A parsed SIP message: the few fields tracing needs, plus the raw bytes."""

from dataclasses import dataclass, field

from siptrace.sip.params import header_tag, via_branches


@dataclass(slots=True)
class SipMessage:
    """One SIP message as parsed from its exact wire bytes (``raw``).

    For a request ``method`` is the request method and ``status`` is None; for a
    reply ``status`` is the numeric code and ``method`` is None. ``cseq_method`` is
    the CSeq method for both. ``defects`` names what the parser tolerated (e.g.
    "no Call-ID", "bad Content-Length"); empty for a clean message.

    The To header and the Via headers are kept raw and read on demand (``to_tag``,
    ``via_branches``): storing a message needs neither, correlating it does. The
    Request-URI and the reason phrase, needed by neither, are decoded on demand too.
    """

    raw: bytes
    start_line: bytes  # without its line end
    method: str | None
    status: int | None
    call_id: str
    cseq_num: int
    cseq_method: str
    from_tag: str
    to_header: bytes | None = None
    via_headers: list[bytes] = field(default_factory=list)
    content_length: int | None = None
    defects: tuple[str, ...] = ()

    @property
    def is_request(self) -> bool:
        return self.status is None

    @property
    def request_uri(self) -> str | None:
        """The Request-URI of a request; None for a reply."""
        if self.status is not None:
            return None
        return self.start_line.split(b" ")[1].decode("utf-8", "replace")

    @property
    def reason(self) -> str | None:
        """The reason phrase of a reply ('' when there is none); None for a request."""
        if self.status is None:
            return None
        return self.start_line[12:].decode("utf-8", "replace")

    @property
    def to_tag(self) -> str:
        """The To tag, '' when there is none (or no To header)."""
        return "" if self.to_header is None else header_tag(self.to_header)

    @property
    def via_branches(self) -> list[str]:
        """The branch parameter of each Via, topmost first ('' where a Via has none)."""
        return via_branches(self.via_headers)
