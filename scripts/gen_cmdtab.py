#!/usr/bin/python3
"""gen_cmdtab.py: writes src/cmdtab_data.c, respguard's built-in Redis command table.

Its job: ask a live redis-server for COMMAND (every command and subcommand with arity, flags,
ACL categories and key specifications) and emit it as constant C data for include/respguard/
cmdtab.h, sorted by name so that cmdtab_lookup can binary-search it.

What it must not do: invent facts. Everything in the output comes from the server's own COMMAND
reply, except one thing COMMAND cannot tell: which commands have a key-extraction function in the
server's source (Redis's getkeys_proc), used when a command's key specs are incomplete or their
flags variable. That list is GETKEYS below, written from BSD-licensed Redis 7.0 and checked
against the COMMAND reply (the script refuses to write a table it cannot explain).

Usage:
    scripts/gen_cmdtab.py                       # start a throwaway redis-server from $PATH
    scripts/gen_cmdtab.py --server-bin PATH     # ... from that binary
    scripts/gen_cmdtab.py --host H --port P [--user U --password P]   # use a running server
    scripts/gen_cmdtab.py --output FILE         # default: src/cmdtab_data.c in this repository

Only the Python standard library is used; RESP is spoken over a plain socket.
"""

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

# COMMAND's flag names -> enum cmdtab_flag. COMMAND hides may_replicate, sentinel,
# only_sentinel and protected, so the table never has them.
CMD_FLAGS = {
    "write": "CMDTAB_WRITE",
    "readonly": "CMDTAB_READONLY",
    "denyoom": "CMDTAB_DENYOOM",
    "admin": "CMDTAB_ADMIN",
    "pubsub": "CMDTAB_PUBSUB",
    "noscript": "CMDTAB_NOSCRIPT",
    "blocking": "CMDTAB_BLOCKING",
    "loading": "CMDTAB_LOADING",
    "stale": "CMDTAB_STALE",
    "skip_monitor": "CMDTAB_SKIP_MONITOR",
    "skip_slowlog": "CMDTAB_SKIP_SLOWLOG",
    "fast": "CMDTAB_FAST",
    "no_auth": "CMDTAB_NO_AUTH",
    "may_replicate": "CMDTAB_MAY_REPLICATE",
    "no_mandatory_keys": "CMDTAB_NO_MANDATORY_KEYS",
    "no_async_loading": "CMDTAB_NO_ASYNC_LOADING",
    "no_multi": "CMDTAB_NO_MULTI",
    "movablekeys": "CMDTAB_MOVABLE_KEYS",
    "allow_busy": "CMDTAB_ALLOW_BUSY",
    "module": "CMDTAB_MODULE",
    "asking": "CMDTAB_ASKING",
}

# ACL categories, in the order of enum cmdtab_category.
CATEGORIES = ["keyspace", "read", "write", "set", "sortedset", "list", "hash", "string", "bitmap",
              "hyperloglog", "geo", "stream", "pubsub", "admin", "fast", "slow", "blocking",
              "dangerous", "connection", "transaction", "scripting"]

KEY_FLAGS = {
    "RO": "CMDTAB_KEY_RO",
    "RW": "CMDTAB_KEY_RW",
    "OW": "CMDTAB_KEY_OW",
    "RM": "CMDTAB_KEY_RM",
    "access": "CMDTAB_KEY_ACCESS",
    "update": "CMDTAB_KEY_UPDATE",
    "insert": "CMDTAB_KEY_INSERT",
    "delete": "CMDTAB_KEY_DELETE",
    "not_key": "CMDTAB_KEY_NOT_KEY",
    "incomplete": "CMDTAB_KEY_INCOMPLETE",
    "variable_flags": "CMDTAB_KEY_VARIABLE_FLAGS",
}

