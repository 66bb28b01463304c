"""Differential test of cmdtab's key and channel extraction against Redis itself.

For every command and subcommand of a real redis-server 7.0 (started here, plaintext, on a free
loopback port), argument vectors are generated from COMMAND DOCS (required arguments only, every
optional argument, repetitions, each choice of a oneof) and then mutated (key counts that are
zero, negative, too large, not canonical or overflowing; keywords in other cases, with a NUL
byte after them, moved, repeated; arguments dropped or added; random vectors from the
command's own tokens). The same vectors go to Redis's COMMAND GETKEYSANDFLAGS and to
tests/tools/cmdtab_probe (cmdtab_get_keys), and the answers must agree case by case.

How a Redis answer maps to a probe answer:
  - an array with keys: the probe lists the same keys (compared by argument, in order) with
    the same flags;
  - an empty array, or "Invalid arguments specified for command" (Redis found no keys because
    the arguments are wrong): the probe lists no keys, or fails the extraction ("keys"), which
    makes respguard refuse a command Redis would reject anyway;
  - "The command has no key arguments": the probe lists no keys (its NOT_KEY entries, such as
    SPUBLISH's shard channel, are not keys), or reports an arity error (Redis checks that
    before arity);
  - "Invalid number of arguments specified for command": the probe reports "arity";
  - "Invalid command specified": the probe reports an unknown command or subcommand.
One deliberate difference is allowed, and counted apart: where Redis lists keys although the
key count is not a canonical integer within the arguments (its fallback reads the count with
atoi(), and it truncates large counts to an int), cmdtab refuses ("keys"). Every other
difference fails the test.

Channels: for every vector of a pub/sub command, ACL DRYRUN for a user allowed only the
channel "allowed" must say what the probe's channels imply (Redis 7.0 checks PUBLISH and
SUBSCRIBE channels, in order; a pattern must equal the user's pattern, compared by Redis with
strcmp, so up to a NUL byte; the error names the channel up to a NUL byte).

The test must not skip: a missing probe binary fails it. It starts its own redis-server and
leaves conftest.py's servers alone; the vectors are the same on every run (fixed seeds, sorted
command lists), so a failure reproduces.
"""

import json
import os
import random
import re
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from helpers import built_tool, plain_redis_server, report_summary  # noqa: E402
from resp_util import ErrorReply, RawConn, encode  # noqa: E402


def probe_path():
    return built_tool("cmdtab_probe", "CMDTAB_PROBE")


# ---------------------------------------------------------------------------------------------
# the server
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def server():
    yield from plain_redis_server("cmdtab-diff-")


def pipeline(port, commands, chunk=500):
    """Send commands (lists of bytes) in pipelined chunks; the replies, in order."""
    out = []
    with RawConn(port, timeout=30) as c:
        for i in range(0, len(commands), chunk):
            part = commands[i:i + chunk]
            c.send(b"".join(encode(*cmd) for cmd in part))
            out.extend(c.read_reply() for _ in part)
    return out


def pairs(flat):
    return dict(zip(flat[0::2], flat[1::2])) if flat else {}


def s(x):
    return x.decode() if isinstance(x, bytes) else x


# ---------------------------------------------------------------------------------------------
# the commands, from COMMAND and COMMAND DOCS
# ---------------------------------------------------------------------------------------------

class Cmd:
    def __init__(self, raw, parent=None):
        self.name = s(raw[0]).lower()                   # "config|get"
        self.words = self.name.split("|")               # ["config", "get"]
        self.arity = raw[1]
        self.flags = [s(f) for f in raw[2]]
        self.specs = []
        for ks in raw[8]:
            d = {s(k): v for k, v in pairs(ks).items()}
            bs = {s(k): v for k, v in pairs(d["begin_search"]).items()}
            fk = {s(k): v for k, v in pairs(d["find_keys"]).items()}
            self.specs.append({
                "flags": [s(f) for f in d.get("flags", [])],
                "begin": s(bs["type"]), "bspec": {s(k): v for k, v in pairs(bs["spec"]).items()},
                "find": s(fk["type"]), "fspec": {s(k): v for k, v in pairs(fk["spec"]).items()},
            })
        self.subcommands = [Cmd(x, self) for x in raw[9]]
        self.docs = {}

    def keynum_positions(self):
        """(position of the count, position of the first key) of each key-count spec."""
        out = []
        for sp in self.specs:
            if sp["begin"] == "index" and sp["find"] == "keynum":
                at = sp["bspec"]["index"] + sp["fspec"]["keynumidx"]
                out.append((at, sp["bspec"]["index"] + sp["fspec"]["firstkey"]))
        return out


