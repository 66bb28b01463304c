/*
 * test_resp: unit tests for resp.c, the request parser (multibulk, inline) and the
 * streaming reply framer.
 *
 * Every input is copied into a heap buffer of exactly its length, so that AddressSanitizer
 * catches any read past the end. These tests must not need a network or a Redis server.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "respguard/resp.h"

#define S(lit) (lit), (sizeof(lit) - 1)
#define MAX_ARGS_T 64

/* ---------------------------------------------------------------------------------------- */
/* Helpers                                                                                  */
/* ---------------------------------------------------------------------------------------- */

static struct resp_limits lim_auth(void)
{
    struct resp_limits l = {
        .max_args = RESP_DEFAULT_MAX_ARGS,
        .max_bulk = RESP_MAX_BULK_LEN,
        .max_request = RESP_DEFAULT_MAX_REQUEST,
        .max_inline = RESP_MAX_INLINE,
        .unauthenticated = false,
    };
    return l;
}

static struct resp_limits lim_unauth(void)
{
    struct resp_limits l = lim_auth();
    l.max_args = RESP_UNAUTH_MAX_ARGS;
    l.max_bulk = RESP_UNAUTH_MAX_BULK;
    l.unauthenticated = true;
    return l;
}

static char *dup_exact(const char *s, size_t n)
{
    char *d = malloc(n > 0 ? n : 1);
    assert_non_null(d);
    if (n > 0)
        memcpy(d, s, n);
    return d;
}

/* The result of one resp_request_next call, with arguments copied out of the views. */
struct req_result {
    enum resp_req_status st;
    size_t frame_len;
    size_t argc;
    char *argv[MAX_ARGS_T];
    size_t lens[MAX_ARGS_T];
    bool is_inline;
    bool canonical;
    char err[128];
};

static void result_free(struct req_result *r)
{
    for (size_t i = 0; i < r->argc && i < MAX_ARGS_T; i++)
        free(r->argv[i]);
    memset(r, 0, sizeof(*r));
}

static void run_next(struct resp_parser *p, const char *in, size_t len,
                     const struct resp_limits *lim, struct req_result *r)
{
    char *buf = dup_exact(in, len);
    struct resp_request out;
    const char *err = NULL;

    memset(r, 0, sizeof(*r));
    memset(&out, 0, sizeof(out));
    r->st = resp_request_next(p, buf, len, lim, &out, &err);
    if (r->st == RESP_REQ_ERROR) {
        assert_non_null(err);
        snprintf(r->err, sizeof(r->err), "%s", err);
    } else {
        assert_null(err);
    }
    if (r->st == RESP_REQ_COMMAND || r->st == RESP_REQ_SKIP) {
        assert_true(out.frame_len > 0);
        assert_true(out.frame_len <= len);
        r->frame_len = out.frame_len;
        r->argc = out.argc;
        r->is_inline = out.is_inline;
        r->canonical = out.canonical;
        if (r->st == RESP_REQ_COMMAND)
            assert_true(out.argc >= 1);
        else
            assert_int_equal(out.argc, 0);
        for (size_t i = 0; i < out.argc && i < MAX_ARGS_T; i++) {
            r->argv[i] = dup_exact(out.argv[i].ptr, out.argv[i].len);
            r->lens[i] = out.argv[i].len;
            /* multibulk views point into the input */
            if (r->st == RESP_REQ_COMMAND && !out.is_inline) {
                assert_true(out.argv[i].ptr >= buf);
                assert_true(out.argv[i].ptr + out.argv[i].len <= buf + out.frame_len);
            }
        }
        if (r->st == RESP_REQ_COMMAND && out.canonical) {
            /* canonical means: the frame is exactly the encoding of argv */
            size_t n = resp_encoded_size(out.argc, out.argv);
            char *enc = malloc(n);
            assert_non_null(enc);
            assert_int_equal(resp_encode_command(enc, out.argc, out.argv), n);
            assert_int_equal(n, out.frame_len);
            assert_memory_equal(enc, buf, n);
            free(enc);
        }
    }
    free(buf);
}

static void one(const char *in, size_t len, const struct resp_limits *lim, struct req_result *r)
{
    struct resp_parser p;
    assert_int_equal(resp_parser_init(&p), 0);
    run_next(&p, in, len, lim, r);
    resp_parser_deinit(&p);
}

static void expect_args(const struct req_result *r, size_t argc, const char *const *args,
                        const size_t *lens)
{
    assert_int_equal(r->st, RESP_REQ_COMMAND);
    assert_int_equal(r->argc, argc);
    for (size_t i = 0; i < argc; i++) {
        size_t n = lens != NULL ? lens[i] : strlen(args[i]);
        assert_int_equal(r->lens[i], n);
        assert_memory_equal(r->argv[i], args[i], n);
    }
}

static void expect_error(const char *in, size_t len, const struct resp_limits *lim,
                         const char *text)
{
    struct req_result r;
    one(in, len, lim, &r);
    if (r.st != RESP_REQ_ERROR)
        fail_msg("expected error '%s', got status %d", text, (int)r.st);
    assert_string_equal(r.err, text);
    result_free(&r);
}

static void expect_status(const char *in, size_t len, const struct resp_limits *lim,
                          enum resp_req_status st)
{
    struct req_result r;
    one(in, len, lim, &r);
    if (r.st != st)
        fail_msg("expected status %d, got %d (%s)", (int)st, (int)r.st, r.err);
    result_free(&r);
}

static bool results_same(const struct req_result *a, const struct req_result *b)
{
    if (a->st != b->st || strcmp(a->err, b->err) != 0)
        return false;
    if (a->st == RESP_REQ_COMMAND || a->st == RESP_REQ_SKIP) {
        if (a->frame_len != b->frame_len || a->argc != b->argc ||
            a->is_inline != b->is_inline || a->canonical != b->canonical)
            return false;
        for (size_t i = 0; i < a->argc && i < MAX_ARGS_T; i++)
            if (a->lens[i] != b->lens[i] || memcmp(a->argv[i], b->argv[i], a->lens[i]) != 0)
                return false;
    }
    return true;
}

/*
 * Feed every prefix of in, both to a fresh parser each time and to one parser that keeps its
 * scan progress between calls: every prefix gives NEED_MORE until some length, and from there on
 * exactly the result of the whole input (for a command: from the length of its frame on).
 */
static void check_every_prefix(const char *in, size_t len, const struct resp_limits *lim)
{
    struct req_result full, r1, r2;
    struct resp_parser inc;
    bool seen = false;

    one(in, len, lim, &full);
    assert_int_equal(resp_parser_init(&inc), 0);
    for (size_t l = 0; l <= len; l++) {
        one(in, l, lim, &r1);
        run_next(&inc, in, l, lim, &r2);
        if (!results_same(&r1, &r2))
            fail_msg("fresh and resumed parsers differ at prefix %zu of %zu", l, len);
        if (r1.st == RESP_REQ_NEED_MORE) {
            if (seen)
                fail_msg("NEED_MORE at prefix %zu after a result", l);
        } else {
            if (!results_same(&r1, &full))
                fail_msg("prefix %zu of %zu gives status %d (%s), whole input %d (%s)", l, len,
                         (int)r1.st, r1.err, (int)full.st, full.err);
            if (!seen && (full.st == RESP_REQ_COMMAND || full.st == RESP_REQ_SKIP))
                assert_int_equal(l, full.frame_len);
            seen = true;
        }
        result_free(&r1);
        result_free(&r2);
    }
    if (full.st != RESP_REQ_NEED_MORE)
        assert_true(seen);
    resp_parser_deinit(&inc);
    result_free(&full);
}

/* ---------------------------------------------------------------------------------------- */
/* Multibulk requests                                                                       */
/* ---------------------------------------------------------------------------------------- */

static void test_mb_simple(void **state)
{
    (void)state;
    struct resp_limits lim = lim_auth();
    struct req_result r;
    const char *args[] = {"SET", "k", "hello"};

    one(S("*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nhello\r\n"), &lim, &r);
    expect_args(&r, 3, args, NULL);
    assert_int_equal(r.frame_len, 31);
    assert_true(r.canonical);
    assert_false(r.is_inline);
    result_free(&r);
}

static void test_mb_views_point_into_input(void **state)
{
    (void)state;
    struct resp_limits lim = lim_auth();
    struct resp_parser p;
    struct resp_request out;
    const char *err = NULL;
    const char in[] = "*2\r\n$4\r\nECHO\r\n$3\r\nabc\r\n";

    assert_int_equal(resp_parser_init(&p), 0);
    assert_int_equal(resp_request_next(&p, in, sizeof(in) - 1, &lim, &out, &err),
                     RESP_REQ_COMMAND);
    assert_ptr_equal(out.argv[0].ptr, in + 8);
    assert_ptr_equal(out.argv[1].ptr, in + 18);
    assert_ptr_equal(out.argv, p.argv);
    resp_parser_deinit(&p);
}

static void test_mb_binary_and_empty(void **state)
{
    (void)state;
    struct resp_limits lim = lim_auth();
    struct req_result r;
    const char *args[] = {"SET", "a\r\nb\0c", "", "\r\n"};
    const size_t lens[] = {3, 6, 0, 2};

    one(S("*4\r\n$3\r\nSET\r\n$6\r\na\r\nb\0c\r\n$0\r\n\r\n$2\r\n\r\n\r\n"), &lim, &r);
    expect_args(&r, 4, args, lens);
    assert_true(r.canonical);
    result_free(&r);
}

static void test_mb_skip(void **state)
{
    (void)state;
    struct resp_limits lim = lim_auth();
    struct resp_limits un = lim_unauth();
    struct req_result r;

    one(S("*0\r\n"), &lim, &r);
    assert_int_equal(r.st, RESP_REQ_SKIP);
    assert_int_equal(r.frame_len, 4);
    result_free(&r);
    one(S("*-1\r\n*1\r\n$4\r\nPING\r\n"), &lim, &r);
    assert_int_equal(r.st, RESP_REQ_SKIP);
    assert_int_equal(r.frame_len, 5);
    result_free(&r);
    one(S("*-5\r\n"), &un, &r);
    assert_int_equal(r.st, RESP_REQ_SKIP);
    assert_int_equal(r.frame_len, 5);
    result_free(&r);
    /* Redis skips the byte after '\r' unchecked here too */
    one(S("*0\rX"), &lim, &r);
    assert_int_equal(r.st, RESP_REQ_SKIP);
    assert_int_equal(r.frame_len, 4);
    result_free(&r);
    one(S("*-2147483649\r\n"), &lim, &r);
    assert_int_equal(r.st, RESP_REQ_SKIP);
    result_free(&r);
}

