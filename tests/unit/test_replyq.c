/*
 * Unit tests for replyq, one client's ordered reply queue.
 *
 * The harness is a queue whose write callback appends to a buffer and whose done callback
 * records every entry that leaves. Upstream replies go through a real reply framer
 * (resp_framer_feed), exactly as the pool hands them on: each piece of a frame is one
 * replyq_feed call, and the call that ends a frame carries the framer's description of it.
 *
 * Most cases are scripts in a table (queue entries, feed replies, check what the client got so
 * far and which entries left) and every script runs once per piece size: 1 byte, 2 bytes,
 * 7 bytes and whole, so that every frame is also split at every place. Every piece lives in a
 * heap block of exactly its size that is freed right after the call, so AddressSanitizer
 * catches a queue that keeps a pointer into its input.
 *
 * Tags start at 1; an entry queued with replyq_expect carries seq = 1000 + tag and stamps
 * t_in = 10 * tag, t_sent = 10 * tag + 5, and done() must hand all of them back.
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

#include "respguard/replyq.h"
#include "respguard/resp.h"

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define WHOLE SIZE_MAX
/* replyq.c's HOLD_MAX: a held frame that grows past it is streamed. */
#define HOLD_MAX_T (64u * 1024)

/* ---------------------------------------------------------------------------------------- */
/* Harness                                                                                  */
/* ---------------------------------------------------------------------------------------- */

#define MAX_DONE 256

struct done_rec {
    struct replyq_entry e;
    bool error;
    bool reply_null;
    char *reply; /* a copy */
    size_t reply_len;
};

struct harness {
    struct replyq q;
    struct resp_framer fr;
    char *out;
    size_t out_len, out_cap;
    size_t writes;
    struct done_rec done[MAX_DONE];
    size_t ndone;
    bool stop_on_close; /* like the session: replyq_stop once a CLOSE_AFTER entry left */
    bool fail_on_login_error; /* like the session: a refused login fails the upstream */
    const char *fail_err;
    bool fail_ret; /* what that nested replyq_fail returned */
};

/* What the case being run is called, for messages. */
static const char *cur_case = "";
static size_t cur_chunk;

static void show(const char *what, const char *p, size_t n)
{
    char buf[2048];
    size_t k = 0;
    for (size_t i = 0; i < n && k + 8 < sizeof buf; i++) {
        unsigned char c = (unsigned char)p[i];
        if (c == '\r') {
            buf[k++] = '\\';
            buf[k++] = 'r';
        } else if (c == '\n') {
            buf[k++] = '\\';
            buf[k++] = 'n';
        } else if (c < 32 || c > 126) {
            k += (size_t)snprintf(buf + k, sizeof buf - k, "\\x%02x", c);
        } else {
            buf[k++] = (char)c;
        }
    }
    buf[k] = '\0';
    print_error("  %s (%zu bytes): \"%s\"%s\n", what, n, buf, k + 8 >= sizeof buf ? "..." : "");
}

static void context(void)
{
    if (cur_chunk == WHOLE)
        print_error("case '%s', whole pieces\n", cur_case);
    else
        print_error("case '%s', pieces of %zu bytes\n", cur_case, cur_chunk);
}

static void expect_bytes(const char *what, const char *got, size_t got_len, const char *want,
                         size_t want_len)
{
    if (got_len == want_len && (want_len == 0 || memcmp(got, want, want_len) == 0))
        return;
    context();
    print_error("%s differs\n", what);
    show("got ", got, got_len);
    show("want", want, want_len);
    fail();
}

static void on_write(void *owner, const char *p, size_t n)
{
    struct harness *h = owner;
    assert_non_null(h);
    if (h->q.stopped) {
        context();
        print_error("write after replyq_stop\n");
        fail();
    }
    assert_true(n > 0);
    if (h->out_len + n > h->out_cap) {
        size_t cap = h->out_cap ? h->out_cap : 256;
        while (cap < h->out_len + n)
            cap *= 2;
        h->out = realloc(h->out, cap);
        assert_non_null(h->out);
        h->out_cap = cap;
    }
    memcpy(h->out + h->out_len, p, n);
    h->out_len += n;
    h->writes++;
}

static void on_done(void *owner, const struct replyq_entry *e, bool error, const char *reply,
                    size_t len)
{
    struct harness *h = owner;
    assert_non_null(h);
    assert_true(h->ndone < MAX_DONE);
    struct done_rec *d = &h->done[h->ndone++];
    d->e = *e;
    d->error = error;
    d->reply_null = reply == NULL;
    d->reply_len = len;
    d->reply = NULL;
    if (len) {
        assert_non_null(reply);
        d->reply = malloc(len);
        assert_non_null(d->reply);
        memcpy(d->reply, reply, len);
    }
    if (h->stop_on_close && (e->flags & REPLYQ_CLOSE_AFTER))
        replyq_stop(&h->q);
    if (h->fail_on_login_error && e->kind == REPLYQ_LOGIN && error)
        h->fail_ret = replyq_fail(&h->q, h->fail_err, strlen(h->fail_err));
}

/* TRANSFORM entries: "+T<length of the reply>", or an error when it was too big to hold. */
static void on_transform(void *owner, const struct replyq_entry *e, const char *reply, size_t len, struct buf *out)
{
    (void)owner;
    (void)e;
    char line[64];
    int n = reply ? snprintf(line, sizeof line, "+T%zu\r\n", len) : snprintf(line, sizeof line, "-ERR big\r\n");
    assert_int_equal(buf_append(out, line, (size_t)n), 0);
}

static const struct replyq_ops ops = {.write = on_write, .done = on_done, .transform = on_transform};

static void h_init(struct harness *h)
{
    memset(h, 0, sizeof *h);
    replyq_init(&h->q, &ops, h);
    resp_framer_init(&h->fr);
    assert_int_equal(h->q.proto, 2);
    assert_int_equal(h->q.len, 0);
    assert_int_equal(h->q.upstream_due, 0);
    assert_false(replyq_subscribed(&h->q));
    assert_null(replyq_back(&h->q));
}

static void h_free(struct harness *h)
{
    replyq_deinit(&h->q);
    resp_framer_deinit(&h->fr);
    free(h->out);
    for (size_t i = 0; i < h->ndone; i++)
        free(h->done[i].reply);
    memset(h, 0, sizeof *h);
}

/* Upstream reply bytes (any number of frames, or part of one) through the framer into the
 * queue, in pieces of `chunk` bytes. */
static void h_feed(struct harness *h, const char *s, size_t len, size_t chunk)
{
    size_t off = 0;
    while (off < len) {
        size_t piece = len - off < chunk ? len - off : chunk;
        char *copy = malloc(piece);
        assert_non_null(copy);
        memcpy(copy, s + off, piece);
        const char *p = copy;
        size_t n = piece;
        while (n > 0) {
            size_t used = 0;
            struct resp_frame_info info;
            const char *err = NULL;
            enum resp_frame_status st = resp_framer_feed(&h->fr, p, n, &used, &info, &err);
            if (st == RESP_FRAME_ERROR) {
                context();
                print_error("framer: %s\n", err ? err : "?");
                fail();
            }
            assert_true(used > 0 && used <= n);
            assert_int_equal(replyq_feed(&h->q, p, used, st == RESP_FRAME_DONE ? &info : NULL), 0);
            p += used;
            n -= used;
        }
        free(copy);
        off += piece;
    }
}

static void h_expect(struct harness *h, uint8_t kind, uint8_t flags, uint32_t expected, uint8_t tag,
                     const char *local, const char *confirm)
{
    struct replyq_entry e = {.kind = kind, .flags = flags, .tag = tag, .expected = expected,
                             .seq = 1000u + tag, .t_in = 10u * tag, .t_sent = 10u * tag + 5,
                             .confirm = confirm};
    assert_int_equal(replyq_expect(&h->q, e, local, local ? strlen(local) : 0), 0);
    const struct replyq_entry *b = replyq_back(&h->q);
    assert_non_null(b);
    assert_int_equal(b->tag, tag);
    assert_int_equal(b->local_len, local ? strlen(local) : 0);
}

/* The queue's own counters agree with its entries. */
static void check_invariants(struct harness *h)
{
    size_t due = 0, subscribes = 0;
    for (size_t i = 0; i < h->q.len; i++) {
        const struct replyq_entry *e = replyq_at(&h->q, i);
        if (e->kind != REPLYQ_LOCAL)
            due++;
        if (e->flags & REPLYQ_SUBSCRIBE)
            subscribes++;
    }
    if (due != h->q.upstream_due || subscribes != h->q.pending_subscribes) {
        context();
        print_error("counters: upstream_due %zu (entries say %zu), pending_subscribes %u (%zu)\n",
                    h->q.upstream_due, due, h->q.pending_subscribes, subscribes);
        fail();
    }
    if (h->q.len)
        assert_ptr_equal(replyq_back(&h->q), replyq_at(&h->q, h->q.len - 1));
    else
        assert_null(replyq_back(&h->q));
}

/* ---------------------------------------------------------------------------------------- */
/* Scripts                                                                                  */
/* ---------------------------------------------------------------------------------------- */

enum op { OP_END = 0, OP_EXPECT, OP_LOCAL, OP_FEED, OP_FAIL, OP_STOP, OP_CHECK, OP_STATE };