def load_commands(port):
    with RawConn(port, timeout=30) as c:
        raw = c.call("COMMAND")
        docs_raw = c.call("COMMAND", "DOCS")
    # sorted: Redis lists them in hash order, and the vectors must not depend on it
    cmds = sorted((Cmd(x) for x in raw), key=lambda c: c.name)
    for c in cmds:
        c.subcommands.sort(key=lambda x: x.name)
    docs = {}
    for name, d in zip(docs_raw[0::2], docs_raw[1::2]):
        d = {s(k): v for k, v in pairs(d).items()}
        docs[s(name).lower()] = d
        subs = d.get("subcommands") or []
        for sname, sd in zip(subs[0::2], subs[1::2]):
            docs[s(sname).lower()] = {s(k): v for k, v in pairs(sd).items()}
    flat = []
    for c in cmds:
        flat.append(c)
        flat.extend(c.subcommands)
    for c in flat:
        c.docs = docs.get(c.name, {})
    return cmds, flat


# ---------------------------------------------------------------------------------------------
# vector generation
# ---------------------------------------------------------------------------------------------

def arg_tree(raw_args):
    out = []
    for a in raw_args or []:
        d = {s(k): v for k, v in pairs(a).items()}
        d["flags"] = [s(f) for f in d.get("flags", [])]
        d["type"] = s(d["type"])
        d["name"] = s(d["name"])
        if "token" in d:
            d["token"] = d["token"] if isinstance(d["token"], bytes) else d["token"].encode()
        d["arguments"] = arg_tree(d.get("arguments"))
        out.append(d)
    return out


def tokens_of(args):
    out = set()
    for a in args:
        if a.get("token"):
            out.add(a["token"])
        out |= tokens_of(a["arguments"])
    return out


class Gen:
    """One instance of an argument tree. mode: 'min' (required only), 'full' (every optional),
    'rand'; reps: how many times a 'multiple' argument repeats; choice: which oneof branch."""

    def __init__(self, rng, mode, reps, choice):
        self.rng, self.mode, self.reps, self.choice = rng, mode, reps, choice
        self.n = 0

    def uniq(self, prefix):
        self.n += 1
        return b"%s%d" % (prefix, self.n)

    def want_optional(self):
        if self.mode == "min":
            return False
        if self.mode == "full":
            return True
        return self.rng.random() < 0.5

    def value(self, a):
        t = a["type"]
        if t == "key":
            return [self.uniq(b"key:")]
        if t == "pure-token":
            return []
        if t == "oneof":
            subs = a["arguments"]
            pick = subs[self.choice % len(subs)] if self.mode != "rand" else self.rng.choice(subs)
            return self.one(pick, force=True)
        if t == "block":
            return self.seq(a["arguments"])
        if t == "integer":
            return [self.rng.choice([b"1", b"2", b"0", b"10"])]
        if t == "double":
            return [b"1.5"]
        if t == "pattern":
            return [self.uniq(b"pat*")]
        if t == "unix-time":
            return [b"1700000000"]
        return [self.uniq(b"v")]

    def one(self, a, force=False):
        if "optional" in a["flags"] and not force and not self.want_optional():
            return []
        reps = self.reps if "multiple" in a["flags"] else 1
        out = []
        for r in range(reps):
            if a.get("token") is not None and (r == 0 or "multiple_token" in a["flags"]):
                out.append(a["token"])
            out.extend(self.value(a))
        return out

    def seq(self, args):
        out = []
        count_at = None
        for a in args:
            if a["type"] == "integer" and a["name"] == "numkeys":
                count_at = len(out)
                out.append(b"0")
                continue
            part = self.one(a)
            if count_at is not None and a["type"] == "key":
                out[count_at] = str(len(part)).encode()
                count_at = None
            out.extend(part)
        return out


