"""The read side: calls, ladders and exports built from stored sip_trace rows. No I/O.

``model``     StoredMessage (one stored row, read back) and address parsing
``summary``   CallSummary: a call folded from its messages (From/To, status, state, links)
``search``    CallFilter: the search options of ``calls``, ``export`` and the web form
``ladder``    the ladder layout and its terminal rendering
``svg``       the ladder as SVG and as a standalone HTML page
``pcapout``   stored messages as pcap/pcapng packets
``tables``    aligned text tables, JSON and CSV of calls and rows
"""