struct step {
    enum op op;
    uint8_t kind, flags, tag; /* OP_EXPECT, OP_LOCAL (flags, tag) */
    uint32_t expected;        /* OP_EXPECT */
    const char *confirm;      /* OP_EXPECT with REPLYQ_PUBSUB: the confirmations it expects */
    const char *s;            /* EXPECT: local bytes; LOCAL: its bytes; FEED: reply bytes;
                                 FAIL: the error; CHECK: everything the client got so far */
    int ndone, due;           /* OP_CHECK: done() calls so far, q.upstream_due */
    bool ret;                 /* OP_FAIL: what replyq_fail returns */
    int proto;                /* OP_STATE */
    long long subs, ssubs;
    bool subscribed;
};

#define EXPECT(k, fl, n, tg, loc) \
    {.op = OP_EXPECT, .kind = (k), .flags = (fl), .expected = (n), .tag = (tg), .s = (loc)}
#define FWD(tg) EXPECT(REPLYQ_FORWARD, 0, 1, tg, NULL)
/* A (P|S)SUBSCRIBE of n channels, or an argument-less (P|S)UNSUBSCRIBE; c: the command, which
 * names its confirmations. */
#define SUBSCRIBE(c, n, tg) \
    {.op = OP_EXPECT, .kind = REPLYQ_FORWARD, .flags = PS, .expected = (n), .tag = (tg), .confirm = (c)}
#define UNSUBSCRIBE_ALL(c, tg) \
    {.op = OP_EXPECT, .kind = REPLYQ_FORWARD, .flags = PU, .expected = 1, .tag = (tg), .confirm = (c)}
#define LOCAL(b, fl, tg) {.op = OP_LOCAL, .s = (b), .flags = (fl), .tag = (tg)}
#define FEED(b) {.op = OP_FEED, .s = (b)}
#define FAIL(err, r) {.op = OP_FAIL, .s = (err), .ret = (r)}
#define STOP {.op = OP_STOP}
#define CHECK(o, nd, du) {.op = OP_CHECK, .s = (o), .ndone = (nd), .due = (du)}
#define STATE(p, su, ss, sb) \
    {.op = OP_STATE, .proto = (p), .subs = (su), .ssubs = (ss), .subscribed = (sb)}

/* One entry that left, in order. reply: the bytes done() must get; NULL: reply NULL and len 0;
 * "": len 0 (the pointer does not matter). */
struct want {
    uint8_t tag, kind, flags;
    bool error;
    const char *reply;
};
#define W(tg, k, fl, er, r) {.tag = (tg), .kind = (k), .flags = (fl), .error = (er), .reply = (r)}

struct scenario {
    const char *name;
    bool stop_on_close;
    struct step steps[32];
    const char *out;       /* everything the client got */
    struct want done[16];  /* tag 0 ends the list */
};

/* Replies. */
#define OK "+OK\r\n"
#define PONG "+PONG\r\n"
#define LOST "-ERR upstream connection lost\r\n"
#define NOPERM "-NOPERM this user has no permissions to run the 'flushall' command\r\n"
#define EXECABORT "-EXECABORT Transaction discarded because of previous errors.\r\n"
#define WRONGPASS "-WRONGPASS invalid username-password pair or user is disabled.\r\n"
#define HELLO2_LOCAL "*2\r\n$6\r\nserver\r\n$9\r\nrespguard\r\n"
#define HELLO3 "%1\r\n$5\r\nproto\r\n:3\r\n"
#define HELLO2 "%1\r\n$5\r\nproto\r\n:2\r\n"
/* RESP2 pub/sub */
#define SUB_A1 "*3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n"
#define SUB_B2 "*3\r\n$9\r\nsubscribe\r\n$1\r\nb\r\n:2\r\n"
#define PSUB_P2 "*3\r\n$10\r\npsubscribe\r\n$2\r\np*\r\n:2\r\n"
#define SSUB_S1 "*3\r\n$10\r\nssubscribe\r\n$1\r\ns\r\n:1\r\n"
#define UNSUB_A1 "*3\r\n$11\r\nunsubscribe\r\n$1\r\na\r\n:1\r\n"
#define UNSUB_A0 "*3\r\n$11\r\nunsubscribe\r\n$1\r\na\r\n:0\r\n"
#define UNSUB_B0 "*3\r\n$11\r\nunsubscribe\r\n$1\r\nb\r\n:0\r\n"
#define UNSUB_NIL0 "*3\r\n$11\r\nunsubscribe\r\n$-1\r\n:0\r\n"
#define MSG_A "*3\r\n$7\r\nmessage\r\n$1\r\na\r\n$5\r\nhello\r\n"
#define PMSG "*4\r\n$8\r\npmessage\r\n$2\r\np*\r\n$2\r\npx\r\n$2\r\nhi\r\n"
#define SMSG "*3\r\n$8\r\nsmessage\r\n$1\r\ns\r\n$2\r\nhi\r\n"
#define PONG2 "*2\r\n$4\r\npong\r\n$0\r\n\r\n" /* PING's reply in RESP2 subscribed mode */
#define SUNSUB_S0 "*3\r\n$12\r\nsunsubscribe\r\n$1\r\ns\r\n:0\r\n"
#define MONITOR_LINE "+1700000000.000001 [0 127.0.0.1:50000] \"get\" \"k\"\r\n"
/* RESP3 */
#define SUB3_A1 ">3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n"
#define UNSUB3_A0 ">3\r\n$11\r\nunsubscribe\r\n$1\r\na\r\n:0\r\n"
#define MSG3_A ">3\r\n$7\r\nmessage\r\n$1\r\na\r\n$5\r\nhello\r\n"
#define SSUB3_S1 ">3\r\n$10\r\nssubscribe\r\n$1\r\ns\r\n:1\r\n"
#define SUNSUB3_S0 ">3\r\n$12\r\nsunsubscribe\r\n$1\r\ns\r\n:0\r\n"
#define INVAL3 ">2\r\n$10\r\ninvalidate\r\n*1\r\n$3\r\nkey\r\n"
#define ATTR "|1\r\n+key-popularity\r\n%1\r\n$1\r\na\r\n,0.1923\r\n"

#define PS (REPLYQ_PUBSUB | REPLYQ_SUBSCRIBE)
#define PU (REPLYQ_PUBSUB | REPLYQ_UNBOUNDED)
#define F REPLYQ_FORWARD
#define L REPLYQ_LOCAL
#define SW REPLYQ_SWALLOW
#define LG REPLYQ_LOGIN
#define RP REPLYQ_REPLACE

/* Tag 1 switches the connection to RESP3 (HELLO 3). */
#define TO_RESP3 EXPECT(F, REPLYQ_SET_RESP3, 1, 1, NULL), FEED(HELLO3), STATE(3, 0, 0, false)
#define W_RESP3 W(1, F, REPLYQ_SET_RESP3, false, NULL)

static const struct scenario order_cases[] = {
    {"pipeline: a local refusal keeps its place between upstream replies",
     false,
     {FWD(1), LOCAL(NOPERM, 0, 2), FWD(3), CHECK("", 0, 2), FEED(OK), CHECK(OK NOPERM, 2, 1),
      FEED("$3\r\nbar\r\n"), CHECK(OK NOPERM "$3\r\nbar\r\n", 3, 0)},
     OK NOPERM "$3\r\nbar\r\n",
     {W(1, F, 0, false, NULL), W(2, L, 0, false, NULL), W(3, F, 0, false, NULL)}},
    {"pipeline: locals in a row, first and last",
     false,
     {LOCAL("+first\r\n", 0, 1), CHECK("+first\r\n", 1, 0), FWD(2), LOCAL("-ERR a\r\n", 0, 3),
      LOCAL("-ERR b\r\n", 0, 4), FWD(5), LOCAL("+last\r\n", 0, 6), CHECK("+first\r\n", 1, 2),
      FEED(":1\r\n"), CHECK("+first\r\n:1\r\n-ERR a\r\n-ERR b\r\n", 4, 1), FEED(":2\r\n")},
     "+first\r\n:1\r\n-ERR a\r\n-ERR b\r\n:2\r\n+last\r\n",
     {W(1, L, 0, false, NULL), W(2, F, 0, false, NULL), W(3, L, 0, false, NULL),
      W(4, L, 0, false, NULL), W(5, F, 0, false, NULL), W(6, L, 0, false, NULL)}},
    {"a local with nothing due is written at once and reported",
     false,
     {LOCAL("+OK\r\n", 0, 1), CHECK(OK, 1, 0)},
     OK,
     {W(1, L, 0, false, NULL)}},
    {"a local waits for the end of a reply that is half way out",
     false,
     {FWD(1), FEED("$11\r\nhello"), LOCAL("-ERR later\r\n", 0, 2), CHECK("$11\r\nhello", 0, 1),
      FEED(" world\r\n"), CHECK("$11\r\nhello world\r\n-ERR later\r\n", 2, 0)},
     "$11\r\nhello world\r\n-ERR later\r\n",
     {W(1, F, 0, false, NULL), W(2, L, 0, false, NULL)}},
    {"a local waits for the end of an out-of-band push with nothing due",
     false,
     {TO_RESP3, FEED(">2\r\n$10\r\ninvalidate\r\n*1\r\n$3\r\nke"), LOCAL("-ERR x\r\n", 0, 2),
      CHECK(HELLO3 ">2\r\n$10\r\ninvalidate\r\n*1\r\n$3\r\nke", 1, 0), FEED("y\r\n"),
      CHECK(HELLO3 INVAL3 "-ERR x\r\n", 2, 0)},
     HELLO3 INVAL3 "-ERR x\r\n",
     {W_RESP3, W(2, L, 0, false, NULL)}},
    {"a local waits for the end of a RESP2 message with nothing due",
     false,
     {SUBSCRIBE("subscribe", 1, 1), FEED(SUB_A1), FEED("*3\r\n$7\r\nmessage\r\n$1\r\na\r\n$5\r\nhel"),
      LOCAL("-ERR y\r\n", 0, 2), CHECK(SUB_A1 "*3\r\n$7\r\nmessage\r\n$1\r\na\r\n$5\r\nhel", 1, 0),
      FEED("lo\r\n"), CHECK(SUB_A1 MSG_A "-ERR y\r\n", 2, 0)},
     SUB_A1 MSG_A "-ERR y\r\n",
     {W(1, F, PS, false, NULL), W(2, L, 0, false, NULL)}},
    {"a frame that began with nothing due answers no command pushed while it streams",
     false,
     {FEED("+1700000000.000001 [0 127.0.0.1:50000] \"get"), FWD(1), LOCAL("-ERR z\r\n", 0, 2),
      FEED("\" \"k\"\r\n"), CHECK(MONITOR_LINE, 0, 1), FEED(OK), CHECK(MONITOR_LINE OK "-ERR z\r\n", 2, 0)},
     MONITOR_LINE OK "-ERR z\r\n",
     {W(1, F, 0, false, NULL), W(2, L, 0, false, NULL)}},
    {"upstream errors are forwarded and reported as errors",
     false,
     {FWD(1), FWD(2), FEED("-ERR wrong\r\n:1\r\n")},
     "-ERR wrong\r\n:1\r\n",
     {W(1, F, 0, true, NULL), W(2, F, 0, false, NULL)}},
};

