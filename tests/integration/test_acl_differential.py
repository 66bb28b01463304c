"""Differential test of the ACL verdict (src/acl.c) against Redis 7.0's own ACL.

A redis-server 7.0 is started here (plaintext, free loopback port). Every user of a corpus of
users (prefixes, globs, %R~/%W~, categories, subcommand and first-argument rules, channel
rules, mixes) is created on it with ACL SETUSER and compiled by tests/tools/acl_probe from the
same rules; then every argument vector of the key-extraction differential
(test_cmdtab_differential.all_vectors: every command and subcommand of the server, with
generated and mutated arguments) is judged by both, ACL DRYRUN on one side, the probe on the
other. The probe runs with an empty guard list here, so its rules are Redis's; the guard
(guard.never_by_category) has its own test below.

How answers are compared:
  - ACL DRYRUN "OK" / "This user has no permissions to run the 'x' command" / "... access the
    'k' key" / "... the 'c' channel" / "ERR Command 'x' not found" / "ERR wrong number of
    arguments ..." must be the probe's OK / NOPERM run 'x' / NOPERM keys (the refused
    argument, up to a NUL byte, is k) / NOPERM channels (likewise) / ERR unknown command or
    subcommand / the same arity line;
  - except respguard's documented differences (the probe names the reason): those are cases
    where Redis allows and respguard refuses, or appends MATCH to a SCAN, or answers a scoped
    form (INFO, ACL WHOAMI). They are counted apart, and each must be a case where ACL DRYRUN
    says OK (a key-count that cannot be parsed may also be one where Redis refuses the same key,
    with the same text), but for the scoped INFO, which is never refused (Redis may refuse it).
The exact texts of unknown command, unknown subcommand and arity errors are compared byte for
byte with what the server answers a user who may run nothing (commands that run before
login, such as AUTH, HELLO, QUIT and RESET, are left out of that part).

Further tests: glob matching against Redis (ACL DRYRUN on random patterns and keys), rule
errors against ACL SETUSER's errors, the guard, and each documented difference.
"""

import os
import random
import re
import socket
import subprocess
import sys
import threading

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from helpers import built_tool, plain_redis_server, report_summary  # noqa: E402
from resp_util import encode  # noqa: E402
import test_cmdtab_differential as cmdgen  # noqa: E402  (argument vectors, shared)

DEFAULT_GUARD = ["flushall", "flushdb", "config", "debug", "shutdown", "monitor", "replicaof",
                 "slaveof", "sync", "psync", "module", "acl", "swapdb", "failover", "cluster",
                 "save", "bgsave", "bgrewriteaof", "client|kill", "client|list", "client|pause",
                 "client|unpause", "client|unblock", "client|no-evict", "script|flush",
                 "script|kill", "function|flush", "function|kill", "function|delete",
                 "function|restore"]

# The corpus: name -> rules (ACL SETUSER syntax, whitespace separated).
USERS = {
    "all": "on nopass ~* &* +@all",
    "tenant": "on nopass ~tenant-a:* &tenant-a:* +@all -@dangerous",
    "prefix_read": "on nopass ~key:* +@read",
    "rw_split": "on nopass %R~key:* %W~dest:* +@all",
    "read_all": "on nopass %R~* %W~key:1* +@all",
    "write_all": "on nopass %W~* &* +@write +@keyspace",
    "glob": "on nopass ~key:[12]* ~k?y:3 ~\\k* &* +@all",
    "suffix": "on nopass ~*:1 &* +@string +@list +@hash +@bitmap",
    "channels": "on nopass allkeys &v1 &v* &pat* +@pubsub +ping",
    "chan_mix": "on nopass ~key:* &v2 &allowed +@all -@pubsub +subscribe +publish +psubscribe",
    "no_slow": "on nopass ~* &* +@all -@slow",
    "admin": "on nopass ~* +@admin +@dangerous -flushall -shutdown -debug",
    "subcmds": "on nopass ~key:* +config|get +client|id +client|setname +object|encoding "
               "+memory|usage +xinfo +command -command|docs",
    "sub_minus": "on nopass ~* &* +@all -config|set -client -xgroup|destroy",
    "firstarg": "on nopass ~key:* +select|0 +get +set +client|id +debug|object +debug|sleep",
    "keyspace": "on nopass ~pat* ~key:2 +@keyspace +@read",
    "zsets": "on nopass ~key:2* ~dest:* +@sortedset +@set +@geo +@stream +@hyperloglog",
    "read_keys": "on nopass %R~key:* &* +@all",
    "no_write": "on nopass ~* &* +@all -@write +set",
    "nothing": "on nopass +@all",
    "exact": "on nopass ~key:1 ~key:2 ~dest:key:1 &* +@all -@scripting +eval",
    "sys_chan": "on nopass ~* &__keyspace@* &__redis__:* +@all",
    "star_rw": "on nopass %RW~* &* +@all",
    "merge": "on nopass %R~key:1 %W~key:1 %R~key:2 ~dest:* &v* +@all -@dangerous +keys",
    "reset_mid": "on nopass ~x:* +@all reset on nopass ~key:* &* +@read +@write -@keyspace",
    "cats": "on nopass ~* &* +@geo +@bitmap +@connection +@transaction +@scripting -@fast",
    "off": "off nopass ~* &* +@all",
    "blocking": "on nopass ~key:* &* +@blocking +@fast",
}

