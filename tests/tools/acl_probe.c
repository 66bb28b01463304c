/*
 * acl_probe: the ACL verdict as a filter, for tests/integration/test_acl_differential.py.
 *
 * Reads lines of JSON from stdin, each {"acl":"<rules>","cmd":["GET","k"]} with optionally
 * "never":["flushall",...] (default: config_default_never, the guard's built-in list) and
 * "name":"<user>", and prints one line per input line:
 *   OK                               allowed as sent
 *   REWRITE ["MATCH","<prefix>*"]    allowed with these arguments appended
 *   <error line>                     exactly what the client would get, without '-' and CRLF
 *   COMPILE-ERROR <message>          the rules do not compile
 *   BAD-INPUT <why>                  the line is not of the shape above
 * With --explain each line gets a TAB, the reason name (acl_reason_name; "compile" and
 * "bad-input" for those lines) and a TAB and the argument position of the refusal.
 *
 * The JSON reader knows only this shape: strings (escapes \" \\ \/ \b \f \n \r \t and \uXXXX
 * for bytes 0-255) and arrays of strings. Users are compiled once per distinct rules and guard
 * list. A test tool: it must not be linked into respguard.
 */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "respguard/acl.h"
#include "respguard/config.h"

struct str {
    char *p;
    size_t n;
};

struct strv {
    struct str *v;
    size_t n;
};

struct input {
    struct str acl, name;
    struct strv cmd, never;
    bool has_acl, has_cmd, has_never;
};

static void skip_ws(const char **s)
{
    while (**s == ' ' || **s == '\t' || **s == '\r' || **s == '\n')
        (*s)++;
}

static int hex4(const char *s)
{
    int v = 0;
    for (int i = 0; i < 4; i++) {
        char c = s[i];
        v <<= 4;
        if (c >= '0' && c <= '9')
            v |= c - '0';
        else if (c >= 'a' && c <= 'f')
            v |= c - 'a' + 10;
        else if (c >= 'A' && c <= 'F')
            v |= c - 'A' + 10;
        else
            return -1;
    }
    return v;
}

static bool parse_string(const char **s, struct str *out)
{
    skip_ws(s);
    if (**s != '"')
        return false;
    (*s)++;
    size_t cap = 16, n = 0;
    char *p = malloc(cap);
    if (!p)
        return false;
    for (;;) {
        char c = **s;
        if (c == '\0') {
            free(p);
            return false;
        }
        (*s)++;
        if (c == '"')
            break;
        if (c == '\\') {
            char e = **s;
            (*s)++;
            switch (e) {
            case '"': c = '"'; break;
            case '\\': c = '\\'; break;
            case '/': c = '/'; break;
            case 'b': c = '\b'; break;
            case 'f': c = '\f'; break;
            case 'n': c = '\n'; break;
            case 'r': c = '\r'; break;
            case 't': c = '\t'; break;
            case 'u': {
                if (strnlen(*s, 4) < 4) {
                    free(p);
                    return false;
                }
                int v = hex4(*s);
                if (v < 0 || v > 255) {
                    free(p);
                    return false;
                }
                *s += 4;
                c = (char)v;
                break;
            }
            default:
                free(p);
                return false;
            }
        }
        if (n + 1 >= cap) {
            cap *= 2;
            char *q = realloc(p, cap);
            if (!q) {
                free(p);
                return false;
            }
            p = q;
        }
        p[n++] = c;
    }
    p[n] = '\0';
    out->p = p;
    out->n = n;
    return true;
}

static bool parse_array(const char **s, struct strv *out)
{
    skip_ws(s);
    if (**s != '[')
        return false;
    (*s)++;
    skip_ws(s);
    if (**s == ']') {
        (*s)++;
        return true;
    }
    for (;;) {
        struct str e;
        if (!parse_string(s, &e))
            return false;
        struct str *v = realloc(out->v, (out->n + 1) * sizeof *v);
        if (!v) {
            free(e.p);
            return false;
        }
        out->v = v;
        out->v[out->n++] = e;
        skip_ws(s);
        if (**s == ',') {
            (*s)++;
            continue;
        }
        if (**s == ']') {
            (*s)++;
            return true;
        }
        return false;
    }
}

static void free_strv(struct strv *v)
{
    for (size_t i = 0; i < v->n; i++)
        free(v->v[i].p);
    free(v->v);
    v->v = NULL;
    v->n = 0;
}

static void free_input(struct input *in)
{
    free(in->acl.p);
    free(in->name.p);
    free_strv(&in->cmd);
    free_strv(&in->never);
    memset(in, 0, sizeof *in);
}

static bool parse_line(const char *s, struct input *in)
{
    memset(in, 0, sizeof *in);
    skip_ws(&s);
    if (*s != '{')
        return false;
    s++;
    skip_ws(&s);
    if (*s == '}')
        return false;
    for (;;) {
        struct str key;
        if (!parse_string(&s, &key))
            return false;
        skip_ws(&s);
        if (*s != ':') {
            free(key.p);
            return false;
        }
        s++;
        bool ok;
        if (strcmp(key.p, "acl") == 0 && !in->has_acl) {
            ok = in->has_acl = parse_string(&s, &in->acl);
        } else if (strcmp(key.p, "name") == 0 && !in->name.p) {
            ok = parse_string(&s, &in->name);
        } else if (strcmp(key.p, "cmd") == 0 && !in->has_cmd) {
            ok = in->has_cmd = parse_array(&s, &in->cmd);
        } else if (strcmp(key.p, "never") == 0 && !in->has_never) {
            ok = in->has_never = parse_array(&s, &in->never);
        } else {
            ok = false;
        }
        free(key.p);
        if (!ok)
            return false;
        skip_ws(&s);
        if (*s == ',') {
            s++;
            continue;
        }
        if (*s == '}') {
            s++;
            skip_ws(&s);
            return *s == '\0' && in->has_acl && in->has_cmd;
        }
        return false;
    }
}

