/* Unit tests for ratelimit on a synthetic clock: the token bucket starts full, refills at its
 * rate, never holds more than its burst and ignores a clock that goes backwards; the lockout
 * locks at the Nth failure in a window, for exactly its duration, survives
 * an address flood, drops newcomers only when a set is all locked, and counts sources as
 * source.h defines them (port ignored, IPv4-mapped IPv6 is IPv4, one AF_UNIX source); config
 * checks; the shared source keys themselves, and source_format_addr (a peer's "ip:port"). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "test_addr.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>

#include "respguard/ratelimit.h"
#include "respguard/source.h"

/* ---------------------------------------------------------------------------------------- */
/* helpers                                                                                  */
/* ---------------------------------------------------------------------------------------- */

#define MAX_FAILURES 3
#define WINDOW_MS 60000
#define DURATION_MS 300000
#define SOURCE_MAX_FAILURES 1000 /* high: most tests look at one name's count */

#define SA(ss) ((const struct sockaddr *)&(ss))

static struct lockout_config config(uint32_t table_size)
{
    return (struct lockout_config){
        .max_failures = MAX_FAILURES,
        .source_max_failures = SOURCE_MAX_FAILURES,
        .window_ms = WINDOW_MS,
        .duration_ms = DURATION_MS,
        .table_size = table_size,
        .hash_seed = 0x243f6a8885a308d3ull,
    };
}

static struct lockout *make(const struct lockout_config *cfg)
{
    struct lockout *l = NULL;
    assert_int_equal(lockout_new(cfg, &l), 0);
    assert_non_null(l);
    return l;
}

static struct lockout *make_default(void)
{
    struct lockout_config cfg = config(1024);
    return make(&cfg);
}

/* n failures from src at now_ms, none of which may start a lockout. */
static void fail_quietly(struct lockout *l, const struct sockaddr *src, int n, uint64_t now_ms)
{
    for (int i = 0; i < n; i++)
        assert_false(lockout_record_failure(l, src, "web", 3, now_ms));
}

static void text_of(const struct sockaddr *sa, char *out, size_t len)
{
    struct source_key k;
    assert_true(source_key_from(sa, &k));
    source_key_text(&k, out, len);
}

/* ---------------------------------------------------------------------------------------- */
/* token bucket                                                                             */
/* ---------------------------------------------------------------------------------------- */

static void test_bucket_starts_full(void **state)
{
    (void)state;
    struct token_bucket b = {0};
    for (int i = 0; i < 5; i++)
        assert_true(token_bucket_take(&b, 10.0, 5.0, 123456));
    assert_false(token_bucket_take(&b, 10.0, 5.0, 123456));
    assert_true(b.started);

    /* A clock that starts at 0 is no special case. */
    struct token_bucket z = {0};
    assert_true(token_bucket_take(&z, 1.0, 1.0, 0));
    assert_false(token_bucket_take(&z, 1.0, 1.0, 0));
    assert_false(token_bucket_take(&z, 1.0, 1.0, 999));
    assert_true(token_bucket_take(&z, 1.0, 1.0, 1000));
}

static void test_bucket_refills_at_rate(void **state)
{
    (void)state;
    struct token_bucket b = {0};
    uint64_t t = 1000000;
    for (int i = 0; i < 5; i++)
        assert_true(token_bucket_take(&b, 10.0, 5.0, t));
    assert_false(token_bucket_take(&b, 10.0, 5.0, t));
    /* 10/s: one token every 100 ms, and nothing before it is whole. */
    assert_false(token_bucket_take(&b, 10.0, 5.0, t + 50));
    assert_false(token_bucket_take(&b, 10.0, 5.0, t + 99));
    assert_true(token_bucket_take(&b, 10.0, 5.0, t + 100));
    assert_false(token_bucket_take(&b, 10.0, 5.0, t + 100));
    /* Two tokens after 200 ms more. */
    assert_true(token_bucket_take(&b, 10.0, 5.0, t + 300));
    assert_true(token_bucket_take(&b, 10.0, 5.0, t + 300));
    assert_false(token_bucket_take(&b, 10.0, 5.0, t + 300));

    /* A client hammering every millisecond for a minute gets the rate and nothing more (the
     * 601st token is due at 60100). */
    t += 300;
    int taken = 0;
    for (uint64_t ms = 1; ms <= 60050; ms++)
        taken += token_bucket_take(&b, 10.0, 5.0, t + ms);
    assert_int_equal(taken, 600);

    /* A fractional rate: one command every 4 seconds. */
    struct token_bucket s = {0};
    assert_true(token_bucket_take(&s, 0.25, 1.0, 0));
    taken = 0;
    for (uint64_t ms = 1; ms <= 40000; ms += 10)
        taken += token_bucket_take(&s, 0.25, 1.0, ms);
    assert_int_equal(taken, 9); /* near 4000, 8000, ..., 36000; the next is due at 40000 */
}

