/*
 * restcodec: Upstash REST commands in, Upstash JSON replies out (the contract is in
 * restcodec.h). The one module that includes <jansson.h>.
 *
 * Decoding. jansson 2.14 has no nesting limit of its own that a caller can set (its parser stops
 * at a compiled-in 2048 levels), so a pre-scan counts brackets outside strings and refuses the
 * body before jansson parses it when it nests deeper than the limit. jansson keeps a number's
 * value, not its text, and the text is what the client meant (1e+21, 1.50, 12345678901234567890
 * must reach Redis as written): since the walk over the parsed array visits numbers in document
 * order, a cursor over the body finds each number's token as the walk meets it. jansson has
 * validated the body by then, so that cursor only has to skip strings.
 *
 * Encoding. A reply frame is read by a small iterative reader of our own (an explicit stack of
 * open arrays, no recursion) that writes JSON as it goes; on any malformation the output is put
 * back as it was.
 */
#include "respguard/restcodec.h"

#include <jansson.h>
#include <stdalign.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------------------------------- */
/* Arena                                                                                    */
/* ---------------------------------------------------------------------------------------- */

struct restcodec_chunk {
    struct restcodec_chunk *next;
    size_t cap;
    size_t used;
    alignas(max_align_t) char data[];
};

#define ARENA_MIN_CHUNK 4096u
/* What a reset keeps for the next request; the rest goes back to the allocator. */
#define ARENA_RETAIN (256u * 1024)

void restcodec_decoder_init(struct restcodec_decoder *d)
{
    memset(d, 0, sizeof *d);
}

void restcodec_decoder_deinit(struct restcodec_decoder *d)
{
    struct restcodec_chunk *c = d->chunks;
    while (c != NULL) {
        struct restcodec_chunk *next = c->next;
        free(c);
        c = next;
    }
    memset(d, 0, sizeof *d);
}

void restcodec_decoder_reset(struct restcodec_decoder *d)
{
    size_t kept = 0;
    struct restcodec_chunk **link = &d->chunks;
    while (*link != NULL) {
        struct restcodec_chunk *c = *link;
        if (kept + c->cap > ARENA_RETAIN) {
            *link = c->next;
            free(c);
            continue;
        }
        kept += c->cap;
        c->used = 0;
        link = &c->next;
    }
    d->cur = d->chunks;
    d->cmds = NULL;
    d->ncmds = 0;
    d->decoded_bytes = 0;
}

static void *arena_alloc(struct restcodec_decoder *d, size_t size)
{
    const size_t align = alignof(max_align_t);
    if (size == 0)
        size = 1;
    if (size > SIZE_MAX / 2)
        return NULL;
    /* The current chunk, then chunks kept from earlier requests (unused since the reset). */
    for (struct restcodec_chunk *c = d->cur; c != NULL; c = c->next) {
        size_t at = (c->used + align - 1) & ~(align - 1);
        if (at <= c->cap && c->cap - at >= size) {
            c->used = at + size;
            d->cur = c;
            return c->data + at;
        }
    }
    size_t cap = ARENA_MIN_CHUNK;
    if (d->cur != NULL && d->cur->cap <= SIZE_MAX / 4)
        cap = d->cur->cap * 2;
    if (cap < size)
        cap = size;
    struct restcodec_chunk *c = malloc(sizeof *c + cap);
    if (c == NULL)
        return NULL;
    c->cap = cap;
    c->used = size;
    if (d->cur == NULL) {
        c->next = d->chunks;
        d->chunks = c;
    } else {
        c->next = d->cur->next;
        d->cur->next = c;
    }
    d->cur = c;
    return c->data;
}

/* ---------------------------------------------------------------------------------------- */
/* Decoding                                                                                 */
/* ---------------------------------------------------------------------------------------- */

static const char ERR_NOMEM[] = "ERR out of memory";

struct limits {
    size_t max_depth, max_args, max_commands, max_bytes;
    bool bools_as_text;
};

