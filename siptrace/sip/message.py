"""A parsed SIP message: the few fields tracing needs, plus the raw bytes."""

from dataclasses import dataclass, field


@dataclass(slots=True)
class SipMessage:
    """One SIP message as parsed from its exact wire bytes (``raw``).

    For a request ``method`` is the request method and ``status`` is None; for a
    reply ``status`` is the numeric code and ``method`` is None. ``cseq_method`` is
    the CSeq method for both. ``via_branches`` lists the branch parameter of each
    Via, topmost first ('' where a Via has none). ``defects`` names what the parser
    tolerated (e.g. "no Call-ID", "bad Content-Length"); empty for a clean message.
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
    to_tag: str
    via_branches: list[str] = field(default_factory=list)
    content_length: int | None = None
    defects: tuple[str, ...] = ()

    @property
    def is_request(self) -> bool:
        return self.status is None