static void test_bucket_never_above_burst(void **state)
{
    (void)state;
    struct token_bucket b = {0};
    assert_true(token_bucket_take(&b, 100.0, 3.0, 0));
    /* An hour idle refills to the burst, not to 360000. */
    uint64_t t = 3600 * 1000;
    for (int i = 0; i < 3; i++)
        assert_true(token_bucket_take(&b, 100.0, 3.0, t));
    assert_false(token_bucket_take(&b, 100.0, 3.0, t));
    assert_true(b.tokens >= 0.0 && b.tokens < 1.0);

    /* Idle in steps: the bucket never reports more than burst. */
    for (int i = 1; i <= 100; i++) {
        struct token_bucket probe = b;
        (void)token_bucket_take(&probe, 100.0, 3.0, t + (uint64_t)i * 1000);
        assert_true(probe.tokens <= 3.0);
    }

    /* A burst lowered between takes (a config reload) applies at once: 9 tokens left become 2. */
    struct token_bucket c = {0};
    assert_true(token_bucket_take(&c, 1.0, 10.0, 0));
    assert_true(token_bucket_take(&c, 1.0, 2.0, 0));
    assert_true(token_bucket_take(&c, 1.0, 2.0, 0));
    assert_false(token_bucket_take(&c, 1.0, 2.0, 0));
}

static void test_bucket_backwards_clock(void **state)
{
    (void)state;
    struct token_bucket b = {0};
    uint64_t t = 10000;
    for (int i = 0; i < 2; i++)
        assert_true(token_bucket_take(&b, 10.0, 2.0, t));
    assert_false(token_bucket_take(&b, 10.0, 2.0, t));
    /* Five seconds back: no refill, and no harm. */
    assert_false(token_bucket_take(&b, 10.0, 2.0, t - 5000));
    assert_false(token_bucket_take(&b, 10.0, 2.0, 0));
    assert_false(token_bucket_take(&b, 10.0, 2.0, t));
    /* The refill starts from the latest time seen, not from the backwards one: at t + 100 one
     * token (had the clock jump been taken as a new start, 5.1 seconds' worth would be there). */
    assert_true(token_bucket_take(&b, 10.0, 2.0, t + 100));
    assert_false(token_bucket_take(&b, 10.0, 2.0, t + 100));
    assert_int_equal(b.last_ms, t + 100);
}

/* ---------------------------------------------------------------------------------------- */
/* lockout: config                                                                          */
/* ---------------------------------------------------------------------------------------- */

#define EXPECT_BAD(stmt)                                                                                               \
    do {                                                                                                               \
        struct lockout_config c_ = config(1024);                                                                       \
        struct lockout_config *c = &c_;                                                                                \
        stmt;                                                                                                          \
        struct lockout *l_ = (struct lockout *)(uintptr_t)1; /* not NULL: it must be cleared */                       \
        assert_int_equal(lockout_new(c, &l_), -EINVAL);                                                                \
        assert_null(l_);                                                                                               \
    } while (0)

static void test_lockout_new_checks(void **state)
{
    (void)state;
    EXPECT_BAD(c = NULL);
    EXPECT_BAD(c->max_failures = 0);
    EXPECT_BAD(c->source_max_failures = MAX_FAILURES - 1);
    EXPECT_BAD(c->window_ms = 0);
    EXPECT_BAD(c->duration_ms = 0);
    EXPECT_BAD(c->table_size = 0);
    EXPECT_BAD(c->table_size = 7);
    EXPECT_BAD(c->table_size = 65537);
    EXPECT_BAD(c->table_size = UINT32_MAX);

    /* The bounds themselves, and a size that is rounded up. */
    uint32_t sizes[] = {8, 9, 1000, 65536};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        struct lockout_config cfg = config(sizes[i]);
        cfg.max_failures = 1;
        cfg.source_max_failures = 1;
        cfg.window_ms = 1;
        cfg.duration_ms = 1;
        struct lockout *l = make(&cfg);
        struct lockout_stats st;
        lockout_get_stats(l, &st);
        assert_int_equal(st.tracked, 0);
        assert_int_equal(st.evicted, 0);
        assert_int_equal(st.dropped, 0);
        lockout_free(l);
    }
    lockout_free(NULL);
}

