"""Request framing at the edge: Redis's own protocol errors, inline commands, case."""

import pytest

from helpers import PASSWORDS, unique
from resp_util import encode

PROTO_ERRORS = [
    (b"*x\r\n", b"-ERR Protocol error: invalid multibulk length\r\n"),
    (b"*1\r\nx\r\n", b"-ERR Protocol error: expected '$', got 'x'\r\n"),
    (b"*2\r\n$3\r\nGET\r\n:1\r\n", b"-ERR Protocol error: expected '$', got ':'\r\n"),
    (b"*1\r\n$x\r\n", b"-ERR Protocol error: invalid bulk length\r\n"),
    (b"*1\r\n$-5\r\n", b"-ERR Protocol error: invalid bulk length\r\n"),
    (b"*2\r\n$3\r\nGET\r\n$536870913\r\n", b"-ERR Protocol error: invalid bulk length\r\n"),
    (b'SET k "abc\r\n', b"-ERR Protocol error: unbalanced quotes in request\r\n"),
    (b'SET k "a"b\r\n', b"-ERR Protocol error: unbalanced quotes in request\r\n"),
    (b"SET k 'a\r\n", b"-ERR Protocol error: unbalanced quotes in request\r\n"),
]


@pytest.mark.parametrize("data,reply", PROTO_ERRORS, ids=[r[1][27:60].decode() + "/" + str(i)
                                                          for i, r in enumerate(PROTO_ERRORS)])
def test_protocol_error_after_login_answers_and_closes(proxy, data, reply):
    with proxy.login("web") as c:
        # a command before the bad one is answered first, in order
        c.send(encode("PING") + data)
        assert c.read_raw() == b"+PONG\r\n"
        assert c.read_raw() == reply
        assert c.wait_closed()
        assert c.buf == b"", "bytes after the protocol error: %r" % c.buf


@pytest.mark.parametrize("data,reply", PROTO_ERRORS[:5] + PROTO_ERRORS[6:7])
def test_protocol_error_before_login_answers_and_closes(proxy, data, reply):
    with proxy.raw() as c:
        c.send(data)
        assert c.read_raw() == reply
        assert c.wait_closed()


def test_too_big_inline_request(proxy):
    with proxy.login("web") as c:
        c.send(b"SET k " + b"a" * (64 * 1024 + 100))
        assert c.read_raw() == b"-ERR Protocol error: too big inline request\r\n"
        assert c.wait_closed()


def test_inline_commands(proxy, direct):
    k = unique()
    with proxy.raw() as c:
        c.send(b"AUTH web %s\r\n" % PASSWORDS["web"].encode())
        assert c.read_raw() == b"+OK\r\n"
        c.send(b'SET %s "a\\x41b"\r\n' % k.encode())
        assert c.read_raw() == b"+OK\r\n"
        assert direct.get(k) == b"aAb"
        c.send(b"GET %s\r\n" % k.encode())
        assert c.read_raw() == b"$3\r\naAb\r\n"
        # escapes, single quotes, tabs between arguments, LF-only line end, empty lines
        c.send(b"SET %s \"t\\tn\\nq\\\"b\\\\\"\n\r\n\n" % k.encode())
        assert c.read_raw() == b"+OK\r\n"
        assert direct.get(k) == b't\tn\nq"b\\'
        c.send(b"SET\t%s  'it\\'s'\r\n" % k.encode())
        assert c.read_raw() == b"+OK\r\n"
        assert direct.get(k) == b"it's"
        c.send(b'SET %s ""\r\n' % k.encode())
        assert c.read_raw() == b"+OK\r\n"
        assert direct.get(k) == b""
        c.send(b"PING\r\n")
        assert c.read_raw() == b"+PONG\r\n"


def test_inline_before_login(proxy):
    with proxy.raw() as c:
        c.send(b"GET x\r\n")
        assert c.read_raw() == b"-NOAUTH Authentication required.\r\n"
        c.send(b"AUTH web wrong\r\n")
        assert c.read_raw() == b"-WRONGPASS invalid username-password pair or user is disabled.\r\n"


def test_mixed_case_command_names(proxy, direct):
    k = unique()
    with proxy.raw() as c:
        assert c.call_raw("aUTh", "web", PASSWORDS["web"]) == b"+OK\r\n"
        assert c.call_raw("sEt", k, "1") == b"+OK\r\n"
        assert c.call_raw("InCr", k) == b":2\r\n"
        assert c.call_raw("get", k) == b"$1\r\n2\r\n"
        assert c.call_raw("Client", "setNAME", "mixed") == b"+OK\r\n"
        assert c.call_raw("CLIENT", "getname") == b"$5\r\nmixed\r\n"
    assert direct.get(k) == b"2"


def test_empty_and_negative_multibulk_are_ignored(proxy):
    with proxy.login("web") as c:
        c.send(b"*0\r\n*-1\r\n" + encode("PING"))
        assert c.read_raw() == b"+PONG\r\n"


def test_request_split_into_single_bytes(proxy, direct):
    k = unique()
    data = encode("AUTH", "web", PASSWORDS["web"]) + encode("SET", k, "x" * 300) + encode("STRLEN", k) \
        + b"ECHO inline\r\n"
    with proxy.raw() as c:
        for i in range(len(data)):
            c.send(data[i:i + 1])
        assert c.read_raw() == b"+OK\r\n"
        assert c.read_raw() == b"+OK\r\n"
        assert c.read_raw() == b":300\r\n"
        assert c.read_raw() == b"$6\r\ninline\r\n"
    assert direct.get(k) == b"x" * 300


def test_unknown_command_and_arity_errors_match_redis(proxy, upstream):
    """An unknown command or a wrong arity is answered like Redis itself would, and the
    connection stays usable."""
    with proxy.login("web") as c:
        got_unknown = c.call_raw("NOSUCHCMD", "a", "b")
        got_arity = c.call_raw("GET")
        assert c.call_raw("PING") == b"+PONG\r\n"
    assert got_unknown == b"-ERR unknown command 'NOSUCHCMD', with args beginning with: 'a' 'b' \r\n"
    assert got_arity == b"-ERR wrong number of arguments for 'get' command\r\n"


def test_binary_safe_arguments(proxy, direct):
    k = unique("bin").encode() + b"\x00\r\n\xff"
    v = bytes(range(256)) * 3
    with proxy.login("web") as c:
        assert c.call_raw("SET", k, v) == b"+OK\r\n"
        assert c.call_raw("GET", k) == b"$768\r\n" + v + b"\r\n"
    assert direct.get(k) == v


def test_replies_to_one_read_arrive_together(proxy):
    # Redis answers the commands of one read in one write: a client that pipelines AUTH with a
    # slow command gets +OK with that command's reply, not before it. respguard holds its own
    # +OK for the upstream's reply (the same bytes, one write and one wakeup fewer per client).
    slow = "local i = 0 while i < 20000000 do i = i + 1 end return 7"
    with proxy.raw(timeout=30) as c:
        c.send(encode("AUTH", "web", PASSWORDS["web"]) + encode("EVAL", slow, "0"))
        first = c.sock.recv(1 << 16)
        assert first != b"+OK\r\n", "+OK arrived on its own, before the slow command's reply"
        while len(first) < len(b"+OK\r\n:7\r\n") and b"+OK\r\n:7\r\n".startswith(first):
            more = c.sock.recv(1 << 16)
            assert more, "closed after %r" % first
            first += more
        assert first == b"+OK\r\n:7\r\n"
