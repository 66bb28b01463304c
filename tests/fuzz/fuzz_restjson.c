/*
 * fuzz_restjson: the REST codec (src/restcodec.c) on untrusted bytes.
 *
 * Input: byte 0 chooses what runs and under which limits, the rest is the input.
 *   bits 0-1: 0 a "POST /" JSON body, 1 a /pipeline or /multi-exec JSON body, 2 the path form
 *             (path, then a NUL, the query, then a NUL and the POST body when there is one),
 *             3 a reply frame for the encoders.
 *   bit 2:    decoding: booleans accepted as text; encoding: Upstash-Encoding base64.
 *   bit 3:    small limits (depth 3, 4 arguments, 3 commands, 24 bytes).
 *
 * Properties (a broken one traps):
 *  - the path form's input is also read as a query string for ?_token= (restcodec_query_param):
 *    the value fits the buffer given;
 *  - a decode either fails with a short error text or gives commands within the limits;
 *  - a JSON decode round-trips: the arguments, written back as a JSON body of strings (they are
 *    UTF-8 text: JSON strings, numbers' text, true/false), decode to the same arguments;
 *  - the same input decodes the same way twice (the arena is reused in between);
 *  - an encoder either refuses the frame and leaves its output as it was, or writes one JSON
 *    value that jansson parses, of the shape the mode promises; with base64, every result
 *    string that is not "OK" decodes as base64.
 */
#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "respguard/restcodec.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static struct restcodec_decoder dec, dec2;
static bool inited;

static void check(bool ok)
{
    if (!ok)
        __builtin_trap();
}

static enum restcodec_status decode(struct restcodec_decoder *d, int mode, const char *in, size_t n,
                                    const struct restcodec_limits *lim, const char **err)
{
    if (mode == 0)
        return restcodec_decode_command(d, in, n, lim, err);
    if (mode == 1)
        return restcodec_decode_commands(d, in, n, lim, err);
    const char *nul = memchr(in, '\0', n);
    size_t path_len = nul ? (size_t)(nul - in) : n;
    const char *query = NULL, *body = NULL;
    size_t query_len = 0, body_len = 0;
    if (nul != NULL) {
        query = nul + 1;
        size_t rest = n - path_len - 1;
        const char *nul2 = memchr(query, '\0', rest);
        query_len = nul2 ? (size_t)(nul2 - query) : rest;
        if (nul2 != NULL) {
            body = nul2 + 1;
            body_len = rest - query_len - 1;
        }
    }
    return restcodec_decode_path(d, in, path_len, query, query_len, body, body_len, lim, err);
}

static bool same_commands(const struct restcodec_decoder *a, const struct restcodec_decoder *b)
{
    if (a->ncmds != b->ncmds)
        return false;
    for (size_t i = 0; i < a->ncmds; i++) {
        if (a->cmds[i].argc != b->cmds[i].argc)
            return false;
        for (size_t j = 0; j < a->cmds[i].argc; j++) {
            const struct resp_arg *x = &a->cmds[i].argv[j], *y = &b->cmds[i].argv[j];
            if (x->len != y->len || memcmp(x->ptr, y->ptr, x->len) != 0)
                return false;
        }
    }
    return true;
}

/* The decoded commands as a JSON body of strings, in the form mode decodes. */
static char *rewrite(const struct restcodec_decoder *d, int mode, size_t *len)
{
    json_t *root = json_array();
    check(root != NULL);
    for (size_t i = 0; i < d->ncmds; i++) {
        json_t *cmd = mode == 0 ? root : json_array();
        for (size_t j = 0; j < d->cmds[i].argc; j++) {
            json_t *s = json_stringn(d->cmds[i].argv[j].ptr, d->cmds[i].argv[j].len);
            check(s != NULL); /* not UTF-8: the decoder let through what JSON cannot carry */
            json_array_append_new(cmd, s);
        }
        if (mode == 1)
            json_array_append_new(root, cmd);
    }
    char *out = json_dumps(root, JSON_COMPACT);
    json_decref(root);
    check(out != NULL);
    *len = strlen(out);
    return out;
}

/* ?_token=: the query parameter reader never writes past its buffer and decodes no more bytes
 * than the query holds. */
static void fuzz_query_param(const char *in, size_t n, bool small)
{
    char dst[64];
    size_t cap = small ? 4 : sizeof dst;
    long got = restcodec_query_param(in, n, "_token", dst, cap);
    check(got == -1 || got == -2 || (got >= 0 && (size_t)got <= cap && (size_t)got <= n));
}