static void test_mb_noncanonical(void **state)
{
    (void)state;
    struct resp_limits lim = lim_auth();
    struct req_result r;
    const char *echo[] = {"ECHO", "abc"};
    const char *ping[] = {"PING"};

    /* the two bytes after a payload are skipped unchecked, as Redis does */
    one(S("*2\r\n$4\r\nECHO\r\n$3\r\nabcXY*1\r\n$4\r\nPING\r\n"), &lim, &r);
    expect_args(&r, 2, echo, NULL);
    assert_int_equal(r.frame_len, 23);
    assert_false(r.canonical);
    result_free(&r);

    one(S("*1\r\n$4\r\nPING\n\n"), &lim, &r);
    expect_args(&r, 1, ping, NULL);
    assert_false(r.canonical);
    result_free(&r);

    /* a header line ends at its first '\r'; the byte after it is skipped unchecked */
    one(S("*1\rX$4\rXPING\r\n"), &lim, &r);
    expect_args(&r, 1, ping, NULL);
    assert_int_equal(r.frame_len, 14);
    assert_false(r.canonical);
    result_free(&r);

    one(S("*2\r\r$4\r\0ECHO\r\n$3\r\rabc\r\n"), &lim, &r);
    expect_args(&r, 2, echo, NULL);
    assert_false(r.canonical);
    result_free(&r);

    /* a '\r' inside the payload is data, not a line end */
    {
        const char *a[] = {"a\rb", "c"};
        one(S("*2\r\n$3\r\na\rb\r\n$1\r\nc\r\n"), &lim, &r);
        expect_args(&r, 2, a, NULL);
        assert_true(r.canonical);
        result_free(&r);
    }
}

static void test_mb_reencode(void **state)
{
    (void)state;
    struct resp_limits lim = lim_auth();
    struct resp_parser p;
    struct resp_request out;
    const char *err = NULL;
    const char in[] = "*2\rX$4\rXECHO!!$3\r\nabcYY";
    char enc[64];
    size_t n;

    assert_int_equal(resp_parser_init(&p), 0);
    assert_int_equal(resp_request_next(&p, in, sizeof(in) - 1, &lim, &out, &err),
                     RESP_REQ_COMMAND);
    assert_false(out.canonical);
    n = resp_encoded_size(out.argc, out.argv);
    assert_int_equal(n, 23);
    assert_true(n <= sizeof(enc));
    assert_int_equal(resp_encode_command(enc, out.argc, out.argv), n);
    assert_memory_equal(enc, "*2\r\n$4\r\nECHO\r\n$3\r\nabc\r\n", n);
    resp_parser_deinit(&p);
}

static void test_encode(void **state)
{
    (void)state;
    struct resp_arg argv[12];
    char buf[256];
    size_t n;
    static const char digits[] = "0123456789abc";

    argv[0].ptr = "SET";
    argv[0].len = 3;
    argv[1].ptr = "";
    argv[1].len = 0;
    argv[2].ptr = "0123456789";
    argv[2].len = 10;
    n = resp_encoded_size(3, argv);
    assert_int_equal(n, strlen("*3\r\n$3\r\nSET\r\n$0\r\n\r\n$10\r\n0123456789\r\n"));
    assert_int_equal(resp_encode_command(buf, 3, argv), n);
    assert_memory_equal(buf, "*3\r\n$3\r\nSET\r\n$0\r\n\r\n$10\r\n0123456789\r\n", n);

    /* two-digit count */
    for (int i = 0; i < 12; i++) {
        argv[i].ptr = digits + i;
        argv[i].len = 1;
    }
    n = resp_encoded_size(12, argv);
    assert_int_equal(resp_encode_command(buf, 12, argv), n);
    assert_memory_equal(buf, "*12\r\n$1\r\n0\r\n", 12);
    assert_int_equal(n, 5 + 12 * 7);
}

static void test_mb_count_errors(void **state)
{
    (void)state;
    struct resp_limits lim = lim_auth();
    static const char e[] = "ERR Protocol error: invalid multibulk length";

    expect_error(S("*03\r\n"), &lim, e);
    expect_error(S("*+1\r\n"), &lim, e);
    expect_error(S("*-0\r\n"), &lim, e);
    expect_error(S("*\r\n"), &lim, e);
    expect_error(S("* 1\r\n"), &lim, e);
    expect_error(S("*1 \r\n"), &lim, e);
    expect_error(S("*x\r\n"), &lim, e);
    expect_error(S("*1\n\r\n"), &lim, e);
    expect_error(S("*2147483648\r\n"), &lim, e);
    expect_error(S("*9223372036854775808\r\n"), &lim, e);
    expect_error(S("*99999999999999999999\r\n"), &lim, e);
    expect_error(S("*-\r\n"), &lim, e);
}

static void test_mb_nul(void **state)
{
    (void)state;
    struct resp_limits lim = lim_auth();
    char *big;
    size_t n = 70000;

    /* Redis looks for the '\r' with strchr: a NUL before it hides it, so Redis waits ... */
    expect_status(S("*1\0\r\n$4\r\nPING\r\n"), &lim, RESP_REQ_NEED_MORE);
    expect_status(S("*1\r\n$4\0\r\nPING\r\n"), &lim, RESP_REQ_NEED_MORE);
    /* ... until more than 64 KiB wait */
    big = calloc(1, n);
    assert_non_null(big);
    memcpy(big, "*1\0\r\n", 5);
    expect_error(big, n, &lim, "ERR Protocol error: too big mbulk count string");
    memcpy(big, "*1\r\n$1\0\r\n", 9);
    expect_error(big, n, &lim, "ERR Protocol error: too big bulk count string");
    free(big);
    /* a NUL in a payload is data */
    expect_status(S("*1\r\n$1\r\n\0\r\n"), &lim, RESP_REQ_COMMAND);
}

static void test_mb_element_errors(void **state)
{
    (void)state;
    struct resp_limits lim = lim_auth();

    expect_error(S("*1\r\nX4\r\nPING\r\n"), &lim, "ERR Protocol error: expected '$', got 'X'");
    expect_error(S("*1\r\n:4\r\n"), &lim, "ERR Protocol error: expected '$', got ':'");
    expect_error(S("*1\r\n*1\r\n$4\r\nPING\r\n"), &lim,
                 "ERR Protocol error: expected '$', got '*'");
    /* Redis turns CR and LF into spaces in error texts */
    expect_error(S("*1\r\n\r\n"), &lim, "ERR Protocol error: expected '$', got ' '");
    expect_error(S("*1\r\n\n4\r\n"), &lim, "ERR Protocol error: expected '$', got ' '");
    /* the element's first byte is only judged once its line is complete */
    expect_status(S("*1\r\nX4"), &lim, RESP_REQ_NEED_MORE);
    expect_status(S("*1\r\nX4\r"), &lim, RESP_REQ_NEED_MORE);
    expect_error(S("*2\r\n$4\r\nECHO\r\n+abc\r\n"), &lim,
                 "ERR Protocol error: expected '$', got '+'");
}

static void test_mb_bulk_errors(void **state)
{
    (void)state;
    struct resp_limits lim = lim_auth();
    static const char e[] = "ERR Protocol error: invalid bulk length";

    expect_error(S("*1\r\n$-1\r\n"), &lim, e);
    expect_error(S("*1\r\n$-0\r\n"), &lim, e);
    expect_error(S("*1\r\n$04\r\nPING\r\n"), &lim, e);
    expect_error(S("*1\r\n$+4\r\nPING\r\n"), &lim, e);
    expect_error(S("*1\r\n$\r\n"), &lim, e);
    expect_error(S("*1\r\n$ 4\r\n"), &lim, e);
    expect_error(S("*1\r\n$4 \r\n"), &lim, e);
    expect_error(S("*1\r\n$x\r\n"), &lim, e);
    expect_error(S("*1\r\n$536870913\r\n"), &lim, e);
    expect_error(S("*1\r\n$99999999999999999999\r\n"), &lim, e);
    /* 512 MB itself is a valid length (only the frame limit refuses it) */
    expect_error(S("*1\r\n$536870912\r\n"), &lim,
                 "ERR Protocol error: request exceeds max_request_bytes");
    lim.max_request = 1024ull * 1024 * 1024;
    expect_status(S("*1\r\n$536870912\r\n"), &lim, RESP_REQ_NEED_MORE);
}

static void test_mb_unauth_limits(void **state)
{
    (void)state;
    struct resp_limits un = lim_unauth();
    struct req_result r;
    char buf[256];
    size_t n;

    /* detected from the header alone, before any element arrives */
    expect_error(S("*11\r\n"), &un, "ERR Protocol error: unauthenticated multibulk length");
    expect_error(S("*100\r\n"), &un, "ERR Protocol error: unauthenticated multibulk length");
    expect_status(S("*10\r\n"), &un, RESP_REQ_NEED_MORE);
    /* a count over INT_MAX is invalid first, as in Redis */
    expect_error(S("*2147483648\r\n"), &un, "ERR Protocol error: invalid multibulk length");
    expect_error(S("*1\r\n$16385\r\n"), &un, "ERR Protocol error: unauthenticated bulk length");
    expect_error(S("*2\r\n$4\r\nAUTH\r\n$1000000\r\n"), &un,
                 "ERR Protocol error: unauthenticated bulk length");
    expect_status(S("*1\r\n$16384\r\n"), &un, RESP_REQ_NEED_MORE);
    /* over proto-max-bulk-len is invalid whoever asks */
    expect_error(S("*1\r\n$536870913\r\n"), &un, "ERR Protocol error: invalid bulk length");

    /* exactly ten arguments pass */
    n = (size_t)snprintf(buf, sizeof(buf), "*10\r\n");
    for (int i = 0; i < 10; i++)
        n += (size_t)snprintf(buf + n, sizeof(buf) - n, "$1\r\n%d\r\n", i);
    one(buf, n, &un, &r);
    assert_int_equal(r.st, RESP_REQ_COMMAND);
    assert_int_equal(r.argc, 10);
    result_free(&r);
}

