/*
 * Unit tests for restcodec, the Upstash REST codec core.
 *
 * Every input (body, path, query, reply frame) is copied into a heap block of exactly its size
 * and freed after the call (decoded arguments are checked before that, except the path form's
 * body, which is a view by contract), so AddressSanitizer reports a read past the end.
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

#include "respguard/restcodec.h"

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define LIT(s) s, sizeof(s) - 1

static char *exact(const char *s, size_t n)
{
    char *p = malloc(n ? n : 1);
    assert_non_null(p);
    if (n)
        memcpy(p, s, n);
    return p;
}

/* ---------------------------------------------------------------------------------------- */
/* Decoding harness                                                                         */
/* ---------------------------------------------------------------------------------------- */

enum form { JSON1, JSONN };

struct dec {
    struct restcodec_decoder d;
    enum restcodec_status st;
    const char *err;
};

static int dec_setup(void **state)
{
    struct dec *x = calloc(1, sizeof *x);
    restcodec_decoder_init(&x->d);
    *state = x;
    return 0;
}

static int dec_teardown(void **state)
{
    struct dec *x = *state;
    restcodec_decoder_deinit(&x->d);
    free(x);
    return 0;
}

/* Decodes body; the arguments must then equal want[] (NUL-free C strings) for ncmds == 1. */
static void run(struct dec *x, enum form f, const char *body, size_t len,
                const struct restcodec_limits *lim)
{
    char *b = exact(body, len);
    x->err = NULL;
    x->st = f == JSON1 ? restcodec_decode_command(&x->d, b, len, lim, &x->err)
                       : restcodec_decode_commands(&x->d, b, len, lim, &x->err);
    free(b); /* arguments live in the arena, not in the body */
    if (x->st == RESTCODEC_OK)
        assert_null(x->err);
    else {
        assert_non_null(x->err);
        assert_int_equal(x->d.ncmds, 0);
    }
}

static void expect_args(const struct restcodec_cmd *c, size_t n, const char *const *want)
{
    if (c->argc != n)
        fail_msg("argc %zu, want %zu", c->argc, n);
    for (size_t i = 0; i < n; i++) {
        if (c->argv[i].len != strlen(want[i]) || memcmp(c->argv[i].ptr, want[i], c->argv[i].len) != 0)
            fail_msg("arg %zu is '%.*s', want '%s'", i, (int)c->argv[i].len, c->argv[i].ptr, want[i]);
    }
}

#define EXPECT_ARGS(cmd, ...)                                                                \
    do {                                                                                     \
        static const char *const want_[] = {__VA_ARGS__};                                    \
        expect_args((cmd), ARRAY_SIZE(want_), want_);                                        \
    } while (0)

static void expect_err(struct dec *x, const char *needle)
{
    assert_int_equal(x->st, RESTCODEC_BAD_REQUEST);
    if (strstr(x->err, needle) == NULL)
        fail_msg("error '%s' does not contain '%s'", x->err, needle);
    assert_true(strncmp(x->err, "ERR ", 4) == 0);
    assert_true(strlen(x->err) < 96);
}

/* ---------------------------------------------------------------------------------------- */
/* JSON command bodies                                                                      */
/* ---------------------------------------------------------------------------------------- */

static void test_json_command(void **state)
{
    struct dec *x = *state;
    run(x, JSON1, LIT("[\"SET\",\"k\",\"v\",\"EX\",100]"), NULL);
    assert_int_equal(x->st, RESTCODEC_OK);
    assert_int_equal(x->d.ncmds, 1);
    EXPECT_ARGS(&x->d.cmds[0], "SET", "k", "v", "EX", "100");

    /* Whitespace anywhere JSON allows it; an empty string argument. */
    run(x, JSON1, LIT(" \r\n\t[ \"get\" ,\n\"\" ] \n"), NULL);
    assert_int_equal(x->st, RESTCODEC_OK);
    EXPECT_ARGS(&x->d.cmds[0], "get", "");
}

/* Numbers reach Redis as their JSON text, as written (what JavaScript's JSON.stringify made
 * them: 1e+21, 1e-7), not as jansson's double or long long. */
static void test_json_numbers(void **state)
{
    struct dec *x = *state;
    run(x, JSON1,
        LIT("[\"ZADD\",\"z\",1.5,\"a\",-0,\"b\",1e+21,\"c\",12345678901234567890123,\"d\",1E-7,"
            "\"e\",-12.50,0,\"f\",9223372036854775807,-9223372036854775808]"),
        NULL);
    assert_int_equal(x->st, RESTCODEC_OK);
    EXPECT_ARGS(&x->d.cmds[0], "ZADD", "z", "1.5", "a", "-0", "b", "1e+21", "c",
                "12345678901234567890123", "d", "1E-7", "e", "-12.50", "0", "f",
                "9223372036854775807", "-9223372036854775808");

    /* Strings that look like numbers, and numbers inside strings, do not move the cursor. */
    run(x, JSONN, LIT("[[\"SET\",\"12\",\"-3 [4] \\\"5\\\"\",6],[\"INCRBY\",\"n\",-7]]"), NULL);
    assert_int_equal(x->st, RESTCODEC_OK);
    assert_int_equal(x->d.ncmds, 2);
    EXPECT_ARGS(&x->d.cmds[0], "SET", "12", "-3 [4] \"5\"", "6");
    EXPECT_ARGS(&x->d.cmds[1], "INCRBY", "n", "-7");

    /* A number too big for a double is refused by jansson. */
    run(x, JSON1, LIT("[\"SET\",\"k\",1e999]"), NULL);
    expect_err(x, "malformed JSON");
}