NOPERM_RUN = re.compile(r"^NOPERM this user has no permissions to run the '(.*)' command$", re.S)
DRY_RUN = re.compile(r"^This user has no permissions to run the '(.*)' command$", re.S)
DRY_KEY = re.compile(r"^This user has no permissions to access the '(.*)' key$", re.S)
DRY_CHAN = re.compile(r"^This user has no permissions to access the '(.*)' channel$", re.S)
KEYS_TEXT = "NOPERM this user has no permissions to access one of the keys used as arguments"
CHANNELS_TEXT = "NOPERM this user has no permissions to access one of the channels used as arguments"


def probe_path():
    return built_tool("acl_probe", "ACL_PROBE")


# ---------------------------------------------------------------------------------------------
# the server and a fast pipeline
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def port():
    yield from plain_redis_server("acl-diff-")


class Reader:
    """RESP2 replies from a byte buffer: ('+'|'-', bytes), ('$', bytes|None), (':', int),
    ('*', list|None)."""

    def __init__(self, sock):
        self.sock, self.buf, self.pos = sock, bytearray(), 0

    def _fill(self):
        chunk = self.sock.recv(1 << 20)
        if not chunk:
            raise ConnectionError("server closed the connection")
        if self.pos > (1 << 20):
            del self.buf[:self.pos]
            self.pos = 0
        self.buf += chunk

    def _line(self):
        while True:
            e = self.buf.find(b"\r\n", self.pos)
            if e >= 0:
                line = bytes(self.buf[self.pos:e])
                self.pos = e + 2
                return line
            self._fill()

    def reply(self):
        line = self._line()
        t, rest = line[:1], line[1:]
        if t in (b"+", b"-"):
            return (t.decode(), rest)
        if t == b":":
            return (":", int(rest))
        if t == b"$":
            n = int(rest)
            if n < 0:
                return ("$", None)
            while len(self.buf) - self.pos < n + 2:
                self._fill()
            data = bytes(self.buf[self.pos:self.pos + n])
            self.pos += n + 2
            return ("$", data)
        if t == b"*":
            n = int(rest)
            return ("*", None if n < 0 else [self.reply() for _ in range(n)])
        raise AssertionError("bad reply line %r" % line)


def pipeline(port, commands, first=None):
    """Send every command (lists of bytes) on one connection, the writing in a thread; the
    replies in order. first: commands whose replies are read and dropped before."""
    first = first or []
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    try:
        data = b"".join(encode(*c) for c in first + commands)
        err = []

        def write():
            try:
                sock.sendall(data)
            except OSError as e:  # noqa: PERF203
                err.append(e)

        t = threading.Thread(target=write)
        t.start()
        r = Reader(sock)
        for _ in first:
            r.reply()
        out = [r.reply() for _ in commands]
        t.join()
        assert not err, err
        return out
    finally:
        sock.close()


def call(port, *args):
    return pipeline(port, [[a if isinstance(a, bytes) else a.encode() for a in args]])[0]


# ---------------------------------------------------------------------------------------------
# the probe
# ---------------------------------------------------------------------------------------------

def jstr(b):
    if isinstance(b, str):
        b = b.encode("latin-1")
    out = []
    for c in b:
        if 0x20 <= c < 0x7f and c not in (0x22, 0x5c):
            out.append(chr(c))
        else:
            out.append("\\u%04x" % c)
    return '"' + "".join(out) + '"'


def probe_lines(items):
    """items: (rules, vector, never or None). One (line, reason, pos) per item."""
    exe = probe_path()
    parts = []
    for rules, vec, never in items:
        head = '{"acl":%s' % jstr(rules)
        if never is not None:
            head += ',"never":[%s]' % ",".join(jstr(n) for n in never)
        parts.append('%s,"cmd":%s}\n' % (head, cmdgen.to_json(vec)))
    r = subprocess.run([exe, "--explain"], input="".join(parts).encode(), capture_output=True,
                       timeout=300)
    assert r.returncode == 0, "acl_probe failed: %s" % r.stderr.decode(errors="replace")
    lines = r.stdout.split(b"\n")
    assert lines[-1] == b""
    lines = lines[:-1]
    assert len(lines) == len(items), "probe answered %d lines for %d" % (len(lines), len(items))
    out = []
    for l in lines:
        text, reason, pos = l.rsplit(b"\t", 2)
        out.append((text.decode("latin-1"), reason.decode(), int(pos)))
    return out


def cut(b):
    """An argument as Redis's %s prints it: up to its first NUL byte."""
    return b.split(b"\x00")[0].decode("latin-1")