/* ---------------------------------------------------------------------------------------- */
/* lockout: one source                                                                      */
/* ---------------------------------------------------------------------------------------- */

static void test_lockout_locks_at_max_failures(void **state)
{
    (void)state;
    struct lockout *l = make_default();
    struct sockaddr_storage a = addr_v4("192.0.2.7", 40000);
    uint64_t t = 5000000, retry = 12345;

    assert_false(lockout_locked(l, SA(a), "web", 3, t, &retry));
    assert_int_equal(retry, 0);
    fail_quietly(l, SA(a), MAX_FAILURES - 1, t);
    assert_false(lockout_locked(l, SA(a), "web", 3, t, &retry));
    assert_true(lockout_record_failure(l, SA(a), "web", 3, t + 10));

    assert_true(lockout_locked(l, SA(a), "web", 3, t + 10, &retry));
    assert_int_equal(retry, DURATION_MS);
    assert_true(lockout_locked(l, SA(a), "web", 3, t + 1010, &retry));
    assert_int_equal(retry, DURATION_MS - 1000);
    assert_true(lockout_locked(l, SA(a), "web", 3, t + 10, NULL));

    /* Failures while locked neither start another lockout nor extend this one. */
    fail_quietly(l, SA(a), 10 * MAX_FAILURES, t + 2000);
    assert_true(lockout_locked(l, SA(a), "web", 3, t + 2000, &retry));
    assert_int_equal(retry, DURATION_MS - 1990);

    /* Exactly duration_ms. */
    uint64_t until = t + 10 + DURATION_MS;
    assert_true(lockout_locked(l, SA(a), "web", 3, until - 1, &retry));
    assert_int_equal(retry, 1);
    assert_false(lockout_locked(l, SA(a), "web", 3, until, &retry));
    assert_int_equal(retry, 0);

    /* Afterwards the source has its max_failures attempts again, whatever it did meanwhile. */
    fail_quietly(l, SA(a), MAX_FAILURES - 1, until);
    assert_false(lockout_locked(l, SA(a), "web", 3, until, NULL));
    assert_true(lockout_record_failure(l, SA(a), "web", 3, until + 1));
    assert_true(lockout_locked(l, SA(a), "web", 3, until + 1, &retry));
    assert_int_equal(retry, DURATION_MS);

    struct lockout_stats st;
    lockout_get_stats(l, &st);
    assert_int_equal(st.tracked, 2); /* the source's entry and the name's */
    assert_int_equal(st.evicted, 0);
    assert_int_equal(st.dropped, 0);
    lockout_free(l);
}

static void test_lockout_one_failure_and_long_duration(void **state)
{
    (void)state;
    struct lockout_config cfg = config(8);
    cfg.max_failures = 1;
    cfg.duration_ms = UINT64_MAX; /* saturates instead of wrapping to the past */
    struct lockout *l = make(&cfg);
    struct sockaddr_storage a = addr_v4("198.51.100.1", 1);
    uint64_t retry = 0;
    assert_true(lockout_record_failure(l, SA(a), "web", 3, 1000));
    assert_true(lockout_locked(l, SA(a), "web", 3, 1000, &retry));
    assert_int_equal(retry, UINT64_MAX - 1000);
    assert_true(lockout_locked(l, SA(a), "web", 3, UINT64_MAX - 1, NULL));
    lockout_free(l);
}