static void test_json_strings(void **state)
{
    struct dec *x = *state;
    /* Escapes, a NUL, UTF-8 as is and from \u escapes (a surrogate pair -> 4 bytes). */
    run(x, JSON1,
        LIT("[\"SET\",\"a\\\"b\\\\c\\/d\\n\\t\",\"x\\u0000y\",\"\xc3\xa9\",\"\\u00e9\\ud83d\\ude00\"]"),
        NULL);
    assert_int_equal(x->st, RESTCODEC_OK);
    const struct restcodec_cmd *c = &x->d.cmds[0];
    assert_int_equal(c->argc, 5);
    assert_int_equal(c->argv[1].len, 9);
    assert_memory_equal(c->argv[1].ptr, "a\"b\\c/d\n\t", 9);
    assert_int_equal(c->argv[2].len, 3);
    assert_memory_equal(c->argv[2].ptr, "x\0y", 3);
    assert_int_equal(c->argv[3].len, 2);
    assert_memory_equal(c->argv[3].ptr, "\xc3\xa9", 2);
    assert_int_equal(c->argv[4].len, 6);
    assert_memory_equal(c->argv[4].ptr, "\xc3\xa9\xf0\x9f\x98\x80", 6);

    /* JSON text must be UTF-8: raw invalid bytes and lone surrogate escapes are refused (a
     * client with bytes that are not text sends them through the path form's body). */
    run(x, JSON1, LIT("[\"SET\",\"k\",\"\xff\xfe\"]"), NULL);
    expect_err(x, "malformed JSON");
    run(x, JSON1, LIT("[\"SET\",\"k\",\"\\ud800\"]"), NULL);
    expect_err(x, "malformed JSON");
    /* A raw control character inside a string is not JSON either. */
    run(x, JSON1, LIT("[\"SET\",\"k\",\"a\nb\"]"), NULL);
    expect_err(x, "malformed JSON");
}

static void test_json_types_refused(void **state)
{
    struct dec *x = *state;
    run(x, JSON1, LIT("[\"SET\",\"k\",true]"), NULL);
    expect_err(x, "booleans");
    run(x, JSON1, LIT("[\"SET\",\"k\",false]"), NULL);
    expect_err(x, "booleans");
    run(x, JSON1, LIT("[\"SET\",\"k\",null]"), NULL);
    expect_err(x, "null");
    run(x, JSON1, LIT("[\"SET\",\"k\",{\"a\":1}]"), NULL);
    expect_err(x, "objects");
    run(x, JSON1, LIT("[\"SET\",\"k\",[\"v\"]]"), NULL);
    expect_err(x, "nested arrays");
    run(x, JSON1, LIT("[]"), NULL);
    expect_err(x, "empty command");
    run(x, JSON1, LIT("{\"cmd\":[\"GET\",\"k\"]}"), NULL);
    expect_err(x, "must be a JSON array");
    run(x, JSON1, LIT("\"GET\""), NULL);
    expect_err(x, "malformed JSON"); /* jansson wants an array or object at the top */

    /* The SDK sends a boolean value as JSON true/false: accepted as text when asked to. */
    struct restcodec_limits lim = RESTCODEC_DEFAULT_LIMITS;
    lim.bools_as_text = true;
    run(x, JSON1, LIT("[\"SET\",\"k\",true,false]"), &lim);
    assert_int_equal(x->st, RESTCODEC_OK);
    EXPECT_ARGS(&x->d.cmds[0], "SET", "k", "true", "false");
    run(x, JSON1, LIT("[\"SET\",\"k\",null]"), &lim);
    expect_err(x, "null");
}

static void test_json_malformed(void **state)
{
    struct dec *x = *state;
    static const char *const bad[] = {
        "", " ", "[", "[\"SET\"", "[\"SET\",]", "[\"SET\" \"k\"]", "[] x", "[][]", "[\"a\"]]",
        "['GET']", "[\"GET\",01]", "[\"GET\",+1]", "[\"GET\",.5]", "[\"GET\",NaN]", "[\"GET\",1.]",
        "[\"GET\",\"\\x41\"]", "[\"GET\",\"unterminated]",
    };
    for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
        run(x, JSON1, bad[i], strlen(bad[i]), NULL);
        if (x->st != RESTCODEC_BAD_REQUEST)
            fail_msg("accepted '%s'", bad[i]);
        expect_err(x, "JSON");
    }
    /* The error names a position and never echoes the input. */
    run(x, JSON1, LIT("[\"SET\",\"secret-value\" oops]"), NULL);
    expect_err(x, "malformed JSON at byte");
    assert_null(strstr(x->err, "oops"));
    assert_null(strstr(x->err, "secret"));
}

static void test_json_depth(void **state)
{
    struct dec *x = *state;
    struct restcodec_limits lim = RESTCODEC_DEFAULT_LIMITS;
    lim.max_depth = 2;
    run(x, JSONN, LIT("[[\"GET\",\"k\"]]"), &lim);
    assert_int_equal(x->st, RESTCODEC_OK);
    run(x, JSONN, LIT("[[[\"GET\"]]]"), &lim);
    expect_err(x, "nested too deeply");
    /* Brackets inside strings do not count. */
    run(x, JSONN, LIT("[[\"GET\",\"[[[[{{{{\"]]"), &lim);
    assert_int_equal(x->st, RESTCODEC_OK);
    EXPECT_ARGS(&x->d.cmds[0], "GET", "[[[[{{{{");
    /* Objects count too. */
    run(x, JSONN, LIT("[[{\"a\":1}]]"), &lim);
    expect_err(x, "nested too deeply");

    /* A million open brackets: refused by the pre-scan, never parsed (jansson would stop at
     * its own 2048 levels, with a recursion per level). */
    size_t n = 1000000;
    char *deep = malloc(n);
    memset(deep, '[', n);
    run(x, JSONN, deep, n, NULL);
    expect_err(x, "nested too deeply");
    /* Within the default depth but still nested: the type error, not the depth error. */
    run(x, JSONN, deep, RESTCODEC_DEFAULT_DEPTH, NULL);
    expect_err(x, "malformed JSON");
    memcpy(deep + 3, "1]]]", 4);
    run(x, JSONN, deep, 7, NULL);
    expect_err(x, "nested arrays");
    free(deep);
}