# Commands that have a key-extraction function in Redis 7.0's source (get_keys_function in its
# command JSON files), as enum cmdtab_getkeys. Redis runs it when the key specs fail or have
# variable flags; src/cmdtab.c has one extractor per value.
GETKEYS = {
    "zunion": "CMDTAB_GETKEYS_NUMKEYS_AT1",
    "zinter": "CMDTAB_GETKEYS_NUMKEYS_AT1",
    "zdiff": "CMDTAB_GETKEYS_NUMKEYS_AT1",
    "zintercard": "CMDTAB_GETKEYS_NUMKEYS_AT1",
    "sintercard": "CMDTAB_GETKEYS_NUMKEYS_AT1",
    "lmpop": "CMDTAB_GETKEYS_NUMKEYS_AT1",
    "zmpop": "CMDTAB_GETKEYS_NUMKEYS_AT1",
    "eval": "CMDTAB_GETKEYS_NUMKEYS_AT2",
    "evalsha": "CMDTAB_GETKEYS_NUMKEYS_AT2",
    "eval_ro": "CMDTAB_GETKEYS_NUMKEYS_AT2",
    "evalsha_ro": "CMDTAB_GETKEYS_NUMKEYS_AT2",
    "fcall": "CMDTAB_GETKEYS_NUMKEYS_AT2",
    "fcall_ro": "CMDTAB_GETKEYS_NUMKEYS_AT2",
    "blmpop": "CMDTAB_GETKEYS_NUMKEYS_AT2",
    "bzmpop": "CMDTAB_GETKEYS_NUMKEYS_AT2",
    "zunionstore": "CMDTAB_GETKEYS_STORE_NUMKEYS_AT2",
    "zinterstore": "CMDTAB_GETKEYS_STORE_NUMKEYS_AT2",
    "zdiffstore": "CMDTAB_GETKEYS_STORE_NUMKEYS_AT2",
    "sort": "CMDTAB_GETKEYS_SORT",
    "sort_ro": "CMDTAB_GETKEYS_SORT_RO",
    "migrate": "CMDTAB_GETKEYS_MIGRATE",
    "georadius": "CMDTAB_GETKEYS_GEORADIUS",
    "georadiusbymember": "CMDTAB_GETKEYS_GEORADIUS",
    "xread": "CMDTAB_GETKEYS_XREAD",
    "xreadgroup": "CMDTAB_GETKEYS_XREAD",
    "set": "CMDTAB_GETKEYS_SET",
    "bitfield": "CMDTAB_GETKEYS_BITFIELD",
}

# What respguard's session does with a command besides judging it (enum cmdtab_role). This is
# respguard's own classification, not a fact COMMAND reports: the session dispatches on it
# rather than on names. Every name must exist in the server's table (checked below).
ROLES = {
    "auth": "CMDTAB_ROLE_AUTH",
    "hello": "CMDTAB_ROLE_HELLO",
    "quit": "CMDTAB_ROLE_QUIT",
    "reset": "CMDTAB_ROLE_RESET",
    "multi": "CMDTAB_ROLE_MULTI",
    "exec": "CMDTAB_ROLE_EXEC",
    "discard": "CMDTAB_ROLE_DISCARD",
    "watch": "CMDTAB_ROLE_WATCH",
    "unwatch": "CMDTAB_ROLE_UNWATCH",
    "subscribe": "CMDTAB_ROLE_SUBSCRIBE",
    "psubscribe": "CMDTAB_ROLE_SUBSCRIBE",
    "ssubscribe": "CMDTAB_ROLE_SUBSCRIBE",
    "unsubscribe": "CMDTAB_ROLE_UNSUBSCRIBE",
    "punsubscribe": "CMDTAB_ROLE_UNSUBSCRIBE",
    "sunsubscribe": "CMDTAB_ROLE_UNSUBSCRIBE",
    "select": "CMDTAB_ROLE_SELECT",
    "monitor": "CMDTAB_ROLE_MONITOR",
    "wait": "CMDTAB_ROLE_BLOCKING",
    "xread": "CMDTAB_ROLE_BLOCK_OPTION",
    "xreadgroup": "CMDTAB_ROLE_BLOCK_OPTION",
    "client|id": "CMDTAB_ROLE_CLIENT_ID",
    "client|info": "CMDTAB_ROLE_CLIENT_INFO",
    "client|getname": "CMDTAB_ROLE_CLIENT_GETNAME",
    "client|setname": "CMDTAB_ROLE_CLIENT_SETNAME",
    "client|reply": "CMDTAB_ROLE_CLIENT_REPLY",
    "client|tracking": "CMDTAB_ROLE_CONN_STATE",
    "client|caching": "CMDTAB_ROLE_CONN_STATE",
    "script|debug": "CMDTAB_ROLE_CONN_STATE",
    "readonly": "CMDTAB_ROLE_CONN_STATE",
    "readwrite": "CMDTAB_ROLE_CONN_STATE",
    "asking": "CMDTAB_ROLE_CONN_STATE",
    "client|no-evict": "CMDTAB_ROLE_STICKY_STATE",
}