static struct limits limits_of(const struct restcodec_limits *lim)
{
    struct restcodec_limits def = RESTCODEC_DEFAULT_LIMITS;
    if (lim == NULL)
        lim = &def;
    struct limits l = {
        .max_depth = lim->max_depth ? lim->max_depth : def.max_depth,
        .max_args = lim->max_args ? lim->max_args : def.max_args,
        .max_commands = lim->max_commands ? lim->max_commands : def.max_commands,
        .max_bytes = lim->max_bytes ? lim->max_bytes : def.max_bytes,
        .bools_as_text = lim->bools_as_text,
    };
    return l;
}

static enum restcodec_status fail(const char **err, const char *msg)
{
    *err = msg;
    return msg == ERR_NOMEM ? RESTCODEC_NOMEM : RESTCODEC_BAD_REQUEST;
}

/* 0, or -1 when the body nests arrays or objects deeper than max_depth. Any body: a malformed
 * one may be miscounted here, and jansson refuses it next. */
static int prescan_depth(const char *s, size_t n, size_t max_depth)
{
    size_t depth = 0;
    bool in_str = false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (in_str) {
            if (c == '\\')
                i++;
            else if (c == '"')
                in_str = false;
        } else if (c == '"') {
            in_str = true;
        } else if (c == '[' || c == '{') {
            if (++depth > max_depth)
                return -1;
        } else if ((c == ']' || c == '}') && depth > 0) {
            depth--;
        }
    }
    return 0;
}

/* The next number token at or after *pos in a body jansson has accepted. */
static bool next_number(const char *s, size_t n, size_t *pos, const char **tok, size_t *tok_len)
{
    bool in_str = false;
    for (size_t i = *pos; i < n; i++) {
        char c = s[i];
        if (in_str) {
            if (c == '\\')
                i++;
            else if (c == '"')
                in_str = false;
        } else if (c == '"') {
            in_str = true;
        } else if (c == '-' || (c >= '0' && c <= '9')) {
            size_t j = i + 1;
            while (j < n && ((s[j] >= '0' && s[j] <= '9') || s[j] == '.' || s[j] == 'e' ||
                             s[j] == 'E' || s[j] == '+' || s[j] == '-'))
                j++;
            *tok = s + i;
            *tok_len = j - i;
            *pos = j;
            return true;
        }
    }
    return false;
}

static bool count_bytes(struct restcodec_decoder *d, const struct limits *l, size_t n)
{
    if (n > l->max_bytes || d->decoded_bytes > l->max_bytes - n)
        return false;
    d->decoded_bytes += n;
    return true;
}

static const char ERR_TOO_LARGE[] = "ERR request too large: arguments exceed the byte limit";
static const char ERR_TOO_MANY_ARGS[] = "ERR too many arguments in a command";

/* A copy of p[0..n) in the arena as argument *a; NULL error or an error text. */
static const char *copy_arg(struct restcodec_decoder *d, const struct limits *l, const char *p,
                            size_t n, struct resp_arg *a)
{
    if (!count_bytes(d, l, n))
        return ERR_TOO_LARGE;
    char *dst = arena_alloc(d, n);
    if (dst == NULL)
        return ERR_NOMEM;
    if (n > 0)
        memcpy(dst, p, n);
    a->ptr = dst;
    a->len = n;
    return NULL;
}

struct walk {
    struct restcodec_decoder *d;
    const struct limits *l;
    const char *body;
    size_t len;
    size_t numpos; /* the number cursor */
};