static void test_json_limits(void **state)
{
    struct dec *x = *state;
    struct restcodec_limits lim = RESTCODEC_DEFAULT_LIMITS;
    lim.max_args = 3;
    run(x, JSON1, LIT("[\"SET\",\"k\",\"v\"]"), &lim);
    assert_int_equal(x->st, RESTCODEC_OK);
    run(x, JSON1, LIT("[\"SET\",\"k\",\"v\",\"NX\"]"), &lim);
    expect_err(x, "too many arguments");

    lim = RESTCODEC_DEFAULT_LIMITS;
    lim.max_bytes = 10; /* SET k 123456 = 3 + 1 + 6 */
    run(x, JSON1, LIT("[\"SET\",\"k\",123456]"), &lim);
    assert_int_equal(x->st, RESTCODEC_OK);
    run(x, JSON1, LIT("[\"SET\",\"k\",1234567]"), &lim);
    expect_err(x, "too large");
    /* The byte limit is for the whole request, across a pipeline's commands. */
    run(x, JSONN, LIT("[[\"GET\",\"abc\"],[\"GET\",\"def\"]]"), &lim);
    expect_err(x, "too large");
    run(x, JSONN, LIT("[[\"GET\",\"a\"],[\"GET\",\"b\"]]"), &lim);
    assert_int_equal(x->st, RESTCODEC_OK);

    lim = RESTCODEC_DEFAULT_LIMITS;
    lim.max_commands = 2;
    run(x, JSONN, LIT("[[\"PING\"],[\"PING\"]]"), &lim);
    assert_int_equal(x->st, RESTCODEC_OK);
    run(x, JSONN, LIT("[[\"PING\"],[\"PING\"],[\"PING\"]]"), &lim);
    expect_err(x, "too many commands");

    /* 0 means the default. */
    lim = (struct restcodec_limits){0};
    run(x, JSON1, LIT("[\"SET\",\"k\",\"v\"]"), &lim);
    assert_int_equal(x->st, RESTCODEC_OK);
}

static void test_json_pipeline(void **state)
{
    struct dec *x = *state;
    run(x, JSONN, LIT("[[\"SET\",\"k\",\"v\",\"EX\",100],[\"GET\",\"k\"],[\"INCR\",\"n\"]]"), NULL);
    assert_int_equal(x->st, RESTCODEC_OK);
    assert_int_equal(x->d.ncmds, 3);
    EXPECT_ARGS(&x->d.cmds[0], "SET", "k", "v", "EX", "100");
    EXPECT_ARGS(&x->d.cmds[1], "GET", "k");
    EXPECT_ARGS(&x->d.cmds[2], "INCR", "n");

    run(x, JSONN, LIT("[]"), NULL);
    expect_err(x, "empty pipeline");
    run(x, JSONN, LIT("[[\"GET\",\"k\"],\"GET\"]"), NULL);
    expect_err(x, "each command must be a JSON array");
    run(x, JSONN, LIT("[\"GET\",\"k\"]"), NULL);
    expect_err(x, "each command must be a JSON array");
    run(x, JSONN, LIT("[[\"GET\",\"k\"],[]]"), NULL);
    expect_err(x, "empty command");
    run(x, JSONN, LIT("[[\"GET\",[\"k\"]]]"), NULL);
    expect_err(x, "nested arrays");
}

/* The arena is reused: decoding the same body again takes no new memory, and an arena that
 * grew for a big request gives the excess back at the next reset. */
static void test_arena_reuse(void **state)
{
    struct dec *x = *state;
    for (int round = 0; round < 3; round++) {
        size_t n = 3000;
        size_t cap = 16 + n * 12;
        char *body = malloc(cap);
        size_t len = (size_t)snprintf(body, cap, "[\"MSET\"");
        for (size_t i = 0; i < n; i++)
            len += (size_t)snprintf(body + len, cap - len, ",\"k%zu\"", i);
        body[len++] = ']';
        run(x, JSON1, body, len, NULL);
        free(body);
        assert_int_equal(x->st, RESTCODEC_OK);
        assert_int_equal(x->d.cmds[0].argc, n + 1);
        assert_memory_equal(x->d.cmds[0].argv[n].ptr, "k2999", 5);
    }
    struct restcodec_chunk *first = x->d.chunks;
    run(x, JSON1, LIT("[\"GET\",\"k\"]"), NULL);
    const char *p1 = x->d.cmds[0].argv[1].ptr;
    run(x, JSON1, LIT("[\"GET\",\"k\"]"), NULL);
    assert_ptr_equal(x->d.cmds[0].argv[1].ptr, p1);
    assert_ptr_equal(x->d.chunks, first);
    restcodec_decoder_reset(&x->d);
    assert_int_equal(x->d.ncmds, 0);
}

/* ---------------------------------------------------------------------------------------- */
/* The path form                                                                            */
/* ---------------------------------------------------------------------------------------- */

static void run_path(struct dec *x, const char *path, const char *query, const char *body,
                     size_t body_len, const struct restcodec_limits *lim)
{
    char *p = exact(path, strlen(path));
    char *q = query ? exact(query, strlen(query)) : NULL;
    x->err = NULL;
    x->st = restcodec_decode_path(&x->d, p, strlen(path), q, query ? strlen(query) : 0, body,
                                  body_len, lim, &x->err);
    free(p);
    free(q);
    if (x->st != RESTCODEC_OK) {
        assert_non_null(x->err);
        assert_int_equal(x->d.ncmds, 0);
    } else {
        assert_int_equal(x->d.ncmds, 1);
    }
}