# ---------------------------------------------------------------------------------------------
# RESP over a socket
# ---------------------------------------------------------------------------------------------

class RespError(Exception):
    pass


class Conn:
    def __init__(self, host, port, timeout=10.0):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.rfile = self.sock.makefile("rb")

    def close(self):
        try:
            self.rfile.close()
            self.sock.close()
        except OSError:
            pass

    def call(self, *args):
        out = [b"*%d\r\n" % len(args)]
        for a in args:
            if isinstance(a, str):
                a = a.encode()
            out.append(b"$%d\r\n%s\r\n" % (len(a), a))
        self.sock.sendall(b"".join(out))
        reply = self._read()
        if isinstance(reply, RespError):
            raise reply
        return reply

    def _read(self):
        line = self.rfile.readline()
        if not line.endswith(b"\r\n"):
            raise ConnectionError("connection closed by the server")
        kind, rest = line[:1], line[1:-2]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            return RespError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            data = self.rfile.read(n + 2)
            return data[:-2].decode()
        if kind in (b"*", b"~"):
            n = int(rest)
            if n < 0:
                return None
            return [self._read() for _ in range(n)]
        if kind == b"%":
            n = int(rest)
            return [self._read() for _ in range(2 * n)]
        raise ConnectionError("unexpected reply type %r" % kind)


def free_port():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def start_server(binary):
    tmp = tempfile.mkdtemp(prefix="gen-cmdtab-")
    port = free_port()
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", tmp,
                             "--logfile", os.path.join(tmp, "redis.log")],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while True:
        if proc.poll() is not None:
            shutil.rmtree(tmp, ignore_errors=True)
            sys.exit("gen_cmdtab: %s exited with %s" % (binary, proc.returncode))
        try:
            return proc, tmp, Conn("127.0.0.1", port)
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                proc.wait()
                shutil.rmtree(tmp, ignore_errors=True)
                sys.exit("gen_cmdtab: %s did not listen on port %d" % (binary, port))
            time.sleep(0.05)


# ---------------------------------------------------------------------------------------------
# COMMAND reply -> model
# ---------------------------------------------------------------------------------------------

def pairs(flat):
    """A RESP2 map (flat array) as a dict."""
    return dict(zip(flat[0::2], flat[1::2])) if flat else {}


def parse_keyspec(raw, where):
    d = pairs(raw)
    for f in d.get("flags", []):
        if f not in KEY_FLAGS:
            sys.exit("gen_cmdtab: %s: unknown key-spec flag %r: extend cmdtab.h first" % (where, f))
    bs, fk = pairs(d["begin_search"]), pairs(d["find_keys"])
    spec = {"flags": list(d.get("flags", [])), "begin": bs["type"], "find": fk["type"]}
    bsp, fkp = pairs(bs.get("spec")), pairs(fk.get("spec"))
    if spec["begin"] == "index":
        spec["index"] = bsp["index"]
    elif spec["begin"] == "keyword":
        spec["keyword"] = bsp["keyword"]
        spec["startfrom"] = bsp["startfrom"]
    elif spec["begin"] != "unknown":
        sys.exit("gen_cmdtab: %s: unknown begin_search type %r" % (where, spec["begin"]))
    if spec["find"] == "range":
        for f in ("lastkey", "keystep", "limit"):
            spec[f] = fkp[f]
    elif spec["find"] == "keynum":
        spec["keynumidx"], spec["firstkey"], spec["step"] = (fkp["keynumidx"], fkp["firstkey"],
                                                            fkp["keystep"])
    elif spec["find"] != "unknown":
        sys.exit("gen_cmdtab: %s: unknown find_keys type %r" % (where, spec["find"]))
    return spec


def parse_command(raw):
    name = raw[0].lower()
    flags = list(raw[2])
    for f in flags:
        if f not in CMD_FLAGS:
            sys.exit("gen_cmdtab: %s: unknown command flag %r: extend cmdtab.h first" % (name, f))
    cats = []
    for c in raw[6]:
        c = c.lstrip("@")
        if c not in CATEGORIES:
            sys.exit("gen_cmdtab: %s: unknown ACL category %r: extend cmdtab.h first" % (name, c))
        cats.append(c)
    specs = [parse_keyspec(k, name) for k in (raw[8] if len(raw) > 8 else [])]
    subs = sorted((parse_command(s) for s in (raw[9] if len(raw) > 9 else [])),
                  key=lambda c: c["name"].encode())
    return {"name": name, "arity": raw[1], "flags": flags, "categories": cats, "specs": specs,
            "subcommands": subs}