EXECABORT = "EXECABORT Transaction discarded because of: "


def classify_probe(text, pos, vec):
    # A refused EXEC is wrapped in EXECABORT (as Redis does); ACL DRYRUN shows the bare error.
    if text.startswith(EXECABORT):
        text = text[len(EXECABORT):]
        if text.startswith("wrong number"):
            text = "ERR " + text
    if text == "OK":
        return ("OK",)
    if text.startswith("REWRITE "):
        return ("rewrite", text[8:])
    if text.startswith("SCOPED "):
        return ("scoped", text[7:])
    if text.startswith("ERR unknown command ") or text.startswith("ERR unknown subcommand "):
        return ("unknown",)
    if text.startswith("ERR wrong number of arguments"):
        return ("arity", text)
    m = NOPERM_RUN.match(text)
    if m:
        return ("cmd", m.group(1))
    if text == KEYS_TEXT:
        return ("key", cut(vec[pos]) if 0 < pos < len(vec) else None)
    if text == CHANNELS_TEXT:
        return ("channel", cut(vec[pos]) if 0 < pos < len(vec) else None)
    if text.startswith("ERR BY option of SORT") or text.startswith("ERR GET option of SORT"):
        return ("sort", text)
    return ("other", text)


def classify_dryrun(reply):
    kind, val = reply
    if kind == "+" and val == b"OK":
        return ("OK",)
    if kind == "$":
        t = val.decode("latin-1")
        for rx, name in ((DRY_RUN, "cmd"), (DRY_KEY, "key"), (DRY_CHAN, "channel")):
            m = rx.match(t)
            if m:
                return (name, m.group(1))
        return ("other", t)
    if kind == "-":
        t = val.decode("latin-1")
        if re.match(r"^ERR Command '.*' not found$", t, re.S):
            return ("unknown",)
        if t.startswith("ERR wrong number of arguments"):
            return ("arity", t)
        return ("other", t)
    return ("other", repr(reply))


# ---------------------------------------------------------------------------------------------
# shared data
# ---------------------------------------------------------------------------------------------

def report(request, text):
    report_summary(request, "acl differential", text)


@pytest.fixture(scope="module")
def commands(port):
    top, flat = cmdgen.load_commands(port)
    vectors = cmdgen.all_vectors(top, flat)
    return {"top": top, "flat": flat, "by_name": {c.name: c for c in flat}, "vectors": vectors}


def setuser_cmd(name, rules):
    return [b"ACL", b"SETUSER", name.encode(), b"reset"] + [t.encode("latin-1") for t in rules.split()]


# ---------------------------------------------------------------------------------------------
# the main differential
# ---------------------------------------------------------------------------------------------

DIFFERENCES = {"script", "script-admin", "migrate", "enumeration", "database", "client",
               "monitor", "system-channel", "key-extraction", "sort", "server"}


def test_verdicts_equal_acl_dryrun(port, commands, request):
    assert len(USERS) >= 20
    vectors = commands["vectors"]
    setup = [setuser_cmd("u_" + n, r) for n, r in USERS.items()]
    replies = pipeline(port, setup)
    assert all(r == ("+", b"OK") for r in replies), list(zip(USERS, replies))

    items, dry = [], []
    for name, rules in USERS.items():
        for v in vectors:
            items.append((rules, v, []))
            dry.append([b"ACL", b"DRYRUN", ("u_" + name).encode()] + v)
    probe = probe_lines(items)
    redis = pipeline(port, dry)

    mismatches, diffs, kinds = [], {}, {}
    for (rules, v, _), p, r in zip(items, probe, redis):
        text, reason, pos = p
        mine = classify_probe(text, pos, v)
        theirs = classify_dryrun(r)
        kinds[theirs[0]] = kinds.get(theirs[0], 0) + 1
        if reason in ("none", "acl") and mine[0] not in ("rewrite", "scoped"):
            if mine != theirs:
                mismatches.append("%s %r: redis %r, respguard %r (%s %d)" % (
                    rules, v, theirs, mine, reason, pos))
            continue
        tag = "scan-rewrite" if mine[0] == "rewrite" else "scoped-" + mine[1] if mine[0] == "scoped" else reason
        diffs[tag] = diffs.get(tag, 0) + 1
        ok = theirs == ("OK",) or (reason == "key-extraction" and theirs[0] == "key") or \
            (tag == "scoped-info" and theirs == ("cmd", "info"))
        if tag not in DIFFERENCES | {"scan-rewrite", "scoped-info", "scoped-whoami"} or not ok:
            mismatches.append("%s %r: redis %r, respguard %r (difference %s)" % (
                rules, v, theirs, mine, reason))

    compared = len(items)
    report(request, "acl differential: compared %d cases (%d users x %d vectors over %d commands "
                    "and subcommands; Redis: %s); documented differences: %s; %d mismatches" % (
                        compared, len(USERS), len(vectors), len(commands["flat"]),
                        ", ".join("%s %d" % kv for kv in sorted(kinds.items())),
                        ", ".join("%s %d" % kv for kv in sorted(diffs.items())) or "none",
                        len(mismatches)))
    assert not mismatches, "%d of %d cases differ from ACL DRYRUN:\n%s" % (
        len(mismatches), compared, "\n".join(mismatches[:40]))