static void test_path_form(void **state)
{
    struct dec *x = *state;
    run_path(x, "/set/k/v", NULL, NULL, 0, NULL);
    assert_int_equal(x->st, RESTCODEC_OK);
    EXPECT_ARGS(&x->d.cmds[0], "set", "k", "v");

    run_path(x, "/zadd/teams/100/team-x/90/team-y", "", NULL, 0, NULL);
    assert_int_equal(x->st, RESTCODEC_OK);
    EXPECT_ARGS(&x->d.cmds[0], "zadd", "teams", "100", "team-x", "90", "team-y");

    /* Percent-decoding: %2F stays inside its argument, '+' is a '+' in a path. */
    run_path(x, "/set/a%2Fb%20c/x+y%E2%82%ac", NULL, NULL, 0, NULL);
    assert_int_equal(x->st, RESTCODEC_OK);
    const struct restcodec_cmd *c = &x->d.cmds[0];
    assert_int_equal(c->argc, 3);
    EXPECT_ARGS(c, "set", "a/b c", "x+y\xe2\x82\xac");
    run_path(x, "/set/k/%00%ff", NULL, NULL, 0, NULL);
    assert_int_equal(x->d.cmds[0].argv[2].len, 2);
    assert_memory_equal(x->d.cmds[0].argv[2].ptr, "\0\xff", 2);

    /* Empty segments are empty arguments; one trailing '/' is ignored. */
    run_path(x, "/get//x", NULL, NULL, 0, NULL);
    EXPECT_ARGS(&x->d.cmds[0], "get", "", "x");
    run_path(x, "/get/k/", NULL, NULL, 0, NULL);
    EXPECT_ARGS(&x->d.cmds[0], "get", "k");
    run_path(x, "/set/k//", NULL, NULL, 0, NULL);
    EXPECT_ARGS(&x->d.cmds[0], "set", "k", "");
    run_path(x, "/ping", NULL, NULL, 0, NULL);
    EXPECT_ARGS(&x->d.cmds[0], "ping");

    run_path(x, "/", NULL, NULL, 0, NULL);
    expect_err(x, "no command");
    run_path(x, "", NULL, NULL, 0, NULL);
    expect_err(x, "must start with '/'");
    run_path(x, "set/k", NULL, NULL, 0, NULL);
    expect_err(x, "must start with '/'");
    run_path(x, "//get", NULL, NULL, 0, NULL);
    expect_err(x, "empty command name");
    static const char *const badpct[] = {"/get/%", "/get/%4", "/get/%zz", "/get/a%g1", "/get/%4/x"};
    for (size_t i = 0; i < ARRAY_SIZE(badpct); i++) {
        run_path(x, badpct[i], NULL, NULL, 0, NULL);
        expect_err(x, "percent-encoding");
    }
}

static void test_path_body_and_query(void **state)
{
    struct dec *x = *state;
    /* The POST body is one more argument, as it is (binary, JSON, anything). */
    static const char bin[] = "{\"a\":1}\0\xff\r\n";
    char *body = exact(bin, sizeof bin - 1);
    run_path(x, "/set/k", "EX=100&_token=secret&NX", body, sizeof bin - 1, NULL);
    assert_int_equal(x->st, RESTCODEC_OK);
    const struct restcodec_cmd *c = &x->d.cmds[0];
    assert_int_equal(c->argc, 6);
    assert_ptr_equal(c->argv[2].ptr, body); /* a view of the body */
    assert_int_equal(c->argv[2].len, sizeof bin - 1);
    assert_memory_equal(c->argv[3].ptr, "EX", 2);
    assert_memory_equal(c->argv[4].ptr, "100", 3);
    assert_memory_equal(c->argv[5].ptr, "NX", 2);
    free(body);

    /* A present empty body is an empty argument; no body is none. */
    run_path(x, "/set/k", NULL, "", 0, NULL);
    assert_int_equal(x->st, RESTCODEC_OK);
    EXPECT_ARGS(&x->d.cmds[0], "set", "k", "");

    /* Query: '+' is a space, percent-decoding, "name=" has an empty value, empty parameters
     * are nothing, _token (also spelled %5Ftoken) is never an argument. */
    run_path(x, "/set/k/v", "&PX=1%302&+a+=b+c&&name=&%5Ftoken=x&_token&tok=_token", NULL, 0, NULL);
    assert_int_equal(x->st, RESTCODEC_OK);
    EXPECT_ARGS(&x->d.cmds[0], "set", "k", "v", "PX", "102", " a ", "b c", "name", "", "tok",
                "_token");
    run_path(x, "/get/k", "_token=abc", NULL, 0, NULL);
    EXPECT_ARGS(&x->d.cmds[0], "get", "k");
    run_path(x, "/get/k", "a=%zz", NULL, 0, NULL);
    expect_err(x, "percent-encoding");
}

static void test_path_limits(void **state)
{
    struct dec *x = *state;
    struct restcodec_limits lim = RESTCODEC_DEFAULT_LIMITS;
    lim.max_args = 3;
    run_path(x, "/set/k/v", NULL, NULL, 0, &lim);
    assert_int_equal(x->st, RESTCODEC_OK);
    run_path(x, "/set/k/v/NX", NULL, NULL, 0, &lim);
    expect_err(x, "too many arguments");
    run_path(x, "/set/k", NULL, "v", 1, &lim);
    assert_int_equal(x->st, RESTCODEC_OK);
    run_path(x, "/set/k/v", NULL, "v", 1, &lim);
    expect_err(x, "too many arguments");
    run_path(x, "/set/k", "v", NULL, 0, &lim);
    assert_int_equal(x->st, RESTCODEC_OK);
    run_path(x, "/set/k", "EX=1", NULL, 0, &lim);
    expect_err(x, "too many arguments");
    run_path(x, "/set/k", "_token=1", NULL, 0, &lim);
    assert_int_equal(x->st, RESTCODEC_OK);

    lim = RESTCODEC_DEFAULT_LIMITS;
    lim.max_bytes = 8;
    run_path(x, "/set/k/%41%41%41%41", NULL, NULL, 0, &lim); /* 3 + 1 + 4 decoded bytes */
    assert_int_equal(x->st, RESTCODEC_OK);
    run_path(x, "/set/k", NULL, "12345", 5, &lim);
    expect_err(x, "too large");
}

/* ---------------------------------------------------------------------------------------- */
/* Encoding                                                                                 */
/* ---------------------------------------------------------------------------------------- */

struct enc_case {
    const char *name;
    const char *reply;
    size_t len;
    unsigned flags;
    int status;       /* 0: malformed, -1 from the encoder */
    const char *want; /* the whole body */
};

#define R(s) s, sizeof(s) - 1
#define B64 RESTCODEC_BASE64

