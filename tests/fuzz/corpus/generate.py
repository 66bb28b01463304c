#!/usr/bin/env python3
"""Writes the fuzz targets' seed corpora: corpus/<target>/<name>, one small input per file.

The files are committed; this script is how they were made and what each one means. Run it
after changing a target's input format, then check the diff:

    /usr/bin/python3 tests/fuzz/corpus/generate.py

scripts/test.sh replays every file through its target (meson test --suite fuzz-replay) under
ASan/UBSan, and with libFuzzer when clang is there; a fuzzer started on the directory begins
from these inputs. Input formats (see each tests/fuzz/fuzz_<target>.c):

  request: byte 0 chooses the limits (bit 0: before login, bit 1: a small max_request,
           bit 2: a small max_inline, bits 3+4 both: 3 arguments of at most 10 bytes), byte 1
           the piece size of the second, piecewise parse; then a client's byte stream.
  reply:   byte 0 chooses max_depth (1 + (b & 7) * 9 levels, 1 to 55; b & 7 == 7: the
           framer's own limit) and, with bit 3, a max_bulk of (b >> 4) * 3; byte 1 seeds how
           the stream is cut; then an upstream's byte stream.
  acl:     the ACL rules, then for each argument a NUL byte and the argument (the first is the
           command name); rules without a NUL are judged against a fixed set of commands.
  config:  a YAML configuration file.
  restjson: byte 0 chooses the mode (bits 0-1: 0 a "POST /" JSON body, 1 a /pipeline body,
           2 the path form as path NUL query [NUL body], 3 a reply frame for the encoders),
           bit 2 booleans as text (decoding) or base64 (encoding), bit 3 small limits; then
           the input.
"""
import os
import shutil

HERE = os.path.dirname(os.path.abspath(__file__))


def cmd(*args):
    """A canonical multibulk request."""
    out = b"*%d\r\n" % len(args)
    for a in args:
        a = a if isinstance(a, bytes) else a.encode()
        out += b"$%d\r\n%s\r\n" % (len(a), a)
    return out


# Byte 0: limits. Byte 1: piece size - 1 (mod 7) of the piecewise parse.
DEFAULT, UNAUTH, SMALL_REQ, SMALL_INLINE, TINY_ARGS = 0x00, 0x01, 0x02 | 0x10, 0x04 | 0x10, 0x18