static void test_mb_auth_limits(void **state)
{
    (void)state;
    struct resp_limits lim = lim_auth();

    lim.max_args = 3;
    expect_error(S("*4\r\n"), &lim, "ERR Protocol error: invalid multibulk length");
    expect_status(S("*3\r\n$1\r\na\r\n$1\r\nb\r\n$1\r\nc\r\n"), &lim, RESP_REQ_COMMAND);
    lim = lim_auth();
    lim.max_bulk = 100;
    expect_error(S("*1\r\n$101\r\n"), &lim, "ERR Protocol error: invalid bulk length");
    expect_status(S("*1\r\n$100\r\n"), &lim, RESP_REQ_NEED_MORE);
}

static void test_mb_max_request(void **state)
{
    (void)state;
    struct resp_limits lim = lim_auth();
    static const char e[] = "ERR Protocol error: request exceeds max_request_bytes";
    const char ok[] = "*2\r\n$3\r\nGET\r\n$3\r\nkey\r\n"; /* 22 bytes */

    lim.max_request = 22;
    expect_status(S(ok), &lim, RESP_REQ_COMMAND);
    lim.max_request = 21;
    expect_error(S(ok), &lim, e);
    /* known from the bulk header alone */
    lim.max_request = 50;
    expect_error(S("*1\r\n$100\r\n"), &lim, e);
    /* known from the count: each element takes at least 6 bytes */
    lim.max_request = 100;
    expect_error(S("*100\r\n"), &lim, e);
    expect_status(S("*15\r\n"), &lim, RESP_REQ_NEED_MORE);
    /* a header line that never ends */
    lim.max_request = 10;
    expect_error(S("*1\r\n$1111111111"), &lim, e);
    expect_status(S("*1\r\n$11111"), &lim, RESP_REQ_NEED_MORE);
    /* the payload itself: the frame would be 4 + 4 + 3 + 2 = 13 > 12 */
    lim.max_request = 12;
    expect_error(S("*1\r\n$3\r\n"), &lim, e);
    lim.max_request = 13;
    expect_status(S("*1\r\n$3\r\nabc\r\n"), &lim, RESP_REQ_COMMAND);
    /* bytes beyond the frame do not count */
    expect_status(S("*1\r\n$3\r\nabc\r\n*1\r\n$3\r\nabc\r\n"), &lim, RESP_REQ_COMMAND);
}

static void test_mb_too_big_headers(void **state)
{
    (void)state;
    struct resp_limits lim = lim_auth();
    /* expect_* copy what they are given into an exact-size buffer */
    static char b[65536 + 16];
    const size_t n = sizeof(b);

    /* count line: 65536 bytes without '\r' wait, one more is refused */
    b[0] = '*';
    memset(b + 1, '1', n - 1);
    expect_status(b, 65536, &lim, RESP_REQ_NEED_MORE);
    expect_error(b, 65537, &lim, "ERR Protocol error: too big mbulk count string");
    /* a '\r' that arrives too late does not help */
    b[65537] = '\r';
    b[65538] = '\n';
    expect_error(b, 65539, &lim, "ERR Protocol error: too big mbulk count string");
    /* a '\r' just inside the window ends the line: the line is judged instead */
    memset(b + 1, '1', n - 1);
    b[65536] = '\r';
    b[65537] = '\n';
    expect_error(b, 65538, &lim, "ERR Protocol error: invalid multibulk length");

    /* bulk count line */
    memcpy(b, "*1\r\n$", 5);
    memset(b + 5, '1', n - 5);
    expect_status(b, 4 + 65536, &lim, RESP_REQ_NEED_MORE);
    expect_error(b, 4 + 65537, &lim, "ERR Protocol error: too big bulk count string");
    /* an element that is not '$' and has no line end is also "too big" */
    memcpy(b, "*1\r\nX", 5);
    expect_error(b, 4 + 65537, &lim, "ERR Protocol error: too big bulk count string");
}

static void test_mb_pipeline(void **state)
{
    (void)state;
    struct resp_limits lim = lim_auth();
    struct resp_parser p;
    const char in[] = "*1\r\n$4\r\nPING\r\n"
                      "*0\r\n"
                      "ECHO \"a b\"\r\n"
                      "\r\n"
                      "*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"
                      "*3\r\n$3\r\nSET"; /* incomplete */
    static const enum resp_req_status want[] = {RESP_REQ_COMMAND, RESP_REQ_SKIP,
                                                RESP_REQ_COMMAND, RESP_REQ_SKIP,
                                                RESP_REQ_COMMAND, RESP_REQ_NEED_MORE};
    static const char *first[] = {"PING", NULL, "ECHO", NULL, "GET", NULL};
    size_t pos = 0;
    char *buf = dup_exact(in, sizeof(in) - 1);

    assert_int_equal(resp_parser_init(&p), 0);
    for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
        struct resp_request out;
        const char *err = NULL;
        enum resp_req_status st =
            resp_request_next(&p, buf + pos, sizeof(in) - 1 - pos, &lim, &out, &err);
        assert_int_equal(st, want[i]);
        if (first[i] != NULL) {
            assert_int_equal(out.argv[0].len, strlen(first[i]));
            assert_memory_equal(out.argv[0].ptr, first[i], strlen(first[i]));
        }
        if (st == RESP_REQ_COMMAND && i == 2) {
            assert_true(out.is_inline);
            assert_int_equal(out.argc, 2);
            assert_memory_equal(out.argv[1].ptr, "a b", 3);
        }
        if (st != RESP_REQ_NEED_MORE)
            pos += out.frame_len;
    }
    assert_int_equal(pos, sizeof(in) - 1 - strlen("*3\r\n$3\r\nSET"));
    free(buf);
    resp_parser_deinit(&p);
}

static void test_mb_many_args_and_reuse(void **state)
{
    (void)state;
    struct resp_limits lim = lim_auth();
    struct resp_parser p;
    size_t count = 5000, cap = count * 16 + 16, n;
    char *buf = malloc(cap);
    struct resp_request out;
    const char *err = NULL;

    assert_non_null(buf);
    assert_int_equal(resp_parser_init(&p), 0);
    n = (size_t)snprintf(buf, cap, "*%zu\r\n", count);
    for (size_t i = 0; i < count; i++) {
        char v[32];
        int w = snprintf(v, sizeof(v), "%zu", i);
        n += (size_t)snprintf(buf + n, cap - n, "$%d\r\n%s\r\n", w, v);
    }
    for (int round = 0; round < 3; round++) {
        assert_int_equal(resp_request_next(&p, buf, n, &lim, &out, &err), RESP_REQ_COMMAND);
        assert_int_equal(out.argc, count);
        assert_int_equal(out.frame_len, n);
        assert_true(out.canonical);
        for (size_t i = 0; i < count; i += 997) {
            char want[32];
            int w = snprintf(want, sizeof(want), "%zu", i);
            assert_int_equal(out.argv[i].len, (size_t)w);
            assert_memory_equal(out.argv[i].ptr, want, (size_t)w);
        }
        /* a small command in between reuses everything */
        assert_int_equal(resp_request_next(&p, S("*1\r\n$4\r\nPING\r\n"), &lim, &out, &err),
                         RESP_REQ_COMMAND);
        assert_int_equal(out.argc, 1);
    }
    assert_true(p.argv_cap >= count);
    free(buf);
    resp_parser_deinit(&p);
}

static void test_mb_large_value(void **state)
{
    (void)state;
    struct resp_limits lim = lim_auth();
    struct resp_parser p;
    size_t vlen = 3 * 1024 * 1024;
    size_t n = 0, cap = vlen + 64;
    char *buf = malloc(cap);
    struct resp_request out;
    const char *err = NULL;

    assert_non_null(buf);
    n += (size_t)snprintf(buf, cap, "*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$%zu\r\n", vlen);
    memset(buf + n, 'v', vlen);
    n += vlen;
    memcpy(buf + n, "\r\n", 2);
    n += 2;
    assert_int_equal(resp_parser_init(&p), 0);
    /* arriving in 64 KiB pieces, then whole */
    for (size_t l = 0; l < n; l += 65536)
        assert_int_equal(resp_request_next(&p, buf, l, &lim, &out, &err), RESP_REQ_NEED_MORE);
    assert_int_equal(resp_request_next(&p, buf, n, &lim, &out, &err), RESP_REQ_COMMAND);
    assert_int_equal(out.argv[2].len, vlen);
    assert_ptr_equal(out.argv[2].ptr, buf + n - 2 - vlen);
    assert_int_equal(resp_request_next(&p, S("*1\r\n$4\r\nPING\r\n"), &lim, &out, &err),
                     RESP_REQ_COMMAND);
    free(buf);
    resp_parser_deinit(&p);
}

static void test_mb_limits_change_restarts(void **state)
{
    (void)state;
    struct resp_limits un = lim_unauth(), au = lim_auth();
    struct resp_parser p;
    struct resp_request out;
    const char *err = NULL;
    char in[512];
    size_t n = (size_t)snprintf(in, sizeof(in), "*12\r\n");

    for (int i = 0; i < 12; i++)
        n += (size_t)snprintf(in + n, sizeof(in) - n, "$1\r\n%c\r\n", 'a' + i);
    assert_int_equal(resp_parser_init(&p), 0);
    assert_int_equal(resp_request_next(&p, in, 3, &au, &out, &err), RESP_REQ_NEED_MORE);
    assert_int_equal(resp_request_next(&p, in, 20, &au, &out, &err), RESP_REQ_NEED_MORE);
    assert_int_equal(resp_request_next(&p, in, 30, &un, &out, &err), RESP_REQ_ERROR);
    assert_string_equal(err, "ERR Protocol error: unauthenticated multibulk length");
    assert_int_equal(resp_request_next(&p, in, 30, &au, &out, &err), RESP_REQ_NEED_MORE);
    assert_int_equal(resp_request_next(&p, in, n, &au, &out, &err), RESP_REQ_COMMAND);
    assert_int_equal(out.argc, 12);
    /* a shorter input than last time also restarts */
    assert_int_equal(resp_request_next(&p, in, 30, &au, &out, &err), RESP_REQ_NEED_MORE);
    assert_int_equal(resp_request_next(&p, in, 10, &au, &out, &err), RESP_REQ_NEED_MORE);
    assert_int_equal(resp_request_next(&p, in, n, &au, &out, &err), RESP_REQ_COMMAND);
    resp_parser_deinit(&p);
}

