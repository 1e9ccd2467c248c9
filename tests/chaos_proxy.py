"""A TCP proxy that loses the server's answer to the first INSERT, for in-doubt tests.

Between siptrace and a real ClickHouse server: bytes pass both ways unchanged, except
that once a client has sent an INSERT, the first answer from the server that comes
when ``written()`` says the rows are in the table is not forwarded, and both
connections are cut. The client sees a lost connection after sending its rows:
exactly an insert that timed out after the server wrote it. Only the first INSERT is
cut; every later connection passes whole.
"""

import selectors
import socket
import threading
from typing import Callable


class InsertAnswerLost:
    def __init__(self, server_port: int, written: Callable[[], bool], host: str = "127.0.0.1"):
        self.server = (host, server_port)
        self.written = written  # asked on another connection: are the rows stored?
        self.listener = socket.create_server((host, 0))
        self.port = self.listener.getsockname()[1]
        self.cut = threading.Event()  # set once an INSERT's answer was lost
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def url(self, database: str) -> str:
        return f"clickhouse://default@127.0.0.1:{self.port}/{database}"

    def close(self) -> None:
        self._stop.set()
        self.listener.close()
        self._thread.join(5)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._pipe, args=(client,), daemon=True).start()

    def _pipe(self, client: socket.socket) -> None:
        server = socket.create_connection(self.server)
        armed = not self.cut.is_set()
        insert_seen = False
        sel = selectors.DefaultSelector()
        sel.register(client, selectors.EVENT_READ, server)
        sel.register(server, selectors.EVENT_READ, client)
        try:
            while not self._stop.is_set():
                for key, _ in sel.select(0.2):
                    chunk = key.fileobj.recv(1 << 16)
                    if not chunk:
                        return
                    from_client = key.fileobj is client
                    if armed and from_client and b"INSERT INTO" in chunk:
                        insert_seen = True
                    elif (armed and insert_seen and not from_client and not self.cut.is_set()
                          and self.written()):
                        self.cut.set()  # the server's answer after the rows: lost
                        return
                    key.data.sendall(chunk)
        except OSError:
            return
        finally:
            sel.close()
            client.close()
            server.close()