REQUEST = {
    "get": (DEFAULT, 0, cmd("GET", "k")),
    "pipeline": (DEFAULT, 2, cmd("AUTH", "web", "pw") + cmd("SET", "k", "v", "EX", "10") + cmd("GET", "k")
                 + cmd("MULTI") + cmd("INCR", "n") + cmd("EXEC")),
    "binary_value": (DEFAULT, 1, cmd("SET", b"k\x00\r\n", b"\x00\xff\r\n\r\n$3\r\n")),
    "empty_arg": (DEFAULT, 0, cmd("SET", "", "")),
    "empty_multibulk": (DEFAULT, 3, b"*0\r\n*-1\r\n" + cmd("PING")),
    "inline": (DEFAULT, 4, b"PING\r\nSET k \"a b\\x41\\n\" 'it\\'s'\r\n\r\n  \r\nGET k\n"),
    "inline_unbalanced": (DEFAULT, 0, b"SET k \"abc\r\n"),
    "inline_quote_then_char": (DEFAULT, 0, b"SET \"k\"x v\r\n"),
    "inline_long_line": (SMALL_INLINE, 0, b"GET " + b"k" * 80 + b"\r\n"),
    "leading_zero_len": (DEFAULT, 5, cmd("PING") + b"*2\r\n$03\r\nGET\r\n$1\r\nk\r\n"),
    "plus_sign_len": (DEFAULT, 0, b"*+1\r\n$4\r\nPING\r\n"),
    "bulk_not_crlf": (DEFAULT, 0, b"*2\r\n$3\r\nGETxx$1\r\nkzz"),
    "bad_multibulk_len": (DEFAULT, 0, b"*abc\r\n"),
    "bad_bulk_len": (DEFAULT, 0, b"*1\r\n$-5\r\n"),
    "expected_dollar": (DEFAULT, 0, b"*1\r\nx3\r\nGET\r\n"),
    "huge_multibulk": (DEFAULT, 0, b"*2147483648\r\n"),
    "huge_bulk": (DEFAULT, 0, b"*1\r\n$536870913\r\n"),
    "lone_cr_and_nul": (DEFAULT, 6, b"*1\r\n$4\r\nPI\x00G\r\n*1\r$4\r\nPING\r\n"),
    "partial": (DEFAULT, 1, b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$10\r\nabc"),
    "unauth_limits": (UNAUTH, 0, cmd("AUTH", "web", "pw") + cmd(*["x"] * 11)),
    "unauth_big_bulk": (UNAUTH, 2, b"*2\r\n$4\r\nAUTH\r\n$16385\r\n"),
    "small_max_request": (SMALL_REQ, 1, cmd("SET", "k", "v" * 200)),
    "tiny_arg_limits": (TINY_ARGS, 3, cmd("GET", "k") + cmd("MSET", "a", "1", "b", "2") + cmd("SET", "k", "v" * 11)),
    "many_args": (DEFAULT, 2, cmd("DEL", *["k%d" % i for i in range(100)])),
}

# Byte 0: 7 = the framer's own depth limit, no bulk limit; 6 = depth 55; 0 = depth 1;
# 0x2f = max_bulk 6.
DEEP, D55, FLAT, SMALL_BULK = 0x07, 0x06, 0x00, 0x2F


def nest(depth, open_=b"*1\r\n", leaf=b":1\r\n"):
    return open_ * depth + leaf


REPLY = {
    "resp2_simple": (DEEP, 0, b"+OK\r\n-ERR unknown command 'x'\r\n:-42\r\n$5\r\nhello\r\n$-1\r\n*-1\r\n*0\r\n"),
    "resp2_array": (DEEP, 3, b"*3\r\n$3\r\nfoo\r\n:1\r\n*2\r\n+a\r\n$0\r\n\r\n"),
    "pubsub_resp2": (DEEP, 5, b"*3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n"),
    "resp3_scalars": (DEEP, 1, b"_\r\n#t\r\n#f\r\n,3.14\r\n,inf\r\n,-nan\r\n(3492890328409238509324850943850943825024385\r\n"
                               b"!21\r\nSYNTAX invalid syntax\r\n=15\r\ntxt:Some string\r\n"),
    "resp3_map_set": (DEEP, 2, b"%2\r\n+first\r\n:1\r\n+second\r\n~2\r\n:2\r\n:3\r\n~0\r\n%0\r\n"),
    "resp3_hello": (DEEP, 4, b"%7\r\n$6\r\nserver\r\n$5\r\nredis\r\n$7\r\nversion\r\n$5\r\n7.0.0\r\n$5\r\nproto\r\n:3\r\n"
                             b"$2\r\nid\r\n:5\r\n$4\r\nmode\r\n$10\r\nstandalone\r\n$4\r\nrole\r\n$6\r\nmaster\r\n"
                             b"$7\r\nmodules\r\n*0\r\n"),
    "resp3_push": (DEEP, 6, b">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n+OK\r\n>2\r\n$10\r\ninvalidate\r\n*1\r\n$1\r\nk\r\n"),
    "resp3_attribute": (DEEP, 7, b"|1\r\n+key-popularity\r\n%2\r\n$1\r\na\r\n,0.1923\r\n$1\r\nb\r\n,0.0012\r\n*2\r\n:2039123\r\n:9543892\r\n"),
    "resp3_streamed": (DEEP, 8, b"$?\r\n;4\r\nHell\r\n;5\r\no wor\r\n;1\r\nd\r\n;0\r\n*?\r\n:1\r\n+a\r\n.\r\n%?\r\n+k\r\n:1\r\n.\r\n"),
    "nest_55": (D55, 9, nest(55)),
    "nest_56_too_deep": (D55, 10, nest(56)),
    "nest_1000": (DEEP, 15, nest(1000, b"*2\r\n", b"_\r\n") + b"#t\r\n" * 1000),
    "nest_depth_1": (FLAT, 11, b"+OK\r\n*1\r\n:1\r\n"),
    "nest_mixed": (DEEP, 12, (b"*2\r\n%1\r\n~1\r\n>1\r\n|1\r\n+a\r\n+b\r\n") * 6 + b":1\r\n" + b":2\r\n:3\r\n:4\r\n:5\r\n" * 6),
    "nest_17_heap_levels": (DEEP, 13, nest(17, b"*2\r\n", b":1\r\n") + b":2\r\n" * 17),
    "bulk_limit": (SMALL_BULK, 14, b"$6\r\nabcdef\r\n$7\r\nabcdefg\r\n"),
    "bad_type": (DEEP, 0, b"+OK\r\n?what\r\n"),
    "bad_length": (DEEP, 1, b"$-2\r\n"),
    "bad_bulk_terminator": (DEEP, 2, b"$3\r\nabcXY"),
    "bad_boolean": (DEEP, 3, b"#x\r\n"),
    "huge_array": (DEEP, 4, b"*9223372036854775807\r\n:1\r\n"),
    "partial": (DEEP, 5, b"*2\r\n$5\r\nhel"),
    "partial_deep": (DEEP, 6, nest(20, b"*1\r\n", b"")),
}

ACL = {
    "all": b"on nopass ~* &* +@all\x00FLUSHALL",
    "tenant": b"on #9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08 ~tenant-a:* &tenant-a:* +@all -@dangerous"
              b"\x00MSET\x00tenant-a:x\x001\x00other:y\x002",
    "read_only_prefix": b"on >secret %R~cache:* +@read\x00GET\x00cache:1",
    "write_pattern_denied": b"on >secret %R~cache:* +@read +set\x00SET\x00cache:1\x00v",
    "rw_patterns": b"on nopass %RW~a:* %W~log:* ~b:* +@all\x00COPY\x00a:1\x00log:1",
    "subcommands": b"on nopass +@all -config|set +client|kill -@admin +config|get\x00CONFIG\x00GET\x00maxmemory",
    "guarded_by_name": b"on nopass allcommands +flushdb\x00FLUSHDB",
    "channels": b"on nopass resetchannels &news.* +@pubsub\x00PSUBSCRIBE\x00news.*\x00sports.*",
    "scripts_restricted": b"on nopass ~k* +@all\x00EVAL\x00return 1\x001\x00k1",
    "scan_prefix": b"on nopass ~user:* +@all\x00SCAN\x000\x00MATCH\x00user:*\x00COUNT\x0010",
    "keys_outside_prefix": b"on nopass ~user:* +@all\x00KEYS\x00*",
    "xread_streams": b"on nopass ~s:* +@all\x00XREAD\x00COUNT\x002\x00STREAMS\x00s:1\x00t:2\x000\x000",
    "sort_by": b"on nopass ~k* +@all\x00SORT\x00k1\x00BY\x00w_*\x00GET\x00#",
    "zunionstore_numkeys": b"on nopass ~z* +@all\x00ZUNIONSTORE\x00zd\x002\x00z1\x00z2",
    "bad_numkeys": b"on nopass ~* +@all\x00ZUNIONSTORE\x00zd\x00-1\x00z1",
    "wrong_arity": b"on nopass ~* +@all\x00GET",
    "unknown_command": b"on nopass ~* +@all\x00NOSUCH\x00a\x00b",
    "unknown_subcommand": b"on nopass ~* +@all\x00CONFIG\x00NOSUCH",
    "reset_sequence": b"on >a <a >b #9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08 !9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08 resetpass nopass allkeys resetkeys allchannels resetchannels nocommands reset on",
    "off_user": b"off >pw ~* +@all\x00GET\x00k",
    "selector_refused": b"on nopass (~x* +get)",
    "sanitize_payload_refused": b"on nopass sanitize-payload",
    "bad_category": b"on nopass +@nosuch",
    "bad_hash": b"on #abc",
    "glob_classes": b"on nopass ~[a-c]?x\\*y* +@all\x00MGET\x00bqx*y1\x00dxx*y",
    "glob_args": b"on nopass ~* +@all\x00a[^b-]*?\\\x00a-zzz",
    "empty_rules": b"",
    "many_args": b"on nopass ~k:* +@all\x00DEL" + b"".join(b"\x00k:%d" % i for i in range(64)) + b"\x00x",
}

CONFIG = {
    "minimal.yaml": """\
listeners:
  - bind: 127.0.0.1:6379
upstream:
  url: rediss://default:hunter2@redis.example.com
users:
  web:
    acl: "on >pw ~web:* +@read"
""",
    "full.yaml": """\
listeners:
  - bind: 127.0.0.1:6379
  - bind: "[::1]:6380"
    allow_from: [127.0.0.0/8, "::1/128"]
  - bind: 0.0.0.0:6381
    tls: {cert_file: /nonexistent/server.crt, key_file: /nonexistent/server.key,
          client_ca_file: /nonexistent/ca.crt, user_from_cert: cn}
    allow_from: [10.0.0.0/8, "fd00::/8"]
upstream:
  url: rediss://default:${HOME}@eu1-example.upstash.io:6379/0
  server_name: eu1-example.upstash.io
  connect_timeout: 2500ms
  credentials:
    readonly: {username: default_ro, password: "pa$$word"}
  pool: {mode: multiplex, size: 8, min_idle: 2, idle_timeout: 5m, max_lifetime: 1h,
         keepalive: 30s, acquire_timeout: 5s}
users:
  web:
    acl: "on #9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08 ~web:* &web:* +@read +@write -@dangerous"
    upstream_credential: readonly
    expires: 2027-06-30T00:00:00Z
    allow_from: [127.0.0.1/32]
    anomaly: {min_rate: 200, sustain: 30s, disabled: no}
    rate_limit: {commands_per_second: 500, burst: 1000}
  ops:
    acl: "on >x ~* &* +@all +flushdb"
guard:
  never_by_category: [flushall, config, client|kill]
limits:
  max_clients: 100
  max_request_bytes: 1mb
  max_args: 1000
  login_timeout: 1s
  client_output_bytes: 1kb
  upstream_output_bytes: 64mb
  shutdown_timeout: 10s
  rate_limit: {commands_per_second: 1000, burst: 2000}
  login_lockout: {failures: 10, window: 1m, duration: 5m}
log: {level: debug, keys: yes}
anomaly:
  enabled: yes
  half_life: 10m
  warmup: 10m
  min_rate: 20.5
  factor: 3
  k: 4
  sustain: 10s
  recovery: 30s
  denial_burst: 30
  auth_failure_burst: 0
  connection_surge_min: 100
  connection_surge_factor: 10
admin: {bind: 127.0.0.1:9121, allow_from: [127.0.0.1/32], probe_interval: 100ms}
""",
    "flow_and_anchors.yaml": """\
listeners: [{bind: "localhost:6379", allow_from: &nets [127.0.0.0/8, "::1/128"]}]
upstream: {url: "rediss://u:p%40ss@10.0.0.1:6380"}
users: {a: {acl: &acl "on nopass ~* +@all", allow_from: *nets}, "b-2": {acl: *acl}, c: {acl: 'on >pw +ping'}}
""",
    "err_plaintext_public.yaml": """\
listeners:
  - bind: 0.0.0.0:6379
upstream:
  url: rediss://default:pw@redis.example.com
users:
  web: {acl: "on nopass +@all"}
""",
    "err_redis_scheme.yaml": """\
listeners: [{bind: 127.0.0.1:6379}]
upstream: {url: redis://default:pw@redis.example.com}
users: {web: {acl: "on nopass +@all"}}
""",
    "err_unknown_key.yaml": """\
listeners: [{bind: 127.0.0.1:6379}]
upstream: {url: "rediss://h", verify: no}
users: {web: {acl: "on nopass +@all"}}
""",
    "err_unset_var.yaml": """\
listeners: [{bind: 127.0.0.1:6379}]
upstream: {url: "rediss://default:${RESPGUARD_FUZZ_UNSET_VARIABLE}@h"}
users: {web: {acl: "on nopass +@all"}}
""",
    "err_bad_acl.yaml": """\
listeners: [{bind: 127.0.0.1:6379}]
upstream: {url: "rediss://h"}
users: {web: {acl: "on nopass (~x +get)"}}
""",
    "err_duration_size.yaml": """\
listeners: [{bind: 127.0.0.1:6379}]
upstream: {url: "rediss://h", connect_timeout: 5 years}
users: {web: {acl: "on nopass +@all"}}
limits: {max_request_bytes: 0, client_output_bytes: 99999999999gb}
""",
    "err_duplicate_key.yaml": """\
listeners: [{bind: 127.0.0.1:6379}]
upstream: {url: "rediss://h"}
users: {web: {acl: "on nopass +@all"}, web: {acl: "off"}}
""",
    "err_yaml_syntax.yaml": "listeners: [{bind: 127.0.0.1:6379}\nupstream: {url: \"rediss://h\n  - : :\n\t\x00",
    "err_not_a_map.yaml": "- a\n- b\n",
    "err_empty.yaml": "",
    "err_alias_bomb.yaml": """\
listeners:
  - bind: 127.0.0.1:6379
    allow_from: &a [127.0.0.1/32, 127.0.0.1/32, 127.0.0.1/32, 127.0.0.1/32]
upstream: {url: "rediss://h"}
users:
  web: {acl: "on nopass +@all", allow_from: &b [*a, *a, *a, *a]}
  ops: {acl: "on nopass +@all", allow_from: [*b, *b, *b, *b]}
""",
}

# Byte 0 of restjson: the mode, and its flags.
CMD, PIPE, PATH, ENC = 0, 1, 2, 3
BOOLS = B64 = 4
SMALL = 8

RESTJSON = {
    "cmd_set_ex": (CMD, b'["SET","k","v","EX",100]'),
    "cmd_numbers": (CMD, b'["ZADD","z",1.5,"a",-0,"b",1e+21,"c",12345678901234567890123,"d",1E-7,"e",-12.50]'),
    "cmd_escapes": (CMD, b'["SET","a\\"b\\\\c\\/\\n","x\\u0000y","\xc3\xa9","\\ud83d\\ude00"]'),
    "cmd_whitespace": (CMD, b' \r\n\t[ "get" ,\n"" ] \n'),
    "cmd_bools_refused": (CMD, b'["SET","k",true]'),
    "cmd_bools_as_text": (CMD | BOOLS, b'["SET","k",true,false]'),
    "cmd_null": (CMD, b'["SET","k",null]'),
    "cmd_object": (CMD, b'["SET","k",{"a":[1,2]}]'),
    "cmd_nested": (CMD, b'["SET","k",["v",1]]'),
    "cmd_empty": (CMD, b'[]'),
    "cmd_not_array": (CMD, b'{"cmd":["GET","k"]}'),
    "cmd_malformed": (CMD, b'["SET","k" "v"'),
    "cmd_bad_utf8": (CMD, b'["SET","k","\xff\xfe"]'),
    "cmd_lone_surrogate": (CMD, b'["SET","k","\\ud800"]'),
    "cmd_huge_number": (CMD, b'["SET","k",1e999]'),
    "cmd_deep": (CMD, b'[' * 5000 + b']' * 5000),
    "cmd_small_limits": (CMD | SMALL, b'["SET","k","0123456789","NX"]'),
    "pipe_three": (PIPE, b'[["SET","k","v","EX",100],["GET","k"],["INCR","n"]]'),
    "pipe_strings_like_numbers": (PIPE, b'[["SET","12","-3 [4] \\"5\\"",6],["INCRBY","n",-7]]'),
    "pipe_empty": (PIPE, b'[]'),
    "pipe_not_commands": (PIPE, b'[["GET","k"],"GET"]'),
    "pipe_too_deep": (PIPE | SMALL, b'[[[["GET"]]]]'),
    "pipe_small_limits": (PIPE | SMALL, b'[["PING"],["PING"],["PING"],["PING"]]'),
    "path_set": (PATH, b'/set/k/v'),
    "path_pct": (PATH, b'/set/a%2Fb%20c/x+y%E2%82%ac%00'),
    "path_empty_segments": (PATH, b'/get//x/'),
    "path_bad_pct": (PATH, b'/get/%4'),
    "path_query": (PATH, b'/set/k/v\0EX=100&_token=secret&NX&+a+=b+c&&name=&%5Ftoken=x'),
    "path_body": (PATH, b'/set/k\0EX=100\0{"a":1}\0\xff\r\n'),
    "path_root": (PATH, b'/'),
    "path_small_limits": (PATH | SMALL, b'/set/k/v\0EX=1\0body'),
    "query_token": (PATH, b'_token=a%2Bb+c%41&x=1'),
    "query_token_bad_pct": (PATH, b'x=1&_token=ab%4'),
    "query_token_long": (PATH | SMALL, b'_token=0123456789&_token=z'),
    "enc_ok": (ENC, b'+OK\r\n'),
    "enc_ok_b64": (ENC | B64, b'+OK\r\n'),
    "enc_bulk_binary_b64": (ENC | B64, b'$5\r\n\x00\xff\xfe\r\n\r\n'),
    "enc_bulk_invalid_utf8": (ENC, b'$6\r\na\xff\xc3(\xe2\x82\r\n'),
    "enc_nil": (ENC, b'$-1\r\n'),
    "enc_integer": (ENC, b':-9223372036854775808\r\n'),
    "enc_error": (ENC, b'-ERR unknown command \'x\'\r\n'),
    "enc_array_nested": (ENC | B64, b'*3\r\n*2\r\n+OK\r\n*0\r\n*1\r\n*1\r\n:7\r\n$1\r\nz\r\n'),
    "enc_exec": (ENC, b'*3\r\n+OK\r\n-WRONGTYPE Operation\r\n$1\r\nv\r\n'),
    "enc_exec_nil": (ENC, b'*-1\r\n'),
    "enc_execabort": (ENC, b'-EXECABORT Transaction discarded because of previous errors.\r\n'),
    "enc_deep": (ENC, b'*1\r\n' * 100 + b':1\r\n'),
    "enc_deepest": (ENC, b'*1\r\n' * 1024 + b':1\r\n'),
    "enc_too_deep": (ENC, b'*1\r\n' * 1025 + b':1\r\n'),
    "enc_truncated": (ENC, b'*2\r\n$5\r\nhel'),
    "enc_two_frames": (ENC, b'+OK\r\n+OK\r\n'),
    "enc_resp3": (ENC, b'%1\r\n+a\r\n_\r\n'),
}


def write(target, name, data):
    d = os.path.join(HERE, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


def main():
    for target in ("request", "reply", "acl", "config", "restjson"):
        shutil.rmtree(os.path.join(HERE, target), ignore_errors=True)
    for name, (b0, b1, body) in REQUEST.items():
        write("request", name, bytes([b0, b1]) + body)
    for name, (b0, b1, body) in REPLY.items():
        write("reply", name, bytes([b0, b1]) + body)
    for name, data in ACL.items():
        write("acl", name, data)
    for name, text in CONFIG.items():
        write("config", name, text)
    for name, (b0, body) in RESTJSON.items():
        write("restjson", name, bytes([b0]) + body)


if __name__ == "__main__":
    main()