static void test_lockout_window_restarts_count(void **state)
{
    (void)state;
    struct lockout *l = make_default();
    struct sockaddr_storage a = addr_v4("203.0.113.9", 5000);
    /* Two failures, then the window (anchored at the first) ends: the third starts anew. */
    fail_quietly(l, SA(a), 1, 0);
    fail_quietly(l, SA(a), 1, WINDOW_MS - 1);
    fail_quietly(l, SA(a), 1, WINDOW_MS);
    fail_quietly(l, SA(a), 1, WINDOW_MS + 1000);
    assert_false(lockout_locked(l, SA(a), "web", 3, WINDOW_MS + 1000, NULL));
    /* The new window started at WINDOW_MS; its third failure within it locks. */
    assert_true(lockout_record_failure(l, SA(a), "web", 3, 2 * WINDOW_MS - 1));
    assert_true(lockout_locked(l, SA(a), "web", 3, 2 * WINDOW_MS - 1, NULL));

    /* Slow guessing, one failure a window, never locks. */
    struct sockaddr_storage b = addr_v4("203.0.113.10", 5000);
    for (uint64_t i = 0; i < 100; i++)
        fail_quietly(l, SA(b), 1, i * WINDOW_MS);
    assert_false(lockout_locked(l, SA(b), "web", 3, 100 * WINDOW_MS, NULL));

    /* After a lockout shorter than the window, the next failure is the first of a new window
     * (anchored there, not at the failures before the lockout). */
    struct lockout_config short_cfg = config(8);
    short_cfg.duration_ms = 1000;
    struct lockout *q = make(&short_cfg);
    fail_quietly(q, SA(a), MAX_FAILURES - 1, 0);
    assert_true(lockout_record_failure(q, SA(a), "web", 3, 0));
    fail_quietly(q, SA(a), 1, 30000);
    fail_quietly(q, SA(a), 1, WINDOW_MS + 1000);
    assert_true(lockout_record_failure(q, SA(a), "web", 3, WINDOW_MS + 2000));
    lockout_free(q);

    /* A clock a little behind the window's start counts as inside it. */
    struct sockaddr_storage c = addr_v4("203.0.113.11", 5000);
    fail_quietly(l, SA(c), 1, 10000);
    fail_quietly(l, SA(c), 1, 9000);
    assert_true(lockout_record_failure(l, SA(c), "web", 3, 9500));
    lockout_free(l);
}

/* ---------------------------------------------------------------------------------------- */
/* lockout: what a source is                                                                */
/* ---------------------------------------------------------------------------------------- */

/* One source, two user names: each name has its own count, so a client stuck with a wrong
 * password for one user does not lock out the other users of its host. */
static void test_lockout_per_user_name(void **state)
{
    (void)state;
    struct lockout *l = make_default();
    struct sockaddr_storage a = addr_v4("127.0.0.1", 1000);
    fail_quietly(l, SA(a), MAX_FAILURES - 1, 100);
    assert_true(lockout_record_failure(l, SA(a), "web", 3, 100));
    assert_true(lockout_locked(l, SA(a), "web", 3, 200, NULL));
    assert_false(lockout_locked(l, SA(a), "ops", 3, 200, NULL));
    assert_false(lockout_locked(l, SA(a), "webx", 4, 200, NULL));
    for (int i = 0; i < MAX_FAILURES - 1; i++)
        assert_false(lockout_record_failure(l, SA(a), "ops", 3, 300));
    assert_true(lockout_record_failure(l, SA(a), "ops", 3, 300));
    assert_true(lockout_locked(l, SA(a), "ops", 3, 300, NULL));
    /* names are bytes: no terminator needed, and case matters (as for Redis user names) */
    assert_false(lockout_locked(l, SA(a), "WEB", 3, 300, NULL));
    assert_true(lockout_locked(l, SA(a), "web-and-more", 3, 300, NULL));
    lockout_free(l);
}

/* Made-up names: one source spraying names is locked out as a whole after source_max_failures,
 * whatever the names (real or not: a lockout must not tell which names exist), and it cannot
 * fill the names table with locked entries to get an untracked target. */
static void test_lockout_source_cap_stops_name_spraying(void **state)
{
    (void)state;
    struct lockout_config cfg = config(64);
    cfg.source_max_failures = 10 * MAX_FAILURES;
    struct lockout *l = make(&cfg);
    struct sockaddr_storage sprayer = addr_v4("203.0.113.9", 1), other = addr_v4("203.0.113.10", 1);
    char name[32];
    int started = 0;
    for (int i = 0; i < 10 * MAX_FAILURES - 1; i++) {
        snprintf(name, sizeof name, "junk%d", i);
        started += lockout_record_failure(l, SA(sprayer), name, strlen(name), 1000);
    }
    assert_int_equal(started, 0); /* one failure per name: no name reached MAX_FAILURES */
    assert_true(lockout_record_failure(l, SA(sprayer), "another", 7, 1000));
    uint64_t retry = 0;
    assert_true(lockout_locked(l, SA(sprayer), "web", 3, 1000, &retry)); /* every name, real or not */
    assert_true(lockout_locked(l, SA(sprayer), "nosuchuser", 10, 1000, NULL));
    assert_int_equal(retry, DURATION_MS);
    /* further sprays count nothing and create no entries */
    struct lockout_stats before, after;
    lockout_get_stats(l, &before);
    for (int i = 0; i < 1000; i++) {
        snprintf(name, sizeof name, "more%d", i);
        assert_false(lockout_record_failure(l, SA(sprayer), name, strlen(name), 2000));
    }
    lockout_get_stats(l, &after);
    assert_int_equal(after.tracked, before.tracked);
    assert_int_equal(after.dropped, before.dropped);
    /* another address is not affected */
    assert_false(lockout_locked(l, SA(other), "web", 3, 2000, NULL));
    assert_false(lockout_locked(l, SA(sprayer), "web", 3, 1000 + DURATION_MS, NULL));
    lockout_free(l);
}

