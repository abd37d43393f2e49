"""
A blocking HTTP/2 client on a socket (python-hyper's C{h2}, client side),
for tests that need frame-level control: small windows, resets, floods.
Run it in a thread (C{threads.deferToThread}).
"""
from __future__ import annotations

import socket
import ssl
from typing import Any, Optional

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import ConnectionTerminated, DataReceived, ResponseReceived, StreamEnded, StreamReset


class H2Client:
    def __init__(
        self,
        port: int,
        *,
        context: Optional[ssl.SSLContext] = None,
        server_hostname: str = "localhost",
        window: Optional[int] = None,
    ) -> None:
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        if context is not None:
            context.set_alpn_protocols(["h2"])
            sock = context.wrap_socket(sock, server_hostname=server_hostname)
            assert sock.selected_alpn_protocol() == "h2", sock.selected_alpn_protocol()
        self.sock = sock
        self.conn = H2Connection(H2Configuration(client_side=True, header_encoding=None))
        self.conn.initiate_connection()
        if window is not None:
            self.conn.update_settings({0x4: window})  # SETTINGS_INITIAL_WINDOW_SIZE
        self.flush()
        self.responses: dict[int, dict[str, Any]] = {}
        self.terminated: Optional[ConnectionTerminated] = None

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def request(
        self, path: str, *, method: str = "GET", headers: Optional[list[tuple[str, str]]] = None,
        body: Optional[bytes] = None, authority: str = "localhost",
    ) -> int:
        stream_id = self.conn.get_next_available_stream_id()
        fields = [(":method", method), (":path", path), (":scheme", "https"), (":authority", authority)]
        fields += headers or []
        self.conn.send_headers(stream_id, [(k.encode(), v.encode()) for k, v in fields], end_stream=body is None)
        if body is not None:
            self.conn.send_data(stream_id, body, end_stream=True)
        self.responses[stream_id] = {"status": None, "headers": [], "body": bytearray(), "ended": False, "reset": None}
        self.flush()
        return stream_id

    def reset(self, stream_id: int) -> None:
        self.conn.reset_stream(stream_id)
        self.flush()

    def read(self, *, ack: bool = True) -> bool:
        """Read and handle what arrives; False once the connection closed."""
        try:
            data = self.sock.recv(65536)
        except (socket.timeout, ssl.SSLError, ConnectionError):
            return False
        if not data:
            return False
        for event in self.conn.receive_data(data):
            response = self.responses.get(getattr(event, "stream_id", 0))
            if isinstance(event, ResponseReceived) and response is not None:
                response["headers"] = event.headers
                response["status"] = int(dict(event.headers)[b":status"])
            elif isinstance(event, DataReceived) and response is not None:
                response["body"] += event.data
                if ack:
                    self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, StreamEnded) and response is not None:
                response["ended"] = True
            elif isinstance(event, StreamReset) and response is not None:
                response["reset"] = event.error_code
            elif isinstance(event, ConnectionTerminated):
                self.terminated = event
        self.flush()
        return True

    def until(self, done: Any, *, limit: int = 10_000) -> None:
        for _ in range(limit):
            if done() or not self.read():
                return

    def get(self, path: str, **kw: Any) -> dict[str, Any]:
        stream_id = self.request(path, **kw)
        self.until(lambda: self.responses[stream_id]["ended"] or self.responses[stream_id]["reset"] is not None)
        return self.responses[stream_id]

    def close(self) -> None:
        self.sock.close()
