"""Slack's Socket Mode end, on a free loopback port: a minimal WebSocket server (RFC 6455) that
hands the bot envelopes and waits for their acknowledgements, as Slack does."""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import socket
import struct
import threading
import time

_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
TEXT, CLOSE, PING, PONG = 0x1, 0x8, 0x9, 0xA


class SocketModeStandIn:
    """Accepts the bot's WebSocket (the URL `apps.connections.open` returns) and delivers envelopes."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"ws://127.0.0.1:{self._listener.getsockname()[1]}/link"
        self.ack_seconds: list[float] = []  # how long each delivered envelope waited for its ack
        self.connections = 0
        self._conn: socket.socket | None = None
        self._send_lock = threading.Lock()
        self._acks: dict[str, threading.Event] = {}
        self._ids = itertools.count(1)
        self._connected = threading.Event()
        self._stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    def wait_connected(self, timeout: float = 30.0) -> None:
        if not self._connected.wait(timeout):
            raise TimeoutError("the bot did not open its Socket Mode connection")

    def deliver(self, kind: str, payload: dict, timeout: float = 3.0) -> int:
        """Send one envelope (slash_commands, interactive or events_api); 200 once acknowledged, else 504."""
        self.wait_connected()
        envelope_id = f"env-{next(self._ids)}"
        acked = self._acks[envelope_id] = threading.Event()
        envelope = {"envelope_id": envelope_id, "type": kind, "payload": payload,
                    "accepts_response_payload": kind != "events_api", "retry_attempt": 0, "retry_reason": ""}
        started = time.perf_counter()
        self._send(TEXT, json.dumps(envelope).encode())
        if not acked.wait(timeout):
            return 504  # Slack gives up after 3 s and tells the person the app did not respond
        self.ack_seconds.append(time.perf_counter() - started)
        return 200

    def stop(self) -> None:
        self._stopped = True
        self._listener.close()
        if self._conn:
            self._conn.close()

    # -- the connection --------------------------------------------------------------------------

    def _accept(self) -> None:
        while not self._stopped:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        reader = conn.makefile("rb")
        try:
            key = ""
            request_line = reader.readline()
            if not request_line.startswith(b"GET "):
                return
            while (line := reader.readline().decode().strip()):
                name, _, value = line.partition(":")
                if name.strip().lower() == "sec-websocket-key":
                    key = value.strip()
            accept = base64.b64encode(hashlib.sha1((key + _GUID).encode()).digest()).decode()
            conn.sendall(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                          f"Sec-WebSocket-Accept: {accept}\r\n\r\n").encode())
            self._conn = conn
            self.connections += 1
            self._send(TEXT, json.dumps({"type": "hello", "num_connections": 1}).encode())
            self._connected.set()
            while True:
                opcode, data = _read_frame(reader)
                if opcode == PING:
                    self._send(PONG, data)
                elif opcode == CLOSE:
                    return
                elif opcode == TEXT:
                    envelope_id = json.loads(data).get("envelope_id")
                    if envelope_id in self._acks:
                        self._acks.pop(envelope_id).set()
        except (OSError, ConnectionError, ValueError):
            return
        finally:
            if self._conn is conn:
                self._connected.clear()
            conn.close()

    def _send(self, opcode: int, data: bytes) -> None:
        n = len(data)
        head = bytes([0x80 | opcode]) + (bytes([n]) if n < 126 else
                                         bytes([126]) + struct.pack(">H", n) if n < 65536 else
                                         bytes([127]) + struct.pack(">Q", n))
        with self._send_lock:
            if self._conn is None:
                raise ConnectionError("the bot is not connected")
            self._conn.sendall(head + data)


def _read_frame(reader) -> tuple[int, bytes]:
    """One frame from the client; client frames are always masked."""
    head = reader.read(2)
    if len(head) < 2:
        raise ConnectionError("closed")
    opcode, n = head[0] & 0x0F, head[1] & 0x7F
    if n == 126:
        n = struct.unpack(">H", reader.read(2))[0]
    elif n == 127:
        n = struct.unpack(">Q", reader.read(8))[0]
    mask = reader.read(4) if head[1] & 0x80 else b"\0\0\0\0"
    data = reader.read(n)
    return opcode, bytes(b ^ mask[i % 4] for i, b in enumerate(data))
