/*
 * cmdtab_probe: key and channel extraction from the command line, for the differential test
 * against Redis (tests/integration/test_cmdtab_differential.py).
 *
 * Reads one command per line on stdin, as a JSON array of strings (escapes: \" \\ \/ \b \f \n
 * \r \t and \uXXXX for the bytes 0-255 only, since arguments are bytes), and prints one line
 * per command:
 *   {"keys":[1,2],"flags":[["RO","access"],[...]],"not_keys":[3],"channels":[[1,["publish"]]]}
 * or {"error":"..."} for an unknown command or subcommand, a wrong number of arguments
 * ("arity"), a failed key extraction ("keys") or unreadable input ("input").
 * "keys" are what Redis's COMMAND GETKEYS would list; "not_keys" are the NOT_KEY entries that
 * cmdtab also reports (shard channels, SORT BY/GET patterns).
 *
 * A test tool: it may allocate, but it must not interpret the table itself; it only calls the
 * cmdtab API, the way the ACL engine does.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "respguard/cmdtab.h"

/* A byte buffer for one parsed command: the argument bytes, then the views into them. */
struct args {
    char *bytes;
    size_t len, cap;
    size_t *offs, *lens;
    size_t argc, argc_cap;
    struct resp_arg *argv;
};

static void *xrealloc(void *p, size_t n)
{
    p = realloc(p, n ? n : 1);
    if (!p) {
        fputs("cmdtab_probe: out of memory\n", stderr);
        exit(2);
    }
    return p;
}

static void push_byte(struct args *a, unsigned char c)
{
    if (a->len == a->cap) {
        a->cap = a->cap ? 2 * a->cap : 256;
        a->bytes = xrealloc(a->bytes, a->cap);
    }
    a->bytes[a->len++] = (char)c;
}