/* ---------------------------------------------------------------------------------------- */
/* Inline requests                                                                          */
/* ---------------------------------------------------------------------------------------- */

struct inline_case {
    const char *in;
    size_t in_len;
    size_t argc;
    const char *args[6];
    size_t lens[6];
};

#define L(lit) (lit), (sizeof(lit) - 1)

static void test_inline_basic(void **state)
{
    (void)state;
    struct resp_limits lim = lim_auth();
    struct req_result r;
    const char *ping[] = {"PING"};
    const char *set[] = {"SET", "a", "b"};

    one(S("PING\r\n"), &lim, &r);
    expect_args(&r, 1, ping, NULL);
    assert_int_equal(r.frame_len, 6);
    assert_true(r.is_inline);
    assert_false(r.canonical);
    result_free(&r);
    one(S("PING\n"), &lim, &r);
    expect_args(&r, 1, ping, NULL);
    assert_int_equal(r.frame_len, 5);
    result_free(&r);
    one(S("PING\r\r\n"), &lim, &r);
    expect_args(&r, 1, ping, NULL);
    assert_int_equal(r.frame_len, 7);
    result_free(&r);
    one(S("  SET \t a   b  \r\nGET a\r\n"), &lim, &r);
    expect_args(&r, 3, set, NULL);
    assert_int_equal(r.frame_len, 17);
    result_free(&r);
    expect_status(S("PING"), &lim, RESP_REQ_NEED_MORE);
    expect_status(S("PING\r"), &lim, RESP_REQ_NEED_MORE);
    expect_status(S(""), &lim, RESP_REQ_NEED_MORE);
}

static void test_inline_skip(void **state)
{
    (void)state;
    struct resp_limits lim = lim_auth();
    struct req_result r;

    one(S("\r\n"), &lim, &r);
    assert_int_equal(r.st, RESP_REQ_SKIP);
    assert_int_equal(r.frame_len, 2);
    result_free(&r);
    one(S("\n"), &lim, &r);
    assert_int_equal(r.st, RESP_REQ_SKIP);
    assert_int_equal(r.frame_len, 1);
    result_free(&r);
    one(S("  \t \v\f\r\r\n"), &lim, &r);
    assert_int_equal(r.st, RESP_REQ_SKIP);
    assert_int_equal(r.frame_len, 9);
    result_free(&r);
}

static void test_inline_quoting(void **state)
{
    (void)state;
    struct resp_limits lim = lim_auth();
    static const struct inline_case cases[] = {
        {L("ECHO \"a b\"\r\n"), 2, {"ECHO", "a b"}, {4, 3}},
        {L("\"\\x41\\x4a\\x4A\" x\n"), 2, {"AJJ", "x"}, {3, 1}},
        {L("\"\\x4g\"\n"), 1, {"x4g"}, {3}},
        {L("\"\\x\"\n"), 1, {"x"}, {1}},
        {L("\"\\x4\"\n"), 1, {"x4"}, {2}},
        {L("\"a\\x00b\"\n"), 1, {"a\0b"}, {3}},
        {L("\"\\n\\r\\t\\b\\a\\\\\\\"\\q\\'\"\n"), 1, {"\n\r\t\b\a\\\"q'"}, {9}},
        {L("'a\\'b'\n"), 1, {"a'b"}, {3}},
        {L("'a\\nb\\x41'\n"), 1, {"a\\nb\\x41"}, {8}},
        {L("'a\"b' \"c'd\"\n"), 2, {"a\"b", "c'd"}, {3, 3}},
        {L("foo\"bar baz\"\n"), 1, {"foobar baz"}, {10}},
        {L("foo'bar baz' x\n"), 2, {"foobar baz", "x"}, {10, 1}},
        {L("\"\"\n"), 1, {""}, {0}},
        {L("SET a \"\"\r\n"), 3, {"SET", "a", ""}, {3, 1, 0}},
        {L("''\n"), 1, {""}, {0}},
        /* an unquoted argument ends at ' ', \t, \r, \n only; blanks are all of isspace */
        {L("a\vb\n"), 1, {"a\vb"}, {3}},
        {L("a\fb\n"), 1, {"a\fb"}, {3}},
        {L("\va\n"), 1, {"a"}, {1}},
        {L("a\rb\r\n"), 2, {"a", "b"}, {1, 1}},
        {L("a\tb\n"), 2, {"a", "b"}, {1, 1}},
        /* a closing quote may be followed by any isspace */
        {L("\"x\"\v\r\n"), 1, {"x"}, {1}},
        {L("\"x\"\ty\n"), 2, {"x", "y"}, {1, 1}},
        {L("'x'\fy\n"), 2, {"x", "y"}, {1, 1}},
        /* high bytes are plain data */
        {L("\xc3\xa9t\xc3\xa9\n"), 1, {"\xc3\xa9t\xc3\xa9"}, {5}},
        /* a double-quoted string can hold a newline escape and single quotes */
        {L("\"it's\"\n"), 1, {"it's"}, {4}},
    };

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct req_result r;
        const struct inline_case *c = &cases[i];
        one(c->in, c->in_len, &lim, &r);
        if (r.st != RESP_REQ_COMMAND)
            fail_msg("case %zu: status %d (%s)", i, (int)r.st, r.err);
        expect_args(&r, c->argc, c->args, c->lens);
        assert_int_equal(r.frame_len, c->in_len);
        result_free(&r);
    }
}

static void test_inline_a_quote_mid_argument_must_close(void **state)
{
    (void)state;
    struct resp_limits lim = lim_auth();
    struct req_result r;
    const char *a[] = {"ab"};

    /* 'a"b' with no closing quote: unbalanced */
    expect_error(S("a\"b\n"), &lim, "ERR Protocol error: unbalanced quotes in request");
    one(S("a\"b\"\n"), &lim, &r);
    expect_args(&r, 1, a, NULL);
    result_free(&r);
}

static void test_inline_errors(void **state)
{
    (void)state;
    struct resp_limits lim = lim_auth();
    static const char e[] = "ERR Protocol error: unbalanced quotes in request";

    expect_error(S("ECHO \"abc\r\n"), &lim, e);
    expect_error(S("ECHO \"a\"b\r\n"), &lim, e);
    expect_error(S("ECHO 'a'b\r\n"), &lim, e);
    expect_error(S("ECHO 'abc\r\n"), &lim, e);
    expect_error(S("ECHO \"abc\\\"\r\n"), &lim, e);
    expect_error(S("ECHO \"a\\\r\n"), &lim, e);
    expect_error(S("ECHO 'a\\'\r\n"), &lim, e);
    expect_error(S("\"\n"), &lim, e);
    expect_error(S("'\n"), &lim, e);
    expect_error(S("\"a\"\"b\"\n"), &lim, e);
    /* the final '\r' is not part of the line, so this closing quote ends it */
    expect_status(S("ECHO \"a\"\r\n"), &lim, RESP_REQ_COMMAND);
}

static void test_inline_too_big(void **state)
{
    (void)state;
    struct resp_limits lim = lim_auth();
    size_t n = RESP_MAX_INLINE + 8;
    char *b = malloc(n);
    struct req_result r;

    assert_non_null(b);
    memset(b, 'a', n);
    expect_status(b, RESP_MAX_INLINE, &lim, RESP_REQ_NEED_MORE);
    expect_error(b, RESP_MAX_INLINE + 1, &lim, "ERR Protocol error: too big inline request");
    /* a line of exactly max_inline bytes before its '\n' is accepted */
    b[RESP_MAX_INLINE] = '\n';
    one(b, RESP_MAX_INLINE + 1, &lim, &r);
    assert_int_equal(r.st, RESP_REQ_COMMAND);
    assert_int_equal(r.argc, 1);
    assert_int_equal(r.lens[0], RESP_MAX_INLINE);
    result_free(&r);
    /* one more and it is refused even if its '\n' has already arrived */
    memset(b, 'a', n);
    b[RESP_MAX_INLINE + 1] = '\n';
    expect_error(b, RESP_MAX_INLINE + 2, &lim, "ERR Protocol error: too big inline request");
    /* a smaller configured limit */
    lim.max_inline = 10;
    expect_error(S("ECHO abcdefg"), &lim, "ERR Protocol error: too big inline request");
    expect_status(S("ECHO abcde\n"), &lim, RESP_REQ_COMMAND);
    expect_error(S("ECHO abcdef\n"), &lim, "ERR Protocol error: too big inline request");
    free(b);
}

static void test_inline_nul(void **state)
{
    (void)state;
    struct resp_limits lim = lim_auth();
    size_t n = RESP_MAX_INLINE + 8;
    char *b = calloc(1, n);

    assert_non_null(b);
    /* Redis finds the '\n' with strchr: a NUL first means it waits, then refuses */
    expect_status(S("PI\0NG\r\n"), &lim, RESP_REQ_NEED_MORE);
    memcpy(b, "PI\0NG\r\n", 7);
    expect_error(b, RESP_MAX_INLINE + 1, &lim, "ERR Protocol error: too big inline request");
    free(b);
}

static void test_inline_max_args(void **state)
{
    (void)state;
    struct resp_limits un = lim_unauth(), au = lim_auth();

    expect_status(S("HELLO 3 AUTH user pass SETNAME a b c d\r\n"), &un, RESP_REQ_COMMAND);
    expect_error(S("HELLO 3 AUTH user pass SETNAME a b c d e\r\n"), &un,
                 "ERR Protocol error: unauthenticated multibulk length");
    au.max_args = 2;
    expect_error(S("a b c\r\n"), &au, "ERR Protocol error: invalid multibulk length");
    expect_status(S("a b\r\n"), &au, RESP_REQ_COMMAND);
}

/* Non-'*' first bytes are all inline, even RESP-looking ones. */
static void test_inline_first_byte(void **state)
{
    (void)state;
    struct resp_limits lim = lim_auth();
    struct req_result r;
    const char *a[] = {"$4"};

    one(S("$4\r\nPING\r\n"), &lim, &r);
    expect_args(&r, 1, a, NULL);
    assert_true(r.is_inline);
    result_free(&r);
}

