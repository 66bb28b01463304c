"""redis-py (RESP2) doing an ordinary application workload through the proxy."""

import threading

import pytest
import redis

from helpers import PASSWORDS, REFERENCE, unique


def test_redis_py_workload(proxy, direct):
    r = proxy.client("web", decode_responses=True, client_name="py-app")
    p = unique("py")
    k = lambda s: "%s:%s" % (p, s)  # noqa: E731

    assert r.client_getname() == "py-app"
    # strings
    assert r.set(k("s"), "v1") is True
    assert r.set(k("s"), "v2", nx=True) is None
    assert r.get(k("s")) == "v1"
    assert r.incrby(k("n"), 5) == 5
    assert r.incrbyfloat(k("n"), 0.5) == 5.5
    assert r.append(k("s"), "-x") == 4
    assert r.mset({k("a"): "1", k("b"): "2"}) is True
    assert r.mget([k("a"), k("b"), k("none")]) == ["1", "2", None]
    assert r.setex(k("t"), 100, "x") is True
    assert 0 < r.ttl(k("t")) <= 100
    assert r.getdel(k("t")) == "x"
    assert r.exists(k("t"), k("a")) == 1
    assert r.delete(k("a"), k("b")) == 2
    # hashes
    assert r.hset(k("h"), mapping={"f1": "a", "f2": "b"}) == 2
    assert r.hgetall(k("h")) == {"f1": "a", "f2": "b"}
    assert r.hincrby(k("h"), "c", 3) == 3
    assert sorted(r.hkeys(k("h"))) == ["c", "f1", "f2"]
    assert r.hdel(k("h"), "f1") == 1
    # lists
    assert r.rpush(k("l"), "a", "b", "c") == 3
    assert r.lpush(k("l"), "z") == 4
    assert r.lrange(k("l"), 0, -1) == ["z", "a", "b", "c"]
    assert r.lpop(k("l")) == "z"
    assert r.rpoplpush(k("l"), k("l2")) == "c"
    assert r.blpop([k("l2")], timeout=1) == (k("l2"), "c")
    # sets
    assert r.sadd(k("set"), "m1", "m2", "m3") == 3
    assert r.smembers(k("set")) == {"m1", "m2", "m3"}
    assert r.sismember(k("set"), "m2") is True
    assert r.sinter(k("set"), k("set")) == {"m1", "m2", "m3"}
    # sorted sets
    assert r.zadd(k("z"), {"a": 1, "b": 2.5}) == 2
    assert r.zrange(k("z"), 0, -1, withscores=True) == [("a", 1.0), ("b", 2.5)]
    assert r.zincrby(k("z"), 2, "b") == 4.5
    assert r.zrevrangebyscore(k("z"), "+inf", 2) == ["b"]
    assert r.zrank(k("z"), "b") == 1
    # scan confined to our prefix
    assert sorted(r.scan_iter(match=p + ":*", count=1000)) == sorted(
        [k("s"), k("n"), k("h"), k("l"), k("set"), k("z")])
    # pipelines and transactions
    pipe = r.pipeline(transaction=False)
    for i in range(200):
        pipe.incr(k("pipe"))
    assert pipe.execute()[-1] == 200
    pipe = r.pipeline(transaction=True)
    pipe.set(k("tx"), 1).incr(k("tx")).get(k("tx"))
    assert pipe.execute() == [True, 2, "2"]
    # optimistic locking with WATCH, retried after a concurrent change
    attempts = []

    def bump(pp):
        v = int(pp.get(k("tx")))
        if not attempts:
            direct.set(k("tx"), 10)
        attempts.append(v)
        pp.multi()
        pp.set(k("tx"), v + 1)
    r.transaction(bump, k("tx"))
    assert attempts == [2, 10]
    assert r.get(k("tx")) == "11"
    # expiry and types
    assert r.expire(k("s"), 100) is True
    assert r.type(k("z")) == "zset"
    assert r.strlen(k("s")) == 4
    # a refused command does not break the client
    if not REFERENCE:
        with pytest.raises(redis.exceptions.NoPermissionError,
                           match="^this user has no permissions to run the 'config.get' command$"):
            r.config_get("maxmemory")
    assert r.ping() is True
    assert direct.get(k("s")) == b"v1-x"
    r.close()


def test_redis_py_connection_pool_many_clients(proxy):
    pool = redis.ConnectionPool(host="127.0.0.1", port=proxy.port, username="web", password=PASSWORDS["web"],
                                socket_timeout=10, max_connections=20)
    r = redis.Redis(connection_pool=pool)
    p = unique("pool")
    errors = []

    def worker(n):
        try:
            for i in range(50):
                r.incr(p)
                r.set("%s:%d:%d" % (p, n, i), i)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(repr(e))
    threads = [threading.Thread(target=worker, args=(n,)) for n in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "workers hung"
    assert not errors, errors[:3]
    assert int(r.get(p)) == 500
    pool.disconnect()