def test_syntax_errors_byte_exact(port, commands, request):
    """Unknown command, unknown subcommand and arity errors, byte for byte, from a user who may
    run nothing (Redis checks these before the ACL)."""
    assert call(port, "ACL", "SETUSER", "nobody", "reset", "on", "nopass") == ("+", b"OK")
    # Run before login (no_auth) or close the connection; DEBUG and MODULE are refused by the
    # server's enable-debug-command / enable-module-command before its ACL (the upstream's
    # configuration, which respguard cannot know: it refuses by ACL first).
    skip_names = {"auth", "hello", "quit", "reset", "post", "host:", "debug", "module"}
    extra = [[b"foo"], [b"foo", b"a"], [b"foo", b"a", b"b\r\nc"], [b"fo\r\no", b"a"],
             [b"foo", b"a" * 200], [b"foo", b"a" * 100, b"b" * 100], [b"foo", b"a" * 126, b"b"],
             [b"foo", b"a" * 127, b"b"], [b"foo", b"a" * 128, b"b"], [b"f" * 200, b"x"],
             [b"foo", b"a\x00b", b"c"], [b"fo\x00o", b"c"], [b"config", b"fo\r\no"],
             [b"Config", b"x" * 200], [b"config", b"a\x00b"], [b"cOnFiG"], [b"CONFIG", b"GET"],
             [b"client", b"kill"], [b"object", b"help", b"x"], [b"get", b"a", b"b"],
             [b"foo", b"", b"b"], [b"foo"] + [b"abcdefghi"] * 20, [b"foo"] + [b"x"] * 60,
             [b"\xff\xfe", b"\x80"], [b"xinfo", b"\xffbad"], [b""], [b"", b""]]
    vectors = [v for v in commands["vectors"] + extra
               if cut(v[0]).lower() not in skip_names
               and not ((c := commands["by_name"].get(cut(v[0]).lower())) and "no_auth" in c.flags)]
    items = [("on nopass", v, []) for v in vectors]
    probe = probe_lines(items)
    redis = pipeline(port, [list(v) for v in vectors],
                     first=[[b"AUTH", b"nobody", b"x"]])
    mismatches, n = [], 0
    for v, (text, reason, pos), r in zip(vectors, probe, redis):
        assert r[0] == "-", (v, r)
        want = r[1].decode("latin-1")
        if text == "SCOPED info":
            continue  # INFO is never refused: the scoped form (test_documented_differences)
        n += 1
        if text != want:
            mismatches.append("%r: redis %r, respguard %r" % (v, want, text))
    report(request, "acl differential: compared %d error lines byte for byte with Redis; "
                    "%d mismatches" % (n, len(mismatches)))
    assert not mismatches, "\n".join(mismatches[:40])


# ---------------------------------------------------------------------------------------------
# glob matching
# ---------------------------------------------------------------------------------------------

def test_glob_equals_redis(port, request):
    rng = random.Random(1234)
    alphabet = [b"a", b"b", b"*", b"?", b"[", b"]", b"^", b"-", b"\\", b"\xff", b"\x80", b"c",
                b":", b"\x00"]
    keys_alpha = [b"a", b"b", b"c", b"]", b"-", b"^", b"\\", b"*", b"?", b"[", b"\xff", b"\x80",
                  b"\x00", b":"]
    patterns = set([b"*", b"a*", b"*a", b"a*b", b"[a-c]", b"[^a]*", b"[a-]", b"[]", b"[", b"[^",
                    b"\\", b"a\\", b"\\*", b"[\\]]*", b"[a-\xff]", b"[\xff-a]", b"**a**", b"?*?",
                    b"", b"[c-a]*", b"a[", b"[^]", b"[\\", b"*[", b"\x80*"])
    while len(patterns) < 260:
        patterns.add(b"".join(rng.choice(alphabet) for _ in range(rng.randint(1, 6))))
    patterns = sorted(p for p in patterns if b"\x00" not in p)
    keys = set([b"", b"a", b"ab", b"a\xff", b"]", b"\\", b"*", b"abc", b"ba"])
    while len(keys) < 70:
        keys.add(b"".join(rng.choice(keys_alpha) for _ in range(rng.randint(0, 5))))
    keys = sorted(keys)

    cmds, items = [], []
    for i, p in enumerate(patterns):
        user = b"g%d" % i
        rules = b"on nopass %R~" + p + b" +get"
        cmds.append([b"ACL", b"SETUSER", user, b"reset", b"on", b"nopass", b"%R~" + p, b"+get"])
        for k in keys:
            cmds.append([b"ACL", b"DRYRUN", user, b"GET", k])
            items.append((rules.decode("latin-1"), [b"GET", k], []))
    replies = pipeline(port, cmds)
    dry = [r for c, r in zip(cmds, replies) if c[1] == b"DRYRUN"]
    assert all(r == ("+", b"OK") for c, r in zip(cmds, replies) if c[1] == b"SETUSER")
    probe = probe_lines(items)
    mismatches = []
    for (rules, v, _), (text, _, _), r in zip(items, probe, dry):
        theirs = "OK" if r == ("+", b"OK") else "denied"
        mine = "OK" if text == "OK" else "denied"
        if mine != theirs:
            mismatches.append("%r key %r: redis %s, respguard %s" % (rules, v[1], theirs, mine))
    report(request, "acl differential: compared %d glob cases (%d patterns x %d keys); "
                    "%d mismatches" % (len(items), len(patterns), len(keys), len(mismatches)))
    assert not mismatches, "\n".join(mismatches[:40])