#define SI REPLYQ_SILENT
#define TF REPLYQ_TRANSFORM

static const struct scenario silent_cases[] = {
    {"a silent command's reply is dropped, the next one's is not",
     false,
     {EXPECT(F, SI, 1, 1, NULL), FWD(2), FEED(OK), CHECK("", 1, 1), FEED(":1\r\n")},
     ":1\r\n",
     {W(1, F, SI, false, NULL), W(2, F, 0, false, NULL)}},
    {"a silent command's error is dropped too",
     false,
     {EXPECT(F, SI, 1, 1, NULL), LOCAL("+local\r\n", 0, 2), FEED("-ERR x\r\n")},
     "+local\r\n",
     {W(1, F, SI, true, NULL), W(2, L, 0, false, NULL)}},
    {"a silent subscribe: its confirmations and the messages still arrive",
     false,
     {{.op = OP_EXPECT, .kind = F, .flags = PS | SI, .expected = 2, .tag = 1, .confirm = "subscribe"},
      FEED(SUB_A1 SUB_B2 MSG_A)},
     SUB_A1 SUB_B2 MSG_A,
     {W(1, F, PS | SI, false, NULL)}},
    {"RESP2 subscribed: a message before a silent reply passes, the reply does not",
     false,
     {SUBSCRIBE("subscribe", 1, 1), FEED(SUB_A1), EXPECT(F, SI, 1, 2, NULL), FEED(MSG_A), CHECK(SUB_A1 MSG_A, 1, 1),
      FEED(PONG2)},
     SUB_A1 MSG_A,
     {W(1, F, PS, false, NULL), W(2, F, SI, false, NULL)}},
    {"RESP3: a push before a silent reply passes",
     false,
     {TO_RESP3, EXPECT(F, SI, 1, 2, NULL), FEED(INVAL3 OK), FWD(3), FEED(":7\r\n")},
     HELLO3 INVAL3 ":7\r\n",
     {W_RESP3, W(2, F, SI, false, NULL), W(3, F, 0, false, NULL)}},
    {"silent REPLACE and LOGIN: their local bytes are not sent",
     false,
     {EXPECT(RP, SI, 1, 1, EXECABORT), EXPECT(LG, SI, 1, 2, OK), FWD(3), FEED(OK OK ":3\r\n")},
     ":3\r\n",
     {W(1, RP, SI, false, OK), W(2, LG, SI, false, OK), W(3, F, 0, false, NULL)}},
    {"silent argument-less UNSUBSCRIBE: confirmations pass, its error does not",
     false,
     {{.op = OP_EXPECT, .kind = F, .flags = PU | SI, .expected = 1, .tag = 1, .confirm = "unsubscribe"},
      EXPECT(SW, 0, 1, 2, NULL), FEED(UNSUB_NIL0 "-ERR no\r\n" PONG)},
     UNSUB_NIL0,
     {W(1, F, PU | SI, true, NULL), W(2, SW, 0, false, PONG)}},
    {"a lost connection answers only what is not silent",
     false,
     {EXPECT(F, SI, 1, 1, NULL), FWD(2), EXPECT(TF, SI, 1, 3, NULL), EXPECT(TF, 0, 1, 4, NULL), FAIL(LOST, false)},
     LOST LOST,
     {W(1, F, SI, true, NULL), W(2, F, 0, true, NULL), W(3, TF, SI, true, NULL), W(4, TF, 0, true, NULL)}},
    {"transform: the owner's replacement takes the reply's place",
     false,
     {FWD(1), EXPECT(TF, 0, 1, 2, NULL), FWD(3), FEED(OK "$5\r\nhello\r\n" ":3\r\n")},
     OK "+T11\r\n:3\r\n",
     {W(1, F, 0, false, NULL), W(2, TF, 0, false, "$5\r\nhello\r\n"), W(3, F, 0, false, NULL)}},
    {"transform of an error: the owner decides (here: the same as any reply)",
     false,
     {EXPECT(TF, 0, 1, 1, NULL), FEED("-LOADING x\r\n")},
     "+T12\r\n",
     {W(1, TF, 0, true, "-LOADING x\r\n")}},
    {"silent transform: nothing",
     false,
     {EXPECT(TF, SI, 1, 1, NULL), FWD(2), FEED("$1\r\nx\r\n" OK)},
     OK,
     {W(1, TF, SI, false, "$1\r\nx\r\n"), W(2, F, 0, false, NULL)}},
};

static const struct scenario drop_cases[] = {
    {"swallow drops its reply",
     false,
     {EXPECT(SW, 0, 1, 1, NULL), FWD(2), CHECK("", 0, 2), FEED(PONG), CHECK("", 1, 1), FEED(":5\r\n"),
      CHECK(":5\r\n", 2, 0)},
     ":5\r\n",
     {W(1, SW, 0, false, PONG), W(2, F, 0, false, NULL)}},
    {"swallow drops an error reply too",
     false,
     {FWD(1), EXPECT(SW, 0, 1, 2, NULL), FEED(":1\r\n-ERR nope\r\n"), CHECK(":1\r\n", 2, 0)},
     ":1\r\n",
     {W(1, F, 0, false, NULL), W(2, SW, 0, true, "-ERR nope\r\n")}},
    {"swallow of several replies drops them all",
     false,
     {EXPECT(SW, 0, 3, 1, NULL), FWD(2), FEED(OK OK), CHECK("", 0, 2), FEED(":3\r\n$1\r\nx\r\n")},
     "$1\r\nx\r\n",
     {W(1, SW, 0, false, ":3\r\n"), W(2, F, 0, false, NULL)}},
    {"swallow of several replies: an error ends it and is what the owner gets",
     false,
     {EXPECT(SW, 0, 2, 1, NULL), FWD(2), FEED("-ERR first\r\n"), CHECK("", 1, 1), FEED(":4\r\n")},
     ":4\r\n",
     {W(1, SW, 0, true, "-ERR first\r\n"), W(2, F, 0, false, NULL)}},
    {"replace drops the reply and writes its local bytes",
     false,
     {EXPECT(RP, 0, 1, 1, EXECABORT), FWD(2), CHECK("", 0, 2), FEED(OK), CHECK(EXECABORT, 1, 1),
      FEED(":1\r\n")},
     EXECABORT ":1\r\n",
     {W(1, RP, 0, false, OK), W(2, F, 0, false, NULL)}},
    {"replace of an error reply still writes its local bytes",
     false,
     {EXPECT(RP, 0, 1, 1, EXECABORT), FEED("-ERR DISCARD without MULTI\r\n")},
     EXECABORT,
     {W(1, RP, 0, true, "-ERR DISCARD without MULTI\r\n")}},
    {"login success writes its local bytes, not the upstream's",
     false,
     {EXPECT(LG, 0, 1, 1, HELLO2_LOCAL), FWD(2), FEED(OK), CHECK(HELLO2_LOCAL, 1, 1),
      FEED("$1\r\nv\r\n")},
     HELLO2_LOCAL "$1\r\nv\r\n",
     {W(1, LG, 0, false, OK), W(2, F, 0, false, NULL)}},
    {"login without local bytes writes nothing",
     false,
     {EXPECT(LG, 0, 1, 1, NULL), LOCAL("+after\r\n", 0, 2), FEED(OK)},
     "+after\r\n",
     {W(1, LG, 0, false, OK), W(2, L, 0, false, NULL)}},
    {"login error writes nothing and hands the error to the owner",
     false,
     {EXPECT(LG, 0, 1, 1, OK), FWD(2), FEED(WRONGPASS), CHECK("", 1, 1), FEED("$-1\r\n")},
     "$-1\r\n",
     {W(1, LG, 0, true, WRONGPASS), W(2, F, 0, false, NULL)}},
};