/* Compiled users, by rules and guard list. */
struct cached {
    char *key;
    size_t keylen;
    int rc;
    char err[256];
    struct acl_user user;
};

static struct cached *cache;
static size_t cache_n;

static struct cached *get_user(const struct input *in)
{
    /* Key: rules, NUL, guard names each followed by NUL (or "\1" for the default list). */
    size_t len = in->acl.n + 2;
    for (size_t i = 0; i < in->never.n; i++)
        len += in->never.v[i].n + 1;
    char *key = malloc(len);
    if (!key)
        return NULL;
    size_t k = 0;
    memcpy(key + k, in->acl.p, in->acl.n);
    k += in->acl.n;
    key[k++] = '\0';
    key[k++] = in->has_never ? '\2' : '\1';
    for (size_t i = 0; i < in->never.n; i++) {
        memcpy(key + k, in->never.v[i].p, in->never.v[i].n);
        k += in->never.v[i].n;
        key[k++] = '\0';
    }
    for (size_t i = 0; i < cache_n; i++) {
        if (cache[i].keylen == k && memcmp(cache[i].key, key, k) == 0) {
            free(key);
            return &cache[i];
        }
    }
    struct cached *c = realloc(cache, (cache_n + 1) * sizeof *c);
    if (!c) {
        free(key);
        return NULL;
    }
    cache = c;
    c = &cache[cache_n++];
    memset(c, 0, sizeof *c);
    c->key = key;
    c->keylen = k;

    const char *const *never = config_default_never;
    size_t never_n = 0;
    const char **mine = NULL;
    if (in->has_never) {
        mine = calloc(in->never.n + 1, sizeof *mine);
        for (size_t i = 0; mine && i < in->never.n; i++)
            mine[i] = in->never.v[i].p;
        never = mine;
        never_n = in->never.n;
    } else {
        while (config_default_never[never_n])
            never_n++;
    }
    size_t off = 0;
    if (in->acl.n != strlen(in->acl.p)) {
        snprintf(c->err, sizeof c->err, "rules contain a NUL byte");
        c->rc = -1;
    } else {
        c->rc = acl_user_compile(in->name.p ? in->name.p : "probe", in->acl.p, never, never_n, &c->user, c->err,
                                 sizeof c->err, &off);
    }
    free(mine);
    return c;
}

static void print_json_string(const char *p, size_t n)
{
    putchar('"');
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)p[i];
        if (c == '"' || c == '\\')
            printf("\\%c", c);
        else if (c < 0x20 || c >= 0x7f)
            printf("\\u%04x", c);
        else
            putchar(c);
    }
    putchar('"');
}

int main(int argc, char **argv)
{
    bool explain = argc > 1 && strcmp(argv[1], "--explain") == 0;
    char *line = NULL;
    size_t cap = 0;
    ssize_t got;
    struct cmdtab_key *keys = NULL;
    struct cmdtab_channel *chans = NULL;
    size_t scratch = 0;

    while ((got = getline(&line, &cap, stdin)) > 0) {
        struct input in;
        if (!parse_line(line, &in)) {
            printf("BAD-INPUT not {\"acl\":\"...\",\"cmd\":[...]}%s\n", explain ? "\tbad-input\t0" : "");
            free_input(&in);
            continue;
        }
        struct cached *u = get_user(&in);
        if (!u) {
            printf("BAD-INPUT out of memory%s\n", explain ? "\tbad-input\t0" : "");
            free_input(&in);
            continue;
        }
        if (u->rc != 0) {
            printf("COMPILE-ERROR %s%s\n", u->err, explain ? "\tcompile\t0" : "");
            free_input(&in);
            continue;
        }
        size_t n = in.cmd.n;
        struct resp_arg *av = calloc(n ? n : 1, sizeof *av);
        if (n + 1 > scratch) {
            scratch = n + 1;
            free(keys);
            free(chans);
            keys = calloc(scratch, sizeof *keys);
            chans = calloc(scratch, sizeof *chans);
        }
        if (!av || !keys || !chans) {
            printf("BAD-INPUT out of memory%s\n", explain ? "\tbad-input\t0" : "");
            free(av);
            free_input(&in);
            continue;
        }
        for (size_t i = 0; i < n; i++)
            av[i] = (struct resp_arg){in.cmd.v[i].p, in.cmd.v[i].n};
        struct acl_verdict v;
        acl_check_ex(&u->user, n, av, &v, keys, chans, scratch);
        if (v.result == ACL_OK) {
            fputs("OK", stdout);
        } else if (v.result == ACL_OK_SCOPED) {
            fputs(v.scope == ACL_SCOPE_INFO ? "SCOPED info" : "SCOPED whoami", stdout);
        } else if (v.result == ACL_OK_APPEND_MATCH) {
            fputs("REWRITE [\"MATCH\",", stdout);
            print_json_string(v.match, v.match_len);
            putchar(']');
        } else {
            char buf[ACL_ERROR_MAX];
            size_t len = acl_verdict_error(&v, n, av, buf, sizeof buf);
            fwrite(buf, 1, len < sizeof buf ? len : sizeof buf - 1, stdout);
        }
        if (explain)
            printf("\t%s\t%zu", acl_reason_name(v.reason), v.pos);
        putchar('\n');
        free(av);
        free_input(&in);
    }
    free(line);
    free(keys);
    free(chans);
    for (size_t i = 0; i < cache_n; i++) {
        acl_user_deinit(&cache[i].user);
        free(cache[i].key);
    }
    free(cache);
    return 0;
}
