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
    ``via_branches``): storing a message needs neither, correlating it does.
    """

    raw: bytes
    method: str | None
    request_uri: str | None
    status: int | None
    reason: str | None
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
    def to_tag(self) -> str:
        """The To tag, '' when there is none (or no To header)."""
        return "" if self.to_header is None else header_tag(self.to_header)

    @property
    def via_branches(self) -> list[str]:
        """The branch parameter of each Via, topmost first ('' where a Via has none)."""
        return via_branches(self.via_headers)