# ---------------------------------------------------------------------------------------------
# rule errors
# ---------------------------------------------------------------------------------------------

RULES_REDIS_SAME = [
    "%", "%~x", "%X~a", "%RR~x", "%WW~x", "%Rx~y", "#ABC", "#" + "0" * 63 + "A", "#" + "0" * 65,
    "!" + "0" * 64, "!xyz", "+|x", "+config|", "+config|get|x", "-select|0", "+@foo", "-@foo",
    "foo", "+", "-", "+@", "-@", "+nosuch", "-nosuch", "+config|nosuch", "-config|", "+get|",
    "~* ~x", "~* %R~x", "allkeys ~x", "&* &x", "allchannels &x", "+config|get|", "on+",
    "~a ~* ~b", "+@all +nosuch|x", "-@all -get|x", "+get|x|y", "ON OFF offf",
]


def test_rule_errors_equal_acl_setuser(port, request):
    mismatches = []
    for i, rule in enumerate(RULES_REDIS_SAME):
        toks = rule.split()
        r = call(port, *(["ACL", "SETUSER", "e%d" % i, "reset"] + toks))
        items = [("on " + rule, [b"PING"], [])]
        text = probe_lines(items)[0][0]
        if r == ("+", b"OK"):
            if text.startswith("COMPILE-ERROR"):
                mismatches.append("%r: redis OK, respguard %r" % (rule, text))
            continue
        want = "COMPILE-ERROR " + r[1].decode()[len("ERR "):]
        if text != want:
            mismatches.append("%r: redis %r, respguard %r" % (rule, want, text))
    report(request, "acl differential: compared %d rule errors with ACL SETUSER; %d mismatches"
           % (len(RULES_REDIS_SAME), len(mismatches)))
    assert not mismatches, "\n".join(mismatches)


def test_rules_redis_accepts_but_respguard_refuses(port):
    for rule, why in (("(~x +get)", "Selectors are not supported"),
                      ("sanitize-payload", "Payload sanitization"),
                      ("skip-sanitize-payload", "Payload sanitization")):
        toks = rule.split() if not rule.startswith("(") else [rule]
        assert call(port, *(["ACL", "SETUSER", "sel", "reset"] + toks)) == ("+", b"OK")
        text = probe_lines([("on " + rule, [b"PING"], [])])[0][0]
        assert text.startswith("COMPILE-ERROR Error in ACL SETUSER modifier '") and why in text, text


# ---------------------------------------------------------------------------------------------
# the guard
# ---------------------------------------------------------------------------------------------

# rules -> the guard commands the rules name explicitly (still standing at the end)
GUARD_USERS = {
    "on nopass ~* &* +@all": [],
    "on nopass ~* &* +@all +flushdb": ["flushdb"],
    "on nopass ~* &* +flushdb +@all": ["flushdb"],
    "on nopass ~* &* +flushdb +@all -@dangerous +@all": [],
    "on nopass ~* &* +@all +client|kill +config": ["client|kill", "config"],
    "on nopass ~* &* +@all +config -config|set": ["config"],
    "on nopass ~* &* +@admin +script|flush +flushall -flushall": ["script|flush"],
    "on nopass ~* &* +client +@all -client|list": ["client|kill", "client|pause",
                                                      "client|unpause", "client|unblock",
                                                      "client|no-evict"],
}