static const struct enc_case SINGLE[] = {
    {"simple OK", R("+OK\r\n"), 0, 200, "{\"result\":\"OK\"}"},
    {"simple OK, base64: as it is", R("+OK\r\n"), B64, 200, "{\"result\":\"OK\"}"},
    {"simple PONG, base64", R("+PONG\r\n"), B64, 200, "{\"result\":\"UE9ORw==\"}"},
    {"bulk", R("$5\r\nhello\r\n"), 0, 200, "{\"result\":\"hello\"}"},
    {"bulk OK is not the simple string, base64", R("$2\r\nOK\r\n"), B64, 200, "{\"result\":\"T0s=\"}"},
    {"empty bulk", R("$0\r\n\r\n"), 0, 200, "{\"result\":\"\"}"},
    {"empty bulk, base64", R("$0\r\n\r\n"), B64, 200, "{\"result\":\"\"}"},
    {"bulk with CRLF inside", R("$4\r\na\r\nb\r\n"), 0, 200, "{\"result\":\"a\\r\\nb\"}"},
    {"nil bulk", R("$-1\r\n"), 0, 200, "{\"result\":null}"},
    {"nil bulk, base64", R("$-1\r\n"), B64, 200, "{\"result\":null}"},
    {"nil array", R("*-1\r\n"), 0, 200, "{\"result\":null}"},
    {"integer", R(":42\r\n"), 0, 200, "{\"result\":42}"},
    {"negative integer, base64 leaves numbers", R(":-9223372036854775808\r\n"), B64, 200,
     "{\"result\":-9223372036854775808}"},
    {"empty array", R("*0\r\n"), 0, 200, "{\"result\":[]}"},
    {"array", R("*3\r\n$1\r\na\r\n:1\r\n$-1\r\n"), 0, 200, "{\"result\":[\"a\",1,null]}"},
    {"nested arrays", R("*3\r\n*2\r\n+x\r\n*0\r\n*1\r\n*1\r\n:7\r\n$1\r\nz\r\n"), 0, 200,
     "{\"result\":[[\"x\",[]],[[7]],\"z\"]}"},
    {"array, base64: OK inside is encoded (the SDK decodes every string there)",
     R("*3\r\n+OK\r\n$3\r\nabc\r\n:5\r\n"), B64, 200, "{\"result\":[\"T0s=\",\"YWJj\",5]}"},
    {"nested error element is its text", R("*2\r\n-ERR inner\r\n:1\r\n"), 0, 200,
     "{\"result\":[\"ERR inner\",1]}"},
    {"error", R("-ERR unknown command 'x'\r\n"), 0, 400, "{\"error\":\"ERR unknown command 'x'\"}"},
    {"error, base64: never encoded", R("-WRONGTYPE Operation\r\n"), B64, 400,
     "{\"error\":\"WRONGTYPE Operation\"}"},
    {"escapes", R("$9\r\n\"\\/\x01\x1f\t\b\f\x7f\r\n"), 0, 200, "{\"result\":\"\\\"\\\\/\\u0001\\u001f\\t\\u0008\\u000c\x7f\"}"},
    {"UTF-8 passes as it is", R("$9\r\n\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\r\n"), 0, 200,
     "{\"result\":\"\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\"}"},
    {"invalid UTF-8: each bad byte is U+FFFD", R("$6\r\na\xff\xc3(\xe2\x82\r\n"), 0, 200,
     "{\"result\":\"a\\ufffd\\ufffd(\\ufffd\\ufffd\"}"},
    {"overlong and surrogate encodings are invalid", R("$5\r\n\xc0\x80\xed\xa0\x80\r\n"), 0, 200,
     "{\"result\":\"\\ufffd\\ufffd\\ufffd\\ufffd\\ufffd\"}"},
    {"above U+10FFFF is invalid", R("$4\r\n\xf4\x90\x80\x80\r\n"), 0, 200,
     "{\"result\":\"\\ufffd\\ufffd\\ufffd\\ufffd\"}"},
    {"truncated sequence at the end", R("$3\r\nx\xf0\x9f\r\n"), 0, 200, "{\"result\":\"x\\ufffd\\ufffd\"}"},
    {"binary, base64", R("$5\r\n\x00\xff\xfe\r\n\r\n"), B64, 200, "{\"result\":\"AP/+DQo=\"}"},
    {"base64 one byte", R("$1\r\n\xfb\r\n"), B64, 200, "{\"result\":\"+w==\"}"},
    {"base64 error is UTF-8 cleaned, not encoded", R("-ERR \xff\r\n"), B64, 400,
     "{\"error\":\"ERR \\ufffd\"}"},
    /* Not exactly one well-formed RESP2 frame. */
    {"empty", R(""), 0, 0, NULL},
    {"two frames", R("+OK\r\n+OK\r\n"), 0, 0, NULL},
    {"truncated bulk", R("$5\r\nhel"), 0, 0, NULL},
    {"bulk without CRLF", R("$3\r\nabcXY"), 0, 0, NULL},
    {"bulk length past the end", R("$10\r\nabc\r\n"), 0, 0, NULL},
    {"negative bulk length", R("$-2\r\n"), 0, 0, NULL},
    {"bulk length with a plus", R("$+1\r\na\r\n"), 0, 0, NULL},
    {"truncated array", R("*2\r\n:1\r\n"), 0, 0, NULL},
    {"huge array", R("*9223372036854775807\r\n:1\r\n"), 0, 0, NULL},
    {"bad integer", R(":12a\r\n"), 0, 0, NULL},
    {"integer with leading zero", R(":012\r\n"), 0, 0, NULL},
    {"lone LF in a simple string", R("+O\nK\r\n"), 0, 0, NULL},
    {"line without CRLF", R("+OK"), 0, 0, NULL},
    {"CR without LF", R("+OK\r"), 0, 0, NULL},
    {"unknown type", R("?x\r\n"), 0, 0, NULL},
    {"RESP3 null", R("_\r\n"), 0, 0, NULL},
    {"RESP3 map", R("%1\r\n+a\r\n:1\r\n"), 0, 0, NULL},
    {"error truncated", R("-ERR"), 0, 0, NULL},
    {"error followed by more", R("-ERR x\r\n:1\r\n"), 0, 0, NULL},
};