/* ---------------------------------------------------------------------------------------- */
/* Split at every byte                                                                      */
/* ---------------------------------------------------------------------------------------- */

struct split_case {
    const char *in;
    size_t len;
    bool unauth;
};

static void test_requests_every_prefix(void **state)
{
    (void)state;
    static const struct split_case cases[] = {
        {L("*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nhello\r\n*1\r\n$4\r\nPING\r\n"), false},
        {L("*1\r\n$0\r\n\r\n"), false},
        {L("*2\r\n$3\r\nGET\r\n$10\r\n0123\r\n6789\r\n"), false},
        {L("*2\r\n$4\r\nECHO\r\n$3\r\nabcXY"), false},
        {L("*1\rX$4\rXPING\r\n"), false},
        {L("*0\r\n"), false},
        {L("*-1\r\nPING\r\n"), false},
        {L("*03\r\n"), false},
        {L("*1\r\nX4\r\nPING\r\n"), false},
        {L("*1\r\n$04\r\nPING\r\n"), false},
        {L("*1\r\n$-1\r\n"), false},
        {L("*11\r\n$1\r\na\r\n"), true},
        {L("*1\r\n$16385\r\nabc"), true},
        {L("*2\r\n$4\r\nAUTH\r\n$6\r\nsecret\r\n"), true},
        {L("PING\r\n"), false},
        {L("ECHO \"a\\x41 b\" 'c\\'d'\r\nPING\r\n"), false},
        {L("ECHO \"abc\r\n"), false},
        {L("\r\n"), false},
        {L("   \n"), false},
        {L("PING\r\r\n"), false},
        {L("PI\0NG\r\n"), false},
        {L("*1\0\r\n"), false},
        {L("HELLO 3 AUTH u p a b c d e f g\r\n"), true},
    };

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct resp_limits lim = cases[i].unauth ? lim_unauth() : lim_auth();
        check_every_prefix(cases[i].in, cases[i].len, &lim);
    }
}

static void test_requests_every_prefix_limits(void **state)
{
    (void)state;
    struct resp_limits lim = lim_auth();
    const char in[] = "*2\r\n$3\r\nGET\r\n$30\r\n012345678901234567890123456789\r\n";

    for (size_t m = 1; m < sizeof(in) + 2; m += 3) {
        lim.max_request = m;
        check_every_prefix(in, sizeof(in) - 1, &lim);
    }
    lim = lim_auth();
    lim.max_request = 12;
    check_every_prefix(S("*1\r\n$111111111111111\r\n"), &lim);
    lim = lim_auth();
    lim.max_inline = 8;
    check_every_prefix(S("PING 1234\r\n"), &lim);
    check_every_prefix(S("PING 12\r\n"), &lim);
    check_every_prefix(S("PING 123\n"), &lim);
}

/* ---------------------------------------------------------------------------------------- */
/* Reply framer                                                                             */
/* ---------------------------------------------------------------------------------------- */

#define MAX_FRAMES 64

struct frames {
    size_t n;
    struct resp_frame_info info[MAX_FRAMES];
    size_t end[MAX_FRAMES]; /* absolute offset just after each frame */
    bool error;
    const char *err;
    size_t err_at;
};

/* Feed in in pieces of the given sizes (0 ends the list, the rest goes last). */
static void frame_pieces(const char *in, size_t len, const size_t *pieces, size_t max_bulk,
                         int max_depth, struct frames *out)
{
    struct resp_framer f;
    size_t pos = 0, k = 0;

    memset(out, 0, sizeof(*out));
    resp_framer_init(&f);
    if (max_bulk)
        f.max_bulk = max_bulk;
    if (max_depth)
        f.max_depth = max_depth;
    while (pos < len) {
        size_t piece = pieces != NULL && pieces[k] != 0 ? pieces[k++] : len - pos;
        char *b;
        size_t off = 0;
        if (piece > len - pos)
            piece = len - pos;
        b = dup_exact(in + pos, piece);
        while (off < piece) {
            size_t used = 0;
            struct resp_frame_info info;
            const char *err = NULL;
            enum resp_frame_status st = resp_framer_feed(&f, b + off, piece - off, &used, &info,
                                                         &err);
            assert_true(used <= piece - off);
            if (st == RESP_FRAME_ERROR) {
                out->error = true;
                out->err = err;
                out->err_at = pos + off + used;
                assert_non_null(err);
                free(b);
                resp_framer_deinit(&f);
                return;
            }
            off += used;
            if (st == RESP_FRAME_DONE) {
                assert_true(used > 0);
                assert_true(out->n < MAX_FRAMES);
                out->info[out->n] = info;
                out->end[out->n] = pos + off;
                out->n++;
            } else {
                assert_int_equal(st, RESP_FRAME_MORE);
                assert_int_equal(off, piece);
            }
        }
        free(b);
        pos += piece;
    }
    resp_framer_deinit(&f); /* a frame left open keeps its stack */
}

static void frame_all(const char *in, size_t len, struct frames *out)
{
    frame_pieces(in, len, NULL, 0, 0, out);
}

static bool frames_same(const struct frames *a, const struct frames *b)
{
    if (a->n != b->n || a->error != b->error)
        return false;
    if (a->error && strcmp(a->err, b->err) != 0)
        return false;
    for (size_t i = 0; i < a->n; i++) {
        const struct resp_frame_info *x = &a->info[i], *y = &b->info[i];
        if (a->end[i] != b->end[i] || x->kind != y->kind || x->type != y->type ||
            x->is_error != y->is_error || x->has_head != y->has_head ||
            x->head_len != y->head_len || memcmp(x->head, y->head, x->head_len) != 0 ||
            x->has_last_int != y->has_last_int ||
            (x->has_last_int && x->last_int != y->last_int) || x->elements != y->elements)
            return false;
    }
    return true;
}

/* Byte by byte, and every two-piece split, give the same frames at the same offsets. */
static void check_framer_splits(const char *in, size_t len, size_t max_bulk, int max_depth)
{
    struct frames whole, split;
    size_t *ones = malloc((len + 1) * sizeof(size_t));

    assert_non_null(ones);
    frame_pieces(in, len, NULL, max_bulk, max_depth, &whole);
    for (size_t i = 0; i < len; i++)
        ones[i] = 1;
    ones[len] = 0;
    frame_pieces(in, len, ones, max_bulk, max_depth, &split);
    if (!frames_same(&whole, &split))
        fail_msg("byte-by-byte framing differs (%zu vs %zu frames)", whole.n, split.n);
    for (size_t cut = 1; cut < len; cut++) {
        size_t two[2] = {cut, 0};
        frame_pieces(in, len, two, max_bulk, max_depth, &split);
        if (!frames_same(&whole, &split))
            fail_msg("split at %zu of %zu differs", cut, len);
    }
    free(ones);
}

static void expect_one_frame(const char *in, size_t len, char type, enum resp_frame_kind kind,
                             struct resp_frame_info *info)
{
    struct frames fr;
    frame_all(in, len, &fr);
    if (fr.error)
        fail_msg("unexpected framer error: %s", fr.err);
    assert_int_equal(fr.n, 1);
    assert_int_equal(fr.end[0], len);
    assert_int_equal(fr.info[0].type, type);
    assert_int_equal(fr.info[0].kind, kind);
    if (info != NULL)
        *info = fr.info[0];
    check_framer_splits(in, len, 0, 0);
}

static void expect_frame_error(const char *in, size_t len, size_t max_bulk, int max_depth,
                               const char *why)
{
    struct frames fr;
    frame_pieces(in, len, NULL, max_bulk, max_depth, &fr);
    if (!fr.error)
        fail_msg("expected framer error '%s', got %zu frames", why, fr.n);
    if (why != NULL)
        assert_string_equal(fr.err, why);
    check_framer_splits(in, len, max_bulk, max_depth);
}

static void test_framer_resp2_types(void **state)
{
    (void)state;
    struct resp_frame_info i;

    expect_one_frame(S("+OK\r\n"), '+', RESP_FRAME_REPLY, &i);
    assert_false(i.is_error);
    assert_int_equal(i.elements, 0);
    assert_false(i.has_head);
    expect_one_frame(S("-ERR unknown command 'x'\r\n"), '-', RESP_FRAME_REPLY, &i);
    assert_true(i.is_error);
    expect_one_frame(S(":123\r\n"), ':', RESP_FRAME_REPLY, &i);
    assert_false(i.has_last_int); /* only inside a top-level aggregate */
    expect_one_frame(S(":-9223372036854775808\r\n"), ':', RESP_FRAME_REPLY, NULL);
    expect_one_frame(S("$5\r\nhello\r\n"), '$', RESP_FRAME_REPLY, NULL);
    expect_one_frame(S("$0\r\n\r\n"), '$', RESP_FRAME_REPLY, NULL);
    expect_one_frame(S("$6\r\na\r\n\r\nb\r\n"), '$', RESP_FRAME_REPLY, NULL);
    expect_one_frame(S("$-1\r\n"), '$', RESP_FRAME_REPLY, NULL);
    expect_one_frame(S("*-1\r\n"), '*', RESP_FRAME_REPLY, &i);
    assert_int_equal(i.elements, 0);
    expect_one_frame(S("*0\r\n"), '*', RESP_FRAME_REPLY, &i);
    assert_int_equal(i.elements, 0);
    expect_one_frame(S("*3\r\n$1\r\na\r\n:2\r\n*2\r\n+x\r\n$-1\r\n"), '*', RESP_FRAME_REPLY, &i);
    assert_int_equal(i.elements, 3);
    assert_true(i.has_last_int);
    assert_int_equal(i.last_int, 2);
    assert_true(i.has_head);
    assert_int_equal(i.head_len, 1);
    assert_memory_equal(i.head, "a", 1);
    /* a long simple string needs no buffer */
    {
        size_t n = 200000;
        char *b = malloc(n);
        struct frames fr;
        assert_non_null(b);
        b[0] = '+';
        memset(b + 1, 'x', n - 3);
        memcpy(b + n - 2, "\r\n", 2);
        frame_all(b, n, &fr);
        assert_false(fr.error);
        assert_int_equal(fr.n, 1);
        assert_int_equal(fr.end[0], n);
        b[0] = '-';
        frame_all(b, n, &fr);
        assert_int_equal(fr.n, 1);
        assert_true(fr.info[0].is_error);
        free(b);
    }
}