static void fuzz_decode(int mode, bool bools, bool small, const char *in, size_t n)
{
    if (mode == 2)
        fuzz_query_param(in, n, small);
    struct restcodec_limits lim = RESTCODEC_DEFAULT_LIMITS;
    lim.bools_as_text = bools;
    if (small) {
        lim.max_depth = 3;
        lim.max_args = 4;
        lim.max_commands = 3;
        lim.max_bytes = 24;
    }
    const char *err = NULL;
    enum restcodec_status st = decode(&dec, mode, in, n, &lim, &err);
    if (st != RESTCODEC_OK) {
        check(st == RESTCODEC_BAD_REQUEST || st == RESTCODEC_NOMEM);
        check(err != NULL && strncmp(err, "ERR ", 4) == 0 && strlen(err) < 96);
        check(dec.ncmds == 0);
        return;
    }
    check(err == NULL && dec.ncmds >= 1 && dec.ncmds <= lim.max_commands);
    size_t total = 0;
    for (size_t i = 0; i < dec.ncmds; i++) {
        check(dec.cmds[i].argc >= 1 && dec.cmds[i].argc <= lim.max_args);
        for (size_t j = 0; j < dec.cmds[i].argc; j++)
            total += dec.cmds[i].argv[j].len;
    }
    check(total <= lim.max_bytes);

    /* Same input, second decoder: same commands. */
    const char *err2 = NULL;
    check(decode(&dec2, mode, in, n, &lim, &err2) == RESTCODEC_OK);
    check(same_commands(&dec, &dec2));

    if (mode == 2)
        return;
    /* Round trip through a body of strings (no limits: quoting makes it longer). */
    size_t len;
    char *body = rewrite(&dec, mode, &len);
    struct restcodec_limits big = RESTCODEC_DEFAULT_LIMITS;
    check(decode(&dec2, mode, body, len, &big, &err2) == RESTCODEC_OK);
    check(same_commands(&dec, &dec2));
    free(body);
}

/* A result value in base64 mode: strings are base64 unless a top-level "OK". */
static void check_b64(json_t *v, bool top)
{
    if (json_is_string(v)) {
        size_t n = json_string_length(v);
        const char *s = json_string_value(v);
        if (top && n == 2 && memcmp(s, "OK", 2) == 0)
            return;
        char *buf = malloc(n / 4 * 3 + 1);
        check(buf != NULL && restcodec_base64_decode(s, n, buf) >= 0);
        free(buf);
    } else if (json_is_array(v)) {
        for (size_t i = 0; i < json_array_size(v); i++)
            check_b64(json_array_get(v, i), false);
    } else {
        check(json_is_null(v) || json_is_integer(v) || json_is_real(v));
    }
}

/* {"result": v} or {"error": "..."}. */
static void check_entry(json_t *e, bool b64)
{
    check(json_is_object(e) && json_object_size(e) == 1);
    json_t *err = json_object_get(e, "error");
    if (err != NULL) {
        check(json_is_string(err));
        return;
    }
    json_t *r = json_object_get(e, "result");
    check(r != NULL);
    if (b64)
        check_b64(r, true);
}

static json_t *parsed(const struct restcodec_buf *b, size_t from)
{
    json_t *v = json_loadb(b->data + from, b->len - from, JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
    check(v != NULL);
    return v;
}

static void fuzz_encode(bool b64, const char *in, size_t n)
{
    unsigned flags = b64 ? RESTCODEC_BASE64 : 0;
    struct restcodec_buf out = {0};
    check(restcodec_encode_error(&out, "x", 1) == 0);
    size_t mark = out.len;
    int status = 0;
    if (restcodec_encode_single(&out, in, n, flags, &status) == 0) {
        check(status == 200 || status == 400);
        json_t *v = parsed(&out, mark);
        check_entry(v, b64);
        check((status == 400) == (json_object_get(v, "error") != NULL));
        json_decref(v);
    } else {
        check(out.len == mark);
    }
    out.len = mark;
    if (restcodec_encode_exec(&out, in, n, flags, &status) == 0) {
        json_t *v = parsed(&out, mark);
        if (status == 400) {
            check_entry(v, b64);
            check(json_object_get(v, "error") != NULL);
        } else {
            check(status == 200 && json_is_array(v));
            for (size_t i = 0; i < json_array_size(v); i++)
                check_entry(json_array_get(v, i), b64);
        }
        json_decref(v);
    } else {
        check(out.len == mark);
    }
    /* The input as a pipeline of one reply. */
    out.len = mark;
    struct resp_arg one = {in, n};
    if (restcodec_encode_pipeline(&out, &one, 1, flags) == 0) {
        json_t *v = parsed(&out, mark);
        check(json_is_array(v) && json_array_size(v) == 1);
        check_entry(json_array_get(v, 0), b64);
        json_decref(v);
    } else {
        check(out.len == mark);
    }
    restcodec_buf_free(&out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!inited) {
        restcodec_decoder_init(&dec);
        restcodec_decoder_init(&dec2);
        inited = true;
    }
    if (size < 1)
        return 0;
    int mode = data[0] & 3;
    bool bit2 = data[0] & 4, small = data[0] & 8;
    /* A copy of exactly the input's size, so a read past it is a report. */
    size_t n = size - 1;
    char *in = malloc(n ? n : 1);
    if (in == NULL)
        return 0;
    memcpy(in, data + 1, n);
    if (mode == 3)
        fuzz_encode(bit2, in, n);
    else
        fuzz_decode(mode, bit2, small, in, n);
    free(in);
    return 0;
}
