/*
 * fuzz_request: libFuzzer target for the request parser (resp_request_next).
 *
 * The first input byte chooses the limits and how the rest arrives; the rest is a client's byte
 * stream. Checked beyond "no crash, no sanitizer report":
 *  - parsing the whole stream, and parsing it as it arrives in pieces with one parser that keeps
 *    its scan progress, give the same commands, frame lengths and errors;
 *  - a canonical frame is byte for byte resp_encode_command of its arguments;
 *  - re-encoding any command and parsing the encoding gives the same arguments, canonical.
 * This target must not keep state between inputs.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "respguard/resp.h"

#define FUZZ_MAX_RESULTS 4096

struct fuzz_result {
    enum resp_req_status st;
    size_t frame_len;
    size_t argc;
    uint64_t hash;
    const char *err; /* static text or the parser's errbuf: compared by content */
    char err_copy[64];
};

static uint64_t fuzz_hash_args(const struct resp_request *r)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < r->argc; i++) {
        h = (h ^ r->argv[i].len) * 1099511628211ull;
        for (size_t j = 0; j < r->argv[i].len; j++)
            h = (h ^ (unsigned char)r->argv[i].ptr[j]) * 1099511628211ull;
    }
    return h;
}

static void fuzz_limits(uint8_t flags, struct resp_limits *lim)
{
    lim->max_args = RESP_DEFAULT_MAX_ARGS;
    lim->max_bulk = RESP_MAX_BULK_LEN;
    lim->max_request = RESP_DEFAULT_MAX_REQUEST;
    lim->max_inline = RESP_MAX_INLINE;
    lim->unauthenticated = false;
    if (flags & 1) {
        lim->max_args = RESP_UNAUTH_MAX_ARGS;
        lim->max_bulk = RESP_UNAUTH_MAX_BULK;
        lim->unauthenticated = true;
    }
    if (flags & 2)
        lim->max_request = 16 + (flags >> 3) * 8u;
    if (flags & 4)
        lim->max_inline = 4 + (flags >> 4) * 4u;
    if ((flags & 0x18) == 0x18) {
        lim->max_args = 3;
        lim->max_bulk = 10;
    }
}

/* Re-encode a command and parse the encoding: same arguments, canonical, whole frame. */
static void fuzz_roundtrip(const struct resp_request *r)
{
    struct resp_parser p2;
    struct resp_request out;
    struct resp_limits big = {
        .max_args = SIZE_MAX,
        .max_bulk = SIZE_MAX,
        .max_request = SIZE_MAX,
        .max_inline = RESP_MAX_INLINE,
        .unauthenticated = false,
    };
    const char *err = NULL;
    size_t n = resp_encoded_size(r->argc, r->argv);
    char *enc = malloc(n);

    if (enc == NULL)
        return;
    if (resp_encode_command(enc, r->argc, r->argv) != n)
        __builtin_trap();
    if (r->canonical && (n != r->frame_len))
        __builtin_trap();
    if (resp_parser_init(&p2) != 0) {
        free(enc);
        return;
    }
    if (resp_request_next(&p2, enc, n, &big, &out, &err) != RESP_REQ_COMMAND)
        __builtin_trap();
    if (out.frame_len != n || !out.canonical || out.is_inline || out.argc != r->argc)
        __builtin_trap();
    for (size_t i = 0; i < r->argc; i++)
        if (out.argv[i].len != r->argv[i].len ||
            memcmp(out.argv[i].ptr, r->argv[i].ptr, r->argv[i].len) != 0)
            __builtin_trap();
    resp_parser_deinit(&p2);
    free(enc);
}

static void fuzz_record(struct fuzz_result *res, enum resp_req_status st,
                        const struct resp_request *out, const char *err)
{
    memset(res, 0, sizeof(*res));
    res->st = st;
    if (st == RESP_REQ_COMMAND || st == RESP_REQ_SKIP) {
        res->frame_len = out->frame_len;
        res->argc = out->argc;
        res->hash = fuzz_hash_args(out);
    } else if (st == RESP_REQ_ERROR) {
        size_t n = strlen(err);
        if (n >= sizeof(res->err_copy))
            __builtin_trap();
        memcpy(res->err_copy, err, n + 1);
    }
}

static bool fuzz_same(const struct fuzz_result *a, const struct fuzz_result *b)
{
    return a->st == b->st && a->frame_len == b->frame_len && a->argc == b->argc &&
           a->hash == b->hash && strcmp(a->err_copy, b->err_copy) == 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct resp_limits lim;
    struct resp_parser p;
    struct fuzz_result *whole;
    size_t nwhole = 0, pos = 0, step;
    const char *buf;
    uint8_t flags;

    if (size < 2)
        return 0;
    flags = data[0];
    step = 1 + data[1] % 7;
    buf = (const char *)data + 2;
    size -= 2;
    fuzz_limits(flags, &lim);

    whole = calloc(FUZZ_MAX_RESULTS, sizeof(*whole));
    if (whole == NULL || resp_parser_init(&p) != 0) {
        free(whole);
        return 0;
    }

    /* 1. The whole stream at once. */
    while (nwhole < FUZZ_MAX_RESULTS) {
        struct resp_request out;
        const char *err = NULL;
        enum resp_req_status st = resp_request_next(&p, buf + pos, size - pos, &lim, &out, &err);

        fuzz_record(&whole[nwhole++], st, &out, err);
        if (st == RESP_REQ_NEED_MORE || st == RESP_REQ_ERROR)
            break;
        if (out.frame_len == 0 || out.frame_len > size - pos)
            __builtin_trap();
        if (st == RESP_REQ_COMMAND) {
            if (out.argc == 0)
                __builtin_trap();
            fuzz_roundtrip(&out);
        }
        pos += out.frame_len;
    }

    /* 2. The same stream arriving step bytes at a time, one parser throughout. */
    {
        size_t avail = 0, k = 0;
        bool stop = false;
        pos = 0;
        while (!stop && k < nwhole) {
            struct resp_request out;
            const char *err = NULL;
            enum resp_req_status st;
            struct fuzz_result got;

            st = resp_request_next(&p, buf + pos, avail - pos, &lim, &out, &err);
            if (st == RESP_REQ_NEED_MORE) {
                if (avail == size) {
                    fuzz_record(&got, st, &out, err);
                    if (!fuzz_same(&got, &whole[k]))
                        __builtin_trap();
                    break;
                }
                avail = avail + step > size ? size : avail + step;
                continue;
            }
            fuzz_record(&got, st, &out, err);
            if (!fuzz_same(&got, &whole[k]))
                __builtin_trap();
            k++;
            if (st == RESP_REQ_ERROR)
                stop = true;
            else
                pos += out.frame_len;
        }
    }

    resp_parser_deinit(&p);
    free(whole);
    return 0;
}
