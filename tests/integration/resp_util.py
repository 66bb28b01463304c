"""Raw RESP helpers for byte-exact checks (no client library in between).

RawConn speaks to a server over a plain TCP (or TLS) socket, sends raw bytes or
encoded commands, and reads one reply at a time as (raw_bytes, value).  Every
read is bounded by the socket timeout: a proxy that hangs makes the test fail
with socket.timeout instead of hanging the suite.
"""

import socket
import ssl
import time


class Push(list):
    """A RESP3 '>' push frame."""


class Attr(dict):
    """A RESP3 '|' attribute map."""


class ErrorReply(Exception):
    def __init__(self, text):
        super().__init__(text)
        self.text = text

    def __eq__(self, other):
        return isinstance(other, ErrorReply) and other.text == self.text

    def __hash__(self):
        return hash(self.text)

    def __repr__(self):
        return "ErrorReply(%r)" % self.text


def bulk(b):
    """A RESP bulk string, as Redis sends it."""
    if isinstance(b, str):
        b = b.encode()
    return b"$%d\r\n%s\r\n" % (len(b), b)


def encode(*args):
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        if isinstance(a, str):
            a = a.encode()
        elif isinstance(a, int):
            a = str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


class ConnectionClosed(Exception):
    pass


class RawConn:
    def __init__(self, port, host="127.0.0.1", timeout=5.0, tls_context=None,
                 server_hostname=None):
        sock = socket.create_connection((host, port), timeout=timeout)
        if tls_context is not None:
            sock = tls_context.wrap_socket(sock, server_hostname=server_hostname or host)
        self.sock = sock
        self.sock.settimeout(timeout)
        self.buf = b""

    # -- io -------------------------------------------------------------
    def settimeout(self, t):
        self.sock.settimeout(t)

    def send(self, data):
        self.sock.sendall(data)

    def send_cmd(self, *args):
        self.sock.sendall(encode(*args))

    def _fill(self):
        chunk = self.sock.recv(1 << 16)
        if not chunk:
            raise ConnectionClosed("connection closed by peer")
        self.buf += chunk

    def _line(self):
        while True:
            i = self.buf.find(b"\r\n")
            if i >= 0:
                line = self.buf[:i]
                self.buf = self.buf[i + 2:]
                return line
            self._fill()

    def _exact(self, n):
        while len(self.buf) < n:
            self._fill()
        data = self.buf[:n]
        self.buf = self.buf[n:]
        return data

    def read_line(self):
        """One raw line including its CRLF."""
        return self._line() + b"\r\n"

    def read_bytes(self, n):
        return self._exact(n)

    # -- parsing ----------------------------------------------------------
    def _parse(self, raw):
        line = self._line()
        raw.append(line + b"\r\n")
        t, rest = line[:1], line[1:]
        if t == b"+":
            return rest.decode("utf-8", "replace")
        if t == b"-":
            return ErrorReply(rest.decode("utf-8", "replace"))
        if t == b":":
            return int(rest)
        if t == b"_":
            return None
        if t == b"#":
            return rest == b"t"
        if t == b",":
            return float(rest)
        if t == b"(":
            return int(rest)
        if t in (b"$", b"=", b"!"):
            n = int(rest)
            if n < 0:
                return None
            data = self._exact(n + 2)
            raw.append(data)
            body = data[:-2]
            if t == b"!":
                return ErrorReply(body.decode("utf-8", "replace"))
            if t == b"=":
                return body[4:]
            return body
        if t in (b"*", b"~", b">"):
            n = int(rest)
            if n < 0:
                return None
            items = [self._parse(raw) for _ in range(n)]
            if t == b"~":
                return set(items) if all(_hashable(x) for x in items) else items
            if t == b">":
                return Push(items)
            return items
        if t in (b"%", b"|"):
            n = int(rest)
            d = {}
            for _ in range(n):
                k = self._parse(raw)
                v = self._parse(raw)
                d[_freeze(k)] = v
            if t == b"|":
                return Attr(d)
            return d
        raise AssertionError("unexpected RESP type byte %r in line %r" % (t, line))

    def read_reply_raw(self):
        """Read one complete reply: returns (raw bytes, parsed value)."""
        raw = []
        value = self._parse(raw)
        return b"".join(raw), value

    def read_reply(self):
        return self.read_reply_raw()[1]

    def read_raw(self):
        return self.read_reply_raw()[0]

    def call(self, *args):
        self.send_cmd(*args)
        return self.read_reply()

    def call_raw(self, *args):
        self.send_cmd(*args)
        return self.read_raw()

    def wait_closed(self, timeout=5.0):
        """Return True if the peer closes the connection within timeout.

        Anything received before the close is appended to self.buf and returned
        via self.buf for inspection.  Raises AssertionError on timeout.
        """
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("connection not closed within %.1fs (buffered %r)"
                                     % (timeout, self.buf[:200]))
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(1 << 16)
            except (ConnectionResetError, BrokenPipeError):
                return True
            except ssl.SSLError:
                return True
            except socket.timeout:
                continue
            if not chunk:
                return True
            self.buf += chunk

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _hashable(x):
    try:
        hash(x)
        return True
    except TypeError:
        return False


def _freeze(k):
    if isinstance(k, list):
        return tuple(_freeze(x) for x in k)
    return k