def check_getkeys(commands):
    """Every command whose specs cannot answer alone must have an extractor, and every extractor
    must belong to a command the server knows."""
    known = {c["name"] for c in commands}
    for name in GETKEYS:
        if name not in known:
            sys.exit("gen_cmdtab: GETKEYS names %r, which the server does not have" % name)
    for c in commands:
        for cmd in [c] + c["subcommands"]:
            specs = cmd["specs"]
            needs = any(s["begin"] == "unknown" or s["find"] == "unknown" or
                        "incomplete" in s["flags"] or "variable_flags" in s["flags"]
                        for s in specs)
            index_range_only = all(s["begin"] == "index" and s["find"] == "range" for s in specs)
            if "movablekeys" in cmd["flags"] and index_range_only:
                needs = True  # movable with plain specs: only a getkeys_proc makes it so
            if needs and cmd["name"] not in GETKEYS:
                sys.exit("gen_cmdtab: %s needs a key extractor: add it to GETKEYS and cmdtab.c"
                         % cmd["name"])


def check_roles(commands):
    """Every command ROLES names must be one the server has (a role for a command that does not
    exist would silently never apply)."""
    known = {c["name"] for c in commands} | {s["name"] for c in commands for s in c["subcommands"]}
    for name in ROLES:
        if name not in known:
            sys.exit("gen_cmdtab: ROLES names %r, which the server does not have" % name)


# ---------------------------------------------------------------------------------------------
# C output
# ---------------------------------------------------------------------------------------------

def c_ident(name):
    return name.replace("|", "_").replace("-", "_")


def c_string(s):
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def bits(names, table):
    out = [table[n] for n in names]
    return " | ".join(out) if out else "0"


def wrap_or(head, expr, indent, width=96):
    """'head expr' as lines of at most width columns, breaking after ' | '."""
    lines, cur = [], head
    for i, part in enumerate(expr.split(" | ")):
        piece = part if i == 0 else " | " + part
        if len(cur) + len(piece) > width and i > 0:
            lines.append(cur + " |")
            cur = indent + part
        else:
            cur += piece
    lines.append(cur)
    return lines


def emit_keyspecs(cmd, out):
    if not cmd["specs"]:
        return None
    ident = "ks_" + c_ident(cmd["name"])
    out.append("static const struct cmdtab_keyspec %s[] = {" % ident)
    for s in cmd["specs"]:
        out += wrap_or("    {.flags =", " " + bits(s["flags"], KEY_FLAGS), "     ")
        out[-1] += ","
        if s["begin"] == "index":
            begin = [".begin = CMDTAB_BEGIN_INDEX", ".index = %d" % s["index"]]
        elif s["begin"] == "keyword":
            begin = [".begin = CMDTAB_BEGIN_KEYWORD", ".keyword = %s" % c_string(s["keyword"]),
                     ".startfrom = %d" % s["startfrom"]]
        else:
            begin = [".begin = CMDTAB_BEGIN_UNKNOWN"]
        if s["find"] == "range":
            find = [".find = CMDTAB_FIND_RANGE", ".lastkey = %d" % s["lastkey"],
                    ".keystep = %d" % s["keystep"], ".limit = %d" % s["limit"]]
        elif s["find"] == "keynum":
            find = [".find = CMDTAB_FIND_KEYNUM", ".keynumidx = %d" % s["keynumidx"],
                    ".firstkey = %d" % s["firstkey"], ".step = %d" % s["step"]]
        else:
            find = [".find = CMDTAB_FIND_UNKNOWN"]
        out.append("     " + ", ".join(begin) + ",")
        out.append("     " + ", ".join(find) + "},")
    out.append("};")
    return ident