static void test_framer_resp3_types(void **state)
{
    (void)state;
    struct resp_frame_info i;

    expect_one_frame(S("_\r\n"), '_', RESP_FRAME_REPLY, NULL);
    expect_one_frame(S(",3.14\r\n"), ',', RESP_FRAME_REPLY, NULL);
    expect_one_frame(S(",-1.5e+300\r\n"), ',', RESP_FRAME_REPLY, NULL);
    expect_one_frame(S(",inf\r\n"), ',', RESP_FRAME_REPLY, NULL);
    expect_one_frame(S(",-inf\r\n"), ',', RESP_FRAME_REPLY, NULL);
    expect_one_frame(S(",nan\r\n"), ',', RESP_FRAME_REPLY, NULL);
    expect_one_frame(S("#t\r\n"), '#', RESP_FRAME_REPLY, NULL);
    expect_one_frame(S("#f\r\n"), '#', RESP_FRAME_REPLY, NULL);
    expect_one_frame(S("!21\r\nSYNTAX invalid syntax\r\n"), '!', RESP_FRAME_REPLY, &i);
    assert_true(i.is_error);
    expect_one_frame(S("=15\r\ntxt:Some string\r\n"), '=', RESP_FRAME_REPLY, &i);
    assert_false(i.is_error);
    expect_one_frame(S("(3492890328409238509324850943850943825024385\r\n"), '(',
                     RESP_FRAME_REPLY, NULL);
    expect_one_frame(S("(-12\r\n"), '(', RESP_FRAME_REPLY, NULL);
    /* what a Lua script hands Redis is written as it is (CR and LF become spaces) */
    expect_one_frame(S("(123  123\r\n"), '(', RESP_FRAME_REPLY, NULL);
    expect_one_frame(S("(\r\n"), '(', RESP_FRAME_REPLY, NULL);
    expect_one_frame(S("%2\r\n+first\r\n:1\r\n+second\r\n:2\r\n"), '%', RESP_FRAME_REPLY, &i);
    assert_int_equal(i.elements, 4);
    assert_int_equal(i.last_int, 2);
    assert_true(i.has_head);
    assert_int_equal(i.head_len, 5);
    assert_memory_equal(i.head, "first", 5);
    expect_one_frame(S("%0\r\n"), '%', RESP_FRAME_REPLY, &i);
    assert_int_equal(i.elements, 0);
    expect_one_frame(S("~3\r\n+a\r\n#t\r\n,1.5\r\n"), '~', RESP_FRAME_REPLY, &i);
    assert_int_equal(i.elements, 3);
    expect_one_frame(S("*2\r\n%1\r\n+k\r\n~1\r\n_\r\n(1\r\n"), '*', RESP_FRAME_REPLY, &i);
    assert_int_equal(i.elements, 2);
    assert_false(i.has_head);
    assert_false(i.has_last_int);
}

static void test_framer_push(void **state)
{
    (void)state;
    struct resp_frame_info i;

    expect_one_frame(S(">3\r\n$7\r\nmessage\r\n$7\r\nchannel\r\n$5\r\nhello\r\n"), '>',
                     RESP_FRAME_PUSH, &i);
    assert_true(i.has_head);
    assert_int_equal(i.head_len, 7);
    assert_memory_equal(i.head, "message", 7);
    assert_int_equal(i.elements, 3);
    assert_false(i.has_last_int);
    expect_one_frame(S(">3\r\n$9\r\nsubscribe\r\n$3\r\nfoo\r\n:1\r\n"), '>', RESP_FRAME_PUSH, &i);
    assert_memory_equal(i.head, "subscribe", 9);
    assert_true(i.has_last_int);
    assert_int_equal(i.last_int, 1);
    expect_one_frame(S(">2\r\n$10\r\ninvalidate\r\n*1\r\n$3\r\nkey\r\n"), '>', RESP_FRAME_PUSH,
                     &i);
    assert_int_equal(i.head_len, 10);
    /* a push nested in an aggregate is just an element */
    expect_one_frame(S("*1\r\n>1\r\n:1\r\n"), '*', RESP_FRAME_REPLY, NULL);
}

static void test_framer_subscribe_head(void **state)
{
    (void)state;
    struct resp_frame_info i;
    struct frames fr;
    const char two[] = "*3\r\n$9\r\nsubscribe\r\n$3\r\nfoo\r\n:1\r\n"
                       "*3\r\n$9\r\nsubscribe\r\n$3\r\nbar\r\n:2\r\n"
                       "*3\r\n$7\r\nmessage\r\n$3\r\nfoo\r\n$2\r\nhi\r\n"
                       "*4\r\n$8\r\npmessage\r\n$2\r\nf*\r\n$3\r\nfoo\r\n$2\r\nhi\r\n"
                       "*2\r\n$4\r\npong\r\n$0\r\n\r\n";

    expect_one_frame(S("*3\r\n$9\r\nsubscribe\r\n$3\r\nfoo\r\n:1\r\n"), '*', RESP_FRAME_REPLY,
                     &i);
    assert_true(i.has_head);
    assert_int_equal(i.head_len, 9);
    assert_memory_equal(i.head, "subscribe", 9);
    assert_true(i.has_last_int);
    assert_int_equal(i.last_int, 1);
    assert_int_equal(i.elements, 3);

    frame_all(two, sizeof(two) - 1, &fr);
    assert_false(fr.error);
    assert_int_equal(fr.n, 5);
    assert_int_equal(fr.info[1].last_int, 2);
    assert_memory_equal(fr.info[1].head, "subscribe", 9);
    assert_int_equal(fr.info[2].head_len, 7);
    assert_false(fr.info[2].has_last_int);
    assert_int_equal(fr.info[3].head_len, 8);
    assert_int_equal(fr.info[3].elements, 4);
    assert_int_equal(fr.info[4].head_len, 4);
    assert_int_equal(fr.end[0], 32);
    assert_int_equal(fr.end[4], sizeof(two) - 1);
    check_framer_splits(two, sizeof(two) - 1, 0, 0);

    /* unsubscribe from nothing: a null channel */
    expect_one_frame(S("*3\r\n$11\r\nunsubscribe\r\n$-1\r\n:0\r\n"), '*', RESP_FRAME_REPLY, &i);
    assert_int_equal(i.last_int, 0);
    assert_true(i.has_last_int);
}

static void test_framer_head_rules(void **state)
{
    (void)state;
    struct resp_frame_info i;

    /* 24 bytes fit, 25 do not */
    expect_one_frame(S("*1\r\n$24\r\n012345678901234567890123\r\n"), '*', RESP_FRAME_REPLY, &i);
    assert_true(i.has_head);
    assert_int_equal(i.head_len, 24);
    assert_memory_equal(i.head, "012345678901234567890123", 24);
    expect_one_frame(S("*1\r\n$25\r\n0123456789012345678901234\r\n"), '*', RESP_FRAME_REPLY, &i);
    assert_false(i.has_head);
    assert_int_equal(i.head_len, 0);
    expect_one_frame(S("*1\r\n+012345678901234567890123\r\n"), '*', RESP_FRAME_REPLY, &i);
    assert_true(i.has_head);
    assert_int_equal(i.head_len, 24);
    expect_one_frame(S("*1\r\n+0123456789012345678901234\r\n"), '*', RESP_FRAME_REPLY, &i);
    assert_false(i.has_head);
    /* verbatim: without the "txt:" prefix */
    expect_one_frame(S("*2\r\n=8\r\ntxt:pong\r\n:3\r\n"), '*', RESP_FRAME_REPLY, &i);
    assert_true(i.has_head);
    assert_int_equal(i.head_len, 4);
    assert_memory_equal(i.head, "pong", 4);
    expect_one_frame(S("*1\r\n=28\r\ntxt:012345678901234567890123\r\n"), '*', RESP_FRAME_REPLY,
                     &i);
    assert_int_equal(i.head_len, 24);
    expect_one_frame(S("*1\r\n=4\r\nmkd:\r\n"), '*', RESP_FRAME_REPLY, &i);
    assert_true(i.has_head);
    assert_int_equal(i.head_len, 0);
    /* empty string head */
    expect_one_frame(S("*1\r\n$0\r\n\r\n"), '*', RESP_FRAME_REPLY, &i);
    assert_true(i.has_head);
    assert_int_equal(i.head_len, 0);
    /* not strings: no head */
    expect_one_frame(S("*1\r\n:1\r\n"), '*', RESP_FRAME_REPLY, &i);
    assert_false(i.has_head);
    expect_one_frame(S("*1\r\n-ERR x\r\n"), '*', RESP_FRAME_REPLY, &i);
    assert_false(i.has_head);
    expect_one_frame(S("*1\r\n$-1\r\n"), '*', RESP_FRAME_REPLY, &i);
    assert_false(i.has_head);
    expect_one_frame(S("*1\r\n*1\r\n$1\r\na\r\n"), '*', RESP_FRAME_REPLY, &i);
    assert_false(i.has_head);
    expect_one_frame(S("*1\r\n$?\r\n;1\r\na\r\n;0\r\n"), '*', RESP_FRAME_REPLY, &i);
    assert_false(i.has_head);
    /* only the first element is a head */
    expect_one_frame(S("*2\r\n:1\r\n$3\r\nabc\r\n"), '*', RESP_FRAME_REPLY, &i);
    assert_false(i.has_head);
    /* last_int: the last integer directly in the top-level aggregate */
    expect_one_frame(S("*3\r\n:7\r\n*1\r\n:5\r\n+x\r\n"), '*', RESP_FRAME_REPLY, &i);
    assert_true(i.has_last_int);
    assert_int_equal(i.last_int, 7);
    expect_one_frame(S("*2\r\n:-3\r\n:9\r\n"), '*', RESP_FRAME_REPLY, &i);
    assert_int_equal(i.last_int, 9);
}