static const struct scenario pubsub_cases[] = {
    {"SUBSCRIBE a b (RESP2): a message while a PING is due reaches the client, PING stays due",
     false,
     {SUBSCRIBE("subscribe", 2, 1), STATE(2, 0, 0, true), FWD(2), FEED(SUB_A1), CHECK(SUB_A1, 0, 2),
      STATE(2, 1, 0, true), FEED(SUB_B2), CHECK(SUB_A1 SUB_B2, 1, 1), STATE(2, 2, 0, true),
      FEED(MSG_A), CHECK(SUB_A1 SUB_B2 MSG_A, 1, 1), FEED(PONG2),
      CHECK(SUB_A1 SUB_B2 MSG_A PONG2, 2, 0), FEED(MSG_A),
      CHECK(SUB_A1 SUB_B2 MSG_A PONG2 MSG_A, 2, 0), STATE(2, 2, 0, true)},
     SUB_A1 SUB_B2 MSG_A PONG2 MSG_A,
     {W(1, F, PS, false, NULL), W(2, F, 0, false, NULL)}},
    {"a message between two SUBSCRIBEs answers neither",
     false,
     {SUBSCRIBE("subscribe", 1, 1), SUBSCRIBE("subscribe", 1, 2), FEED(SUB_A1), FEED(MSG_A),
      CHECK(SUB_A1 MSG_A, 1, 1), FEED(SUB_B2), CHECK(SUB_A1 MSG_A SUB_B2, 2, 0),
      STATE(2, 2, 0, true)},
     SUB_A1 MSG_A SUB_B2,
     {W(1, F, PS, false, NULL), W(2, F, PS, false, NULL)}},
    {"pattern and shard subscriptions: counted apart, their messages out of band",
     false,
     {SUBSCRIBE("subscribe", 1, 1), FEED(SUB_A1), SUBSCRIBE("psubscribe", 1, 2), FEED(PSUB_P2),
      SUBSCRIBE("ssubscribe", 1, 3), FEED(SSUB_S1), STATE(2, 2, 1, true), FWD(4), FEED(PMSG),
      FEED(SMSG), CHECK(SUB_A1 PSUB_P2 SSUB_S1 PMSG SMSG, 3, 1), FEED(PONG2)},
     SUB_A1 PSUB_P2 SSUB_S1 PMSG SMSG PONG2,
     {W(1, F, PS, false, NULL), W(2, F, PS, false, NULL), W(3, F, PS, false, NULL),
      W(4, F, 0, false, NULL)}},
    {"shard subscriptions alone (RESP2): smessage is out of band",
     false,
     {SUBSCRIBE("ssubscribe", 1, 1), FEED(SSUB_S1), STATE(2, 0, 1, true), FWD(2), FEED(SMSG),
      CHECK(SSUB_S1 SMSG, 1, 1), FEED(PONG2), CHECK(SSUB_S1 SMSG PONG2, 2, 0)},
     SSUB_S1 SMSG PONG2,
     {W(1, F, PS, false, NULL), W(2, F, 0, false, NULL)}},
    {"a confirmation nobody asked for (RESP2 sunsubscribe on slot migration) answers nothing",
     false,
     {SUBSCRIBE("ssubscribe", 1, 1), FEED(SSUB_S1), FWD(2), FEED(SUNSUB_S0), CHECK(SSUB_S1 SUNSUB_S0, 1, 1),
      STATE(2, 0, 0, false), FEED(PONG), CHECK(SSUB_S1 SUNSUB_S0 PONG, 2, 0)},
     SSUB_S1 SUNSUB_S0 PONG,
     {W(1, F, PS, false, NULL), W(2, F, 0, false, NULL)}},
    {"a confirmation push nobody asked for (RESP3) answers nothing",
     false,
     {TO_RESP3, SUBSCRIBE("ssubscribe", 1, 2), FEED(SSUB3_S1), STATE(3, 0, 1, true), FWD(3),
      EXPECT(SW, 0, 1, 4, NULL), FEED(SUNSUB3_S0), CHECK(HELLO3 SSUB3_S1 SUNSUB3_S0, 2, 2),
      STATE(3, 0, 0, false), FEED("$-1\r\n" PONG), CHECK(HELLO3 SSUB3_S1 SUNSUB3_S0 "$-1\r\n", 4, 0)},
     HELLO3 SSUB3_S1 SUNSUB3_S0 "$-1\r\n",
     {W_RESP3, W(2, F, PS, false, NULL), W(3, F, 0, false, NULL), W(4, SW, 0, false, PONG)}},
    {"a refused SUBSCRIBE: one error ends it, not subscribed",
     false,
     {SUBSCRIBE("subscribe", 2, 1), STATE(2, 0, 0, true),
      FEED("-NOPERM this user has no permissions to access one of the channels used as "
           "arguments\r\n"),
      CHECK("-NOPERM this user has no permissions to access one of the channels used as "
            "arguments\r\n",
            1, 0),
      STATE(2, 0, 0, false)},
     "-NOPERM this user has no permissions to access one of the channels used as arguments\r\n",
     {W(1, F, PS, true, NULL)}},
    {"not subscribed (RESP2): an array that looks like a message is a reply",
     false,
     {FWD(1), FEED(MSG_A), CHECK(MSG_A, 1, 0)},
     MSG_A,
     {W(1, F, 0, false, NULL)}},
    {"argument-less UNSUBSCRIBE (RESP2): confirmations stream, the marker's +PONG is dropped",
     false,
     {SUBSCRIBE("subscribe", 2, 1), FEED(SUB_A1 SUB_B2), UNSUBSCRIBE_ALL("unsubscribe", 2),
      EXPECT(SW, 0, 1, 3, NULL), CHECK(SUB_A1 SUB_B2, 1, 2),
      /* published before the UNSUBSCRIBE ran: not a reply, not the end of the confirmations */
      FEED(MSG_A), CHECK(SUB_A1 SUB_B2 MSG_A, 1, 2), FEED(UNSUB_A1),
      CHECK(SUB_A1 SUB_B2 MSG_A UNSUB_A1, 1, 2), STATE(2, 1, 0, true), FEED(UNSUB_B0),
      CHECK(SUB_A1 SUB_B2 MSG_A UNSUB_A1 UNSUB_B0, 1, 2), STATE(2, 0, 0, false), FEED(PONG),
      CHECK(SUB_A1 SUB_B2 MSG_A UNSUB_A1 UNSUB_B0, 3, 0), FWD(4), FEED(":9\r\n")},
     SUB_A1 SUB_B2 MSG_A UNSUB_A1 UNSUB_B0 ":9\r\n",
     {W(1, F, PS, false, NULL), W(2, F, PU, false, NULL), W(3, SW, 0, false, PONG),
      W(4, F, 0, false, NULL)}},
    {"argument-less UNSUBSCRIBE with a pattern left: the subscribed-mode pong is dropped",
     false,
     {SUBSCRIBE("subscribe", 1, 1), FEED(SUB_A1), SUBSCRIBE("psubscribe", 1, 2), FEED(PSUB_P2),
      UNSUBSCRIBE_ALL("unsubscribe", 3), EXPECT(SW, 0, 1, 4, NULL), FEED(UNSUB_A1),
      CHECK(SUB_A1 PSUB_P2 UNSUB_A1, 2, 2), FEED(PONG2), CHECK(SUB_A1 PSUB_P2 UNSUB_A1, 4, 0),
      STATE(2, 1, 0, true), FWD(5), FEED(PMSG), CHECK(SUB_A1 PSUB_P2 UNSUB_A1 PMSG, 4, 1),
      FEED(PONG2)},
     SUB_A1 PSUB_P2 UNSUB_A1 PMSG PONG2,
     {W(1, F, PS, false, NULL), W(2, F, PS, false, NULL), W(3, F, PU, false, NULL),
      W(4, SW, 0, false, PONG2), W(5, F, 0, false, NULL)}},
    {"argument-less UNSUBSCRIBE followed by the client's own PING: its reply ends them and is sent",
     false,
     {SUBSCRIBE("subscribe", 1, 1), FEED(SUB_A1), UNSUBSCRIBE_ALL("unsubscribe", 2), FWD(3),
      FEED(UNSUB_A0), CHECK(SUB_A1 UNSUB_A0, 1, 2), FEED(PONG), CHECK(SUB_A1 UNSUB_A0 PONG, 3, 0)},
     SUB_A1 UNSUB_A0 PONG,
     {W(1, F, PS, false, NULL), W(2, F, PU, false, NULL), W(3, F, 0, false, NULL)}},
    {"argument-less UNSUBSCRIBE with nothing subscribed",
     false,
     {UNSUBSCRIBE_ALL("unsubscribe", 1), EXPECT(SW, 0, 1, 2, NULL), FEED(UNSUB_NIL0 PONG),
      STATE(2, 0, 0, false)},
     UNSUB_NIL0,
     {W(1, F, PU, false, NULL), W(2, SW, 0, false, PONG)}},
    {"argument-less UNSUBSCRIBE refused: the error is its reply, the marker's still dropped",
     false,
     {SUBSCRIBE("subscribe", 1, 1), FEED(SUB_A1), UNSUBSCRIBE_ALL("unsubscribe", 2), EXPECT(SW, 0, 1, 3, NULL),
      FEED("-ERR refused\r\n"), CHECK(SUB_A1 "-ERR refused\r\n", 2, 1), FEED(PONG2),
      CHECK(SUB_A1 "-ERR refused\r\n", 3, 0), STATE(2, 1, 0, true)},
     SUB_A1 "-ERR refused\r\n",
     {W(1, F, PS, false, NULL), W(2, F, PU, true, NULL), W(3, SW, 0, false, PONG2)}},
    {"argument-less UNSUBSCRIBE (RESP3): push confirmations, the marker's +PONG dropped",
     false,
     {TO_RESP3, SUBSCRIBE("subscribe", 1, 2), FEED(SUB3_A1), STATE(3, 1, 0, true),
      UNSUBSCRIBE_ALL("unsubscribe", 3), EXPECT(SW, 0, 1, 4, NULL), FEED(MSG3_A UNSUB3_A0),
      CHECK(HELLO3 SUB3_A1 MSG3_A UNSUB3_A0, 2, 2), FEED(PONG), STATE(3, 0, 0, false)},
     HELLO3 SUB3_A1 MSG3_A UNSUB3_A0,
     {W_RESP3, W(2, F, PS, false, NULL), W(3, F, PU, false, NULL), W(4, SW, 0, false, PONG)}},
    {"RESP3: messages and invalidations are out of band, arrays are replies",
     false,
     {TO_RESP3, SUBSCRIBE("subscribe", 1, 2), FEED(SUB3_A1), STATE(3, 1, 0, true), FWD(3),
      FEED(MSG3_A), CHECK(HELLO3 SUB3_A1 MSG3_A, 2, 1), FEED(INVAL3),
      CHECK(HELLO3 SUB3_A1 MSG3_A INVAL3, 2, 1),
      /* LRANGE answering ["message", "a", "hello"]: in RESP3 it is the reply */
      FEED(MSG_A), CHECK(HELLO3 SUB3_A1 MSG3_A INVAL3 MSG_A, 3, 0)},
     HELLO3 SUB3_A1 MSG3_A INVAL3 MSG_A,
     {W_RESP3, W(2, F, PS, false, NULL), W(3, F, 0, false, NULL)}},
    {"RESP3: a push while a swallowed reply is due reaches the client",
     false,
     {TO_RESP3, EXPECT(SW, 0, 1, 2, NULL), FEED(INVAL3), CHECK(HELLO3 INVAL3, 1, 1), FEED(PONG),
      CHECK(HELLO3 INVAL3, 2, 0)},
     HELLO3 INVAL3,
     {W_RESP3, W(2, SW, 0, false, PONG)}},
    {"RESP3: a push with nothing due is written",
     false,
     {TO_RESP3, FEED(INVAL3), CHECK(HELLO3 INVAL3, 1, 0), FWD(2), FEED(OK)},
     HELLO3 INVAL3 OK,
     {W_RESP3, W(2, F, 0, false, NULL)}},
    {"RESP2 subscribed: a message while a swallowed PING is due reaches the client",
     false,
     {SUBSCRIBE("subscribe", 1, 1), FEED(SUB_A1), EXPECT(SW, 0, 1, 2, NULL), FEED(MSG_A),
      CHECK(SUB_A1 MSG_A, 1, 1), FEED(PONG2), CHECK(SUB_A1 MSG_A, 2, 0)},
     SUB_A1 MSG_A,
     {W(1, F, PS, false, NULL), W(2, SW, 0, false, PONG2)}},
};