static const char *decode_cmd(struct walk *w, json_t *arr, struct restcodec_cmd *out)
{
    if (!json_is_array(arr))
        return "ERR a command must be a JSON array of strings and numbers";
    size_t n = json_array_size(arr);
    if (n == 0)
        return "ERR empty command";
    if (n > w->l->max_args)
        return ERR_TOO_MANY_ARGS;
    struct resp_arg *argv = arena_alloc(w->d, n * sizeof *argv);
    if (argv == NULL)
        return ERR_NOMEM;
    for (size_t i = 0; i < n; i++) {
        json_t *v = json_array_get(arr, i);
        const char *e = NULL;
        switch (json_typeof(v)) {
        case JSON_STRING:
            e = copy_arg(w->d, w->l, json_string_value(v), json_string_length(v), &argv[i]);
            break;
        case JSON_INTEGER:
        case JSON_REAL: {
            const char *tok;
            size_t tok_len;
            if (!next_number(w->body, w->len, &w->numpos, &tok, &tok_len))
                return "ERR malformed JSON number"; /* cannot happen after jansson */
            e = copy_arg(w->d, w->l, tok, tok_len, &argv[i]);
            break;
        }
        case JSON_TRUE:
        case JSON_FALSE:
            if (!w->l->bools_as_text)
                return "ERR booleans are not allowed as arguments, send \"true\" or \"false\" as strings";
            if (!count_bytes(w->d, w->l, json_is_true(v) ? 4 : 5))
                return ERR_TOO_LARGE;
            argv[i].ptr = json_is_true(v) ? "true" : "false";
            argv[i].len = json_is_true(v) ? 4 : 5;
            break;
        case JSON_NULL:
            return "ERR null is not allowed as an argument";
        case JSON_OBJECT:
            return "ERR objects are not allowed as arguments, send them as JSON strings";
        case JSON_ARRAY:
            return "ERR nested arrays are not allowed in a command";
        }
        if (e != NULL)
            return e;
    }
    out->argc = n;
    out->argv = argv;
    return NULL;
}

/* Parse body into a jansson tree after the depth pre-scan; NULL with *err set on failure. */
static json_t *parse(struct restcodec_decoder *d, const char *body, size_t len,
                     const struct limits *l, const char **err)
{
    if (prescan_depth(body, len, l->max_depth) != 0) {
        *err = "ERR JSON nested too deeply";
        return NULL;
    }
    json_error_t jerr;
    /* Integers as reals: jansson refuses an integer beyond long long otherwise; its text is all
     * we use. NUL inside strings ("\u0000") is binary data like any other byte. */
    json_t *root = json_loadb(body, len, JSON_ALLOW_NUL | JSON_DECODE_INT_AS_REAL, &jerr);
    if (root == NULL) {
        /* jansson's text may quote the input: say only where it went wrong. */
        snprintf(d->errbuf, sizeof d->errbuf, "ERR malformed JSON at byte %d", jerr.position);
        *err = d->errbuf;
        return NULL;
    }
    if (!json_is_array(root)) {
        json_decref(root);
        *err = "ERR the body must be a JSON array";
        return NULL;
    }
    return root;
}

/* One command (an array of arguments) or, many, a non-empty array of them. */
static enum restcodec_status decode_body(struct restcodec_decoder *d, const char *body, size_t len,
                                         const struct restcodec_limits *lim, bool many, const char **err)
{
    struct limits l = limits_of(lim);
    restcodec_decoder_reset(d);
    json_t *root = parse(d, body, len, &l, err);
    if (root == NULL)
        return RESTCODEC_BAD_REQUEST;
    struct walk w = {.d = d, .l = &l, .body = body, .len = len};
    size_t n = many ? json_array_size(root) : 1;
    const char *e = NULL;
    struct restcodec_cmd *cmds = NULL;
    if (n == 0)
        e = "ERR empty pipeline: send at least one command";
    else if (n > l.max_commands)
        e = "ERR too many commands in one request";
    else if ((cmds = arena_alloc(d, n * sizeof *cmds)) == NULL)
        e = ERR_NOMEM;
    for (size_t i = 0; e == NULL && i < n; i++) {
        json_t *c = many ? json_array_get(root, i) : root;
        e = json_is_array(c) ? decode_cmd(&w, c, &cmds[i])
                             : "ERR each command must be a JSON array of strings and numbers";
    }
    json_decref(root);
    if (e != NULL) {
        restcodec_decoder_reset(d);
        return fail(err, e);
    }
    d->cmds = cmds;
    d->ncmds = n;
    return RESTCODEC_OK;
}