def test_guard_grants_only_by_name(port, commands, request):
    """With the default guard list, the verdict equals ACL DRYRUN for a Redis user given the
    same rules followed by -<cmd> for every guard command the rules do not name."""
    by_name = commands["by_name"]
    guard_vectors = []
    for v in commands["vectors"]:
        c = cmdgen.resolve(by_name, v)
        if c is None:
            continue
        top = c.name.split("|")[0]
        if c.name in DEFAULT_GUARD or top in DEFAULT_GUARD:
            guard_vectors.append(v)
    sample = guard_vectors + commands["vectors"][::7]
    setup, items, dry = [], [], []
    for i, (rules, named) in enumerate(GUARD_USERS.items()):
        extra = ["-" + g for g in DEFAULT_GUARD if g not in named]
        # a named container keeps its guarded subcommands
        extra = [e for e in extra if e[1:].split("|")[0] not in named]
        setup.append(setuser_cmd("guard%d" % i, rules + " " + " ".join(extra)))
        for v in sample:
            items.append((rules, v, None))
            dry.append([b"ACL", b"DRYRUN", b"guard%d" % i] + v)
    replies = pipeline(port, setup)
    assert all(r == ("+", b"OK") for r in replies), replies
    probe = probe_lines(items)
    redis = pipeline(port, dry)
    mismatches, guarded = [], 0
    for (rules, v, _), (text, reason, pos), r in zip(items, probe, redis):
        mine, theirs = classify_probe(text, pos, v), classify_dryrun(r)
        if reason == "guard":
            guarded += 1
        if reason in ("none", "acl", "guard") and mine[0] not in ("rewrite", "scoped"):
            if mine != theirs:
                mismatches.append("%s %r: redis %r, respguard %r (%s)" % (rules, v, theirs, mine,
                                                                           reason))
    report(request, "acl differential: compared %d guard cases (%d refused by the guard); "
                    "%d mismatches" % (len(items), guarded, len(mismatches)))
    assert not mismatches, "\n".join(mismatches[:40])
    assert guarded > 100


# ---------------------------------------------------------------------------------------------
# the documented differences, one by one
# ---------------------------------------------------------------------------------------------

TENANT = "on nopass ~tenant-a:* &tenant-a:* +@all -@dangerous"
TENANT2 = "on nopass ~tenant-a:* ~tenant-b:* &tenant-a:* +@all -@dangerous"
READONLY_ALL = "on nopass %R~* %W~tenant-a:* &* +@all"
KEYS_ONLY = "on nopass ~tenant-a:* &* +@all"
CHANNELS_ONLY = "on nopass ~* &tenant-a:* +@all"
FREE = "on nopass ~* &* +@all"