def base_vectors(cmd, rng):
    args = arg_tree(cmd.docs.get("arguments"))
    prefix = [w.encode() for w in cmd.words]
    seen, out = set(), []

    def add(v):
        t = tuple(v)
        if t not in seen:
            seen.add(t)
            out.append(list(v))

    for mode in ("min", "full"):
        for reps in (1, 2, 3):
            for choice in range(3):
                add(prefix + Gen(rng, mode, reps, choice).seq(args))
    for _ in range(4):
        add(prefix + Gen(rng, "rand", rng.choice([1, 2, 3]), 0).seq(args))
    return out, sorted(tokens_of(args))  # sorted: the same vectors on every run


COUNT_VARIANTS = [b"0", b"-1", b"-0", b"abc", b"01", b"+1", b" 1", b"1 ", b"", b"1\x00",
                  b"4294967297", b"4294967298", b"99999999999999999999", b"9223372036854775807"]
POOL = [b"STORE", b"STOREDIST", b"STREAMS", b"KEYS", b"BY", b"GET", b"LIMIT", b"COUNT",
        b"BLOCK", b"GROUP", b"NOACK", b"AUTH", b"AUTH2", b"COPY", b"REPLACE", b"SET",
        b"INCRBY", b"OVERFLOW", b"ASC", b"ALPHA", b"0", b"1", b"2", b"3", b"-1", b""]


def mutations(cmd, base, tokens, rng):
    out = []
    prefix_len = len(cmd.words)
    for v in base[:6]:
        # key counts
        for at, first in cmd.keynum_positions():
            if at < len(v):
                n_after = len(v) - first
                for c in COUNT_VARIANTS + [str(n_after).encode(), str(n_after + 1).encode(),
                                           str(max(n_after - 1, 0)).encode()]:
                    w = list(v)
                    w[at] = c
                    out.append(w)
        # keywords: case, NUL suffix, NUL prefix
        for i, a in enumerate(v):
            if i >= prefix_len and a in tokens and a:
                for repl in (a.lower(), a.title(), a + b"\x00x", b"\x00" + a, a[:-1]):
                    w = list(v)
                    w[i] = repl
                    out.append(w)
        # arity edges and extras
        out.append(v[:-1])
        out.append(v + [b"extra"])
        for t in tokens[:8]:
            out.append(v + [t, b"dest:" + t.lower()])
            out.append(v[:prefix_len] + [t] + v[prefix_len:])
    # random vectors from the command's tokens and a common pool
    pool = tokens + POOL
    for _ in range(30):
        n = rng.randint(0, 9)
        w = [w.encode() for w in cmd.words]
        for j in range(n):
            w.append(rng.choice(pool) if rng.random() < 0.6 else b"r%d" % j)
        out.append(w)
    return out


def all_vectors(top_cmds, flat):
    rng = random.Random(20240607)
    vectors = []
    for cmd in flat:
        if cmd.subcommands:
            vectors.append([cmd.name.encode()])                      # the container alone
            vectors.append([cmd.name.encode(), b"nosuchsub"])
            vectors.append([cmd.name.upper().encode(),
                            cmd.subcommands[0].words[1].upper().encode()])
            continue
        base, tokens = base_vectors(cmd, rng)
        vectors.extend(base)
        vectors.extend(mutations(cmd, base, tokens, rng))
        # the names in other cases
        v = list(base[0])
        v[0] = v[0].upper()
        vectors.append(v)
    vectors.append([b"nosuchcommand", b"k"])
    vectors.append([b"get\x00", b"k"])
    # dedupe, keep order
    seen, out = set(), []
    for v in vectors:
        t = tuple(v)
        if t not in seen and v:
            seen.add(t)
            out.append(v)
    return out


# ---------------------------------------------------------------------------------------------
# the probe
# ---------------------------------------------------------------------------------------------