enum restcodec_status restcodec_decode_command(struct restcodec_decoder *d, const char *body,
                                               size_t len, const struct restcodec_limits *lim,
                                               const char **err)
{
    return decode_body(d, body, len, lim, false, err);
}

enum restcodec_status restcodec_decode_commands(struct restcodec_decoder *d, const char *body,
                                                size_t len, const struct restcodec_limits *lim,
                                                const char **err)
{
    return decode_body(d, body, len, lim, true, err);
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Percent-decode p[0..n) into dst[0..cap) ('+' as a space when plus_space): the length, -1
 * for a malformed escape, -2 when it does not fit. */
static long pct_decode(const char *p, size_t n, bool plus_space, char *dst, size_t cap)
{
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        char ch = p[i];
        if (ch == '%') {
            int hi = i + 2 < n ? hexval(p[i + 1]) : -1;
            int lo = i + 2 < n ? hexval(p[i + 2]) : -1;
            if (hi < 0 || lo < 0)
                return -1;
            ch = (char)(hi << 4 | lo);
            i += 2;
        } else if (plus_space && ch == '+') {
            ch = ' ';
        }
        if (k == cap)
            return -2;
        dst[k++] = ch;
    }
    return (long)k;
}

/* Percent-decode p[0..n) into the arena as *a ('+' as a space when plus_space). */
static const char *pct_arg(struct restcodec_decoder *d, const struct limits *l, const char *p,
                           size_t n, bool plus_space, struct resp_arg *a)
{
    char *dst = arena_alloc(d, n);
    if (dst == NULL)
        return ERR_NOMEM;
    long k = pct_decode(p, n, plus_space, dst, n);
    if (k < 0)
        return "ERR malformed percent-encoding in the URL";
    if (!count_bytes(d, l, (size_t)k))
        return ERR_TOO_LARGE;
    a->ptr = dst;
    a->len = (size_t)k;
    return NULL;
}

enum restcodec_status restcodec_decode_path(struct restcodec_decoder *d, const char *path,
                                            size_t path_len, const char *query, size_t query_len,
                                            const char *body, size_t body_len,
                                            const struct restcodec_limits *lim, const char **err)
{
    struct limits l = limits_of(lim);
    restcodec_decoder_reset(d);
    if (path_len == 0 || path[0] != '/')
        return fail(err, "ERR the path must start with '/'");
    const char *p = path + 1;
    size_t n = path_len - 1;
    if (n > 0 && p[n - 1] == '/')
        n--;
    if (n == 0)
        return fail(err, "ERR no command in the path");
    if (query == NULL)
        query_len = 0;

    /* At most: every path segment, the body, two per query parameter; no more than max_args. */
    size_t most = 1 + (body != NULL);
    for (size_t i = 0; i < n; i++)
        most += p[i] == '/';
    for (size_t i = 0; i < query_len; i++)
        most += query[i] == '&' || query[i] == '=';
    most += query_len > 0;
    if (most > l.max_args)
        most = l.max_args;

    struct resp_arg *argv = arena_alloc(d, most * sizeof *argv);
    struct restcodec_cmd *cmd = arena_alloc(d, sizeof *cmd);
    const char *e = argv == NULL || cmd == NULL ? ERR_NOMEM : NULL;
    size_t argc = 0;
    for (size_t start = 0; e == NULL && start <= n;) {
        size_t end = start;
        while (end < n && p[end] != '/')
            end++;
        if (argc == most)
            e = ERR_TOO_MANY_ARGS;
        else
            e = pct_arg(d, &l, p + start, end - start, false, &argv[argc++]);
        start = end + 1;
    }
    if (e == NULL && argv[0].len == 0)
        e = "ERR empty command name in the path";
    if (e == NULL && body != NULL) {
        if (argc == most)
            e = ERR_TOO_MANY_ARGS;
        else if (!count_bytes(d, &l, body_len))
            e = ERR_TOO_LARGE;
        else
            argv[argc++] = (struct resp_arg){.ptr = body_len ? body : "", .len = body_len};
    }
    for (size_t start = 0; e == NULL && start < query_len;) {
        size_t end = start;
        while (end < query_len && query[end] != '&')
            end++;
        size_t eq = start;
        while (eq < end && query[eq] != '=')
            eq++;
        if (end > start) {
            struct resp_arg name, value;
            e = pct_arg(d, &l, query + start, eq - start, true, &name);
            if (e == NULL && !(name.len == 6 && memcmp(name.ptr, "_token", 6) == 0)) {
                if (argc + 1 + (eq < end) > most)
                    e = ERR_TOO_MANY_ARGS;
                else {
                    argv[argc++] = name;
                    if (eq < end) {
                        e = pct_arg(d, &l, query + eq + 1, end - eq - 1, true, &value);
                        argv[argc++] = value;
                    }
                }
            }
        }
        start = end + 1;
    }
    if (e != NULL) {
        restcodec_decoder_reset(d);
        return fail(err, e);
    }
    cmd->argc = argc;
    cmd->argv = argv;
    d->cmds = cmd;
    d->ncmds = 1;
    return RESTCODEC_OK;
}