static const struct scenario attr_proto_cases[] = {
    {"an attribute stays with the reply it precedes",
     false,
     {TO_RESP3, FWD(2), FEED(ATTR), CHECK(HELLO3 ATTR, 1, 1), FEED("$3\r\nfoo\r\n"),
      CHECK(HELLO3 ATTR "$3\r\nfoo\r\n", 2, 0)},
     HELLO3 ATTR "$3\r\nfoo\r\n",
     {W_RESP3, W(2, F, 0, false, NULL)}},
    {"an attribute is dropped with the swallowed reply it precedes",
     false,
     {TO_RESP3, EXPECT(SW, 0, 1, 2, NULL), FWD(3), FEED(ATTR), CHECK(HELLO3, 1, 2), FEED(PONG),
      CHECK(HELLO3, 2, 1), FEED(ATTR ":7\r\n"), CHECK(HELLO3 ATTR ":7\r\n", 3, 0)},
     HELLO3 ATTR ":7\r\n",
     {W_RESP3, W(2, SW, 0, false, ATTR PONG), W(3, F, 0, false, NULL)}},
    {"HELLO 3 refused: still RESP2",
     false,
     {EXPECT(F, REPLYQ_SET_RESP3, 1, 1, NULL), FEED("-NOPROTO unsupported protocol version\r\n"),
      STATE(2, 0, 0, false)},
     "-NOPROTO unsupported protocol version\r\n",
     {W(1, F, REPLYQ_SET_RESP3, true, NULL)}},
    {"HELLO 2 from RESP3",
     false,
     {TO_RESP3, EXPECT(F, REPLYQ_SET_RESP2, 1, 2, NULL), FEED(HELLO2), STATE(2, 0, 0, false)},
     HELLO3 HELLO2,
     {W_RESP3, W(2, F, REPLYQ_SET_RESP2, false, NULL)}},
    {"HELLO 2 refused: still RESP3",
     false,
     {TO_RESP3, EXPECT(F, REPLYQ_SET_RESP2, 1, 2, NULL), FEED("-ERR x\r\n"), STATE(3, 0, 0, false)},
     HELLO3 "-ERR x\r\n",
     {W_RESP3, W(2, F, REPLYQ_SET_RESP2, true, NULL)}},
    {"RESET ends RESP3 and the subscriptions",
     false,
     {TO_RESP3, SUBSCRIBE("subscribe", 1, 2), FEED(SUB3_A1), STATE(3, 1, 0, true),
      EXPECT(F, REPLYQ_RESET, 1, 3, NULL), FEED("+RESET\r\n"), STATE(2, 0, 0, false)},
     HELLO3 SUB3_A1 "+RESET\r\n",
     {W_RESP3, W(2, F, PS, false, NULL), W(3, F, REPLYQ_RESET, false, NULL)}},
    {"RESET ends shard subscriptions too",
     false,
     {SUBSCRIBE("ssubscribe", 1, 1), FEED(SSUB_S1), STATE(2, 0, 1, true),
      EXPECT(F, REPLYQ_RESET, 1, 2, NULL), FEED("+RESET\r\n"), STATE(2, 0, 0, false), FWD(3),
      FEED(SMSG), CHECK(SSUB_S1 "+RESET\r\n" SMSG, 3, 0)},
     SSUB_S1 "+RESET\r\n" SMSG,
     {W(1, F, PS, false, NULL), W(2, F, REPLYQ_RESET, false, NULL), W(3, F, 0, false, NULL)}},
    {"RESET refused changes nothing",
     false,
     {TO_RESP3, SUBSCRIBE("subscribe", 1, 2), FEED(SUB3_A1), EXPECT(F, REPLYQ_RESET, 1, 3, NULL),
      FEED("-ERR x\r\n"), STATE(3, 1, 0, true)},
     HELLO3 SUB3_A1 "-ERR x\r\n",
     {W_RESP3, W(2, F, PS, false, NULL), W(3, F, REPLYQ_RESET, true, NULL)}},
    {"after RESET (RESP2) an array that looks like a message is a reply again",
     false,
     {SUBSCRIBE("subscribe", 1, 1), FEED(SUB_A1), STATE(2, 1, 0, true),
      EXPECT(F, REPLYQ_RESET, 1, 2, NULL), FEED("+RESET\r\n"), STATE(2, 0, 0, false), FWD(3),
      FEED(MSG_A), CHECK(SUB_A1 "+RESET\r\n" MSG_A, 3, 0)},
     SUB_A1 "+RESET\r\n" MSG_A,
     {W(1, F, PS, false, NULL), W(2, F, REPLYQ_RESET, false, NULL), W(3, F, 0, false, NULL)}},
};