def emit_entry(cmd, ks_ident, sub_ident, indent="    "):
    cats = ["CMDTAB_CAT_" + c.upper() for c in cmd["categories"]]
    lines = ["%s{.name = %s, .arity = %d," % (indent, c_string(cmd["name"]), cmd["arity"])]
    lines += wrap_or(indent + " .flags =", " " + bits(cmd["flags"], CMD_FLAGS), indent + "     ")
    lines[-1] += ","
    lines += wrap_or(indent + " .categories =", " " + (" | ".join(cats) if cats else "0"),
                     indent + "     ")
    lines[-1] += ","
    if ks_ident:
        lines.append("%s .keyspecs = %s, .keyspec_count = %d," % (indent, ks_ident,
                                                                  len(cmd["specs"])))
    if sub_ident:
        lines.append("%s .subcommands = %s, .subcommand_count = %d," % (
            indent, sub_ident, len(cmd["subcommands"])))
    if cmd["name"] in GETKEYS:
        lines.append("%s .getkeys = %s," % (indent, GETKEYS[cmd["name"]]))
    if cmd["name"] in ROLES:
        lines.append("%s .role = %s," % (indent, ROLES[cmd["name"]]))
    lines[-1] = lines[-1].rstrip(",") + "},"
    return lines


def render(commands, version, source):
    out = []
    n_sub = sum(len(c["subcommands"]) for c in commands)
    out += [
        "/*",
        " * GENERATED by scripts/gen_cmdtab.py: do not edit; rerun the script to refresh it.",
        " *",
        " * The Redis command table from a live redis-server %s (%s):" % (version, source),
        " * %d commands and %d subcommands, from its COMMAND reply, plus the list of commands"
        % (len(commands), n_sub),
        " * that have a key-extraction function in the server's source (.getkeys) and respguard's",
        " * own roles (.role: what the session does with a command besides judging it).",
        " *",
        " * Its job: constant data for include/respguard/cmdtab.h, top-level commands sorted by",
        " * name, each subcommand table sorted by name. It must not hold code or mutable data.",
        " */",
        '#include "respguard/cmdtab.h"',
        "",
    ]
    for c in commands:
        sub_ident = None
        if c["subcommands"]:
            sub_entries = []
            for s in c["subcommands"]:
                ks = emit_keyspecs(s, out)
                sub_entries += emit_entry(s, ks, None)
            sub_ident = "sub_" + c_ident(c["name"])
            out.append("static const struct cmdtab_cmd %s[] = {" % sub_ident)
            out += sub_entries
            out.append("};")
        c["_ks"] = emit_keyspecs(c, out)
        c["_sub"] = sub_ident
    out.append("")
    out.append("const struct cmdtab_cmd cmdtab_commands[] = {")
    for c in commands:
        out += emit_entry(c, c["_ks"], c["_sub"])
    out.append("};")
    out.append("")
    out.append("const size_t cmdtab_command_count =")
    out.append("    sizeof cmdtab_commands / sizeof cmdtab_commands[0];")
    return "\n".join(out) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--server-bin", default=None,
                    help="redis-server binary to start (default: redis-server from PATH)")
    ap.add_argument("--host", default=None, help="use a running server instead")
    ap.add_argument("--port", type=int, default=6379)
    ap.add_argument("--user", default=None)
    ap.add_argument("--password", default=None)
    ap.add_argument("--output", default=os.path.join(ROOT, "src", "cmdtab_data.c"))
    args = ap.parse_args()

    proc = tmp = None
    try:
        if args.host:
            conn = Conn(args.host, args.port)
            if args.password is not None:
                if args.user:
                    conn.call("AUTH", args.user, args.password)
                else:
                    conn.call("AUTH", args.password)
            source = "server at %s:%d" % (args.host, args.port)
        else:
            binary = args.server_bin or shutil.which("redis-server")
            if not binary:
                sys.exit("gen_cmdtab: no redis-server on PATH; use --server-bin or --host")
            proc, tmp, conn = start_server(binary)
            source = "throwaway %s" % os.path.basename(binary)
        info = conn.call("INFO", "server")
        version = next((l.split(":", 1)[1].strip() for l in info.splitlines()
                        if l.startswith("redis_version:")), "unknown")
        raw = conn.call("COMMAND")
        conn.close()
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)

    if not raw:
        sys.exit("gen_cmdtab: the server answered COMMAND with an empty array")
    commands = sorted((parse_command(c) for c in raw), key=lambda c: c["name"].encode())
    check_getkeys(commands)
    check_roles(commands)
    text = render(commands, version, source)
    tmp_out = args.output + ".tmp"
    with open(tmp_out, "w") as f:
        f.write(text)
    os.replace(tmp_out, args.output)
    n_sub = sum(len(c["subcommands"]) for c in commands)
    print("gen_cmdtab: wrote %s: %d commands, %d subcommands (redis %s)"
          % (os.path.relpath(args.output), len(commands), n_sub, version))


if __name__ == "__main__":
    main()