static void check_single(const struct enc_case *c)
{
    struct restcodec_buf out = {0};
    /* Something before: the encoder appends, and puts back what it wrote on failure. */
    assert_int_equal(restcodec_encode_error(&out, LIT("x")), 0);
    size_t before = out.len;
    char *reply = exact(c->reply, c->len);
    int status = -1;
    int r = restcodec_encode_single(&out, reply, c->len, c->flags, &status);
    free(reply);
    if (c->status == 0) {
        if (r != -1)
            fail_msg("%s: accepted, wrote '%.*s'", c->name, (int)(out.len - before), out.data + before);
        assert_int_equal(out.len, before);
    } else {
        if (r != 0)
            fail_msg("%s: refused", c->name);
        if (status != c->status)
            fail_msg("%s: status %d, want %d", c->name, status, c->status);
        size_t n = out.len - before;
        if (n != strlen(c->want) || memcmp(out.data + before, c->want, n) != 0)
            fail_msg("%s:\n got %.*s\nwant %s", c->name, (int)n, out.data + before, c->want);
    }
    assert_memory_equal(out.data, "{\"error\":\"x\"}", before);
    restcodec_buf_free(&out);
}

static void test_encode_single(void **state)
{
    (void)state;
    for (size_t i = 0; i < ARRAY_SIZE(SINGLE); i++)
        check_single(&SINGLE[i]);
}

static void test_encode_entry(void **state)
{
    (void)state;
    struct restcodec_buf out = {0};
    assert_int_equal(restcodec_encode_entry(&out, LIT("-ERR x\r\n"), 0), 1);
    assert_int_equal(restcodec_encode_entry(&out, LIT(":1\r\n"), 0), 0);
    assert_int_equal(restcodec_encode_entry(&out, LIT(":1\r"), 0), -1);
    assert_int_equal(out.len, strlen("{\"error\":\"ERR x\"}{\"result\":1}"));
    assert_memory_equal(out.data, "{\"error\":\"ERR x\"}{\"result\":1}", out.len);
    restcodec_buf_free(&out);
}

/* Deep replies: a Lua table nested hundreds of levels (the reader's stack leaves its inline
 * levels for the heap), and the reader's own limit. */
static void test_encode_deep(void **state)
{
    (void)state;
    for (size_t depth = 1; depth <= RESTCODEC_MAX_REPLY_DEPTH + 1; depth = depth < 40 ? depth + 1 : depth * 2 + 1) {
        size_t d = depth > RESTCODEC_MAX_REPLY_DEPTH ? RESTCODEC_MAX_REPLY_DEPTH + 1 : depth;
        size_t len = d * 4 + 4;
        char *reply = malloc(len);
        for (size_t i = 0; i < d; i++)
            memcpy(reply + i * 4, "*1\r\n", 4);
        memcpy(reply + d * 4, ":1\r\n", 4);
        struct restcodec_buf out = {0};
        int status;
        int r = restcodec_encode_single(&out, reply, len, 0, &status);
        free(reply);
        if (d > RESTCODEC_MAX_REPLY_DEPTH) {
            assert_int_equal(r, -1);
            assert_int_equal(out.len, 0);
        } else {
            assert_int_equal(r, 0);
            assert_int_equal(out.len, strlen("{\"result\":}") + 2 * d + 1);
            assert_memory_equal(out.data + 10, "[[", d > 1 ? 2 : 1);
            assert_memory_equal(out.data + 10 + d, "1]", 2);
        }
        restcodec_buf_free(&out);
        if (d > RESTCODEC_MAX_REPLY_DEPTH)
            break;
    }
}

static void test_encode_pipeline(void **state)
{
    (void)state;
    struct restcodec_buf out = {0};
    struct resp_arg replies[] = {
        {R("+OK\r\n")}, {R("-WRONGTYPE Operation against a key\r\n")}, {R(":3\r\n")},
        {R("*2\r\n$1\r\na\r\n$-1\r\n")}, {R("$-1\r\n")},
    };
    assert_int_equal(restcodec_encode_pipeline(&out, replies, ARRAY_SIZE(replies), 0), 0);
    static const char want[] = "[{\"result\":\"OK\"},{\"error\":\"WRONGTYPE Operation against a key\"},"
                               "{\"result\":3},{\"result\":[\"a\",null]},{\"result\":null}]";
    assert_int_equal(out.len, sizeof want - 1);
    assert_memory_equal(out.data, want, out.len);

    out.len = 0;
    assert_int_equal(restcodec_encode_pipeline(&out, replies, ARRAY_SIZE(replies), B64), 0);
    static const char want64[] = "[{\"result\":\"OK\"},{\"error\":\"WRONGTYPE Operation against a key\"},"
                                 "{\"result\":3},{\"result\":[\"YQ==\",null]},{\"result\":null}]";
    assert_int_equal(out.len, sizeof want64 - 1);
    assert_memory_equal(out.data, want64, out.len);

    /* One malformed reply: nothing is left behind. */
    out.len = 0;
    struct resp_arg bad[] = {{R("+OK\r\n")}, {R("+OK")}};
    assert_int_equal(restcodec_encode_pipeline(&out, bad, 2, 0), -1);
    assert_int_equal(out.len, 0);
    restcodec_buf_free(&out);
}

static const struct enc_case EXEC[] = {
    {"exec", R("*3\r\n+OK\r\n:2\r\n$1\r\nv\r\n"), 0, 200,
     "[{\"result\":\"OK\"},{\"result\":2},{\"result\":\"v\"}]"},
    {"exec, base64: each entry's OK is as it is", R("*3\r\n+OK\r\n:2\r\n$1\r\nv\r\n"), B64, 200,
     "[{\"result\":\"OK\"},{\"result\":2},{\"result\":\"dg==\"}]"},
    {"exec with a failed command inside", R("*2\r\n-WRONGTYPE Operation\r\n+QUEUED\r\n"), 0, 200,
     "[{\"error\":\"WRONGTYPE Operation\"},{\"result\":\"QUEUED\"}]"},
    {"exec with arrays inside", R("*2\r\n*2\r\n:1\r\n:2\r\n*0\r\n"), 0, 200,
     "[{\"result\":[1,2]},{\"result\":[]}]"},
    {"empty transaction", R("*0\r\n"), 0, 200, "[]"},
    {"discarded", R("-EXECABORT Transaction discarded because of previous errors.\r\n"), 0, 400,
     "{\"error\":\"EXECABORT Transaction discarded because of previous errors.\"}"},
    {"nil exec", R("*-1\r\n"), 0, 400, "{\"error\":\"EXECABORT Transaction discarded\"}"},
    {"not an array", R(":1\r\n"), 0, 0, NULL},
    {"truncated", R("*2\r\n+OK\r\n"), 0, 0, NULL},
    {"trailing bytes", R("*1\r\n+OK\r\n+OK\r\n"), 0, 0, NULL},
    {"nil exec with trailing bytes", R("*-1\r\nx"), 0, 0, NULL},
    {"bad count", R("*-2\r\n"), 0, 0, NULL},
    {"bad error", R("-EXECABORT"), 0, 0, NULL},
    {"empty", R(""), 0, 0, NULL},
};

