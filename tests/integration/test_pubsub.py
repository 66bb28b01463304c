"""Pub/sub through the proxy, in RESP2 (redis-py and raw) and RESP3 (raw push frames)."""

import pytest

from helpers import PASSWORDS, unique, wait_until
from resp_util import Push, bulk, encode



def get_message(p, timeout=5.0):
    """Next non-None message from a redis-py PubSub, bounded."""
    box = []

    def poll():
        m = p.get_message(timeout=0.2)
        if m is not None:
            box.append(m)
            return True
        return False
    wait_until(poll, timeout, interval=0, what="a pub/sub message")
    return box[0]


def test_redis_py_pubsub_resp2(proxy, direct):
    ch, pat = unique("ch"), unique("pat")
    r = proxy.client("web")
    pub = proxy.client("web")
    p = r.pubsub()
    p.subscribe(ch)
    p.psubscribe(pat + ".*")
    assert get_message(p) == {"type": "subscribe", "pattern": None, "channel": ch.encode(), "data": 1}
    assert get_message(p) == {"type": "psubscribe", "pattern": None,
                              "channel": (pat + ".*").encode(), "data": 2}
    assert pub.publish(ch, "hello") == 1
    assert get_message(p) == {"type": "message", "pattern": None, "channel": ch.encode(),
                              "data": b"hello"}
    assert pub.publish(pat + ".x", b"w\x00rld") == 1
    assert get_message(p) == {"type": "pmessage", "pattern": (pat + ".*").encode(),
                              "channel": (pat + ".x").encode(), "data": b"w\x00rld"}
    # published straight on the upstream
    assert direct.publish(ch, "from-upstream") == 1
    assert get_message(p)["data"] == b"from-upstream"
    p.unsubscribe()
    p.punsubscribe()
    m1, m2 = get_message(p), get_message(p)
    assert (m1["type"], m1["data"]) == ("unsubscribe", 1)
    assert (m2["type"], m2["data"]) == ("punsubscribe", 0)
    # back to normal commands on the very same connection
    conn = p.connection
    k = unique()
    conn.send_command("SET", k, "after-pubsub")
    assert conn.read_response() in (b"OK", "OK")
    conn.send_command("GET", k)
    assert conn.read_response() == b"after-pubsub"
    assert pub.publish(ch, "nobody") == 0
    p.close()
    r.close()
    pub.close()


def test_raw_resp2_subscribed_connection(proxy):
    ch = unique("ch")
    with proxy.login("web") as s, proxy.login("web") as pub:
        assert s.call_raw("SUBSCRIBE", ch) == b"*3\r\n" + bulk("subscribe") + bulk(ch) + b":1\r\n"
        assert s.call_raw("PING") == b"*2\r\n$4\r\npong\r\n$0\r\n\r\n"
        assert s.call_raw("PING", "hi") == b"*2\r\n$4\r\npong\r\n$2\r\nhi\r\n"
        assert s.call_raw("GET", "x") == (
            b"-ERR Can't execute 'get': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET "
            b"are allowed in this context\r\n")
        assert pub.call_raw("PUBLISH", ch, "m1") == b":1\r\n"
        assert s.read_raw() == b"*3\r\n" + bulk("message") + bulk(ch) + bulk("m1")
        assert s.call_raw("PSUBSCRIBE", ch + "*") == b"*3\r\n" + bulk("psubscribe") + bulk(ch + "*") + b":2\r\n"
        assert pub.call_raw("PUBLISH", ch, "m2") == b":2\r\n"
        got = {s.read_raw(), s.read_raw()}
        assert got == {b"*3\r\n" + bulk("message") + bulk(ch) + bulk("m2"),
                       b"*4\r\n" + bulk("pmessage") + bulk(ch + "*") + bulk(ch) + bulk("m2")}
        assert s.call_raw("UNSUBSCRIBE") == b"*3\r\n" + bulk("unsubscribe") + bulk(ch) + b":1\r\n"
        assert s.call_raw("PUNSUBSCRIBE") == b"*3\r\n" + bulk("punsubscribe") + bulk(ch + "*") + b":0\r\n"
        assert s.call_raw("PING") == b"+PONG\r\n"
        assert s.call_raw("GET", unique()) == b"$-1\r\n"


def test_raw_resp3_messages_are_push_frames(proxy):
    ch = unique("ch")
    with proxy.raw() as s, proxy.login("web") as pub:
        s.send_cmd("HELLO", "3", "AUTH", "web", PASSWORDS["web"])
        raw, hello = s.read_reply_raw()
        assert hello[b"proto"] == 3
        assert s.call_raw("SUBSCRIBE", ch) == b">3\r\n" + bulk("subscribe") + bulk(ch) + b":1\r\n"
        assert pub.call_raw("PUBLISH", ch, "m1") == b":1\r\n"
        assert s.read_raw() == b">3\r\n" + bulk("message") + bulk(ch) + bulk("m1")
        # RESP3 has no subscribed-mode restriction: normal commands interleave with pushes
        k = unique()
        assert s.call_raw("SET", k, "v") == b"+OK\r\n"
        assert s.call_raw("GET", k) == b"$1\r\nv\r\n"
        for i in range(3):
            assert pub.call_raw("PUBLISH", ch, "p%d" % i) == b":1\r\n"
        s.send_cmd("GET", k)
        frames = [s.read_reply() for _ in range(4)]
        assert frames[:3] == [Push([b"message", ch.encode(), b"p%d" % i]) for i in range(3)]
        assert all(isinstance(f, Push) for f in frames[:3])
        assert frames[3] == b"v" and not isinstance(frames[3], Push)
        assert s.call_raw("UNSUBSCRIBE", ch) == b">3\r\n" + bulk("unsubscribe") + bulk(ch) + b":0\r\n"
        assert s.call_raw("PING") == b"+PONG\r\n"


def test_pipelined_commands_around_pushes(proxy):
    """Replies stay matched to requests while pushes arrive in between (RESP3)."""
    ch = unique("ch")
    k = unique()
    with proxy.raw() as s, proxy.login("web") as pub:
        s.send_cmd("HELLO", "3", "AUTH", "web", PASSWORDS["web"])
        s.read_reply_raw()
        assert s.call_raw("SUBSCRIBE", ch).startswith(b">3\r\n")
        s.send(b"".join(encode("INCR", k) for _ in range(200)))
        for i in range(20):
            pub.send_cmd("PUBLISH", ch, "x%d" % i)
        pushes, replies = [], []
        while len(replies) < 200 or len(pushes) < 20:
            v = s.read_reply()
            (pushes if isinstance(v, Push) else replies).append(v)
        assert replies == list(range(1, 201))
        assert pushes == [Push([b"message", ch.encode(), b"x%d" % i]) for i in range(20)]
        assert [pub.read_raw() for _ in range(20)] == [b":1\r\n"] * 20


@pytest.mark.proxy_only
def test_channel_patterns_are_enforced(respguard, direct, upstream):
    users = {"news": {"acl": "on >news-Pw-1 ~* &news:* +@all"}}
    p = respguard(users=users)
    want = b"-NOPERM this user has no permissions to access one of the channels used as arguments\r\n"
    with p.login("news", "news-Pw-1") as c:
        assert c.call_raw("PUBLISH", "other", "x") == want
        assert c.call_raw("SUBSCRIBE", "other") == want
        assert c.call_raw("SUBSCRIBE", "news:1") == b"*3\r\n" + bulk("subscribe") + bulk("news:1") + b":1\r\n"
        assert c.call_raw("PING") == b"*2\r\n$4\r\npong\r\n$0\r\n\r\n"