static const struct scenario fail_stop_cases[] = {
    {"fail: the entries a client waits on get the error, locals keep their place",
     false,
     {FWD(1), LOCAL(NOPERM, 0, 2), EXPECT(SW, 0, 1, 3, NULL), EXPECT(RP, 0, 1, 4, EXECABORT),
      EXPECT(LG, 0, 1, 5, OK), EXPECT(LG, 0, 1, 6, NULL), FWD(7), LOCAL("+late\r\n", 0, 8),
      CHECK("", 0, 6), FAIL(LOST, false), CHECK(LOST NOPERM LOST LOST LOST "+late\r\n", 8, 0),
      /* the queue goes on with the next connection */
      FWD(9), FEED(OK)},
     LOST NOPERM LOST LOST LOST "+late\r\n" OK,
     {W(1, F, 0, true, NULL), W(2, L, 0, false, NULL), W(3, SW, 0, true, NULL),
      W(4, RP, 0, true, NULL), W(5, LG, 0, true, NULL), W(6, LG, 0, true, NULL),
      W(7, F, 0, true, NULL), W(8, L, 0, false, NULL), W(9, F, 0, false, NULL)}},
    {"fail with a held reply half way: none of it reaches the client",
     false,
     {EXPECT(SW, 0, 1, 1, NULL), FWD(2), FEED("-ERR partial"), CHECK("", 0, 2),
      FAIL(LOST, false), CHECK(LOST, 2, 0)},
     LOST,
     {W(1, SW, 0, true, NULL), W(2, F, 0, true, NULL)}},
    {"fail while a forwarded reply is half streamed: true, nothing more written",
     false,
     {FWD(1), LOCAL(NOPERM, 0, 2), FWD(3), FEED("$10\r\nhello"), FAIL(LOST, true),
      CHECK("$10\r\nhello", 3, 0), FEED(OK), LOCAL("+x\r\n", 0, 4), CHECK("$10\r\nhello", 4, 0)},
     "$10\r\nhello",
     /* the LOCAL that never went out is reported with error set */
     {W(1, F, 0, true, NULL), W(2, L, 0, true, NULL), W(3, F, 0, true, NULL),
      W(4, L, 0, false, NULL)}},
    {"fail while an out-of-band push is half streamed: true",
     false,
     {TO_RESP3, FWD(2), FEED(">2\r\n$10\r\ninval"), FAIL(LOST, true),
      CHECK(HELLO3 ">2\r\n$10\r\ninval", 2, 0)},
     HELLO3 ">2\r\n$10\r\ninval",
     {W_RESP3, W(2, F, 0, true, NULL)}},
    {"fail with nothing due returns false and writes nothing",
     false,
     {FAIL(LOST, false), CHECK("", 0, 0), LOCAL(OK, 0, 1)},
     OK,
     {W(1, L, 0, false, NULL)}},
    {"fail stops writing at a CLOSE_AFTER local",
     true,
     {FWD(1), LOCAL("-ERR bye\r\n", REPLYQ_CLOSE_AFTER, 2), FWD(3), FAIL(LOST, false),
      CHECK(LOST "-ERR bye\r\n", 3, 0)},
     LOST "-ERR bye\r\n",
     {W(1, F, 0, true, NULL), W(2, L, REPLYQ_CLOSE_AFTER, false, NULL), W(3, F, 0, true, NULL)}},
    {"CLOSE_AFTER is reported; the owner's stop ends all writes",
     true,
     {EXPECT(F, REPLYQ_CLOSE_AFTER, 1, 1, NULL), FWD(2), LOCAL("+x\r\n", 0, 3), FEED(OK),
      CHECK(OK, 1, 1), FEED(":1\r\n"), CHECK(OK, 1, 1)},
     OK,
     {W(1, F, REPLYQ_CLOSE_AFTER, false, NULL)}},
    {"a local with CLOSE_AFTER and nothing due",
     true,
     {LOCAL("-ERR max number of clients reached\r\n", REPLYQ_CLOSE_AFTER, 1)},
     "-ERR max number of clients reached\r\n",
     {W(1, L, REPLYQ_CLOSE_AFTER, false, NULL)}},
    {"a swallowed reply's CLOSE_AFTER is reported too",
     false,
     {EXPECT(SW, REPLYQ_CLOSE_AFTER, 1, 1, NULL), FEED(OK)},
     "",
     {W(1, SW, REPLYQ_CLOSE_AFTER, false, OK)}},
    {"stop: replies and locals are not written",
     false,
     {FWD(1), FEED("$5\r\nab"), STOP, FEED("cde\r\n"), LOCAL(OK, 0, 2), CHECK("$5\r\nab", 0, 1)},
     "$5\r\nab",
     {{0}}},
    {"stop with nothing due: a local is reported, not written",
     false,
     {STOP, LOCAL(OK, 0, 1), CHECK("", 1, 0)},
     "",
     {W(1, L, 0, false, NULL)}},
};

static void check_done(const struct harness *h, size_t i, const struct want *w)
{
    const struct done_rec *d = &h->done[i];
    bool bad = d->e.tag != w->tag || d->e.kind != w->kind || d->e.flags != w->flags ||
               d->error != w->error;
    if (d->e.kind == REPLYQ_LOCAL)
        bad |= d->e.seq != 0 || d->e.t_in != 0 || d->e.expected != 0;
    else
        bad |= d->e.seq != 1000u + d->e.tag || d->e.t_in != 10u * d->e.tag ||
               d->e.t_sent != 10u * d->e.tag + 5;
    if (bad) {
        context();
        print_error("done[%zu]: tag %u kind %u flags 0x%x error %d seq %u t_in %llu t_sent %llu; "
                    "want tag %u kind %u flags 0x%x error %d\n",
                    i, d->e.tag, d->e.kind, d->e.flags, d->error, d->e.seq,
                    (unsigned long long)d->e.t_in, (unsigned long long)d->e.t_sent, w->tag, w->kind,
                    w->flags, w->error);
        fail();
    }
    if (w->reply == NULL) {
        if (!d->reply_null || d->reply_len != 0) {
            context();
            print_error("done[%zu] (tag %u): reply must be NULL\n", i, d->e.tag);
            show("got", d->reply ? d->reply : "", d->reply_len);
            fail();
        }
    } else {
        char what[64];
        snprintf(what, sizeof what, "done[%zu] (tag %u) reply", i, d->e.tag);
        expect_bytes(what, d->reply ? d->reply : "", d->reply_len, w->reply, strlen(w->reply));
    }
}

static void run_scenario(const struct scenario *sc, size_t chunk)
{
    struct harness h;
    cur_case = sc->name;
    cur_chunk = chunk;
    h_init(&h);
    h.stop_on_close = sc->stop_on_close;
    for (const struct step *st = sc->steps; st->op != OP_END; st++) {
        switch (st->op) {
        case OP_EXPECT:
            h_expect(&h, st->kind, st->flags, st->expected, st->tag, st->s, st->confirm);
            break;
        case OP_LOCAL:
            assert_int_equal(replyq_local(&h.q, st->s, strlen(st->s), st->flags, st->tag), 0);
            break;
        case OP_FEED:
            h_feed(&h, st->s, strlen(st->s), chunk);
            break;
        case OP_FAIL: {
            size_t writes = h.writes;
            bool r = replyq_fail(&h.q, st->s, strlen(st->s));
            if (r != st->ret) {
                context();
                print_error("replyq_fail returned %d\n", r);
                fail();
            }
            if (r)
                assert_int_equal(h.writes, writes);
            assert_int_equal(h.q.len, 0);
            assert_int_equal(h.q.upstream_due, 0);
            assert_false(h.q.frame_open);
            resp_framer_deinit(&h.fr);
            resp_framer_init(&h.fr); /* a new upstream connection, if any */
            break;
        }
        case OP_STOP:
            replyq_stop(&h.q);
            break;
        case OP_CHECK:
            expect_bytes("client output so far", h.out, h.out_len, st->s, strlen(st->s));
            if (h.ndone != (size_t)st->ndone || h.q.upstream_due != (size_t)st->due) {
                context();
                print_error("after %zu bytes out: %zu entries done (want %d), %zu due (want %d)\n",
                            h.out_len, h.ndone, st->ndone, h.q.upstream_due, st->due);
                fail();
            }
            check_invariants(&h);
            break;
        case OP_STATE:
            if (h.q.proto != st->proto || h.q.subs != st->subs || h.q.ssubs != st->ssubs ||
                replyq_subscribed(&h.q) != st->subscribed) {
                context();
                print_error("state: proto %d subs %lld ssubs %lld subscribed %d; want %d %lld %lld "
                            "%d\n",
                            h.q.proto, h.q.subs, h.q.ssubs, replyq_subscribed(&h.q), st->proto,
                            st->subs, st->ssubs, st->subscribed);
                fail();
            }
            break;
        case OP_END:
            break;
        }
    }
    expect_bytes("client output", h.out, h.out_len, sc->out, strlen(sc->out));
    size_t nwant = 0;
    while (nwant < ARRAY_SIZE(sc->done) && sc->done[nwant].tag != 0)
        nwant++;
    if (h.ndone != nwant) {
        context();
        print_error("%zu entries done, want %zu\n", h.ndone, nwant);
        for (size_t i = 0; i < h.ndone; i++)
            print_error("  done[%zu]: tag %u kind %u error %d\n", i, h.done[i].e.tag,
                        h.done[i].e.kind, h.done[i].error);
        fail();
    }
    for (size_t i = 0; i < nwant; i++)
        check_done(&h, i, &sc->done[i]);
    check_invariants(&h);
    h_free(&h);
}

static void run_table(const struct scenario *cases, size_t n)
{
    static const size_t chunks[] = {1, 2, 7, WHOLE};
    for (size_t i = 0; i < n; i++)
        for (size_t c = 0; c < ARRAY_SIZE(chunks); c++)
            run_scenario(&cases[i], chunks[c]);
}

static void test_order(void **state)
{
    (void)state;
    run_table(order_cases, ARRAY_SIZE(order_cases));
}

static void test_dropped_kinds(void **state)
{
    (void)state;
    run_table(drop_cases, ARRAY_SIZE(drop_cases));
}

static void test_silent_and_transform(void **state)
{
    (void)state;
    run_table(silent_cases, ARRAY_SIZE(silent_cases));
}

static void test_pubsub(void **state)
{
    (void)state;
    run_table(pubsub_cases, ARRAY_SIZE(pubsub_cases));
}

static void test_attributes_and_protocol(void **state)
{
    (void)state;
    run_table(attr_proto_cases, ARRAY_SIZE(attr_proto_cases));
}

static void test_fail_and_stop(void **state)
{
    (void)state;
    run_table(fail_stop_cases, ARRAY_SIZE(fail_stop_cases));
}

/* A confirmation that answers no command (Redis Cluster sends "sunsubscribe" on its own when a
 * slot leaves the node) while a SUBSCRIBE is due must not be taken as that SUBSCRIBE's: it would
 * complete the wrong entry, the real confirmation would then complete the PING behind it, and the
 * queue would believe the connection unsubscribed while Redis has it subscribed to a. An entry
 * takes only the confirmations named after its command. */