# (rules, command, expected probe line or prefix, reason)
DIFFERENCE_CASES = [
    (TENANT, ["EVAL", "return 1", "0"], "NOPERM this user has no permissions to run the 'eval' command", "script"),
    (TENANT, ["EVALSHA", "a" * 40, "1", "tenant-a:k"], "NOPERM this user has no permissions to run the 'evalsha' command", "script"),
    (TENANT, ["EVAL_RO", "return 1", "0"], "NOPERM this user has no permissions to run the 'eval_ro' command", "script"),
    (TENANT, ["FCALL", "f", "0"], "NOPERM this user has no permissions to run the 'fcall' command", "script"),
    (TENANT, ["FCALL_RO", "f", "1", "tenant-a:x"], "NOPERM this user has no permissions to run the 'fcall_ro' command", "script"),
    (CHANNELS_ONLY, ["EVAL", "return 1", "0"], "NOPERM this user has no permissions to run the 'eval' command", "script"),
    (TENANT, ["FUNCTION", "LIST"], "NOPERM this user has no permissions to run the 'function|list' command", "script-admin"),
    (TENANT, ["SCRIPT", "LOAD", "return 1"], "NOPERM this user has no permissions to run the 'script|load' command", "script-admin"),
    (TENANT, ["SCRIPT", "EXISTS", "a"], "NOPERM this user has no permissions to run the 'script|exists' command", "script-admin"),
    (TENANT, ["SCRIPT", "HELP"], "OK", "none"),
    (KEYS_ONLY, ["SORT", "tenant-a:l", "BY", "x*"], "ERR BY option of SORT denied due to insufficient ACL permissions.", "sort"),
    (KEYS_ONLY, ["SORT", "tenant-a:l", "BY", "nosort"], "OK", "none"),
    (KEYS_ONLY, ["SORT_RO", "tenant-a:l", "GET", "#"], "ERR GET option of SORT denied due to insufficient ACL permissions.", "sort"),
    (KEYS_ONLY, ["SORT", "tenant-a:l", "LIMIT", "0", "1", "GET", "x*", "STORE", "tenant-a:d"], "ERR GET option of SORT denied due to insufficient ACL permissions.", "sort"),
    (READONLY_ALL, ["SORT", "tenant-a:l", "BY", "x*", "GET", "y*"], "OK", "none"),
    (KEYS_ONLY, ["MIGRATE", "h", "1", "tenant-a:k", "0", "10"], "NOPERM this user has no permissions to run the 'migrate' command", "migrate"),
    (TENANT, ["RANDOMKEY"], "NOPERM this user has no permissions to run the 'randomkey' command", "server"),
    (TENANT, ["DBSIZE"], "NOPERM this user has no permissions to run the 'dbsize' command", "server"),
    (KEYS_ONLY, ["MEMORY", "STATS"], "NOPERM this user has no permissions to run the 'memory|stats' command", "server"),
    (READONLY_ALL, ["DBSIZE"], "NOPERM this user has no permissions to run the 'dbsize' command", "server"),
    (READONLY_ALL + " +dbsize", ["DBSIZE"], "OK", "none"),
    (KEYS_ONLY, ["SLOWLOG", "GET"], "NOPERM this user has no permissions to run the 'slowlog|get' command", "server"),
    (CHANNELS_ONLY, ["LATENCY", "RESET"], "NOPERM this user has no permissions to run the 'latency|reset' command", "server"),
    (KEYS_ONLY, ["MEMORY", "DOCTOR"], "NOPERM this user has no permissions to run the 'memory|doctor' command", "server"),
    (KEYS_ONLY, ["LASTSAVE"], "NOPERM this user has no permissions to run the 'lastsave' command", "server"),
    (TENANT, ["READONLY"], "NOPERM this user has no permissions to run the 'readonly' command", "server"),
    (KEYS_ONLY + " +slowlog", ["SLOWLOG", "GET"], "OK", "none"),
    (KEYS_ONLY, ["SLOWLOG", "HELP"], "OK", "none"),
    (KEYS_ONLY, ["TIME"], "OK", "none"),
    (TENANT, ["INFO"], "SCOPED info", "none"),
    (KEYS_ONLY, ["INFO", "keyspace"], "SCOPED info", "none"),
    (KEYS_ONLY + " +info", ["INFO", "keyspace"], "OK", "none"),
    (FREE, ["INFO"], "OK", "none"),
    (TENANT, ["ACL", "WHOAMI"], "SCOPED whoami", "none"),
    (FREE, ["ACL", "WHOAMI"], "SCOPED whoami", "none"),
    (KEYS_ONLY + " +eval", ["EVAL", "return 1", "0"], "OK", "none"),
    (KEYS_ONLY, ["KEYS", "*"], KEYS_TEXT, "enumeration"),
    (KEYS_ONLY, ["KEYS", "tenant-a:*"], "OK", "none"),
    (KEYS_ONLY, ["KEYS", "tenant-a:x?[ab]*"], "OK", "none"),
    (KEYS_ONLY, ["KEYS", "tenant-a?*"], KEYS_TEXT, "enumeration"),
    (KEYS_ONLY, ["KEYS", "tenant-*"], KEYS_TEXT, "enumeration"),
    (TENANT, ["SCAN", "0"], 'REWRITE ["MATCH","tenant-a:*"]', "none"),
    (TENANT, ["SCAN", "0", "MATCH", "*", "COUNT", "10"], 'REWRITE ["MATCH","tenant-a:*"]', "none"),
    (TENANT, ["SCAN", "0", "MATCH", "tenant-a:*", "MATCH", "x*"], 'REWRITE ["MATCH","tenant-a:*"]', "none"),
    (TENANT, ["SCAN", "0", "MATCH", "x*", "MATCH", "tenant-a:1*"], "OK", "none"),
    (TENANT, ["SCAN", "0", "TYPE", "string", "match", "tenant-a:*"], "OK", "none"),
    (TENANT2, ["SCAN", "0"], KEYS_TEXT, "enumeration"),
    (TENANT2, ["SCAN", "0", "MATCH", "tenant-b:x*"], "OK", "none"),
    (TENANT2, ["SCAN", "0", "MATCH", "tenant-c:x*"], KEYS_TEXT, "enumeration"),
    (KEYS_ONLY, ["SELECT", "1"], "NOPERM this user has no permissions to run the 'select' command", "database"),
    (KEYS_ONLY, ["SELECT", "0"], "OK", "none"),
    (KEYS_ONLY, ["SELECT", "00"], "NOPERM this user has no permissions to run the 'select' command", "database"),
    (CHANNELS_ONLY, ["SELECT", "1"], "OK", "none"),
    (KEYS_ONLY, ["MOVE", "tenant-a:k", "1"], "NOPERM this user has no permissions to run the 'move' command", "database"),
    (KEYS_ONLY, ["SWAPDB", "0", "1"], "NOPERM this user has no permissions to run the 'swapdb' command", "database"),
    (KEYS_ONLY, ["COPY", "tenant-a:a", "tenant-a:b", "DB", "1"], KEYS_TEXT, "database"),
    (KEYS_ONLY, ["COPY", "tenant-a:a", "tenant-a:b", "REPLACE", "db", "0"], "OK", "none"),
    (KEYS_ONLY, ["CLIENT", "LIST"], "NOPERM this user has no permissions to run the 'client|list' command", "client"),
    (CHANNELS_ONLY, ["CLIENT", "KILL", "ID", "1"], "NOPERM this user has no permissions to run the 'client|kill' command", "client"),
    (KEYS_ONLY, ["CLIENT", "PAUSE", "10"], "NOPERM this user has no permissions to run the 'client|pause' command", "client"),
    (KEYS_ONLY, ["CLIENT", "UNBLOCK", "1"], "NOPERM this user has no permissions to run the 'client|unblock' command", "client"),
    (KEYS_ONLY, ["CLIENT", "TRACKING", "on", "BCAST"], "NOPERM this user has no permissions to run the 'client|tracking' command", "client"),
    (KEYS_ONLY, ["CLIENT", "TRACKING", "on", "REDIRECT", "7"], "NOPERM this user has no permissions to run the 'client|tracking' command", "client"),
    (KEYS_ONLY, ["CLIENT", "TRACKING", "on", "PREFIX", "bcast"], "OK", "none"),
    (KEYS_ONLY, ["CLIENT", "TRACKING", "on"], "OK", "none"),
    (KEYS_ONLY, ["CLIENT", "ID"], "OK", "none"),
    (KEYS_ONLY, ["MONITOR"], "NOPERM this user has no permissions to run the 'monitor' command", "monitor"),
    (FREE, ["MONITOR"], "NOPERM this user has no permissions to run the 'monitor' command", "monitor"),
    (FREE + " +monitor", ["MONITOR"], "OK", "none"),
    (KEYS_ONLY + " +monitor", ["MONITOR"], "NOPERM this user has no permissions to run the 'monitor' command", "monitor"),
    (KEYS_ONLY, ["SUBSCRIBE", "__keyspace@0__:tenant-b:x"], CHANNELS_TEXT, "system-channel"),
    (KEYS_ONLY, ["SUBSCRIBE", "news", "__keyevent@0__:del"], CHANNELS_TEXT, "system-channel"),
    (KEYS_ONLY, ["PUBLISH", "__redis__:invalidate", "x"], CHANNELS_TEXT, "system-channel"),
    (KEYS_ONLY, ["PSUBSCRIBE", "*"], CHANNELS_TEXT, "system-channel"),
    (KEYS_ONLY, ["PSUBSCRIBE", "__key*"], CHANNELS_TEXT, "system-channel"),
    (KEYS_ONLY, ["PSUBSCRIBE", "?_redis*"], CHANNELS_TEXT, "system-channel"),
    (KEYS_ONLY, ["PSUBSCRIBE", "news.*"], "OK", "none"),
    (KEYS_ONLY, ["PSUBSCRIBE", "[^_]*"], "OK", "none"),
    (FREE, ["PSUBSCRIBE", "*"], "OK", "none"),
    (KEYS_ONLY, ["SSUBSCRIBE", "__redis__:x"], CHANNELS_TEXT, "system-channel"),
    (TENANT, ["PUBSUB", "CHANNELS"], CHANNELS_TEXT, "enumeration"),
    (TENANT, ["PUBSUB", "CHANNELS", "*"], CHANNELS_TEXT, "system-channel"),
    (TENANT, ["PUBSUB", "CHANNELS", "tenant-a:*"], "OK", "none"),
    (TENANT, ["PUBSUB", "SHARDCHANNELS", "x*"], CHANNELS_TEXT, "enumeration"),
    (TENANT, ["PUBSUB", "NUMSUB", "tenant-a:x", "tenant-b:x"], CHANNELS_TEXT, "enumeration"),
    (TENANT, ["PUBSUB", "NUMSUB", "tenant-a:x"], "OK", "none"),
    (TENANT, ["PUBSUB", "NUMPAT"], "NOPERM this user has no permissions to run the 'pubsub|numpat' command", "server"),
    (FREE, ["PUBSUB", "CHANNELS"], "OK", "none"),
    (TENANT, ["ZUNIONSTORE", "tenant-a:d", "01", "tenant-a:x"], KEYS_TEXT, "key-extraction"),
    (TENANT, ["EXISTS", "tenant-a:x", "tenant-a:y"], "OK", "none"),
]