static void test_lockout_source_identity(void **state)
{
    (void)state;
    struct lockout *l = make_default();

    /* IPv4, the same address from a dual-stack listener, and another port: one source. */
    struct sockaddr_storage plain = addr_v4("192.0.2.7", 40000);
    struct sockaddr_storage mapped = addr_v6("::ffff:192.0.2.7", 40001);
    struct sockaddr_storage other_port = addr_v4("192.0.2.7", 50000);
    assert_false(lockout_record_failure(l, SA(plain), "web", 3, 100));
    assert_false(lockout_record_failure(l, SA(mapped), "web", 3, 200));
    assert_true(lockout_record_failure(l, SA(other_port), "web", 3, 300));
    assert_true(lockout_locked(l, SA(plain), "web", 3, 300, NULL));
    assert_true(lockout_locked(l, SA(mapped), "web", 3, 300, NULL));
    struct sockaddr_storage new_port = addr_v4("192.0.2.7", 1);
    assert_true(lockout_locked(l, SA(new_port), "web", 3, 300, NULL));
    /* Neighbours are not, nor is an IPv6 address that merely ends in the same bytes. */
    struct sockaddr_storage next = addr_v4("192.0.2.8", 40000), next_mapped = addr_v6("::ffff:192.0.2.8", 40000);
    struct sockaddr_storage compat = addr_v6("::192.0.2.7", 40000);
    assert_false(lockout_locked(l, SA(next), "web", 3, 300, NULL));
    assert_false(lockout_locked(l, SA(next_mapped), "web", 3, 300, NULL));
    assert_false(lockout_locked(l, SA(compat), "web", 3, 300, NULL));

    /* IPv6 by /64 (one host or LAN has a whole /64 to pick addresses from), port ignored. */
    struct sockaddr_storage six = addr_v6("2001:db8::1", 1), six_port = addr_v6("2001:db8::1", 2);
    struct sockaddr_storage six_same64 = addr_v6("2001:db8::ffff:2", 1), six_next64 = addr_v6("2001:db8:0:1::1", 1);
    fail_quietly(l, SA(six), MAX_FAILURES - 1, 400);
    assert_true(lockout_record_failure(l, SA(six_port), "web", 3, 400));
    assert_true(lockout_locked(l, SA(six), "web", 3, 400, NULL));
    assert_true(lockout_locked(l, SA(six_same64), "web", 3, 400, NULL));
    assert_false(lockout_locked(l, SA(six_next64), "web", 3, 400, NULL));

    /* Every AF_UNIX peer is one source, whatever its path (or none). */
    struct sockaddr_un u1 = addr_unix("/run/a.sock"), u2 = addr_unix(""), u3 = addr_unix("/tmp/b");
    assert_false(lockout_record_failure(l, (const struct sockaddr *)&u1, "web", 3, 500));
    assert_false(lockout_record_failure(l, (const struct sockaddr *)&u2, "web", 3, 500));
    assert_true(lockout_record_failure(l, (const struct sockaddr *)&u3, "web", 3, 500));
    assert_true(lockout_locked(l, (const struct sockaddr *)&u2, "web", 3, 500, NULL));

    struct lockout_stats st;
    lockout_get_stats(l, &st);
    assert_int_equal(st.tracked, 6); /* three sources, each in both tables */

    /* No address, or one of another family: never tracked, never locked, never dropped. */
    struct sockaddr_storage odd;
    memset(&odd, 0, sizeof odd);
    odd.ss_family = AF_UNSPEC;
    uint64_t retry = 99;
    for (int i = 0; i < 10 * MAX_FAILURES; i++) {
        assert_false(lockout_record_failure(l, NULL, "web", 3, 600));
        assert_false(lockout_record_failure(l, SA(odd), "web", 3, 600));
    }
    assert_false(lockout_locked(l, NULL, "web", 3, 600, &retry));
    assert_int_equal(retry, 0);
    assert_false(lockout_locked(l, SA(odd), "web", 3, 600, NULL));
    lockout_get_stats(l, &st);
    assert_int_equal(st.tracked, 6); /* three sources, each in both tables */
    assert_int_equal(st.evicted, 0);
    assert_int_equal(st.dropped, 0);
    lockout_free(l);
}