static const struct scenario unsolicited_cases[] = {
    {"an unsolicited sunsubscribe while a SUBSCRIBE is due (RESP2)",
     false,
     {SUBSCRIBE("ssubscribe", 1, 1), FEED(SSUB_S1), STATE(2, 0, 1, true), SUBSCRIBE("subscribe", 1, 2),
      FWD(3), FEED(SUNSUB_S0), CHECK(SSUB_S1 SUNSUB_S0, 1, 2), FEED(SUB_A1),
      CHECK(SSUB_S1 SUNSUB_S0 SUB_A1, 2, 1), STATE(2, 1, 0, true), FEED(PONG2),
      CHECK(SSUB_S1 SUNSUB_S0 SUB_A1 PONG2, 3, 0)},
     SSUB_S1 SUNSUB_S0 SUB_A1 PONG2,
     {W(1, F, PS, false, NULL), W(2, F, PS, false, NULL), W(3, F, 0, false, NULL)}},
};

static void test_unsolicited_confirmation(void **state)
{
    (void)state;
    run_table(unsolicited_cases, ARRAY_SIZE(unsolicited_cases));
}

/* ---------------------------------------------------------------------------------------- */
/* Cases that do not fit a table                                                            */
/* ---------------------------------------------------------------------------------------- */

/* A RESP2 message array whose payload is n bytes of a pattern. */
static char *big_message(size_t payload, size_t *len)
{
    char head[64];
    int k = snprintf(head, sizeof head, "*3\r\n$7\r\nmessage\r\n$1\r\na\r\n$%zu\r\n", payload);
    *len = (size_t)k + payload + 2;
    char *m = malloc(*len);
    assert_non_null(m);
    memcpy(m, head, (size_t)k);
    for (size_t i = 0; i < payload; i++)
        m[k + i] = (char)('a' + i % 26);
    memcpy(m + k + payload, "\r\n", 2);
    return m;
}

/* Feed a frame in pieces of `piece` bytes; returns the client output length seen just before
 * the piece that ends it. */
static size_t feed_watch(struct harness *h, const char *m, size_t len, size_t piece)
{
    size_t before_last = 0;
    for (size_t off = 0; off < len; off += piece) {
        size_t n = len - off < piece ? len - off : piece;
        if (off + n == len)
            before_last = h->out_len;
        h_feed(h, m + off, n, n);
    }
    return before_last;
}

/* A frame that grows past 64 KiB at the front of a SWALLOW entry cannot be the small reply it
 * would drop: it is streamed from there on instead of held whole (RESP2 subscribed: a big
 * message while respguard's PING is due). A smaller one is held until it ends. */
static void test_hold_max_streams_big_frame(void **state)
{
    (void)state;
    struct harness h;
    cur_case = "big frame at the front of a SWALLOW entry";
    cur_chunk = 4096;
    h_init(&h);
    h_expect(&h, REPLYQ_FORWARD, PS, 1, 1, NULL, "subscribe");
    h_feed(&h, SUB_A1, strlen(SUB_A1), WHOLE);
    size_t base = h.out_len;
    assert_int_equal(base, strlen(SUB_A1));

    /* Below the limit: held back whole, then out (it answers no command). */
    h_expect(&h, REPLYQ_SWALLOW, 0, 1, 2, NULL, NULL);
    size_t small_len;
    char *small = big_message(HOLD_MAX_T - 100, &small_len);
    assert_true(small_len <= HOLD_MAX_T);
    size_t seen = feed_watch(&h, small, small_len, 4096);
    assert_int_equal(seen, base); /* nothing of it went out before its end */
    assert_int_equal(h.out_len, base + small_len);
    assert_memory_equal(h.out + base, small, small_len);
    assert_int_equal(h.ndone, 1);
    assert_int_equal(h.q.upstream_due, 1);
    base = h.out_len;

    /* Over the limit: streamed before it ends, still out of band. */
    size_t big_len;
    char *big = big_message(3 * HOLD_MAX_T, &big_len);
    size_t off = 0;
    while (h.out_len == base) {
        assert_true(off < HOLD_MAX_T + 4096 + 1); /* it must start to flow past the limit */
        h_feed(&h, big + off, 4096, 4096);
        off += 4096;
    }
    assert_true(off > HOLD_MAX_T);
    assert_true(h.q.frame_open);
    assert_false(h.q.frame_held);
    assert_int_equal(h.out_len, base + off); /* everything so far, in order */
    assert_memory_equal(h.out + base, big, off);
    assert_true(h.q.hold.cap <= 2 * HOLD_MAX_T + 4096);
    h_feed(&h, big + off, big_len - off, 1000);
    assert_int_equal(h.out_len, base + big_len);
    assert_memory_equal(h.out + base, big, big_len);
    assert_false(h.q.frame_open);
    assert_true(h.q.hold.cap <= HOLD_MAX_T); /* the big buffer is not kept */
    assert_int_equal(h.ndone, 1);            /* the SWALLOW entry still waits */
    assert_int_equal(h.q.upstream_due, 1);

    /* Its own reply is still dropped. */
    h_feed(&h, PONG2, strlen(PONG2), 3);
    assert_int_equal(h.out_len, base + big_len);
    assert_int_equal(h.ndone, 2);
    assert_int_equal(h.done[1].e.tag, 2);
    assert_int_equal(h.done[1].e.kind, REPLYQ_SWALLOW);
    assert_int_equal(h.done[1].reply_len, strlen(PONG2));
    assert_memory_equal(h.done[1].reply, PONG2, strlen(PONG2));
    free(small);
    free(big);
    h_free(&h);
}

/* Big frames: a silent command's big reply is dropped as it arrives (never held whole, never
 * streamed); a big out-of-band message at its front still streams; a reply to transform is held
 * up to 1 MiB and one bigger is dropped and reported to the transform as NULL. */
static void test_silent_and_transform_big_frames(void **state)
{
    (void)state;
    struct harness h;
    cur_case = "big frames and silence";
    cur_chunk = 4096;
    h_init(&h);
    size_t big_len;
    char *big = big_message(3 * HOLD_MAX_T, &big_len);
    /* "*3 message" is a plain array outside subscribed mode: the silent GET-like reply */
    h_expect(&h, REPLYQ_FORWARD, REPLYQ_SILENT, 1, 1, NULL, NULL);
    h_feed(&h, big, big_len, 4096);
    assert_int_equal(h.out_len, 0);
    assert_true(h.q.hold.cap <= 2 * HOLD_MAX_T + 4096);
    assert_int_equal(h.ndone, 1);
    h_expect(&h, REPLYQ_FORWARD, 0, 1, 2, NULL, NULL);
    h_feed(&h, OK, strlen(OK), WHOLE);
    expect_bytes("after a dropped big reply", h.out, h.out_len, OK, strlen(OK));

    /* subscribed: the same frame is a message and passes while a silent PING is due */
    h_expect(&h, REPLYQ_FORWARD, PS, 1, 3, NULL, "subscribe");
    h_feed(&h, SUB_A1, strlen(SUB_A1), WHOLE);
    size_t base = h.out_len;
    h_expect(&h, REPLYQ_FORWARD, REPLYQ_SILENT, 1, 4, NULL, NULL);
    h_feed(&h, big, big_len, 4096);
    assert_int_equal(h.out_len, base + big_len);
    assert_memory_equal(h.out + base, big, big_len);
    h_feed(&h, PONG2, strlen(PONG2), 5);
    assert_int_equal(h.out_len, base + big_len);
    assert_int_equal(h.ndone, 4);
    h_free(&h);

    h_init(&h);
    size_t huge_len;
    char *huge = big_message(1100u * 1024, &huge_len);
    h_expect(&h, REPLYQ_TRANSFORM, 0, 1, 1, NULL, NULL);
    h_expect(&h, REPLYQ_TRANSFORM, 0, 1, 2, NULL, NULL);
    h_feed(&h, big, big_len, 4096); /* under the limit: held whole */
    h_feed(&h, huge, huge_len, 65536);
    char want[64];
    int n = snprintf(want, sizeof want, "+T%zu\r\n-ERR big\r\n", big_len);
    expect_bytes("transformed", h.out, h.out_len, want, (size_t)n);
    assert_true(h.done[1].reply_null);
    assert_false(h.q.frame_open);
    free(huge);
    free(big);
    h_free(&h);
}

/* The same big frame at the front of a FORWARD entry is streamed from its first byte. */
static void test_forward_streams_from_first_byte(void **state)
{
    (void)state;
    struct harness h;
    cur_case = "forward streams";
    cur_chunk = 100;
    h_init(&h);
    h_expect(&h, REPLYQ_FORWARD, 0, 1, 1, NULL, NULL);
    size_t len;
    char *m = big_message(1000, &len);
    h_feed(&h, m, 100, 100);
    assert_int_equal(h.out_len, 100);
    assert_int_equal(h.ndone, 0);
    assert_true(h.q.frame_open);
    h_feed(&h, m + 100, len - 100, 100);
    assert_int_equal(h.out_len, len);
    assert_memory_equal(h.out, m, len);
    assert_int_equal(h.ndone, 1);
    assert_int_equal(h.q.hold.cap, 0); /* nothing was ever held */
    free(m);
    h_free(&h);
}

/* The ring grows and wraps: a long pipeline with entries leaving while more arrive keeps its
 * order (the ring must grow while its entries wrap around its end), and the owner's fields come
 * back intact. Positive steps queue that many entries (every third a local), negative ones
 * answer that many of the upstream entries due. */