static void test_encode_exec(void **state)
{
    (void)state;
    for (size_t i = 0; i < ARRAY_SIZE(EXEC); i++) {
        const struct enc_case *c = &EXEC[i];
        struct restcodec_buf out = {0};
        char *reply = exact(c->reply, c->len);
        int status = -1;
        int r = restcodec_encode_exec(&out, reply, c->len, c->flags, &status);
        free(reply);
        if (c->status == 0) {
            if (r != -1)
                fail_msg("%s: accepted", c->name);
            assert_int_equal(out.len, 0);
        } else {
            if (r != 0 || status != c->status)
                fail_msg("%s: r %d status %d", c->name, r, status);
            if (out.len != strlen(c->want) || memcmp(out.data, c->want, out.len) != 0)
                fail_msg("%s:\n got %.*s\nwant %s", c->name, (int)out.len, out.data, c->want);
        }
        restcodec_buf_free(&out);
    }
}

static void test_encode_error(void **state)
{
    (void)state;
    struct restcodec_buf out = {0};
    assert_int_equal(restcodec_encode_error(&out, LIT("ERR \"bad\"\n\xff")), 0);
    static const char want[] = "{\"error\":\"ERR \\\"bad\\\"\\n\\ufffd\"}";
    assert_int_equal(out.len, sizeof want - 1);
    assert_memory_equal(out.data, want, out.len);
    restcodec_buf_free(&out);
}

/* Every byte string survives base64 both ways, at every length around the padding cases. */
static void test_base64_roundtrip(void **state)
{
    (void)state;
    char bytes[300];
    for (size_t i = 0; i < sizeof bytes; i++)
        bytes[i] = (char)(i * 37 + 11);
    for (size_t n = 0; n < sizeof bytes; n += n < 10 ? 1 : 29) {
        char frame[400];
        int h = snprintf(frame, sizeof frame, "$%zu\r\n", n);
        memcpy(frame + h, bytes, n);
        memcpy(frame + h + n, "\r\n", 2);
        struct restcodec_buf out = {0};
        int status;
        assert_int_equal(restcodec_encode_single(&out, frame, (size_t)h + n + 2, B64, &status), 0);
        /* {"result":"<b64>"} */
        assert_true(out.len >= 13);
        size_t blen = out.len - 13;
        assert_int_equal(blen, (n + 2) / 3 * 4);
        char dec[400];
        assert_int_equal(restcodec_base64_decode(out.data + 11, blen, dec), (long)n);
        assert_memory_equal(dec, bytes, n);
        restcodec_buf_free(&out);
    }
    char dst[8];
    assert_int_equal(restcodec_base64_decode(LIT("T0s="), dst), 2);
    assert_int_equal(restcodec_base64_decode(LIT("T0s"), dst), -1);
    assert_int_equal(restcodec_base64_decode(LIT("T=s="), dst), -1);
    assert_int_equal(restcodec_base64_decode(LIT("T0s=T0s="), dst), -1);
    assert_int_equal(restcodec_base64_decode(LIT("T0*="), dst), -1);
}

/* ---------------------------------------------------------------------------------------- */
/* restcodec_query_param (?_token=)                                                         */
/* ---------------------------------------------------------------------------------------- */

/* restcodec_query_param on the first len bytes of query (copied to a heap block of exactly len
 * bytes), into a heap block of exactly cap bytes; the value (n bytes) is copied to out. */
static long qparam(const char *query, size_t len, const char *name, size_t cap, char *out)
{
    char *q = query ? exact(query, len) : NULL;
    char *dst = malloc(cap ? cap : 1);
    assert_non_null(dst);
    memset(dst, '#', cap ? cap : 1);
    long n = restcodec_query_param(q, len, name, dst, cap);
    if (n >= 0) {
        assert_true((size_t)n <= cap);
        memcpy(out, dst, (size_t)n);
    }
    free(dst);
    free(q);
    return n;
}