/* ---------------------------------------------------------------------------------------- */
/* lockout: the table                                                                       */
/* ---------------------------------------------------------------------------------------- */

static void test_lockout_survives_address_flood(void **state)
{
    (void)state;
    struct lockout_config cfg = config(64);
    struct lockout *l = make(&cfg);
    struct sockaddr_storage attacker = addr_v4("192.0.2.66", 1);
    fail_quietly(l, SA(attacker), MAX_FAILURES - 1, 0);
    assert_true(lockout_record_failure(l, SA(attacker), "web", 3, 1));

    /* 100k distinct sources, one failure each, over 100 seconds. */
    uint32_t n = 0;
    for (uint64_t s = 0; s < 100; s++) {
        for (int i = 0; i < 1000; i++, n++) {
            char text[32];
            snprintf(text, sizeof text, "10.%u.%u.%u", (n >> 16) & 255, (n >> 8) & 255, n & 255);
            struct sockaddr_storage a = addr_v4(text, (uint16_t)n);
            assert_false(lockout_record_failure(l, SA(a), "web", 3, 1000 + s * 1000 + (uint64_t)i));
        }
    }
    struct lockout_stats st;
    lockout_get_stats(l, &st);
    /* both tables full, each source replacing an older one in both */
    assert_int_equal(st.tracked, 2 * 64);
    assert_int_equal(st.evicted, 2 * (100000 + 1 - 64));
    assert_int_equal(st.dropped, 0);

    /* The lockout in force is untouched, and ends on time. */
    uint64_t retry = 0;
    assert_true(lockout_locked(l, SA(attacker), "web", 3, 101000, &retry));
    assert_int_equal(retry, 1 + DURATION_MS - 101000);
    assert_false(lockout_locked(l, SA(attacker), "web", 3, 1 + DURATION_MS, NULL));
    lockout_free(l);
}

static void test_lockout_replaces_least_recent(void **state)
{
    (void)state;
    struct lockout_config cfg = config(8); /* one set: every source competes for it */
    struct lockout *l = make(&cfg);
    struct sockaddr_storage a[9];
    for (int i = 0; i < 9; i++) {
        char text[32];
        snprintf(text, sizeof text, "198.51.100.%d", i + 1);
        a[i] = addr_v4(text, 1000);
    }
    /* Source 0 is the least recently seen but locked; 1 .. 7 have one failure each, and 1 has
     * a second one later, so 2 is the least recently seen unlocked source. */
    fail_quietly(l, SA(a[0]), MAX_FAILURES - 1, 1000);
    assert_true(lockout_record_failure(l, SA(a[0]), "web", 3, 1000));
    for (int i = 1; i < 8; i++)
        fail_quietly(l, SA(a[i]), 1, 1000 + (uint64_t)i);
    fail_quietly(l, SA(a[1]), 1, 1100);
    /* Look-ups do not count as seen. */
    for (int i = 2; i < 8; i++)
        assert_false(lockout_locked(l, SA(a[i]), "web", 3, 1200, NULL));

    /* The newcomer replaces source 2 in the names table (and source 0 in the sources table,
     * where nothing is locked: the whole source may fail SOURCE_MAX_FAILURES times). */
    fail_quietly(l, SA(a[8]), 1, 2000);
    struct lockout_stats st;
    lockout_get_stats(l, &st);
    assert_int_equal(st.tracked, 2 * 8);
    assert_int_equal(st.evicted, 2);
    assert_int_equal(st.dropped, 0);
    assert_true(lockout_locked(l, SA(a[0]), "web", 3, 2000, NULL));
    /* Source 1 kept its two failures, source 3 its one; source 2 starts again. */
    assert_true(lockout_record_failure(l, SA(a[1]), "web", 3, 2100));
    fail_quietly(l, SA(a[3]), 1, 2100);
    assert_true(lockout_record_failure(l, SA(a[3]), "web", 3, 2100));
    fail_quietly(l, SA(a[2]), MAX_FAILURES - 1, 2200);
    assert_false(lockout_locked(l, SA(a[2]), "web", 3, 2200, NULL));
    lockout_free(l);
}