def to_json(v):
    parts = []
    for a in v:
        chars = []
        for b in a:
            if 0x20 <= b < 0x7f and b not in (0x22, 0x5c):
                chars.append(chr(b))
            else:
                chars.append("\\u%04x" % b)
        parts.append('"' + "".join(chars) + '"')
    return "[" + ",".join(parts) + "]"


def run_probe(vectors):
    exe = probe_path()
    data = "".join(to_json(v) + "\n" for v in vectors)
    r = subprocess.run([exe], input=data.encode(), capture_output=True, timeout=60)
    assert r.returncode == 0, "cmdtab_probe failed: %s" % r.stderr.decode(errors="replace")
    lines = r.stdout.decode().splitlines()
    assert len(lines) == len(vectors), "probe answered %d lines for %d commands" % (
        len(lines), len(vectors))
    return [json.loads(l) for l in lines]


@pytest.fixture(scope="module")
def cases(server):
    top, flat = load_commands(server)
    vectors = all_vectors(top, flat)
    by_name = {c.name: c for c in flat}
    return {"top": top, "flat": flat, "by_name": by_name, "vectors": vectors,
            "probe": run_probe(vectors)}


def resolve(by_name, v):
    name = v[0].decode("latin-1").lower()
    cmd = by_name.get(name)
    if cmd and cmd.subcommands and len(v) > 1:
        cmd = by_name.get(name + "|" + v[1].decode("latin-1").lower())
    return cmd


def canonical_count(b):
    return re.fullmatch(rb"0|-?[1-9][0-9]*", b) is not None


def deliberate_count(cmd, v):
    """Is this a vector whose key count cmdtab refuses while Redis reads keys from it?"""
    if cmd is None:
        return False
    for at, first in cmd.keynum_positions():
        if at < len(v):
            c = v[at]
            if not canonical_count(c) or int(c) < 0 or int(c) > len(v) - first:
                return True
    return False


def report(request, text):
    report_summary(request, "cmdtab differential", text)


# ---------------------------------------------------------------------------------------------
# the tests
# ---------------------------------------------------------------------------------------------

def test_every_command_is_covered(cases):
    covered = set()
    for v in cases["vectors"]:
        c = resolve(cases["by_name"], v)
        if c is not None:
            covered.add(c.name)
    missing = [c.name for c in cases["flat"] if c.name not in covered]
    assert not missing, "no vector for %s" % missing
    assert len(cases["flat"]) >= 300


def test_keys_equal_command_getkeys(server, cases, request):
    vectors, probe = cases["vectors"], cases["probe"]
    replies = pipeline(server, [[b"COMMAND", b"GETKEYSANDFLAGS"] + v for v in vectors])
    mismatches, deliberate, stats, with_keys = [], [], {}, set()

    def bad(i, why):
        mismatches.append("%s: redis %r, probe %r (%s)" % (vectors[i], replies[i], probe[i], why))

    for i, (v, r, p) in enumerate(zip(vectors, replies, probe)):
        perr = p.get("error")
        if len(v) == 1:
            # COMMAND GETKEYSANDFLAGS needs a command and at least one argument (arity -4): a
            # command alone cannot be asked about. Not a compared case.
            assert isinstance(r, ErrorReply) and "wrong number of arguments" in r.text, (v, r)
            stats_skipped = stats.setdefault("_alone", 0)
            stats["_alone"] = stats_skipped + 1
            continue
        if isinstance(r, ErrorReply):
            t = r.text
            if t == "ERR Invalid command specified":
                kind = "unknown"
                if perr not in ("unknown command", "unknown subcommand"):
                    bad(i, kind)
            elif t == "ERR Invalid number of arguments specified for command":
                kind = "arity"
                if perr != "arity":
                    bad(i, kind)
            elif t == "ERR The command has no key arguments":
                kind = "no key arguments"
                if not (perr == "arity" or (perr is None and p["keys"] == [])):
                    bad(i, kind)
            elif t == "ERR Invalid arguments specified for command":
                kind = "invalid arguments"
                if not (perr == "keys" or (perr is None and p["keys"] == [])):
                    bad(i, kind)
            else:
                kind = "other error"
                bad(i, "unexpected Redis error")
        elif r == []:
            kind = "no keys"
            if not (perr == "keys" or (perr is None and p["keys"] == [])):
                bad(i, kind)
        else:
            kind = "keys"
            with_keys.add(resolve(cases["by_name"], v).name)
            want = [(k[0], sorted(s(f) for f in k[1])) for k in r]
            if perr is None:
                got = [(v[pos], sorted(fl)) for pos, fl in zip(p["keys"], p["flags"])]
                if got != want:
                    bad(i, "different keys")
            elif perr == "keys" and deliberate_count(resolve(cases["by_name"], v), v):
                kind = "deliberate"
                deliberate.append(v)
            else:
                bad(i, "probe error")
        stats[kind] = stats.get(kind, 0) + 1

    alone = stats.pop("_alone", 0)
    total = len(vectors) - alone
    summary = ", ".join("%s %d" % kv for kv in sorted(stats.items()))
    report(request, "cmdtab differential: compared %d cases over %d commands and subcommands "
                    "(%s); %d mismatches" % (total, len(cases["flat"]), summary, len(mismatches)))
    assert not mismatches, "%d of %d cases differ from COMMAND GETKEYSANDFLAGS:\n%s" % (
        len(mismatches), total, "\n".join(mismatches[:40]))
    # The generator reaches keys for every command that has some.
    no_keys = [c.name for c in cases["flat"]
               if any("not_key" not in sp["flags"] for sp in c.specs) and c.name not in with_keys]
    assert not no_keys, "no compared case with keys for %s" % no_keys