static void test_query_param(void **state)
{
    (void)state;
    static const struct {
        const char *query, *name;
        long want;         /* length, -1 absent, -2 malformed or too long */
        const char *value; /* when want >= 0 */
    } cases[] = {
        /* found, absent */
        {"_token=abc", "_token", 3, "abc"},
        {"a=1&_token=abc&b=2", "_token", 3, "abc"},
        {"a=1&b=_token", "_token", -1, NULL},
        {"a=1&b=2", "_token", -1, NULL},
        {"", "_token", -1, NULL},
        {"&&&", "_token", -1, NULL},
        {"&&_token=v&&", "_token", 1, "v"},
        {"a=1&_token=xyz", "a", 1, "1"},
        /* the first of several */
        {"_token=first&_token=second", "_token", 5, "first"},
        {"x=1&_token=first&y=2&_token=second", "_token", 5, "first"},
        /* names that are a prefix or an extension of another: only the exact name */
        {"_tokenx=1&x_token=2&_toke=3&_token=ok", "_token", 2, "ok"},
        {"_token_2=a", "_token", -1, NULL},
        {"_tok=a", "_token", -1, NULL},
        {"_TOKEN=a", "_token", -1, NULL},
        {"ab=1&a=2", "a", 1, "2"},
        {"ab=1", "a", -1, NULL},
        {"a=1", "ab", -1, NULL},
        /* percent-decoding, either case of hex digits */
        {"_token=a%2Fb%3d%3D%41%7e", "_token", 7, "a/b==A~"},
        {"_token=%26x%3Dy", "_token", 4, "&x=y"},
        {"_token=%25", "_token", 1, "%"},
        {"_token=%2541", "_token", 3, "%41"}, /* decoded once */
        /* '+' is a space; %2B is a '+' */
        {"_token=a+b++c", "_token", 6, "a b  c"},
        {"_token=%2B+%2b", "_token", 3, "+ +"},
        {"_token=+", "_token", 1, " "},
        /* '=' inside the value is kept */
        {"_token=a=b=", "_token", 4, "a=b="},
        /* empty values: "name=" and a bare "name" are present and empty */
        {"_token=", "_token", 0, ""},
        {"a=1&_token=&b=2", "_token", 0, ""},
        {"_token=&_token=x", "_token", 0, ""},
        {"_token", "_token", 0, ""},
        {"a&_token&b", "_token", 0, ""},
        {"_token&_token=x", "_token", 0, ""},
        {"_tokenx&_token=y", "_token", 1, "y"},
        {"=x&_token=y", "_token", 1, "y"},
        /* malformed percent-encoding in the parameter asked for */
        {"_token=%zz", "_token", -2, NULL},
        {"_token=%g0", "_token", -2, NULL},
        {"_token=%0g", "_token", -2, NULL},
        {"_token=%", "_token", -2, NULL},
        {"_token=%4", "_token", -2, NULL},
        {"_token=%4&a=1", "_token", -2, NULL},
        {"_token=ab%", "_token", -2, NULL},
        {"_token=% 41", "_token", -2, NULL},
        {"_token=%-1", "_token", -2, NULL},
        /* ... and in another one: not looked at */
        {"a=%zz&_token=ok&b=%", "_token", 2, "ok"},
        {"_token=ok&_token=%zz", "_token", 2, "ok"},
    };
    for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
        char out[64];
        long n = qparam(cases[i].query, strlen(cases[i].query), cases[i].name, sizeof out, out);
        if (n != cases[i].want ||
            (n >= 0 && ((size_t)n != strlen(cases[i].value) || memcmp(out, cases[i].value, (size_t)n) != 0)))
            fail_msg("'%s' name '%s': got %ld '%.*s', want %ld '%s'", cases[i].query, cases[i].name, n,
                     n > 0 ? (int)n : 0, out, cases[i].want, cases[i].value ? cases[i].value : "");
    }

    char out[64];
    /* No query at all. */
    assert_int_equal(restcodec_query_param(NULL, 0, "_token", out, sizeof out), -1);
    assert_int_equal(restcodec_query_param(NULL, 10, "_token", out, sizeof out), -1);
    /* Only len bytes are read: the rest of the buffer is not the query. */
    assert_int_equal(qparam("_token=abcdef", 10, "_token", sizeof out, out), 3);
    assert_memory_equal(out, "abc", 3);
    assert_int_equal(qparam("_token=ab%41", 11, "_token", sizeof out, out), -2); /* "%4" at the end */
    assert_int_equal(qparam("a=1&_token=x", 3, "_token", sizeof out, out), -1);
    assert_int_equal(qparam("_token", 5, "_token", sizeof out, out), -1); /* "_toke" */
    /* A NUL byte is a byte like another (the caller has the length). */
    assert_int_equal(qparam("_token=a%00b", 12, "_token", sizeof out, out), 3);
    assert_memory_equal(out, "a\0b", 3);

    /* The cap: exactly full is fine, one byte more is -2; it counts decoded bytes. */
    assert_int_equal(qparam("_token=abcd", 11, "_token", 4, out), 4);
    assert_memory_equal(out, "abcd", 4);
    assert_int_equal(qparam("_token=abcd", 11, "_token", 3, out), -2);
    assert_int_equal(qparam("_token=abcd", 11, "_token", 0, out), -2);
    assert_int_equal(qparam("_token=%41%42", 13, "_token", 2, out), 2);
    assert_memory_equal(out, "AB", 2);
    assert_int_equal(qparam("_token=%41%42%43", 16, "_token", 2, out), -2);
    assert_int_equal(qparam("_token=a+b", 10, "_token", 3, out), 3);
    assert_memory_equal(out, "a b", 3);
    assert_int_equal(qparam("_token=", 7, "_token", 0, out), 0); /* empty fits in nothing */
    assert_int_equal(qparam("_token", 6, "_token", 0, out), 0);
    assert_int_equal(qparam("a=1", 3, "_token", 0, out), -1); /* absent, whatever the cap */

    /* A long value fits an exact cap, one byte less is -2. */
    char q[7 + 2048], big[2048], want[2048];
    memcpy(q, "_token=", 7);
    for (size_t i = 0; i < sizeof want; i++)
        want[i] = q[7 + i] = (char)('a' + i % 26);
    assert_int_equal(qparam(q, sizeof q, "_token", sizeof big, big), 2048);
    assert_memory_equal(big, want, sizeof want);
    assert_int_equal(qparam(q, sizeof q, "_token", sizeof big - 1, big), -2);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_json_command, dec_setup, dec_teardown),
        cmocka_unit_test_setup_teardown(test_json_numbers, dec_setup, dec_teardown),
        cmocka_unit_test_setup_teardown(test_json_strings, dec_setup, dec_teardown),
        cmocka_unit_test_setup_teardown(test_json_types_refused, dec_setup, dec_teardown),
        cmocka_unit_test_setup_teardown(test_json_malformed, dec_setup, dec_teardown),
        cmocka_unit_test_setup_teardown(test_json_depth, dec_setup, dec_teardown),
        cmocka_unit_test_setup_teardown(test_json_limits, dec_setup, dec_teardown),
        cmocka_unit_test_setup_teardown(test_json_pipeline, dec_setup, dec_teardown),
        cmocka_unit_test_setup_teardown(test_arena_reuse, dec_setup, dec_teardown),
        cmocka_unit_test_setup_teardown(test_path_form, dec_setup, dec_teardown),
        cmocka_unit_test_setup_teardown(test_path_body_and_query, dec_setup, dec_teardown),
        cmocka_unit_test_setup_teardown(test_path_limits, dec_setup, dec_teardown),
        cmocka_unit_test(test_query_param),
        cmocka_unit_test(test_encode_single),
        cmocka_unit_test(test_encode_entry),
        cmocka_unit_test(test_encode_deep),
        cmocka_unit_test(test_encode_pipeline),
        cmocka_unit_test(test_encode_exec),
        cmocka_unit_test(test_encode_error),
        cmocka_unit_test(test_base64_roundtrip),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