def test_documented_differences(port, request):
    """Each difference on its own: respguard's verdict is as documented, and Redis itself would
    have allowed the command (ACL DRYRUN OK) wherever respguard refuses or rewrites."""
    users = {}
    setup = []
    for rules, _, _, _ in DIFFERENCE_CASES:
        if rules not in users:
            users[rules] = "d%d" % len(users)
            setup.append(setuser_cmd(users[rules], rules))
    assert all(r == ("+", b"OK") for r in pipeline(port, setup))
    items = [(rules, [a.encode("latin-1") for a in cmd], []) for rules, cmd, _, _ in DIFFERENCE_CASES]
    probe = probe_lines(items)
    dry = pipeline(port, [[b"ACL", b"DRYRUN", users[rules].encode()] + v for rules, v, _ in items])
    bad = []
    for (rules, cmd, want, why), (text, reason, pos), r in zip(DIFFERENCE_CASES, probe, dry):
        if text != want or reason != why:
            bad.append("%s %r: want %r (%s), got %r (%s)" % (rules, cmd, want, why, text, reason))
        if want not in ("OK", "SCOPED info") and r != ("+", b"OK"):
            bad.append("%s %r: ACL DRYRUN does not allow it: %r" % (rules, cmd, r))
    report(request, "acl differential: %d documented-difference cases asserted; %d failures" % (
        len(DIFFERENCE_CASES), len(bad)))
    assert not bad, "\n".join(bad)