static void test_lockout_drops_when_set_all_locked(void **state)
{
    (void)state;
    struct lockout_config cfg = config(8); /* one set */
    struct lockout *l = make(&cfg);
    for (int h = 1; h <= 8; h++) {
        char text[32];
        snprintf(text, sizeof text, "192.0.2.%d", h);
        struct sockaddr_storage a = addr_v4(text, 1);
        fail_quietly(l, SA(a), MAX_FAILURES - 1, 1000);
        assert_true(lockout_record_failure(l, SA(a), "web", 3, 1000));
    }
    /* The ninth source finds no room: none of its failures counts, and it is never locked. */
    struct sockaddr_storage ninth = addr_v4("192.0.2.9", 1);
    fail_quietly(l, SA(ninth), 2 * MAX_FAILURES, 2000);
    assert_false(lockout_locked(l, SA(ninth), "web", 3, 2000, NULL));
    /* (In the sources table nothing is locked, so the ninth replaces one source there.) */
    struct lockout_stats st;
    lockout_get_stats(l, &st);
    assert_int_equal(st.tracked, 2 * 8);
    assert_int_equal(st.evicted, 1);
    assert_int_equal(st.dropped, 2 * MAX_FAILURES);
    /* All eight stay locked. */
    for (int h = 1; h <= 8; h++) {
        char text[32];
        snprintf(text, sizeof text, "192.0.2.%d", h);
        struct sockaddr_storage a = addr_v4(text, 2);
        assert_true(lockout_locked(l, SA(a), "web", 3, 2000, NULL));
    }

    /* Once the lockouts end, the ninth is tracked (replacing one) and can be locked. */
    uint64_t after = 1000 + DURATION_MS;
    fail_quietly(l, SA(ninth), MAX_FAILURES - 1, after);
    assert_true(lockout_record_failure(l, SA(ninth), "web", 3, after));
    lockout_get_stats(l, &st);
    assert_int_equal(st.evicted, 2); /* now in the names table too */
    assert_int_equal(st.dropped, 2 * MAX_FAILURES);
    lockout_free(l);
}

/* ---------------------------------------------------------------------------------------- */
/* source keys (shared with the anomaly detector)                                           */
/* ---------------------------------------------------------------------------------------- */