static void test_framer_streamed(void **state)
{
    (void)state;
    struct resp_frame_info i;

    expect_one_frame(S("$?\r\n;4\r\nHell\r\n;5\r\no wor\r\n;1\r\nd\r\n;0\r\n"), '$',
                     RESP_FRAME_REPLY, NULL);
    expect_one_frame(S("$?\r\n;0\r\n"), '$', RESP_FRAME_REPLY, NULL);
    expect_one_frame(S("$?\r\n;3\r\n\r\n;\r\n;0\r\n"), '$', RESP_FRAME_REPLY, NULL);
    expect_one_frame(S("*?\r\n:1\r\n:2\r\n:3\r\n.\r\n"), '*', RESP_FRAME_REPLY, &i);
    assert_int_equal(i.elements, 3);
    assert_int_equal(i.last_int, 3);
    expect_one_frame(S("*?\r\n.\r\n"), '*', RESP_FRAME_REPLY, &i);
    assert_int_equal(i.elements, 0);
    expect_one_frame(S("%?\r\n+a\r\n:1\r\n+b\r\n:2\r\n.\r\n"), '%', RESP_FRAME_REPLY, &i);
    assert_int_equal(i.elements, 4);
    assert_memory_equal(i.head, "a", 1);
    expect_one_frame(S("~?\r\n+a\r\n+b\r\n.\r\n"), '~', RESP_FRAME_REPLY, &i);
    assert_int_equal(i.elements, 2);
    expect_one_frame(S(">?\r\n$7\r\nmessage\r\n$1\r\nc\r\n$1\r\nm\r\n.\r\n"), '>',
                     RESP_FRAME_PUSH, &i);
    assert_memory_equal(i.head, "message", 7);
    /* nesting streamed in counted and the reverse */
    expect_one_frame(S("*2\r\n*?\r\n:1\r\n.\r\n$?\r\n;1\r\nx\r\n;0\r\n"), '*', RESP_FRAME_REPLY,
                     &i);
    assert_int_equal(i.elements, 2);
    assert_false(i.has_last_int);
    expect_one_frame(S("*?\r\n*2\r\n:1\r\n:2\r\n%?\r\n.\r\n:5\r\n.\r\n"), '*', RESP_FRAME_REPLY,
                     &i);
    assert_int_equal(i.elements, 3);
    assert_int_equal(i.last_int, 5);
}

static void test_framer_attributes(void **state)
{
    (void)state;
    struct frames fr;
    struct resp_frame_info i;
    const char top[] = "|1\r\n+key-popularity\r\n%2\r\n$1\r\na\r\n,0.1923\r\n$1\r\nb\r\n,0.0012\r\n"
                       "*2\r\n:2039123\r\n:9543892\r\n";

    /* top level: its own frame, then the reply it describes */
    frame_all(top, sizeof(top) - 1, &fr);
    assert_false(fr.error);
    assert_int_equal(fr.n, 2);
    assert_int_equal(fr.info[0].kind, RESP_FRAME_ATTRIBUTE);
    assert_int_equal(fr.info[0].type, '|');
    assert_int_equal(fr.info[1].kind, RESP_FRAME_REPLY);
    assert_int_equal(fr.info[1].type, '*');
    assert_int_equal(fr.info[1].elements, 2);
    assert_int_equal(fr.info[1].last_int, 9543892);
    assert_int_equal(fr.end[0], sizeof(top) - 1 - strlen("*2\r\n:2039123\r\n:9543892\r\n"));
    check_framer_splits(top, sizeof(top) - 1, 0, 0);

    /* nested: part of the aggregate and not one of its elements */
    expect_one_frame(S("*2\r\n|1\r\n+ttl\r\n:3600\r\n:1\r\n:2\r\n"), '*', RESP_FRAME_REPLY, &i);
    assert_int_equal(i.elements, 2);
    assert_int_equal(i.last_int, 2);
    /* before the first element: the head is the element, not the attribute's key */
    expect_one_frame(S("*2\r\n|1\r\n+key\r\n+val\r\n$9\r\nsubscribe\r\n:1\r\n"), '*',
                     RESP_FRAME_REPLY, &i);
    assert_true(i.has_head);
    assert_int_equal(i.head_len, 9);
    assert_memory_equal(i.head, "subscribe", 9);
    assert_int_equal(i.elements, 2);
    assert_int_equal(i.last_int, 1);
    /* the integer inside the attribute is not a direct element */
    expect_one_frame(S("*1\r\n|1\r\n+k\r\n:77\r\n+v\r\n"), '*', RESP_FRAME_REPLY, &i);
    assert_false(i.has_last_int);
    assert_int_equal(i.elements, 1);
    /* an empty attribute, an attribute before the last element, and in a streamed array */
    expect_one_frame(S("*1\r\n|0\r\n:1\r\n"), '*', RESP_FRAME_REPLY, &i);
    assert_int_equal(i.elements, 1);
    expect_one_frame(S("*?\r\n:1\r\n|1\r\n+a\r\n+b\r\n:2\r\n.\r\n"), '*', RESP_FRAME_REPLY, &i);
    assert_int_equal(i.elements, 2);
    /* in a map: the attribute does not change key/value parity */
    expect_one_frame(S("%?\r\n+k\r\n|1\r\n+a\r\n+b\r\n:1\r\n.\r\n"), '%', RESP_FRAME_REPLY, &i);
    assert_int_equal(i.elements, 2);
    /* nested in a nested array, and an attribute inside an attribute */
    expect_one_frame(S("*1\r\n*1\r\n|1\r\n+a\r\n|1\r\n+x\r\n+y\r\n+b\r\n:1\r\n"), '*',
                     RESP_FRAME_REPLY, &i);
    assert_int_equal(i.elements, 1);
    /* a top-level attribute before a push */
    frame_all(S("|1\r\n+a\r\n+b\r\n>2\r\n+pong\r\n+x\r\n"), &fr);
    assert_int_equal(fr.n, 2);
    assert_int_equal(fr.info[0].kind, RESP_FRAME_ATTRIBUTE);
    assert_int_equal(fr.info[1].kind, RESP_FRAME_PUSH);
}

static void test_framer_multiple_frames(void **state)
{
    (void)state;
    struct resp_framer f;
    const char in[] = "+OK\r\n:1\r\n$3\r\nabc\r\n*2\r\n+a\r\n+b\r\n_\r\n>2\r\n+p\r\n+q\r\n-ERR x\r\n";
    static const size_t ends[] = {5, 9, 18, 30, 33, 45, 53};
    static const char types[] = {'+', ':', '$', '*', '_', '>', '-'};
    size_t pos = 0;
    struct resp_frame_info info;
    const char *err = NULL;
    char *b = dup_exact(in, sizeof(in) - 1);

    resp_framer_init(&f);
    for (size_t k = 0; k < sizeof(ends) / sizeof(ends[0]); k++) {
        size_t used = 0;
        assert_int_equal(resp_framer_feed(&f, b + pos, sizeof(in) - 1 - pos, &used, &info, &err),
                         RESP_FRAME_DONE);
        pos += used;
        assert_int_equal(pos, ends[k]);
        assert_int_equal(info.type, types[k]);
    }
    assert_int_equal(pos, sizeof(in) - 1);
    /* nothing left: MORE with nothing consumed */
    {
        size_t used = 99;
        assert_int_equal(resp_framer_feed(&f, b + pos, 0, &used, &info, &err), RESP_FRAME_MORE);
        assert_int_equal(used, 0);
    }
    check_framer_splits(in, sizeof(in) - 1, 0, 0);
    free(b);
}

static void test_framer_depth(void **state)
{
    (void)state;
    char buf[1024];
    size_t n = 0;
    struct frames fr;

    /* Deep replies pass (a Lua script returning a recursive table nests thousands of levels);
     * the stack leaves the framer's inline levels for the heap and is given back at the end. */
    enum { DEEP = 20000 };
    char *deep = malloc(DEEP * 4 + 16);
    assert_non_null(deep);
    for (int d = 0; d < DEEP; d++)
        memcpy(deep + n + 4 * (size_t)d, "*1\r\n", 4);
    n = DEEP * 4;
    memcpy(deep + n, ":1\r\n", 4);
    n += 4;
    frame_all(deep, n, &fr);
    assert_false(fr.error);
    assert_int_equal(fr.n, 1);
    assert_int_equal(fr.end[0], n);
    assert_int_equal(fr.info[0].elements, 1);
    /* 40 levels, cut anywhere around the edge of the inline levels */
    memcpy(deep + 40 * 4, ":1\r\n", 4);
    check_framer_splits(deep, 40 * 4 + 4, 0, 0);
    memcpy(deep + 40 * 4, "*1\r\n", 4);
    /* the limit, when one is set, still holds */
    expect_frame_error(deep, 200 * 4, 0, 150, "nesting too deep");
    free(deep);
    n = 0;
    (void)buf;
    /* a smaller limit, for every aggregate type, streamed or not, even empty */
    expect_frame_error(S("*1\r\n*1\r\n*1\r\n:1\r\n"), 0, 2, "nesting too deep");
    expect_frame_error(S("*1\r\n%1\r\n~0\r\n"), 0, 2, "nesting too deep");
    expect_frame_error(S(">1\r\n*?\r\n"), 0, 1, "nesting too deep");
    expect_frame_error(S("*1\r\n|1\r\n+a\r\n+b\r\n:1\r\n"), 0, 1, "nesting too deep");
    frame_pieces(S("*1\r\n*1\r\n:1\r\n"), NULL, 0, 2, &fr);
    assert_false(fr.error);
    assert_int_equal(fr.n, 1);
}

static void test_framer_bulk_limits(void **state)
{
    (void)state;
    struct frames fr;

    expect_frame_error(S("$11\r\n"), 10, 0, "bulk too large");
    expect_frame_error(S("!11\r\n"), 10, 0, "bulk too large");
    expect_frame_error(S("=11\r\n"), 10, 0, "bulk too large");
    expect_frame_error(S("*1\r\n$11\r\n"), 10, 0, "bulk too large");
    expect_frame_error(S("$?\r\n;6\r\nabcdef\r\n;5\r\n"), 10, 0, "bulk too large");
    expect_frame_error(S("$?\r\n;11\r\n"), 10, 0, "bulk too large");
    expect_frame_error(S("+abcdefghijk\r\n"), 10, 0, "simple string too long");
    expect_frame_error(S("-abcdefghijk\r\n"), 10, 0, "simple string too long");
    frame_pieces(S("$10\r\n0123456789\r\n+0123456789\r\n$?\r\n;5\r\n01234\r\n;5\r\n56789\r\n;0\r\n"),
                 NULL, 10, 0, &fr);
    assert_false(fr.error);
    assert_int_equal(fr.n, 3);
    /* the default is proto-max-bulk-len */
    expect_frame_error(S("$536870913\r\n"), 0, 0, "bulk too large");
    frame_all(S("$536870912\r\n"), &fr);
    assert_false(fr.error);
    assert_int_equal(fr.n, 0);
}