def test_channels_equal_acl_dryrun(server, cases, request):
    pubsub = ("publish", "spublish", "subscribe", "ssubscribe", "psubscribe", "unsubscribe",
              "sunsubscribe", "punsubscribe", "pubsub|numsub", "pubsub|shardnumsub",
              "pubsub|channels", "pubsub|shardchannels", "pubsub|numpat")
    names = [b"allowed", b"denied", b"ALLOWED", b"allowe", b"allowed\x00", b"all*", b"*"]
    rng = random.Random(7)
    vectors = []
    for name in pubsub:
        words = [w.encode() for w in name.split("|")]
        for n in range(0, 5):
            for _ in range(6):
                vectors.append(words + [rng.choice(names) for _ in range(n)])
    seen, uniq = set(), []
    for v in vectors:
        if tuple(v) not in seen:
            seen.add(tuple(v))
            uniq.append(v)
    vectors = uniq
    probe = run_probe(vectors)

    with RawConn(server, timeout=10) as c:
        assert c.call("ACL", "SETUSER", "chan", "reset", "on", "nopass", "+@all", "~*",
                      "resetchannels", "&allowed") == "OK"
    replies = pipeline(server, [[b"ACL", b"DRYRUN", b"chan"] + v for v in vectors])

    mismatches, compared = [], 0
    for v, r, p in zip(vectors, replies, probe):
        if p.get("error") == "arity":
            assert isinstance(r, ErrorReply) and "wrong number of arguments" in r.text, (v, r)
            continue
        assert "error" not in p, (v, p)
        expect = "OK"
        for pos, flags in p["channels"]:
            if "publish" not in flags and "subscribe" not in flags:
                continue
            # The user's only pattern is the literal "allowed": a channel matches it when equal
            # (glob matching, by length); a pattern must equal it, and Redis 7.0 compares
            # patterns with strcmp, so a pattern ends at a NUL byte.
            arg = v[pos].split(b"\x00")[0] if "pattern" in flags else v[pos]
            if arg != b"allowed":
                # Redis formats the name with %s: it ends at a NUL byte
                expect = "This user has no permissions to access the '%s' channel" % (
                    v[pos].split(b"\x00")[0].decode("latin-1"))
                break
        got = r.text if isinstance(r, ErrorReply) else s(r)
        compared += 1
        if got != expect:
            mismatches.append("%r: redis %r, from probe %r (%r)" % (v, got, expect, p["channels"]))
    report(request, "cmdtab differential: compared %d channel cases with ACL DRYRUN; "
                    "%d mismatches" % (compared, len(mismatches)))
    assert not mismatches, "\n".join(mismatches[:40])
    assert compared > 100
