#!/usr/bin/env python3
"""WebSocket clients for scripts/soak.sh, standard library only (no websocket package).

  soak_ws.py chatter URL TOKEN MODEL SECS   chats; cancels every third one after its first
                                            delta; every 10 chats drops the connection and
                                            reconnects with ?session_id= (resume)
  soak_ws.py subscriber URL TOKEN SECS      holds /admin/ws and counts the feed's frames

URL is the gateway's http://HOST:PORT. Prints one summary line of counters at the end; exits 1
when a resume was refused or nothing at all worked.
"""
import base64
import json
import os
import socket
import struct
import sys
import time
import urllib.parse


class Closed(Exception):
    pass


class WebSocket:
    def __init__(self, base, path, timeout=30.0):
        url = urllib.parse.urlsplit(base)
        self.sock = socket.create_connection((url.hostname, url.port or 80), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            (
                f"GET {path} HTTP/1.1\r\nHost: {url.hostname}:{url.port}\r\n"
                "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            data = self.sock.recv(4096)
            if not data:
                raise Closed("handshake: connection closed")
            self.buf += data
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        status = head.split(b"\r\n", 1)[0]
        if b" 101 " not in status:
            raise Closed(f"handshake refused: {status.decode(errors='replace')}")

    def _read(self, n):
        while len(self.buf) < n:
            data = self.sock.recv(65536)
            if not data:
                raise Closed("connection closed")
            self.buf += data
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def send(self, opcode, payload):
        mask = os.urandom(4)
        n = len(payload)
        if n < 126:
            header = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
        elif n < 65536:
            header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
        else:
            header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(header + mask + masked)

    def send_json(self, value):
        self.send(0x1, json.dumps(value).encode())

    def recv(self):
        """The next text message as JSON; answers pings; raises Closed on a close frame."""
        message = b""
        while True:
            b0, b1 = self._read(2)
            opcode, n = b0 & 0x0F, b1 & 0x7F
            if n == 126:
                (n,) = struct.unpack("!H", self._read(2))
            elif n == 127:
                (n,) = struct.unpack("!Q", self._read(8))
            payload = self._read(n)
            if opcode == 0x9:
                self.send(0xA, payload)
            elif opcode == 0x8:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
                raise Closed(f"close {code}")
            elif opcode in (0x0, 0x1, 0x2):
                message += payload
                if b0 & 0x80:
                    return json.loads(message)

    def close(self):
        try:
            self.send(0x8, struct.pack("!H", 1000))
        except OSError:
            pass
        self.sock.close()


def chatter(base, token, model, secs):
    counts = dict(chats=0, done=0, cancelled=0, errors=0, reconnects=0, resumed=0,
                  resume_refused=0, connect_failed=0)
    end = time.monotonic() + secs
    session = None
    n = 0
    while time.monotonic() < end:
        path = f"/ws?token={token}" + (f"&session_id={session}" if session else "")
        try:
            ws = WebSocket(base, path)
            first = ws.recv()
        except (OSError, Closed, ValueError):
            counts["connect_failed"] += 1
            time.sleep(1)
            continue
        if session:
            counts["reconnects"] += 1
            if first.get("resumed"):
                counts["resumed"] += 1
            else:
                counts["resume_refused"] += 1
        session = first.get("session_id")
        try:
            for _ in range(10):
                if time.monotonic() >= end:
                    break
                n += 1
                cid = f"c{n}"
                ws.send_json({"type": "chat", "id": cid, "model": model,
                              "content": "soak test words " * 4})
                counts["chats"] += 1
                cancel = n % 3 == 0
                while True:
                    frame = ws.recv()
                    kind = frame.get("type")
                    if kind == "delta" and cancel:
                        ws.send_json({"type": "cancel", "id": cid})
                        cancel = False
                    elif kind == "done":
                        counts["cancelled" if frame.get("cancelled") else "done"] += 1
                        break
                    elif kind == "error":
                        counts["errors"] += 1
                        time.sleep(min(frame.get("retry_after_ms", 100), 1000) / 1000)
                        break
        except (OSError, Closed, ValueError):
            counts["errors"] += 1
        ws.close()
    print("chatter " + " ".join(f"{k}={v}" for k, v in counts.items()), flush=True)
    return 0 if counts["done"] and not counts["resume_refused"] else 1


def subscriber(base, token, secs):
    counts = dict(frames=0, reconnects=0)
    end = time.monotonic() + secs
    while time.monotonic() < end:
        try:
            ws = WebSocket(base, f"/admin/ws?token={token}")
            ws.sock.settimeout(5)
            while time.monotonic() < end:
                ws.recv()
                counts["frames"] += 1
            ws.close()
        except (OSError, Closed, ValueError):
            counts["reconnects"] += 1
            time.sleep(1)
    print("subscriber " + " ".join(f"{k}={v}" for k, v in counts.items()), flush=True)
    return 0 if counts["frames"] else 1


if __name__ == "__main__":
    args = sys.argv[1:]
    if len(args) == 5 and args[0] == "chatter":
        sys.exit(chatter(args[1], args[2], args[3], float(args[4])))
    if len(args) == 4 and args[0] == "subscriber":
        sys.exit(subscriber(args[1], args[2], float(args[3])))
    print(__doc__, file=sys.stderr)
    sys.exit(2)