long restcodec_query_param(const char *query, size_t len, const char *name, char *dst, size_t cap)
{
    size_t nlen = strlen(name);
    for (size_t start = 0; query && start < len;) {
        size_t end = start;
        while (end < len && query[end] != '&')
            end++;
        size_t eq = start;
        while (eq < end && query[eq] != '=')
            eq++;
        if (eq - start == nlen && memcmp(query + start, name, nlen) == 0) {
            size_t vstart = eq < end ? eq + 1 : end;
            long k = pct_decode(query + vstart, end - vstart, true, dst, cap);
            return k < 0 ? -2 : k;
        }
        start = end + 1;
    }
    return -1;
}

/* ---------------------------------------------------------------------------------------- */
/* Encoding                                                                                 */
/* ---------------------------------------------------------------------------------------- */

void restcodec_buf_free(struct restcodec_buf *b)
{
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

/* Room for n more bytes; false when memory ran out. */
static bool reserve(struct restcodec_buf *b, size_t n)
{
    if (b->cap - b->len >= n)
        return true;
    if (n > SIZE_MAX / 2 - b->len)
        return false;
    size_t cap = b->cap ? b->cap : 256;
    while (cap - b->len < n)
        cap *= 2;
    char *data = realloc(b->data, cap);
    if (data == NULL)
        return false;
    b->data = data;
    b->cap = cap;
    return true;
}

static bool put(struct restcodec_buf *b, const char *s, size_t n)
{
    if (!reserve(b, n))
        return false;
    memcpy(b->data + b->len, s, n);
    b->len += n;
    return true;
}

#define PUTS(b, lit) put((b), (lit), sizeof(lit) - 1)

/* Length of the valid UTF-8 sequence at s[0..n) (RFC 3629: no overlongs, no surrogates, at
 * most U+10FFFF), or 0 when it is not one. s[0] >= 0x80. */
static size_t utf8_seq(const unsigned char *s, size_t n)
{
    unsigned char c = s[0];
    size_t len;
    unsigned char lo = 0x80, hi = 0xBF; /* the second byte's range */
    if (c >= 0xC2 && c <= 0xDF)
        len = 2;
    else if (c >= 0xE0 && c <= 0xEF) {
        len = 3;
        if (c == 0xE0)
            lo = 0xA0;
        else if (c == 0xED)
            hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        len = 4;
        if (c == 0xF0)
            lo = 0x90;
        else if (c == 0xF4)
            hi = 0x8F;
    } else
        return 0;
    if (n < len || s[1] < lo || s[1] > hi)
        return 0;
    for (size_t i = 2; i < len; i++)
        if (s[i] < 0x80 || s[i] > 0xBF)
            return 0;
    return len;
}

/* s as a JSON string; invalid UTF-8 bytes become U+FFFD. */
static bool put_json_string(struct restcodec_buf *b, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    if (n > (SIZE_MAX - 2) / 6 || !reserve(b, 6 * n + 2))
        return false;
    char *o = b->data + b->len;
    *o++ = '"';
    const unsigned char *u = (const unsigned char *)s;
    for (size_t i = 0; i < n;) {
        unsigned char c = u[i];
        if (c >= 0x80) {
            size_t k = utf8_seq(u + i, n - i);
            if (k == 0) {
                memcpy(o, "\\ufffd", 6);
                o += 6;
                i++;
            } else {
                memcpy(o, u + i, k);
                o += k;
                i += k;
            }
            continue;
        }
        i++;
        if (c == '"' || c == '\\') {
            *o++ = '\\';
            *o++ = (char)c;
        } else if (c == '\n') {
            *o++ = '\\';
            *o++ = 'n';
        } else if (c == '\r') {
            *o++ = '\\';
            *o++ = 'r';
        } else if (c == '\t') {
            *o++ = '\\';
            *o++ = 't';
        } else if (c < 0x20) {
            memcpy(o, "\\u00", 4);
            o[4] = hex[c >> 4];
            o[5] = hex[c & 15];
            o += 6;
        } else {
            *o++ = (char)c;
        }
    }
    *o++ = '"';
    b->len = (size_t)(o - b->data);
    return true;
}

static const char B64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static bool put_base64_string(struct restcodec_buf *b, const char *s, size_t n)
{
    size_t enc = (n + 2) / 3 * 4;
    if (n > SIZE_MAX / 2 || !reserve(b, enc + 2))
        return false;
    char *o = b->data + b->len;
    const unsigned char *u = (const unsigned char *)s;
    *o++ = '"';
    size_t i = 0;
    for (; i + 3 <= n; i += 3) {
        uint32_t v = (uint32_t)u[i] << 16 | (uint32_t)u[i + 1] << 8 | u[i + 2];
        *o++ = B64[v >> 18];
        *o++ = B64[(v >> 12) & 63];
        *o++ = B64[(v >> 6) & 63];
        *o++ = B64[v & 63];
    }
    if (i < n) {
        uint32_t v = (uint32_t)u[i] << 16 | (i + 1 < n ? (uint32_t)u[i + 1] << 8 : 0);
        *o++ = B64[v >> 18];
        *o++ = B64[(v >> 12) & 63];
        *o++ = i + 1 < n ? B64[(v >> 6) & 63] : '=';
        *o++ = '=';
    }
    *o++ = '"';
    b->len = (size_t)(o - b->data);
    return true;
}

long restcodec_base64_decode(const char *src, size_t len, char *dst)
{
    if (len % 4 != 0)
        return -1;
    size_t k = 0;
    for (size_t i = 0; i < len; i += 4) {
        int v[4];
        int pad = 0;
        for (int j = 0; j < 4; j++) {
            char c = src[i + j];
            const char *at = c ? strchr(B64, c) : NULL;
            if (c == '=' && i + 4 == len && j >= 2) {
                v[j] = 0;
                pad++;
            } else if (at != NULL && pad == 0) {
                v[j] = (int)(at - B64);
            } else {
                return -1;
            }
        }
        uint32_t w = (uint32_t)v[0] << 18 | (uint32_t)v[1] << 12 | (uint32_t)v[2] << 6 | (uint32_t)v[3];
        dst[k++] = (char)(w >> 16);
        if (pad < 2)
            dst[k++] = (char)(w >> 8);
        if (pad < 1)
            dst[k++] = (char)w;
    }
    return (long)k;
}

static bool put_string(struct restcodec_buf *b, const char *s, size_t n, unsigned flags)
{
    return flags & RESTCODEC_BASE64 ? put_base64_string(b, s, n) : put_json_string(b, s, n);
}

/* The CRLF-terminated line starting at p[pos]: its text is p[pos..*eol), the next value starts
 * at *eol + 2. A lone CR or LF inside is malformed, as in Redis's own simple strings. */
static bool line_end(const char *p, size_t len, size_t pos, size_t *eol)
{
    const char *cr = memchr(p + pos, '\r', len - pos);
    if (cr == NULL || (size_t)(cr - p) + 1 >= len || cr[1] != '\n')
        return false;
    if (memchr(p + pos, '\n', (size_t)(cr - p) - pos) != NULL)
        return false;
    *eol = (size_t)(cr - p);
    return true;
}

static bool header_num(const char *p, size_t len, size_t pos, long long *v, size_t *next)
{
    size_t eol;
    if (!line_end(p, len, pos, &eol) || !resp_string2ll(p + pos, eol - pos, v))
        return false;
    *next = eol + 2;
    return true;
}

struct level {
    long long total, remaining;
};

/* Write the JSON value of the RESP2 frame at p[pos..len); returns where the frame ends, or -1
 * (malformed, too deep, out of memory). top: the value is a result itself (not inside an
 * array): only there does base64 leave the simple string "OK" as it is. */
static long long put_value(struct restcodec_buf *b, const char *p, size_t len, size_t pos,
                           unsigned flags, bool top)
{
    struct level inline_st[32];
    struct level *st = inline_st;
    size_t cap = sizeof inline_st / sizeof inline_st[0], depth = 0;
    long long ret = -1;
    for (;;) {
        if (pos >= len)
            goto out;
        if (depth > 0 && st[depth - 1].remaining != st[depth - 1].total && !PUTS(b, ","))
            goto out;
        char type = p[pos++];
        size_t eol, next;
        long long v;
        switch (type) {
        case '+':
        case '-':
            if (!line_end(p, len, pos, &eol))
                goto out;
            if (type == '+' && top && depth == 0 && (flags & RESTCODEC_BASE64) && eol - pos == 2 &&
                memcmp(p + pos, "OK", 2) == 0) {
                if (!PUTS(b, "\"OK\""))
                    goto out;
            } else if (!put_string(b, p + pos, eol - pos, flags)) {
                goto out;
            }
            pos = eol + 2;
            break;
        case ':':
            if (!line_end(p, len, pos, &eol) || !resp_string2ll(p + pos, eol - pos, &v) ||
                !put(b, p + pos, eol - pos))
                goto out;
            pos = eol + 2;
            break;
        case '$':
            if (!header_num(p, len, pos, &v, &next) || v < -1)
                goto out;
            if (v == -1) {
                if (!PUTS(b, "null"))
                    goto out;
                pos = next;
                break;
            }
            if ((unsigned long long)v > len - next || len - next - (size_t)v < 2 ||
                p[next + (size_t)v] != '\r' || p[next + (size_t)v + 1] != '\n')
                goto out;
            if (!put_string(b, p + next, (size_t)v, flags))
                goto out;
            pos = next + (size_t)v + 2;
            break;
        case '*':
            if (!header_num(p, len, pos, &v, &next) || v < -1)
                goto out;
            pos = next;
            if (v <= 0) {
                if (!(v == -1 ? PUTS(b, "null") : PUTS(b, "[]")))
                    goto out;
                break;
            }
            /* Each element takes at least 3 bytes ("+\r\n"). */
            if ((unsigned long long)v > (len - pos) / 3 || depth == RESTCODEC_MAX_REPLY_DEPTH)
                goto out;
            if (depth == cap) {
                size_t ncap = cap * 2;
                struct level *more = malloc(ncap * sizeof *more);
                if (more == NULL)
                    goto out;
                memcpy(more, st, depth * sizeof *st);
                if (st != inline_st)
                    free(st);
                st = more;
                cap = ncap;
            }
            if (!PUTS(b, "["))
                goto out;
            st[depth++] = (struct level){.total = v, .remaining = v};
            continue;
        default:
            goto out;
        }
        /* A value ended: close the arrays it completes. */
        while (depth > 0) {
            if (--st[depth - 1].remaining > 0)
                break;
            if (!PUTS(b, "]"))
                goto out;
            depth--;
        }
        if (depth == 0) {
            ret = (long long)pos;
            goto out;
        }
    }
out:
    if (st != inline_st)
        free(st);
    return ret;
}

/* {"result": ...} or {"error": "..."} for the frame at p[pos..len); the end of the frame or -1
 * (out restored by the caller). *is_error: it was an error reply. */
static long long put_entry(struct restcodec_buf *b, const char *p, size_t len, size_t pos,
                           unsigned flags, bool *is_error)
{
    *is_error = false;
    if (pos < len && p[pos] == '-') {
        size_t eol;
        if (!line_end(p, len, pos + 1, &eol) || !PUTS(b, "{\"error\":") ||
            !put_json_string(b, p + pos + 1, eol - pos - 1) || !PUTS(b, "}"))
            return -1;
        *is_error = true;
        return (long long)eol + 2;
    }
    if (!PUTS(b, "{\"result\":"))
        return -1;
    long long end = put_value(b, p, len, pos, flags, true);
    if (end < 0 || !PUTS(b, "}"))
        return -1;
    return end;
}

int restcodec_buf_append_raw(struct restcodec_buf *b, const char *s, size_t n)
{
    return put(b, s, n) ? 0 : -1;
}

int restcodec_encode_entry(struct restcodec_buf *out, const char *reply, size_t len,
                           unsigned flags)
{
    size_t mark = out->len;
    bool is_error;
    if (put_entry(out, reply, len, 0, flags, &is_error) != (long long)len) {
        out->len = mark;
        return -1;
    }
    return is_error ? 1 : 0;
}

int restcodec_encode_single(struct restcodec_buf *out, const char *reply, size_t len,
                            unsigned flags, int *status)
{
    int r = restcodec_encode_entry(out, reply, len, flags);
    if (r < 0)
        return -1;
    *status = r == 1 ? 400 : 200;
    return 0;
}

int restcodec_encode_pipeline(struct restcodec_buf *out, const struct resp_arg *replies,
                              size_t n, unsigned flags)
{
    size_t mark = out->len;
    if (!PUTS(out, "["))
        return -1;
    for (size_t i = 0; i < n; i++) {
        if ((i > 0 && !PUTS(out, ",")) ||
            restcodec_encode_entry(out, replies[i].ptr, replies[i].len, flags) < 0) {
            out->len = mark;
            return -1;
        }
    }
    if (!PUTS(out, "]")) {
        out->len = mark;
        return -1;
    }
    return 0;
}

int restcodec_encode_error(struct restcodec_buf *out, const char *msg, size_t len)
{
    size_t mark = out->len;
    if (!PUTS(out, "{\"error\":") || !put_json_string(out, msg, len) || !PUTS(out, "}")) {
        out->len = mark;
        return -1;
    }
    return 0;
}

int restcodec_encode_exec(struct restcodec_buf *out, const char *exec_reply, size_t len,
                          unsigned flags, int *status)
{
    size_t mark = out->len;
    long long count;
    size_t pos;
    if (len > 0 && exec_reply[0] == '-') {
        if (restcodec_encode_entry(out, exec_reply, len, flags) != 1)
            return -1;
        *status = 400;
        return 0;
    }
    if (len == 0 || exec_reply[0] != '*' || !header_num(exec_reply, len, 1, &count, &pos) ||
        count < -1)
        return -1;
    if (count == -1) {
        if (pos != len)
            return -1;
        static const char msg[] = "EXECABORT Transaction discarded";
        if (restcodec_encode_error(out, msg, sizeof msg - 1) != 0)
            return -1;
        *status = 400;
        return 0;
    }
    bool ok = PUTS(out, "[");
    for (long long i = 0; ok && i < count; i++) {
        bool is_error;
        long long end;
        ok = (i == 0 || PUTS(out, ",")) &&
             (end = put_entry(out, exec_reply, len, pos, flags, &is_error)) >= 0;
        if (ok)
            pos = (size_t)end;
    }
    if (!ok || !PUTS(out, "]") || pos != len) {
        out->len = mark;
        return -1;
    }
    *status = 200;
    return 0;
}