static int hexval(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

static const char *skip_ws(const char *p, const char *end)
{
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n'))
        p++;
    return p;
}

/* Parses a JSON array of strings in [p, end). 0 on success, -1 on anything else. */
static int parse_line(const char *p, const char *end, struct args *a)
{
    a->len = 0;
    a->argc = 0;
    p = skip_ws(p, end);
    if (p == end || *p++ != '[')
        return -1;
    p = skip_ws(p, end);
    if (p < end && *p == ']')
        return skip_ws(p + 1, end) == end ? 0 : -1;
    for (;;) {
        p = skip_ws(p, end);
        if (p == end || *p++ != '"')
            return -1;
        if (a->argc == a->argc_cap) {
            a->argc_cap = a->argc_cap ? 2 * a->argc_cap : 16;
            a->offs = xrealloc(a->offs, a->argc_cap * sizeof *a->offs);
            a->lens = xrealloc(a->lens, a->argc_cap * sizeof *a->lens);
        }
        size_t start = a->len;
        for (;;) {
            if (p == end)
                return -1;
            unsigned char c = (unsigned char)*p++;
            if (c == '"')
                break;
            if (c < 0x20)
                return -1;
            if (c != '\\') {
                push_byte(a, c);
                continue;
            }
            if (p == end)
                return -1;
            c = (unsigned char)*p++;
            switch (c) {
            case '"': case '\\': case '/': push_byte(a, c); break;
            case 'b': push_byte(a, '\b'); break;
            case 'f': push_byte(a, '\f'); break;
            case 'n': push_byte(a, '\n'); break;
            case 'r': push_byte(a, '\r'); break;
            case 't': push_byte(a, '\t'); break;
            case 'u': {
                if (end - p < 4)
                    return -1;
                int v = 0;
                for (int i = 0; i < 4; i++) {
                    int h = hexval((unsigned char)p[i]);
                    if (h < 0)
                        return -1;
                    v = v * 16 + h;
                }
                if (v > 255)
                    return -1; /* arguments are bytes: \u0000-\u00ff only */
                push_byte(a, (unsigned char)v);
                p += 4;
                break;
            }
            default:
                return -1;
            }
        }
        a->offs[a->argc] = start;
        a->lens[a->argc] = a->len - start;
        a->argc++;
        p = skip_ws(p, end);
        if (p == end)
            return -1;
        if (*p == ',') {
            p++;
            continue;
        }
        if (*p++ != ']')
            return -1;
        return skip_ws(p, end) == end ? 0 : -1;
    }
}

/* The names of the bits set in flags, as a JSON array. */
static void print_bit_names(uint16_t flags, const char *const *names, unsigned count)
{
    int first = 1;
    putchar('[');
    for (unsigned i = 0; i < count; i++) {
        if (flags & (1u << i)) {
            printf("%s\"%s\"", first ? "" : ",", names[i]);
            first = 0;
        }
    }
    putchar(']');
}

static void print_flags(uint16_t flags)
{
    static const char *const names[] = {"RO", "RW", "OW", "RM", "access", "update", "insert",
                                        "delete", "not_key", "incomplete", "variable_flags"};
    print_bit_names(flags, names, sizeof names / sizeof names[0]);
}

static void print_channel_flags(uint16_t flags)
{
    static const char *const names[] = {"pattern", "publish", "subscribe", "unsubscribe",
                                        "inspect"};
    print_bit_names(flags, names, sizeof names / sizeof names[0]);
}

static void probe(struct args *a)
{
    if (a->argc == 0) {
        puts("{\"error\":\"input\"}");
        return;
    }
    a->argv = xrealloc(a->argv, a->argc * sizeof *a->argv);
    for (size_t i = 0; i < a->argc; i++) {
        a->argv[i].ptr = a->bytes + a->offs[i];
        a->argv[i].len = a->lens[i];
    }
    const struct cmdtab_cmd *cmd = cmdtab_lookup(a->argv[0].ptr, a->argv[0].len);
    if (!cmd) {
        puts("{\"error\":\"unknown command\"}");
        return;
    }
    /* As Redis's lookupCommand: a container alone is itself (and fails its arity check). */
    if (cmd->subcommands && a->argc > 1) {
        cmd = cmdtab_lookup_sub(cmd, a->argv[1].ptr, a->argv[1].len);
        if (!cmd) {
            puts("{\"error\":\"unknown subcommand\"}");
            return;
        }
    }
    if (!cmdtab_arity_ok(cmd, a->argc)) {
        puts("{\"error\":\"arity\"}");
        return;
    }

    /* Small room first, so that the "more keys than room" path is exercised too. */
    struct cmdtab_key small[2], *keys = small;
    int n = cmdtab_get_keys(cmd, a->argc, a->argv, keys, 2);
    if (n > 2) {
        keys = xrealloc(NULL, (size_t)n * sizeof *keys);
        int again = cmdtab_get_keys(cmd, a->argc, a->argv, keys, (size_t)n);
        if (again != n) {
            fprintf(stderr, "cmdtab_probe: %d keys, then %d\n", n, again);
            exit(2);
        }
    }
    if (n < 0) {
        puts("{\"error\":\"keys\"}");
        return;
    }

    printf("{\"keys\":[");
    int first = 1;
    for (int i = 0; i < n; i++) {
        if (!(keys[i].flags & CMDTAB_KEY_NOT_KEY)) {
            printf("%s%u", first ? "" : ",", keys[i].pos);
            first = 0;
        }
    }
    printf("],\"flags\":[");
    first = 1;
    for (int i = 0; i < n; i++) {
        if (!(keys[i].flags & CMDTAB_KEY_NOT_KEY)) {
            if (!first)
                putchar(',');
            print_flags(keys[i].flags);
            first = 0;
        }
    }
    printf("],\"not_keys\":[");
    first = 1;
    for (int i = 0; i < n; i++) {
        if (keys[i].flags & CMDTAB_KEY_NOT_KEY) {
            printf("%s%u", first ? "" : ",", keys[i].pos);
            first = 0;
        }
    }
    printf("],\"channels\":[");
    struct cmdtab_channel chsmall[2], *ch = chsmall;
    int nc = cmdtab_get_channels(cmd, a->argc, a->argv, ch, 2);
    if (nc > 2) {
        ch = xrealloc(NULL, (size_t)nc * sizeof *ch);
        cmdtab_get_channels(cmd, a->argc, a->argv, ch, (size_t)nc);
    }
    for (int i = 0; i < nc; i++) {
        printf("%s[%u,", i ? "," : "", ch[i].pos);
        print_channel_flags(ch[i].flags);
        putchar(']');
    }
    puts("]}");
    if (ch != chsmall)
        free(ch);
    if (keys != small)
        free(keys);
}

int main(void)
{
    struct args a = {0};
    char *line = NULL;
    size_t cap = 0;
    ssize_t got;
    while ((got = getline(&line, &cap, stdin)) >= 0) {
        if (parse_line(line, line + got, &a) < 0)
            puts("{\"error\":\"input\"}");
        else
            probe(&a);
    }
    free(line);
    free(a.bytes);
    free(a.offs);
    free(a.lens);
    free(a.argv);
    return ferror(stdout) ? 1 : 0;
}