static void test_framer_malformed(void **state)
{
    (void)state;
    struct resp_framer f;
    size_t used;
    struct resp_frame_info info;
    const char *err = NULL;

    expect_frame_error(S("x"), 0, 0, "bad type byte");
    expect_frame_error(S(";3\r\n"), 0, 0, "bad type byte");
    expect_frame_error(S("*1\r\n\x00"), 0, 0, "bad type byte");
    expect_frame_error(S(".\r\n"), 0, 0, "unexpected end marker");
    expect_frame_error(S("*1\r\n.\r\n"), 0, 0, "unexpected end marker");
    expect_frame_error(S("*?\r\n.x\r\n"), 0, 0, "bad end marker");
    expect_frame_error(S("%?\r\n+k\r\n.\r\n"), 0, 0, "streamed map ends after a key");
    expect_frame_error(S(":12a\r\n"), 0, 0, "bad integer");
    expect_frame_error(S(":\r\n"), 0, 0, "bad integer");
    expect_frame_error(S(":-\r\n"), 0, 0, "bad integer");
    expect_frame_error(S(":9223372036854775808\r\n"), 0, 0, "bad integer");
    expect_frame_error(S("$abc\r\n"), 0, 0, "bad length");
    expect_frame_error(S("$-2\r\n"), 0, 0, "bad length");
    expect_frame_error(S("!-1\r\n"), 0, 0, "bad length");
    expect_frame_error(S("*-2\r\n"), 0, 0, "bad length");
    expect_frame_error(S("%-1\r\n"), 0, 0, "bad length");
    expect_frame_error(S("%4611686018427387904\r\n"), 0, 0, "bad length");
    expect_frame_error(S("|?\r\n"), 0, 0, "bad length");
    expect_frame_error(S("!?\r\n"), 0, 0, "bad length");
    expect_frame_error(S("=3\r\n"), 0, 0, "bad verbatim string");
    expect_frame_error(S("#x\r\n"), 0, 0, "bad boolean");
    expect_frame_error(S("#\r\n"), 0, 0, "bad boolean");
    expect_frame_error(S("_x\r\n"), 0, 0, "bad null");
    expect_frame_error(S(",\r\n"), 0, 0, "bad double");
    expect_frame_error(S(",1 2\r\n"), 0, 0, "bad double");
    expect_frame_error(S("(1\n2\r\n"), 0, 0, "bad big number");
    expect_frame_error(S("+OK\rX"), 0, 0, "bad line terminator");
    expect_frame_error(S(":1\rX"), 0, 0, "bad line terminator");
    expect_frame_error(S("+O\nK\r\n"), 0, 0, "bad simple string");
    expect_frame_error(S("$3\r\nabcXY"), 0, 0, "bulk not followed by CRLF");
    expect_frame_error(S("$3\r\nabc\rY"), 0, 0, "bulk not followed by CRLF");
    expect_frame_error(S("$?\r\n:1\r\n"), 0, 0, "bad streamed string chunk");
    expect_frame_error(S("$?\r\n;-1\r\n"), 0, 0, "bad chunk length");
    expect_frame_error(S("$?\r\n;?\r\n"), 0, 0, "bad chunk length");
    expect_frame_error(S(":11111111111111111111111111111111111111111111111111111111111111111\r\n"),
                       0, 0, "header line too long");

    /* the error is sticky */
    resp_framer_init(&f);
    assert_int_equal(resp_framer_feed(&f, S("?"), &used, &info, &err), RESP_FRAME_ERROR);
    assert_string_equal(err, "bad type byte");
    err = NULL;
    assert_int_equal(resp_framer_feed(&f, S("+OK\r\n"), &used, &info, &err), RESP_FRAME_ERROR);
    assert_string_equal(err, "bad type byte");
    assert_int_equal(used, 0);
}

static void test_framer_incomplete(void **state)
{
    (void)state;
    struct frames fr;

    /* a valid frame followed by an incomplete one: one frame, no error */
    frame_all(S("*1\r\n$3\r\nabc\r\n*"), &fr);
    assert_false(fr.error);
    assert_int_equal(fr.n, 1);
    frame_all(S("*2\r\n:1\r\n"), &fr);
    assert_false(fr.error);
    assert_int_equal(fr.n, 0);
}

static void test_framer_large_bulk(void **state)
{
    (void)state;
    struct resp_framer f;
    static char piece[4096];
    const uint64_t total = 1024ull * 1024 * 1024;
    const char hdr[] = "*2\r\n$1073741824\r\n";
    struct resp_frame_info info;
    const char *err = NULL;
    size_t used = 0;

    memset(piece, 'v', sizeof(piece));
    resp_framer_init(&f);
    f.max_bulk = 2 * total;
    assert_int_equal(resp_framer_feed(&f, hdr, sizeof(hdr) - 1, &used, &info, &err),
                     RESP_FRAME_MORE);
    assert_int_equal(used, sizeof(hdr) - 1);
    for (uint64_t done = 0; done < total; done += sizeof(piece)) {
        enum resp_frame_status st = resp_framer_feed(&f, piece, sizeof(piece), &used, &info, &err);
        if (st != RESP_FRAME_MORE || used != sizeof(piece))
            fail_msg("at %llu: status %d", (unsigned long long)done, (int)st);
    }
    assert_int_equal(resp_framer_feed(&f, S("\r\n:5\r\n+next\r\n"), &used, &info, &err),
                     RESP_FRAME_DONE);
    assert_int_equal(used, 6);
    assert_int_equal(info.elements, 2);
    assert_false(info.has_head);
    assert_int_equal(info.last_int, 5);
    assert_int_equal(resp_framer_feed(&f, S("+next\r\n"), &used, &info, &err), RESP_FRAME_DONE);
    assert_int_equal(info.type, '+');
}

static void test_framer_all_splits_mixed(void **state)
{
    (void)state;
    const char in[] =
        "+OK\r\n-ERR x\r\n:42\r\n$3\r\nfoo\r\n$-1\r\n*-1\r\n_\r\n,1.5\r\n#f\r\n"
        "!3\r\nERR\r\n=7\r\ntxt:abc\r\n(123\r\n"
        "%1\r\n$1\r\nk\r\n*2\r\n:1\r\n~1\r\n+s\r\n"
        "|1\r\n+a\r\n+b\r\n"
        ">4\r\n$8\r\npmessage\r\n$1\r\np\r\n$1\r\nc\r\n$?\r\n;2\r\nhi\r\n;0\r\n"
        "*?\r\n|1\r\n+x\r\n+y\r\n:1\r\n%?\r\n+a\r\n*?\r\n.\r\n.\r\n.\r\n"
        "*3\r\n$9\r\nsubscribe\r\n$3\r\nfoo\r\n:1\r\n";
    struct frames fr;

    frame_all(in, sizeof(in) - 1, &fr);
    assert_false(fr.error);
    assert_int_equal(fr.n, 17);
    assert_int_equal(fr.info[14].kind, RESP_FRAME_PUSH);
    assert_int_equal(fr.info[13].kind, RESP_FRAME_ATTRIBUTE);
    assert_int_equal(fr.info[15].elements, 2);
    assert_int_equal(fr.info[16].last_int, 1);
    check_framer_splits(in, sizeof(in) - 1, 0, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_mb_simple),
        cmocka_unit_test(test_mb_views_point_into_input),
        cmocka_unit_test(test_mb_binary_and_empty),
        cmocka_unit_test(test_mb_skip),
        cmocka_unit_test(test_mb_noncanonical),
        cmocka_unit_test(test_mb_reencode),
        cmocka_unit_test(test_encode),
        cmocka_unit_test(test_mb_count_errors),
        cmocka_unit_test(test_mb_nul),
        cmocka_unit_test(test_mb_element_errors),
        cmocka_unit_test(test_mb_bulk_errors),
        cmocka_unit_test(test_mb_unauth_limits),
        cmocka_unit_test(test_mb_auth_limits),
        cmocka_unit_test(test_mb_max_request),
        cmocka_unit_test(test_mb_too_big_headers),
        cmocka_unit_test(test_mb_pipeline),
        cmocka_unit_test(test_mb_many_args_and_reuse),
        cmocka_unit_test(test_mb_large_value),
        cmocka_unit_test(test_mb_limits_change_restarts),
        cmocka_unit_test(test_inline_basic),
        cmocka_unit_test(test_inline_skip),
        cmocka_unit_test(test_inline_quoting),
        cmocka_unit_test(test_inline_a_quote_mid_argument_must_close),
        cmocka_unit_test(test_inline_errors),
        cmocka_unit_test(test_inline_too_big),
        cmocka_unit_test(test_inline_nul),
        cmocka_unit_test(test_inline_max_args),
        cmocka_unit_test(test_inline_first_byte),
        cmocka_unit_test(test_requests_every_prefix),
        cmocka_unit_test(test_requests_every_prefix_limits),
        cmocka_unit_test(test_framer_resp2_types),
        cmocka_unit_test(test_framer_resp3_types),
        cmocka_unit_test(test_framer_push),
        cmocka_unit_test(test_framer_subscribe_head),
        cmocka_unit_test(test_framer_head_rules),
        cmocka_unit_test(test_framer_streamed),
        cmocka_unit_test(test_framer_attributes),
        cmocka_unit_test(test_framer_multiple_frames),
        cmocka_unit_test(test_framer_depth),
        cmocka_unit_test(test_framer_bulk_limits),
        cmocka_unit_test(test_framer_malformed),
        cmocka_unit_test(test_framer_incomplete),
        cmocka_unit_test(test_framer_large_bulk),
        cmocka_unit_test(test_framer_all_splits_mixed),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