static void test_source_keys(void **state)
{
    (void)state;
    char text[SOURCE_TEXT_MAX];
    struct sockaddr_storage a = addr_v4("192.0.2.7", 1), m = addr_v6("::ffff:192.0.2.7", 2);
    struct sockaddr_storage s = addr_v6("2001:db8::1", 3);
    struct sockaddr_un u = addr_unix("/run/x");
    text_of(SA(a), text, sizeof text);
    assert_string_equal(text, "192.0.2.7");
    text_of(SA(m), text, sizeof text);
    assert_string_equal(text, "192.0.2.7");
    text_of(SA(s), text, sizeof text);
    assert_string_equal(text, "2001:db8::1");
    text_of((const struct sockaddr *)&u, text, sizeof text);
    assert_string_equal(text, "unix");
    /* The longest text fits; a short buffer gets a truncated, terminated text. */
    struct sockaddr_storage longest = addr_v6("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 0);
    text_of(SA(longest), text, sizeof text);
    assert_string_equal(text, "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff");
    char small[5];
    text_of(SA(a), small, sizeof small);
    assert_string_equal(small, "192.");
    text_of(SA(a), small, 0); /* nothing written */

    struct source_key ka, km, ks, kn;
    assert_true(source_key_from(SA(a), &ka));
    assert_true(source_key_from(SA(m), &km));
    assert_true(source_key_from(SA(s), &ks));
    assert_int_equal(ka.family, SOURCE_IPV4);
    assert_int_equal(ks.family, SOURCE_IPV6);
    assert_true(source_key_equal(&ka, &km));
    assert_false(source_key_equal(&ka, &ks));
    assert_int_equal(source_key_hash(&ka, 1), source_key_hash(&km, 1));
    assert_int_not_equal(source_key_hash(&ka, 1), source_key_hash(&ka, 2));
    assert_int_not_equal(source_key_hash(&ka, 1), source_key_hash(&ks, 1));
    memset(&kn, 0xff, sizeof kn);
    assert_false(source_key_from(NULL, &kn));
    assert_int_equal(kn.family, 0);
}

/* source_format_addr: the peer's "ip:port" for logs (its port kept, unlike a source key). */
static void format_addr(const struct sockaddr *sa, size_t cap, char *out)
{
    char *buf = malloc(cap ? cap : 1); /* exactly cap bytes: a write past it is an ASan error */
    assert_non_null(buf);
    memset(buf, 'x', cap ? cap : 1);
    source_format_addr(sa, buf, cap);
    if (cap) {
        assert_non_null(memchr(buf, '\0', cap));
        strcpy(out, buf);
    } else {
        assert_int_equal(buf[0], 'x'); /* nothing written */
        out[0] = '\0';
    }
    free(buf);
}

static void test_source_format_addr(void **state)
{
    (void)state;
    static const struct {
        int family;
        const char *addr;
        uint16_t port;
        const char *want;
    } cases[] = {
        {AF_INET, "192.0.2.7", 6379, "192.0.2.7:6379"},
        {AF_INET, "0.0.0.0", 0, "0.0.0.0:0"},
        {AF_INET, "255.255.255.255", 65535, "255.255.255.255:65535"},
        {AF_INET6, "2001:db8::1", 443, "[2001:db8::1]:443"},
        {AF_INET6, "::1", 1, "[::1]:1"},
        {AF_INET6, "::", 8080, "[::]:8080"},
        {AF_INET6, "2001:DB8:0:0:0:0:0:1", 80, "[2001:db8::1]:80"},
        /* a mapped address keeps its IPv6 form here (source_key_text gives the IPv4 one) */
        {AF_INET6, "::ffff:192.0.2.7", 50000, "[::ffff:192.0.2.7]:50000"},
        {AF_INET6, "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535,
         "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535"},
    };
    char out[128];
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct sockaddr_storage ss = cases[i].family == AF_INET ? addr_v4(cases[i].addr, cases[i].port)
                                                                 : addr_v6(cases[i].addr, cases[i].port);
        format_addr(SA(ss), 64, out); /* the callers' buffers are 64 bytes */
        if (strcmp(out, cases[i].want) != 0)
            fail_msg("%s port %u: got '%s', want '%s'", cases[i].addr, cases[i].port, out, cases[i].want);
        /* exactly its length and the NUL */
        format_addr(SA(ss), strlen(cases[i].want) + 1, out);
        assert_string_equal(out, cases[i].want);
    }
    struct sockaddr_storage longest = addr_v6("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535);

    /* Neither IPv4 nor IPv6: "?:0". */
    struct sockaddr_un u = addr_unix("/run/x");
    format_addr((const struct sockaddr *)&u, 64, out);
    assert_string_equal(out, "?:0");
    struct sockaddr_storage none;
    memset(&none, 0, sizeof none);
    none.ss_family = AF_UNSPEC; /* what transport_peer_name passes when getpeername fails */
    format_addr(SA(none), 64, out);
    assert_string_equal(out, "?:0");

    /* A short buffer gets a truncated, terminated text; 0 bytes: nothing written. */
    struct sockaddr_storage a = addr_v4("192.0.2.7", 6379);
    format_addr(SA(a), 5, out);
    assert_string_equal(out, "192.");
    format_addr(SA(a), 1, out);
    assert_string_equal(out, "");
    format_addr(SA(a), 0, out);
    format_addr(SA(longest), 10, out);
    assert_string_equal(out, "[ffff:fff");
    struct sockaddr_storage s = addr_v6("2001:db8::1", 443);
    format_addr(SA(s), 15, out);
    assert_string_equal(out, "[2001:db8::1]:");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bucket_starts_full),
        cmocka_unit_test(test_bucket_refills_at_rate),
        cmocka_unit_test(test_bucket_never_above_burst),
        cmocka_unit_test(test_bucket_backwards_clock),
        cmocka_unit_test(test_lockout_new_checks),
        cmocka_unit_test(test_lockout_locks_at_max_failures),
        cmocka_unit_test(test_lockout_one_failure_and_long_duration),
        cmocka_unit_test(test_lockout_window_restarts_count),
        cmocka_unit_test(test_lockout_per_user_name),
        cmocka_unit_test(test_lockout_source_cap_stops_name_spraying),
        cmocka_unit_test(test_lockout_source_identity),
        cmocka_unit_test(test_lockout_survives_address_flood),
        cmocka_unit_test(test_lockout_replaces_least_recent),
        cmocka_unit_test(test_lockout_drops_when_set_all_locked),
        cmocka_unit_test(test_source_keys),
        cmocka_unit_test(test_source_format_addr),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