static void test_ring_growth_and_wrap(void **state)
{
    (void)state;
    static const int plan[] = {10, -7, 20, -10, 13, -3, 40, -30, 5, -1000};
    struct harness h;
    cur_case = "ring";
    cur_chunk = WHOLE;
    h_init(&h);
    char want[8192];
    size_t wlen = 0;
    unsigned tag = 1, next_reply = 1;
    size_t due = 0, max_len = 0;
    bool grew_wrapped = false;
    for (size_t p = 0; p < ARRAY_SIZE(plan); p++) {
        for (int i = 0; i < plan[p]; i++, tag++) {
            assert_true(tag < 256);
            if (h.q.len == h.q.cap && h.q.cap && h.q.head != 0)
                grew_wrapped = true;
            if (tag % 3 == 0) {
                char line[32];
                snprintf(line, sizeof line, "+L%u\r\n", tag);
                assert_int_equal(replyq_local(&h.q, line, strlen(line), 0, (uint8_t)tag), 0);
            } else {
                h_expect(&h, REPLYQ_FORWARD, 0, 1, (uint8_t)tag, NULL, NULL);
                due++;
            }
            if (h.q.len > max_len)
                max_len = h.q.len;
        }
        for (int i = 0; i < -plan[p] && due; i++) {
            char line[32];
            snprintf(line, sizeof line, ":%u\r\n", next_reply++);
            h_feed(&h, line, strlen(line), 1);
            due--;
        }
        assert_int_equal(h.q.upstream_due, due);
        check_invariants(&h);
    }
    assert_true(grew_wrapped);
    assert_true(max_len > 32);
    assert_int_equal(h.q.len, 0);
    /* In tag order: locals as +L<tag>, the upstream replies numbered in order. */
    unsigned r = 1;
    for (unsigned t = 1; t < tag; t++) {
        if (t % 3 == 0)
            wlen += (size_t)snprintf(want + wlen, sizeof want - wlen, "+L%u\r\n", t);
        else
            wlen += (size_t)snprintf(want + wlen, sizeof want - wlen, ":%u\r\n", r++);
    }
    expect_bytes("client output", h.out, h.out_len, want, wlen);
    assert_int_equal(h.ndone, tag - 1);
    for (size_t i = 0; i < h.ndone; i++) {
        assert_int_equal(h.done[i].e.tag, i + 1);
        if (h.done[i].e.kind != REPLYQ_LOCAL) {
            assert_int_equal(h.done[i].e.seq, 1000u + h.done[i].e.tag);
            assert_int_equal(h.done[i].e.t_sent, 10u * h.done[i].e.tag + 5);
        }
    }
    h_free(&h);
}

/* The owner stamps entries through replyq_back and replyq_at (the session's t_sent), and the
 * stamps come back in done(). */
static void test_owner_stamps(void **state)
{
    (void)state;
    struct harness h;
    cur_case = "stamps";
    cur_chunk = WHOLE;
    h_init(&h);
    for (uint8_t t = 1; t <= 3; t++) {
        struct replyq_entry e = {.kind = REPLYQ_FORWARD, .expected = 1, .tag = t, .seq = 70u + t};
        assert_int_equal(replyq_expect(&h.q, e, NULL, 0), 0);
        replyq_back(&h.q)->t_in = 100u * t;
    }
    assert_int_equal(replyq_local(&h.q, "-ERR x\r\n", 8, 0, 9), 0);
    assert_int_equal(h.q.len, 4);
    for (size_t i = 0; i < h.q.len; i++)
        replyq_at(&h.q, i)->t_sent = 5000 + i;
    assert_int_equal(replyq_at(&h.q, 3)->kind, REPLYQ_LOCAL);
    assert_int_equal(replyq_at(&h.q, 3)->tag, 9);
    h_feed(&h, ":1\r\n:2\r\n:3\r\n", 12, WHOLE);
    assert_int_equal(h.ndone, 4);
    for (uint8_t t = 1; t <= 3; t++) {
        const struct replyq_entry *e = &h.done[t - 1].e;
        assert_int_equal(e->tag, t);
        assert_int_equal(e->seq, 70u + t);
        assert_int_equal(e->t_in, 100u * t);
        assert_int_equal(e->t_sent, 5000u + t - 1);
    }
    assert_int_equal(h.done[3].e.tag, 9);
    assert_int_equal(h.done[3].e.t_sent, 5003);
    expect_bytes("client output", h.out, h.out_len, ":1\r\n:2\r\n:3\r\n-ERR x\r\n", 20);
    h_free(&h);
}

/* The session fails the upstream from done() when its login is refused: the queue must take
 * that nested replyq_fail (the entries behind the login get the error, locals keep their place). */
static void test_login_error_fails_from_done(void **state)
{
    (void)state;
    static const size_t chunks[] = {1, 7, WHOLE};
    for (size_t c = 0; c < ARRAY_SIZE(chunks); c++) {
        struct harness h;
        cur_case = "login error, replyq_fail from done()";
        cur_chunk = chunks[c];
        h_init(&h);
        h.fail_on_login_error = true;
        h.fail_err = "-ERR upstream login failed\r\n";
        h_expect(&h, REPLYQ_LOGIN, 0, 1, 1, OK, NULL);
        h_expect(&h, REPLYQ_FORWARD, 0, 1, 2, NULL, NULL);
        assert_int_equal(replyq_local(&h.q, NOPERM, strlen(NOPERM), 0, 3), 0);
        h_expect(&h, REPLYQ_SWALLOW, 0, 1, 4, NULL, NULL);
        h_expect(&h, REPLYQ_FORWARD, 0, 1, 5, NULL, NULL);
        h_feed(&h, WRONGPASS, strlen(WRONGPASS), chunks[c]);
        assert_false(h.fail_ret);
        expect_bytes("client output", h.out, h.out_len,
                     "-ERR upstream login failed\r\n" NOPERM "-ERR upstream login failed\r\n",
                     strlen("-ERR upstream login failed\r\n" NOPERM "-ERR upstream login failed\r\n"));
        assert_int_equal(h.ndone, 5);
        assert_true(h.done[0].error);
        assert_int_equal(h.done[0].reply_len, strlen(WRONGPASS));
        assert_memory_equal(h.done[0].reply, WRONGPASS, strlen(WRONGPASS));
        for (size_t i = 0; i < 5; i++)
            assert_int_equal(h.done[i].e.tag, i + 1);
        assert_false(h.done[2].error); /* the local */
        assert_int_equal(h.q.len, 0);
        assert_int_equal(h.q.upstream_due, 0);
        check_invariants(&h);
        h_free(&h);
    }
}

/* upstream_due and replyq_subscribed follow the entries, the local bytes buffer empties. */
static void test_counters(void **state)
{
    (void)state;
    struct harness h;
    cur_case = "counters";
    cur_chunk = WHOLE;
    h_init(&h);
    h_expect(&h, REPLYQ_FORWARD, 0, 1, 1, NULL, NULL);
    assert_int_equal(h.q.upstream_due, 1);
    assert_int_equal(replyq_local(&h.q, OK, 5, 0, 2), 0);
    assert_int_equal(h.q.upstream_due, 1);
    assert_int_equal(h.q.len, 2);
    h_expect(&h, REPLYQ_LOGIN, 0, 1, 3, "+OK\r\n", NULL);
    h_expect(&h, REPLYQ_REPLACE, 0, 1, 4, "-ERR r\r\n", NULL);
    h_expect(&h, REPLYQ_SWALLOW, 0, 1, 5, NULL, NULL);
    h_expect(&h, REPLYQ_FORWARD, PS, 2, 6, NULL, "subscribe");
    assert_int_equal(h.q.upstream_due, 5);
    assert_int_equal(h.q.pending_subscribes, 1);
    assert_true(replyq_subscribed(&h.q));
    assert_int_equal(buf_len(&h.q.local), 5 + 5 + 8);
    check_invariants(&h);
    h_feed(&h, ":1\r\n" OK OK OK SUB_A1, strlen(":1\r\n" OK OK OK SUB_A1), WHOLE);
    assert_int_equal(h.q.upstream_due, 1);
    assert_int_equal(h.q.pending_subscribes, 1);
    assert_int_equal(h.q.subs, 1);
    h_feed(&h, SUB_B2, strlen(SUB_B2), WHOLE);
    assert_int_equal(h.q.upstream_due, 0);
    assert_int_equal(h.q.pending_subscribes, 0);
    assert_int_equal(h.q.len, 0);
    assert_int_equal(buf_len(&h.q.local), 0);
    assert_true(replyq_subscribed(&h.q));
    check_invariants(&h);
    h_free(&h);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_order),
        cmocka_unit_test(test_dropped_kinds),
        cmocka_unit_test(test_pubsub),
        cmocka_unit_test(test_silent_and_transform),
        cmocka_unit_test(test_silent_and_transform_big_frames),
        cmocka_unit_test(test_attributes_and_protocol),
        cmocka_unit_test(test_fail_and_stop),
        cmocka_unit_test(test_hold_max_streams_big_frame),
        cmocka_unit_test(test_forward_streams_from_first_byte),
        cmocka_unit_test(test_ring_growth_and_wrap),
        cmocka_unit_test(test_owner_stamps),
        cmocka_unit_test(test_login_error_fails_from_done),
        cmocka_unit_test(test_counters),
        cmocka_unit_test(test_unsolicited_confirmation),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
