/* Unit tests for anomaly: the detector on a synthetic clock. Steady traffic stays quiet for
 * hours; bursts give exactly one onset and one recovery; short bursts, warm-up and overrides
 * suppress what they document; minute counts (denials, failed logins, connections) per user and
 * per source; the source table stays bounded under an address storm; a long noisy run does not
 * flood; config checks. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "test_addr.h"

#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>

#include "respguard/anomaly.h"
#include "respguard/cmdtab.h"

/* ---------------------------------------------------------------------------------------- */
/* helpers                                                                                  */
/* ---------------------------------------------------------------------------------------- */

#define CAP_MAX 1024

struct cap {
    struct anomaly_event ev[CAP_MAX];
    size_t n;     /* stored */
    size_t total; /* received */
};

static void on_event(const struct anomaly_event *ev, void *ctx)
{
    struct cap *c = ctx;
    if (c->n < CAP_MAX)
        c->ev[c->n++] = *ev;
    c->total++;
    if (getenv("ANOMALY_TEST_VERBOSE") != NULL)
        print_message("event %s %s user %d source '%s' category %s observed %.1f baseline %.1f threshold %.1f "
                      "peak %.1f duration %llu at %llu\n",
                      anomaly_type_name(ev->type), anomaly_phase_name(ev->phase), ev->user, ev->source,
                      ev->category ? ev->category : "-", ev->observed, ev->baseline, ev->threshold, ev->peak,
                      (unsigned long long)ev->duration_s, (unsigned long long)ev->at_ms);
}

static size_t count(const struct cap *c, enum anomaly_type type, enum anomaly_phase phase)
{
    size_t n = 0;
    for (size_t i = 0; i < c->n; i++)
        n += c->ev[i].type == type && c->ev[i].phase == phase;
    return n;
}

static const struct anomaly_event *find(const struct cap *c, enum anomaly_type type, enum anomaly_phase phase,
                                        int user)
{
    for (size_t i = 0; i < c->n; i++) {
        if (c->ev[i].type == type && c->ev[i].phase == phase && c->ev[i].user == user)
            return &c->ev[i];
    }
    return NULL;
}

static uint64_t rng_state = 88172645463325252ull;

static double uniform(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (double)(rng_state >> 11) / 9007199254740992.0;
}

/* base * (1 +- 20%) */
static unsigned noisy(unsigned base)
{
    return (unsigned)((double)base * (0.8 + 0.4 * uniform()) + 0.5);
}

static uint32_t cats_of(const char *name)
{
    const struct cmdtab_cmd *cmd = cmdtab_lookup(name, strlen(name));
    assert_non_null(cmd);
    return cmd->categories;
}

/* rate commands of user in second sec, spread over it. */
static void commands(struct anomaly *d, int user, uint32_t cats, uint64_t sec, unsigned rate)
{
    for (unsigned i = 0; i < rate; i++)
        anomaly_record_command(d, user, cats, sec * 1000 + (uint64_t)i * 1000 / rate);
}

/* The tick that closes second sec, a few milliseconds late as a libuv timer is. */
static void tick(struct anomaly *d, struct cap *c, uint64_t sec)
{
    anomaly_tick(d, (sec + 1) * 1000 + 3, on_event, c);
}

/* One user: seconds [from, to) at base (noisy). */
static void steady(struct anomaly *d, struct cap *c, int user, uint32_t cats, uint64_t from, uint64_t to,
                   unsigned base)
{
    for (uint64_t s = from; s < to; s++) {
        commands(d, user, cats, s, noisy(base));
        tick(d, c, s);
    }
}

static struct anomaly *make(const struct anomaly_config *cfg, size_t users)
{
    struct anomaly *d = NULL;
    assert_int_equal(anomaly_new(cfg, users, &d), 0);
    assert_non_null(d);
    return d;
}

static struct anomaly *make_default(size_t users)
{
    struct anomaly_config cfg;
    anomaly_config_defaults(&cfg);
    return make(&cfg, users);
}

#define SA(ss) ((const struct sockaddr *)&(ss))

/* ---------------------------------------------------------------------------------------- */
/* config                                                                                   */
/* ---------------------------------------------------------------------------------------- */

static void test_config_defaults_and_check(void **state)
{
    (void)state;
    struct anomaly_config cfg;
    anomaly_config_defaults(&cfg);
    char err[128];
    assert_int_equal(anomaly_config_check(&cfg, 3, err, sizeof err), 0);
    assert_string_equal(err, "");
    assert_int_equal(cfg.half_life_s, 600);
    assert_int_equal(cfg.warmup_s, 600);
    assert_int_equal(cfg.user.sustain_s, 10);
    assert_true(cfg.categories & CMDTAB_CAT_WRITE);
    assert_false(cfg.categories & CMDTAB_CAT_FAST);

    /* Each bad value alone is refused with a message naming its field. */
    struct anomaly_config c;
#define EXPECT_BAD(stmt, needle)                                                                                  \
    do {                                                                                                          \
        anomaly_config_defaults(&c);                                                                              \
        stmt;                                                                                                     \
        assert_int_equal(anomaly_config_check(&c, 2, err, sizeof err), -EINVAL);                                  \
        if (strstr(err, needle) == NULL)                                                                          \
            fail_msg("'%s' does not name %s", err, needle);                                                       \
        struct anomaly *d = (struct anomaly *)&c;                                                                 \
        assert_int_equal(anomaly_new(&c, 2, &d), -EINVAL);                                                        \
        assert_null(d);                                                                                           \
    } while (0)
    EXPECT_BAD(c.half_life_s = 0, "half_life_s");
    EXPECT_BAD(c.active_half_life_s = 0, "active_half_life_s");
    EXPECT_BAD(c.warmup_s = 90u * 86400u, "warmup_s");
    EXPECT_BAD(c.recovery_s = 0, "recovery_s");
    EXPECT_BAD(c.recovery_ratio = 0.0, "recovery_ratio");
    EXPECT_BAD(c.recovery_ratio = 1.5, "recovery_ratio");
    EXPECT_BAD(c.recovery_ratio = NAN, "recovery_ratio");
    EXPECT_BAD(c.categories = 1u << CMDTAB_CATEGORY_COUNT, "categories");
    EXPECT_BAD(c.source_table_size = 4, "source_table_size");
    EXPECT_BAD(c.source_table_size = 1u << 20, "source_table_size");
    EXPECT_BAD(c.connection_surge_factor_source = 0.5, "connection_surge_factor_source");
    EXPECT_BAD(c.user.min_rate = -1.0, "user.min_rate");
    EXPECT_BAD(c.user.min_rate = NAN, "user.min_rate");
    EXPECT_BAD(c.user.factor = 0.9, "user.factor");
    EXPECT_BAD(c.user.k = INFINITY, "user.k");
    EXPECT_BAD(c.user.sustain_s = 0, "user.sustain_s");
    EXPECT_BAD(c.user.connection_surge_factor = 0.0, "user.connection_surge_factor");
    struct anomaly_user_config ov[2];
    EXPECT_BAD((ov[0] = c.user, ov[1] = c.user, ov[1].factor = 0.0, c.overrides = ov), "overrides[1].factor");

    /* Too many users. */
    anomaly_config_defaults(&c);
    assert_int_equal(anomaly_config_check(&c, 65537, err, sizeof err), -EINVAL);
    /* err may be NULL. */
    c.half_life_s = 0;
    assert_int_equal(anomaly_config_check(&c, 1, NULL, 0), -EINVAL);

    /* Zero users and an odd table size are fine. */
    anomaly_config_defaults(&c);
    c.source_table_size = 1000;
    struct anomaly *d = make(&c, 0);
    anomaly_record_command(d, 0, CMDTAB_CAT_READ, 1000);
    anomaly_tick(d, 5000, NULL, NULL);
    anomaly_free(d);
    anomaly_free(NULL);

    assert_string_equal(anomaly_type_name(ANOMALY_RATE_SPIKE), "rate_spike");
    assert_string_equal(anomaly_type_name(ANOMALY_NEW_BEHAVIOUR), "new_behaviour");
    assert_string_equal(anomaly_type_name(ANOMALY_DENIAL_BURST), "denial_burst");
    assert_string_equal(anomaly_type_name(ANOMALY_AUTH_FAILURE_BURST), "auth_failure_burst");
    assert_string_equal(anomaly_type_name(ANOMALY_CONNECTION_SURGE), "connection_surge");
    assert_string_equal(anomaly_phase_name(ANOMALY_ONSET), "onset");
    assert_string_equal(anomaly_phase_name(ANOMALY_RECOVERY), "recovery");
}

/* ---------------------------------------------------------------------------------------- */
/* rate_spike                                                                               */
/* ---------------------------------------------------------------------------------------- */

static void test_steady_traffic_is_quiet(void **state)
{
    (void)state;
    struct anomaly *d = make_default(3);
    struct cap *c = calloc(1, sizeof *c);
    uint32_t get = cats_of("get"), set = cats_of("set"), ping = cats_of("ping");
    /* Four hours: a busy reader, a writer with a read mix, a quiet user under min_rate. */
    for (uint64_t s = 0; s < 4 * 3600; s++) {
        commands(d, 0, get, s, noisy(500));
        commands(d, 1, set, s, noisy(80));
        commands(d, 1, get, s, noisy(40));
        commands(d, 2, ping, s, s % 7 == 0 ? 3 : 0);
        if (s % 4 == 0)
            commands(d, 2, get, s, 1);
        tick(d, c, s);
    }
    assert_int_equal(c->total, 0);
    free(c);
    anomaly_free(d);
}

static void test_burst_one_onset_one_recovery(void **state)
{
    (void)state;
    struct anomaly *d = make_default(1);
    struct cap *c = calloc(1, sizeof *c);
    uint32_t get = cats_of("get"); /* read, string, fast: only read is tracked by default */
    const uint64_t b = 3600;
    steady(d, c, 0, get, 0, b, 100);
    assert_int_equal(c->total, 0);
    steady(d, c, 0, get, b, b + 120, 1000); /* 10x for two minutes */
    steady(d, c, 0, get, b + 120, b + 3600, 100);
    assert_int_equal(c->total, 2);

    const struct anomaly_event *on = &c->ev[0], *off = &c->ev[1];
    assert_int_equal(on->type, ANOMALY_RATE_SPIKE);
    assert_int_equal(on->phase, ANOMALY_ONSET);
    assert_int_equal(on->user, 0);
    assert_string_equal(on->category, "read");
    assert_string_equal(on->source, "");
    /* Reported at the end of the 10th second above the threshold. */
    assert_int_equal(on->at_ms, (b + 10) * 1000);
    assert_true(on->observed > 900 && on->observed < 1100);
    assert_true(on->baseline > 90 && on->baseline < 110);
    assert_true(on->threshold > 290 && on->threshold < 340);
    assert_int_equal(on->duration_s, 0);

    assert_int_equal(off->type, ANOMALY_RATE_SPIKE);
    assert_int_equal(off->phase, ANOMALY_RECOVERY);
    assert_string_equal(off->category, "read");
    /* 30 calm seconds after the burst ended. */
    assert_int_equal(off->at_ms, (b + 150) * 1000);
    assert_int_equal(off->duration_s, 140);
    assert_true(off->observed < 130);
    assert_true(off->peak >= 1100 && off->peak <= 1200);
    /* The baseline did not learn the burst. */
    assert_true(off->baseline > 90 && off->baseline < 115);
    free(c);
    anomaly_free(d);
}

static void test_short_bursts_raise_nothing(void **state)
{
    (void)state;
    struct anomaly *d = make_default(1);
    struct cap *c = calloc(1, sizeof *c);
    uint32_t get = cats_of("get");
    steady(d, c, 0, get, 0, 1200, 100);
    /* Every five minutes for four hours: 9 seconds at 10x (sustain is 10). */
    uint64_t s = 1200;
    for (int i = 0; i < 48; i++) {
        steady(d, c, 0, get, s, s + 9, 1000);
        steady(d, c, 0, get, s + 9, s + 300, 100);
        s += 300;
    }
    assert_int_equal(c->total, 0);
    /* Exactly sustain seconds are enough. */
    steady(d, c, 0, get, s, s + 10, 1000);
    assert_int_equal(c->total, 1);
    assert_int_equal(c->ev[0].phase, ANOMALY_ONSET);
    free(c);
    anomaly_free(d);
}

static void test_long_burst_recovers_cleanly(void **state)
{
    (void)state;
    struct anomaly *d = make_default(1);
    struct cap *c = calloc(1, sizeof *c);
    uint32_t get = cats_of("get");
    steady(d, c, 0, get, 0, 3600, 100);
    steady(d, c, 0, get, 3600, 3600 + 7200, 1000); /* two hours at 10x */
    assert_int_equal(c->total, 1);
    steady(d, c, 0, get, 3600 + 7200, 3600 + 7200 + 3 * 3600, 100);
    assert_int_equal(c->total, 2);
    assert_int_equal(c->ev[1].phase, ANOMALY_RECOVERY);
    assert_int_equal(c->ev[1].at_ms, (3600 + 7200 + 30) * 1000);
    free(c);
    anomaly_free(d);
}

static void test_level_shift_becomes_normal(void **state)
{
    (void)state;
    struct anomaly *d = make_default(1);
    struct cap *c = calloc(1, sizeof *c);
    uint32_t get = cats_of("get");
    steady(d, c, 0, get, 0, 3600, 100);
    /* The workload grows tenfold for good: one onset, then, after some hours, one recovery, and
     * nothing after it. */
    steady(d, c, 0, get, 3600, 3600 + 12 * 3600, 1000);
    assert_int_equal(c->total, 2);
    assert_int_equal(c->ev[0].phase, ANOMALY_ONSET);
    assert_int_equal(c->ev[1].phase, ANOMALY_RECOVERY);
    assert_true(c->ev[1].duration_s > 2 * 3600 && c->ev[1].duration_s < 8 * 3600);
    free(c);
    anomaly_free(d);
}

static void test_spike_needs_warmup_and_stddev(void **state)
{
    (void)state;
    struct anomaly_config cfg;
    anomaly_config_defaults(&cfg);
    struct anomaly *d = make(&cfg, 2);
    struct cap *c = calloc(1, sizeof *c);
    uint32_t get = cats_of("get");
    /* During warm-up a 10x burst is learned, not reported. */
    steady(d, c, 0, get, 0, 100, 100);
    steady(d, c, 0, get, 100, 200, 1000);
    steady(d, c, 0, get, 200, 600, 100);
    assert_int_equal(c->total, 0);

    /* A bursty user (alternating 10 and 190 a second): mean 100, stddev 90; a rate of 400 is 4x
     * the mean but under mean + 4 stddev (460), so the k term keeps it quiet; 700 is over both. */
    for (uint64_t s = 600; s < 4200; s++) {
        commands(d, 0, get, s, 100);
        commands(d, 1, get, s, s % 2 ? 190 : 10);
        tick(d, c, s);
    }
    assert_int_equal(c->total, 0);
    for (uint64_t s = 4200; s < 4212; s++) {
        commands(d, 1, get, s, 400);
        tick(d, c, s);
    }
    assert_int_equal(c->total, 0);
    for (uint64_t s = 4212; s < 4232; s++) {
        commands(d, 1, get, s, 700);
        tick(d, c, s);
    }
    assert_int_equal(c->total, 1);
    assert_int_equal(c->ev[0].user, 1);
    assert_true(c->ev[0].threshold > 440 && c->ev[0].threshold < 520);
    free(c);
    anomaly_free(d);
}

static void test_late_and_irregular_ticks(void **state)
{
    (void)state;
    struct anomaly *d = make_default(1);
    struct cap *c = calloc(1, sizeof *c);
    uint32_t get = cats_of("get");
    /* Ticks every 1 to 3 seconds, sometimes twice in a second. */
    uint64_t next_tick = 1;
    for (uint64_t s = 0; s < 3 * 3600; s++) {
        unsigned rate = (s >= 7200 && s < 7260) ? 1000 : 100;
        commands(d, 0, get, s, noisy(rate));
        if (s + 1 >= next_tick) {
            anomaly_tick(d, (s + 1) * 1000 + 400, on_event, c);
            anomaly_tick(d, (s + 1) * 1000 + 900, on_event, c);
            next_tick = s + 1 + 1 + (uint64_t)(uniform() * 3);
        }
    }
    assert_int_equal(c->total, 2);
    assert_int_equal(c->ev[0].phase, ANOMALY_ONSET);
    assert_true(c->ev[0].at_ms >= 7209 * 1000 && c->ev[0].at_ms <= 7214 * 1000);
    assert_int_equal(c->ev[1].phase, ANOMALY_RECOVERY);

    /* A month without ticks or traffic costs one tick and reports nothing. */
    anomaly_tick(d, (3 * 3600 + 30 * 86400) * 1000ull, on_event, c);
    assert_int_equal(c->total, 2);
    /* Facts timed before the open second count in it (a clock step back is tolerated). */
    anomaly_record_command(d, 0, get, 1000);
    anomaly_tick(d, (3 * 3600 + 30 * 86400 + 5) * 1000ull, on_event, c);
    assert_int_equal(c->total, 2);
    free(c);
    anomaly_free(d);
}

/* ---------------------------------------------------------------------------------------- */
/* new_behaviour                                                                            */
/* ---------------------------------------------------------------------------------------- */

static void test_new_behaviour(void **state)
{
    (void)state;
    struct anomaly *d = make_default(2);
    struct cap *c = calloc(1, sizeof *c);
    uint32_t get = cats_of("get"), exists = cats_of("exists"), del = cats_of("del"), keys = cats_of("keys");
    assert_true(del & CMDTAB_CAT_WRITE);
    /* Two read-only cache clients (GET, EXISTS: read and keyspace). */
    for (uint64_t s = 0; s < 900; s++) {
        commands(d, 0, get, s, 50);
        commands(d, 0, exists, s, 5);
        commands(d, 1, get, s, 50);
        commands(d, 1, exists, s, 5);
        /* User 1 deletes once during its warm-up: learned, not reported. */
        if (s == 300)
            anomaly_record_command(d, 1, del, s * 1000 + 500);
        /* After warm-up, user 0's first DEL: one new_behaviour for "write". */
        if (s == 700 || s == 701 || s == 800)
            anomaly_record_command(d, 0, del, s * 1000 + 500);
        if (s == 750)
            anomaly_record_command(d, 1, del, s * 1000 + 500);
        tick(d, c, s);
    }
    assert_int_equal(c->total, 1);
    assert_int_equal(c->ev[0].type, ANOMALY_NEW_BEHAVIOUR);
    assert_int_equal(c->ev[0].phase, ANOMALY_ONSET);
    assert_int_equal(c->ev[0].user, 0);
    assert_string_equal(c->ev[0].category, "write");
    assert_int_equal(c->ev[0].at_ms, 701 * 1000 + 3);

    /* KEYS adds "dangerous" (keyspace and read are known). Untracked categories never count. */
    anomaly_record_command(d, 0, keys, 900500);
    anomaly_record_command(d, 0, keys, 900600);
    anomaly_record_command(d, 0, CMDTAB_CAT_HYPERLOGLOG | CMDTAB_CAT_CONNECTION, 900700);
    tick(d, c, 900);
    tick(d, c, 901);
    assert_int_equal(c->total, 2);
    assert_int_equal(c->ev[1].type, ANOMALY_NEW_BEHAVIOUR);
    assert_string_equal(c->ev[1].category, "dangerous");
    free(c);
    anomaly_free(d);
}

/* ---------------------------------------------------------------------------------------- */
/* minute counts                                                                            */
/* ---------------------------------------------------------------------------------------- */

static void test_denial_burst(void **state)
{
    (void)state;
    struct anomaly *d = make_default(2);
    struct cap *c = calloc(1, sizeof *c);
    struct sockaddr_storage a = addr_v4("198.51.100.1", 40000);
    /* One refusal a second: the 30th in the minute reaches the threshold, for the user and for
     * the source. */
    for (uint64_t s = 0; s < 90; s++) {
        anomaly_record_denial(d, 0, SA(a), s * 1000 + 10);
        tick(d, c, s);
        if (s == 28)
            assert_int_equal(c->total, 0);
        if (s == 29)
            assert_int_equal(c->total, 2);
    }
    assert_int_equal(c->total, 2);
    const struct anomaly_event *u = find(c, ANOMALY_DENIAL_BURST, ANOMALY_ONSET, 0);
    const struct anomaly_event *src = find(c, ANOMALY_DENIAL_BURST, ANOMALY_ONSET, -1);
    assert_non_null(u);
    assert_non_null(src);
    assert_string_equal(u->source, "");
    assert_string_equal(src->source, "198.51.100.1");
    assert_true(u->observed == 30.0 && u->threshold == 30.0 && u->baseline == 0.0);
    assert_null(src->category);
    /* Then calm: one recovery each, once the minute holds 15 or fewer. */
    for (uint64_t s = 90; s < 400; s++)
        tick(d, c, s);
    assert_int_equal(c->total, 4);
    u = find(c, ANOMALY_DENIAL_BURST, ANOMALY_RECOVERY, 0);
    src = find(c, ANOMALY_DENIAL_BURST, ANOMALY_RECOVERY, -1);
    assert_non_null(u);
    assert_non_null(src);
    assert_true(u->observed <= 15.0);
    assert_true(u->peak >= 55.0);
    assert_true(u->at_ms >= 120 * 1000 && u->at_ms <= 131 * 1000);
    assert_string_equal(src->source, "198.51.100.1");

    /* Refusals before login (user -1) count for the source only; without an address, for the
     * user only. */
    for (uint64_t s = 400; s < 410; s++) {
        for (int i = 0; i < 3; i++) {
            anomaly_record_denial(d, -1, SA(a), s * 1000 + (uint64_t)i);
            anomaly_record_denial(d, 1, NULL, s * 1000 + (uint64_t)i);
        }
        tick(d, c, s);
    }
    assert_int_equal(c->total, 6);
    assert_non_null(find(c, ANOMALY_DENIAL_BURST, ANOMALY_ONSET, 1));
    assert_int_equal(count(c, ANOMALY_DENIAL_BURST, ANOMALY_ONSET), 4);
    free(c);
    anomaly_free(d);
}

static void test_auth_failure_burst(void **state)
{
    (void)state;
    struct anomaly *d = make_default(0);
    struct cap *c = calloc(1, sizeof *c);
    struct sockaddr_storage a = addr_v4("192.0.2.7", 40000);
    struct sockaddr_storage mapped = addr_v6("::ffff:192.0.2.7", 1234);
    struct sockaddr_storage b = addr_v6("2001:db8::1", 5678);
    /* Nine failures a minute, from two sources: nothing. */
    for (uint64_t s = 0; s < 300; s++) {
        if (s % 7 == 0)
            anomaly_record_auth_failure(d, SA(a), s * 1000);
        if (s % 7 == 3)
            anomaly_record_auth_failure(d, SA(b), s * 1000);
        tick(d, c, s);
    }
    assert_int_equal(c->total, 0);
    /* A guesser: 5 a second, half of them through the dual-stack (mapped) address. */
    for (uint64_t s = 300; s < 400; s++) {
        for (int i = 0; i < 5; i++)
            anomaly_record_auth_failure(d, i % 2 ? SA(mapped) : SA(a), s * 1000 + (uint64_t)i * 100);
        tick(d, c, s);
    }
    assert_int_equal(c->total, 1);
    assert_int_equal(c->ev[0].type, ANOMALY_AUTH_FAILURE_BURST);
    assert_int_equal(c->ev[0].user, -1);
    assert_string_equal(c->ev[0].source, "192.0.2.7");
    assert_true(c->ev[0].observed >= 10.0 && c->ev[0].threshold == 10.0);
    for (uint64_t s = 400; s < 600; s++)
        tick(d, c, s);
    assert_int_equal(c->total, 2);
    assert_int_equal(c->ev[1].phase, ANOMALY_RECOVERY);
    assert_true(c->ev[1].peak >= 250.0);
    assert_true(c->ev[1].duration_s >= 95 && c->ev[1].duration_s <= 160);

    /* The IPv6 source has its own count and text. */
    for (int i = 0; i < 10; i++)
        anomaly_record_auth_failure(d, SA(b), 600 * 1000 + (uint64_t)i);
    tick(d, c, 600);
    assert_int_equal(c->total, 3);
    assert_string_equal(c->ev[2].source, "2001:db8::1");

    /* AF_UNIX peers are one source "unix"; unknown families are ignored. */
    struct sockaddr_un un;
    memset(&un, 0, sizeof un);
    un.sun_family = AF_UNIX;
    struct sockaddr_storage odd;
    memset(&odd, 0, sizeof odd);
    odd.ss_family = AF_APPLETALK;
    for (int i = 0; i < 20; i++) {
        anomaly_record_auth_failure(d, (const struct sockaddr *)&un, 601 * 1000 + (uint64_t)i);
        anomaly_record_auth_failure(d, SA(odd), 601 * 1000 + (uint64_t)i);
        anomaly_record_auth_failure(d, NULL, 601 * 1000 + (uint64_t)i);
    }
    tick(d, c, 601);
    assert_int_equal(c->total, 4);
    assert_string_equal(c->ev[3].source, "unix");
    free(c);
    anomaly_free(d);
}

static void test_connection_surge(void **state)
{
    (void)state;
    struct anomaly *d = make_default(2);
    struct cap *c = calloc(1, sizeof *c);
    struct sockaddr_storage app = addr_v4("203.0.113.10", 40000), other = addr_v4("203.0.113.20", 40000);
    /* User 1 reconnects 150 times in 30 s during its warm-up: only the source is reported. */
    for (uint64_t s = 0; s < 30; s++) {
        for (int i = 0; i < 5; i++)
            anomaly_record_connection(d, 1, SA(other), s * 1000 + (uint64_t)i);
        tick(d, c, s);
    }
    assert_int_equal(c->total, 1);
    assert_int_equal(c->ev[0].type, ANOMALY_CONNECTION_SURGE);
    assert_int_equal(c->ev[0].user, -1);
    assert_string_equal(c->ev[0].source, "203.0.113.20");
    assert_true(c->ev[0].threshold == 100.0);
    c->n = c->total = 0;

    /* User 0: two connections a minute from app for an hour. */
    for (uint64_t s = 0; s < 3600; s++) {
        if (s % 30 == 0)
            anomaly_record_connection(d, 0, SA(app), s * 1000 + 1);
        tick(d, c, s);
    }
    /* (the other source recovered meanwhile) */
    assert_int_equal(c->total, 1);
    assert_int_equal(c->ev[0].phase, ANOMALY_RECOVERY);
    assert_string_equal(c->ev[0].source, "203.0.113.20");
    c->n = c->total = 0;

    /* A reconnect loop: 5 a second for a minute. */
    for (uint64_t s = 3600; s < 3660; s++) {
        for (int i = 0; i < 5; i++)
            anomaly_record_connection(d, 0, SA(app), s * 1000 + (uint64_t)i);
        tick(d, c, s);
    }
    assert_int_equal(c->total, 2);
    const struct anomaly_event *u = find(c, ANOMALY_CONNECTION_SURGE, ANOMALY_ONSET, 0);
    const struct anomaly_event *s = find(c, ANOMALY_CONNECTION_SURGE, ANOMALY_ONSET, -1);
    assert_non_null(u);
    assert_non_null(s);
    assert_string_equal(s->source, "203.0.113.10");
    assert_true(u->baseline > 1.0 && u->baseline < 3.0);
    assert_true(u->threshold == 100.0);
    assert_true(u->observed >= 100.0);
    /* Back to normal: one recovery each. */
    for (uint64_t s2 = 3660; s2 < 4000; s2++) {
        if (s2 % 30 == 0)
            anomaly_record_connection(d, 0, SA(app), s2 * 1000 + 1);
        tick(d, c, s2);
    }
    assert_int_equal(c->total, 4);
    assert_int_equal(count(c, ANOMALY_CONNECTION_SURGE, ANOMALY_RECOVERY), 2);
    free(c);
    anomaly_free(d);
}

static void test_connection_surge_follows_baseline(void **state)
{
    (void)state;
    struct anomaly_config cfg;
    anomaly_config_defaults(&cfg);
    cfg.user.connection_surge_min = 20;
    cfg.connection_surge_min_source = 0; /* off */
    struct anomaly *d = make(&cfg, 1);
    struct cap *c = calloc(1, sizeof *c);
    /* A busy pool: 30 connections a minute (over the min of 20, learned as normal). */
    for (uint64_t s = 0; s < 3600; s++) {
        if (s % 2 == 0)
            anomaly_record_connection(d, 0, NULL, s * 1000);
        tick(d, c, s);
    }
    assert_int_equal(c->total, 0);
    /* 6x its baseline for half a minute is not a surge (factor 10); 20x is. */
    for (uint64_t s = 3600; s < 3630; s++) {
        for (int i = 0; i < 2; i++)
            anomaly_record_connection(d, 0, NULL, s * 1000 + (uint64_t)i + (s % 2 ? 0 : 500));
        anomaly_record_connection(d, 0, NULL, s * 1000 + 700);
        tick(d, c, s);
    }
    assert_int_equal(c->total, 0);
    for (uint64_t s = 3630; s < 3690; s++) {
        for (int i = 0; i < 10; i++)
            anomaly_record_connection(d, 0, NULL, s * 1000 + (uint64_t)i);
        tick(d, c, s);
    }
    assert_int_equal(c->total, 1);
    assert_true(c->ev[0].threshold > 290 && c->ev[0].threshold < 400);
    assert_true(c->ev[0].baseline > 29 && c->ev[0].baseline < 40);
    free(c);
    anomaly_free(d);
}

/* ---------------------------------------------------------------------------------------- */
/* the source table                                                                         */
/* ---------------------------------------------------------------------------------------- */

static void test_source_table_bounded(void **state)
{
    (void)state;
    struct anomaly *d = make_default(0);
    struct cap *c = calloc(1, sizeof *c);
    struct sockaddr_storage attacker = addr_v4("192.0.2.66", 40000);
    for (int i = 0; i < 50; i++)
        anomaly_record_auth_failure(d, SA(attacker), (uint64_t)i);
    tick(d, c, 0);
    assert_int_equal(c->total, 1);

    /* 100k distinct sources, one failed login and one connection each, over 100 seconds. */
    uint32_t n = 0;
    for (uint64_t s = 1; s <= 100; s++) {
        for (int i = 0; i < 1000; i++, n++) {
            char text[32];
            snprintf(text, sizeof text, "10.%u.%u.%u", (n >> 16) & 255, (n >> 8) & 255, n & 255);
            struct sockaddr_storage a = addr_v4(text, 40000);
            anomaly_record_auth_failure(d, SA(a), s * 1000 + (uint64_t)i);
            anomaly_record_connection(d, -1, SA(a), s * 1000 + (uint64_t)i);
        }
        anomaly_record_auth_failure(d, SA(attacker), s * 1000 + 999); /* 60 a minute: stays open */
        tick(d, c, s);
    }
    struct anomaly_stats st;
    anomaly_get_stats(d, &st);
    assert_true(st.sources_tracked <= 1024);
    assert_true(st.sources_tracked >= 1000);
    assert_true(st.sources_evicted >= 100000 - 1024);
    assert_int_equal(st.sources_dropped, 0);
    assert_int_equal(c->total, 1);

    /* The attacker's open episode survived the storm and recovers. */
    for (uint64_t s = 101; s < 300; s++)
        tick(d, c, s);
    assert_int_equal(c->total, 2);
    assert_int_equal(c->ev[1].phase, ANOMALY_RECOVERY);
    assert_string_equal(c->ev[1].source, "192.0.2.66");
    anomaly_get_stats(d, &st);
    assert_int_equal(st.events, 2);
    free(c);
    anomaly_free(d);
}

static void test_source_set_full_of_open_episodes(void **state)
{
    (void)state;
    struct anomaly_config cfg;
    anomaly_config_defaults(&cfg);
    cfg.source_table_size = 8; /* one set */
    struct anomaly *d = make(&cfg, 0);
    struct cap *c = calloc(1, sizeof *c);
    for (int h = 1; h <= 9; h++) {
        char text[32];
        snprintf(text, sizeof text, "192.0.2.%d", h);
        struct sockaddr_storage a = addr_v4(text, 40000);
        for (int i = 0; i < 10; i++)
            anomaly_record_auth_failure(d, SA(a), (uint64_t)i);
        /* An episode opens at the tick; until then the entry may still be replaced. */
        if (h == 8)
            tick(d, c, 0);
    }
    tick(d, c, 1);
    /* Eight open episodes; the ninth source found no room and is counted as dropped. */
    assert_int_equal(c->total, 8);
    struct anomaly_stats st;
    anomaly_get_stats(d, &st);
    assert_int_equal(st.sources_tracked, 8);
    assert_int_equal(st.sources_evicted, 0);
    assert_int_equal(st.sources_dropped, 10);
    for (uint64_t s = 2; s < 200; s++)
        tick(d, c, s);
    assert_int_equal(c->total, 16);
    free(c);
    anomaly_free(d);
}

/* ---------------------------------------------------------------------------------------- */
/* overrides, no flood                                                                      */
/* ---------------------------------------------------------------------------------------- */

static void test_per_user_overrides(void **state)
{
    (void)state;
    struct anomaly_config cfg;
    anomaly_config_defaults(&cfg);
    struct anomaly_user_config ov[3] = {cfg.user, cfg.user, cfg.user};
    ov[1].min_rate = 5000; /* a bulk loader: only huge rates matter */
    ov[1].denial_burst = 5;
    ov[2].disabled = true;
    cfg.overrides = ov;
    struct anomaly *d = make(&cfg, 3);
    ov[0].disabled = true; /* copied at creation: later changes do not matter */
    struct cap *c = calloc(1, sizeof *c);
    uint32_t get = cats_of("get"), del = cats_of("del");
    for (uint64_t s = 0; s < 3600 + 120; s++) {
        unsigned rate = s >= 3600 ? 1000 : 100;
        for (int u = 0; u < 3; u++)
            commands(d, u, get, s, noisy(rate));
        if (s == 3000)
            for (int u = 0; u < 3; u++)
                anomaly_record_command(d, u, del, s * 1000);
        if (s >= 3000 && s < 3005)
            for (int u = 0; u < 3; u++)
                anomaly_record_denial(d, u, NULL, s * 1000);
        tick(d, c, s);
    }
    for (size_t i = 0; i < c->n; i++)
        assert_int_not_equal(c->ev[i].user, 2);
    /* user 0: new_behaviour x2 (write, keyspace) + a spike onset (the burst is still on); user 1:
     * new_behaviour x2 + denial onset and recovery; user 2: nothing. */
    assert_int_equal(count(c, ANOMALY_RATE_SPIKE, ANOMALY_ONSET), 1);
    assert_int_equal(find(c, ANOMALY_RATE_SPIKE, ANOMALY_ONSET, 0)->user, 0);
    assert_int_equal(count(c, ANOMALY_DENIAL_BURST, ANOMALY_ONSET), 1);
    assert_non_null(find(c, ANOMALY_DENIAL_BURST, ANOMALY_ONSET, 1));
    assert_int_equal(count(c, ANOMALY_DENIAL_BURST, ANOMALY_RECOVERY), 1);
    assert_int_equal(count(c, ANOMALY_NEW_BEHAVIOUR, ANOMALY_ONSET), 4);
    assert_int_equal(c->total, 7);
    free(c);
    anomaly_free(d);
}

static void test_long_noisy_run_does_not_flood(void **state)
{
    (void)state;
    struct anomaly *d = make_default(3);
    struct cap *c = calloc(1, sizeof *c);
    uint32_t mix[] = {cats_of("get"), cats_of("set"), cats_of("del"), cats_of("scan"), cats_of("publish")};
    struct sockaddr_storage srcs[4] = {addr_v4("198.51.100.1", 40000), addr_v4("198.51.100.2", 40000),
                                       addr_v4("198.51.100.3", 40000), addr_v6("2001:db8::5", 1)};
    int bursts = 0, storms = 0;
    uint64_t burst_end[3] = {0, 0, 0};
    unsigned burst_rate[3] = {0, 0, 0};
    uint64_t storm_end = 0;
    const uint64_t run = 12 * 3600;
    for (uint64_t s = 0; s < run; s++) {
        for (int u = 0; u < 3; u++) {
            /* After warm-up, now and then a burst of 5 to 20x for 1 s to 5 min. */
            if (s > 1800 && s + 900 < run && s >= burst_end[u] + 600 && uniform() < 1.0 / 1800) {
                burst_end[u] = s + 1 + (uint64_t)(uniform() * 300);
                burst_rate[u] = 5 + (unsigned)(uniform() * 15);
                bursts++;
            }
            unsigned mul = s < burst_end[u] ? burst_rate[u] : 1;
            unsigned base = 20u + 30u * (unsigned)u;
            for (size_t k = 0; k < sizeof mix / sizeof mix[0]; k++)
                commands(d, u, mix[k], s, noisy(base * mul / (unsigned)(k + 1)));
        }
        /* Background refusals and failed logins, and now and then a storm of them. */
        if (s > 600 && s + 600 < run && s >= storm_end + 300 && uniform() < 1.0 / 3600) {
            storm_end = s + 1 + (uint64_t)(uniform() * 600);
            storms++;
        }
        /* Background: about three a minute, over all sources and users (a fifth of the
         * thresholds); storms: 20 a second. */
        unsigned per_s = s < storm_end ? 20 : (uniform() < 0.05 ? 1 : 0);
        unsigned off = (unsigned)(uniform() * 12);
        for (unsigned j = 0; j < per_s; j++) {
            unsigned i = j + off;
            const struct sockaddr *a = SA(srcs[i % 4]);
            anomaly_record_denial(d, (int)(i % 3), a, s * 1000 + i);
            anomaly_record_auth_failure(d, a, s * 1000 + i);
            if (i % 4 == 0)
                anomaly_record_connection(d, (int)(i % 3), a, s * 1000 + i);
        }
        tick(d, c, s);
    }
    /* Every rate episode is one onset and one recovery, at most one per tracked category the
     * burst touches (GET SET DEL SCAN PUBLISH: read, write, keyspace, pubsub). Each storm may open
     * per-user and per-source episodes of its three kinds. */
    size_t spikes = count(c, ANOMALY_RATE_SPIKE, ANOMALY_ONSET);
    size_t minute = count(c, ANOMALY_DENIAL_BURST, ANOMALY_ONSET) +
                    count(c, ANOMALY_AUTH_FAILURE_BURST, ANOMALY_ONSET) +
                    count(c, ANOMALY_CONNECTION_SURGE, ANOMALY_ONSET);
    print_message("noisy run: %d bursts, %d storms -> %zu spike onsets, %zu minute onsets, %zu events\n", bursts,
                  storms, spikes, minute, c->total);
    assert_true(bursts > 10);
    assert_true(spikes > 0);
    assert_true(spikes <= (size_t)bursts * 4);
    assert_true(minute <= (size_t)storms * (3 + 4 * 3));
    /* Everything opened was closed, and nothing else was reported but the first uses. */
    for (int t = 0; t < ANOMALY_TYPE_COUNT; t++) {
        if (t != ANOMALY_NEW_BEHAVIOUR)
            assert_int_equal(count(c, t, ANOMALY_ONSET), count(c, t, ANOMALY_RECOVERY));
    }
    assert_int_equal(count(c, ANOMALY_NEW_BEHAVIOUR, ANOMALY_ONSET), 0);
    assert_true(c->total < CAP_MAX);
    free(c);
    anomaly_free(d);
}

/* ---------------------------------------------------------------------------------------- */
/* anomaly_reconfigure                                                                      */
/* ---------------------------------------------------------------------------------------- */

static size_t count_user(const struct cap *c, int user)
{
    size_t n = 0;
    for (size_t i = 0; i < c->n; i++)
        n += c->ev[i].user == user;
    return n;
}

/* Growing keeps what was learnt: a user warmed up before reports a spike right away, with its
 * baseline; the new users start unseen (in their own warm-up from their first fact). */
static void test_reconfigure_keeps_learnt_state(void **state)
{
    (void)state;
    struct anomaly_config cfg;
    anomaly_config_defaults(&cfg);
    struct anomaly *d = make(&cfg, 1);
    struct cap *c = calloc(1, sizeof *c);
    uint32_t get = cats_of("get"), del = cats_of("del"), publish = cats_of("publish");
    const uint64_t b = 3600;
    steady(d, c, 0, get, 0, b, 100);
    assert_int_equal(c->total, 0);

    assert_int_equal(anomaly_reconfigure(d, &cfg, 3), 0);
    for (uint64_t s = b; s < b + 12; s++) {
        commands(d, 0, get, s, 1000);
        commands(d, 1, get, s, 1000); /* new: in its warm-up, learned */
        if (s == b + 1) {
            anomaly_record_command(d, 0, del, s * 1000 + 500); /* write, keyspace: new for user 0 */
            anomaly_record_command(d, 1, del, s * 1000 + 500); /* user 1: learned */
        }
        tick(d, c, s);
    }
    const struct anomaly_event *on = find(c, ANOMALY_RATE_SPIKE, ANOMALY_ONSET, 0);
    assert_non_null(on);
    assert_int_equal(on->at_ms, (b + 10) * 1000);
    assert_string_equal(on->category, "read");
    assert_true(on->baseline > 90 && on->baseline < 110);
    assert_int_equal(count(c, ANOMALY_NEW_BEHAVIOUR, ANOMALY_ONSET), 2);
    assert_int_equal(count_user(c, 0), 3);
    assert_int_equal(c->total, 3);

    /* User 0 recovers; user 1, warmed up 600 s after its first command, reports its first
     * PUBLISH, and nothing else. User 2 never did anything. */
    for (uint64_t s = b + 12; s < b + 800; s++) {
        commands(d, 0, get, s, noisy(100));
        commands(d, 1, get, s, noisy(100));
        if (s == b + 700)
            anomaly_record_command(d, 1, publish, s * 1000 + 1);
        tick(d, c, s);
    }
    assert_non_null(find(c, ANOMALY_RATE_SPIKE, ANOMALY_RECOVERY, 0));
    assert_int_equal(count_user(c, 1), 1);
    const struct anomaly_event *nb = find(c, ANOMALY_NEW_BEHAVIOUR, ANOMALY_ONSET, 1);
    assert_non_null(nb);
    assert_string_equal(nb->category, "pubsub");
    assert_int_equal(nb->at_ms, (b + 701) * 1000 + 3);
    assert_int_equal(count_user(c, 2), 0);
    assert_int_equal(c->total, 5);
    free(c);
    anomaly_free(d);
}

/* Growing from no users (how a worker's detector starts), then the new users are tracked. */
static void test_reconfigure_from_no_users(void **state)
{
    (void)state;
    struct anomaly_config cfg;
    anomaly_config_defaults(&cfg);
    struct anomaly *d = make(&cfg, 0);
    struct cap *c = calloc(1, sizeof *c);
    struct sockaddr_storage a = addr_v4("198.51.100.9", 40000);
    anomaly_record_command(d, 0, CMDTAB_CAT_READ, 500); /* no such user yet: ignored */
    anomaly_record_denial(d, 0, SA(a), 600);
    tick(d, c, 0);
    assert_int_equal(anomaly_reconfigure(d, &cfg, 2), 0);
    /* 29 more refusals by user 1 from the same source: the source reaches 30 (its count from
     * before is kept), user 1 has 29. */
    for (int i = 0; i < 29; i++)
        anomaly_record_denial(d, 1, SA(a), 1000 + (uint64_t)i);
    tick(d, c, 1);
    assert_int_equal(c->total, 1);
    assert_int_equal(c->ev[0].type, ANOMALY_DENIAL_BURST);
    assert_int_equal(c->ev[0].user, -1);
    anomaly_record_denial(d, 1, NULL, 2000);
    tick(d, c, 2);
    assert_int_equal(c->total, 2);
    assert_int_equal(c->ev[1].type, ANOMALY_DENIAL_BURST);
    assert_int_equal(c->ev[1].user, 1);
    steady(d, c, 0, cats_of("get"), 3, 1000, 100);
    free(c);
    anomaly_free(d);
}

/* Changed settings apply from the next fact or tick; the counts and the sources stay. */
static void test_reconfigure_thresholds(void **state)
{
    (void)state;
    struct anomaly_config cfg;
    anomaly_config_defaults(&cfg);
    struct anomaly *d = make(&cfg, 2);
    struct cap *c = calloc(1, sizeof *c);
    struct sockaddr_storage a = addr_v4("192.0.2.44", 40000);
    /* Four refusals (threshold 30) and six failed logins (threshold 10): nothing. */
    for (uint64_t i = 0; i < 4; i++)
        anomaly_record_denial(d, 0, NULL, 1000 + i);
    for (uint64_t i = 0; i < 6; i++)
        anomaly_record_auth_failure(d, SA(a), 1000 + i);
    tick(d, c, 1);
    assert_int_equal(c->total, 0);

    /* denial_burst 5 for every user; the source table keeps its place even when the caller
     * passes another seed (a reload does not know the running one). */
    cfg.user.denial_burst = 5;
    cfg.hash_seed ^= 0x5555aaaa5555aaaaull;
    assert_int_equal(anomaly_reconfigure(d, &cfg, 2), 0);
    tick(d, c, 2);
    assert_int_equal(c->total, 0);
    anomaly_record_denial(d, 0, NULL, 3000);      /* the fifth */
    for (uint64_t i = 0; i < 4; i++)              /* the tenth */
        anomaly_record_auth_failure(d, SA(a), 3000 + i);
    tick(d, c, 3);
    assert_int_equal(c->total, 2);
    const struct anomaly_event *u = find(c, ANOMALY_DENIAL_BURST, ANOMALY_ONSET, 0);
    assert_non_null(u);
    assert_true(u->observed == 5.0 && u->threshold == 5.0);
    const struct anomaly_event *s = find(c, ANOMALY_AUTH_FAILURE_BURST, ANOMALY_ONSET, -1);
    assert_non_null(s);
    assert_string_equal(s->source, "192.0.2.44");
    assert_true(s->observed == 10.0);
    struct anomaly_stats st;
    anomaly_get_stats(d, &st);
    assert_int_equal(st.sources_tracked, 1);
    /* A source threshold lowered: the next failed login from another address is a burst. */
    cfg.auth_failure_burst = 1;
    assert_int_equal(anomaly_reconfigure(d, &cfg, 2), 0);
    struct sockaddr_storage other = addr_v4("192.0.2.45", 40000);
    anomaly_record_auth_failure(d, SA(other), 4000);
    tick(d, c, 4);
    assert_int_equal(count(c, ANOMALY_AUTH_FAILURE_BURST, ANOMALY_ONSET), 2);
    free(c);
    anomaly_free(d);

    /* Rate thresholds: a per-user min_rate raised silences that user; factor lowered makes a
     * rate the old one allowed a spike. */
    anomaly_config_defaults(&cfg);
    d = make(&cfg, 2);
    c = calloc(1, sizeof *c);
    uint32_t get = cats_of("get");
    for (uint64_t t = 0; t < 3600; t++) {
        commands(d, 0, get, t, noisy(100));
        commands(d, 1, get, t, noisy(100));
        tick(d, c, t);
    }
    /* 250 a second is under 3x the baseline of 100. */
    for (uint64_t t = 3600; t < 3615; t++) {
        commands(d, 0, get, t, 250);
        commands(d, 1, get, t, 250);
        tick(d, c, t);
    }
    assert_int_equal(c->total, 0);
    struct anomaly_user_config ov[2] = {cfg.user, cfg.user};
    ov[0].factor = 2.0;
    ov[1].factor = 2.0;
    ov[1].min_rate = 5000;
    cfg.overrides = ov;
    assert_int_equal(anomaly_reconfigure(d, &cfg, 2), 0);
    ov[1].min_rate = 0; /* copied: later changes do not matter */
    for (uint64_t t = 3615; t < 3630; t++) {
        commands(d, 0, get, t, 250);
        commands(d, 1, get, t, 250);
        tick(d, c, t);
    }
    assert_int_equal(c->total, 1);
    assert_int_equal(c->ev[0].type, ANOMALY_RATE_SPIKE);
    assert_int_equal(c->ev[0].user, 0);
    assert_int_equal(c->ev[0].at_ms, (3615 + 10) * 1000);
    assert_true(c->ev[0].threshold > 190 && c->ev[0].threshold < 240);
    free(c);
    anomaly_free(d);
}

/* What a reconfigure cannot do is refused with -EINVAL, and then nothing changed. */
static void test_reconfigure_refused(void **state)
{
    (void)state;
    struct anomaly_config cfg;
    anomaly_config_defaults(&cfg);
    struct anomaly *d = make(&cfg, 2);
    struct cap *c = calloc(1, sizeof *c);
    uint32_t get = cats_of("get");
    steady(d, c, 0, get, 0, 3600, 100);
    assert_int_equal(c->total, 0);

    /* Each refused change also raises min_rate: had any of it applied, the burst below would
     * be quiet. */
    struct anomaly_config bad;
    struct anomaly_user_config ov[3];
#define REFUSED(stmt, users)                                                                                      \
    do {                                                                                                          \
        anomaly_config_defaults(&bad);                                                                            \
        bad.user.min_rate = 1e6;                                                                                  \
        bad.user.denial_burst = 1;                                                                                \
        stmt;                                                                                                     \
        assert_int_equal(anomaly_reconfigure(d, &bad, (users)), -EINVAL);                                         \
    } while (0)
    REFUSED((void)0, 1);                                         /* a user gone */
    REFUSED((void)0, 0);
    REFUSED(bad.categories |= CMDTAB_CAT_FAST, 2);               /* categories */
    REFUSED(bad.categories &= ~(uint32_t)CMDTAB_CAT_READ, 3);
    REFUSED(bad.source_table_size = 2048, 2);                    /* the source table */
    REFUSED(bad.source_table_size = 512, 2);
    REFUSED(bad.half_life_s = 0, 2);                             /* anomaly_config_check */
    REFUSED((ov[0] = ov[1] = ov[2] = bad.user, ov[2].factor = 0.5, bad.overrides = ov), 3);
    REFUSED((void)0, 65537);
#undef REFUSED

    anomaly_record_denial(d, 1, NULL, 3600 * 1000);
    for (uint64_t s = 3600; s < 3612; s++) {
        commands(d, 0, get, s, 1000);
        commands(d, 1, get, s, noisy(100));
        commands(d, 2, get, s, 1000); /* still no user 2 (ASan: no write out of bounds) */
        tick(d, c, s);
    }
    assert_int_equal(c->total, 1);
    assert_int_equal(c->ev[0].type, ANOMALY_RATE_SPIKE);
    assert_int_equal(c->ev[0].user, 0);

    /* The same shape is fine, and so is nothing new at all. */
    assert_int_equal(anomaly_reconfigure(d, &cfg, 2), 0);
    free(c);
    anomaly_free(d);
}

/* A user disabled by a reconfigure reports nothing more; the others go on. */
static void test_reconfigure_disables_user(void **state)
{
    (void)state;
    struct anomaly_config cfg;
    anomaly_config_defaults(&cfg);
    struct anomaly *d = make(&cfg, 2);
    struct cap *c = calloc(1, sizeof *c);
    uint32_t get = cats_of("get"), del = cats_of("del");
    for (uint64_t s = 0; s < 3600; s++) {
        commands(d, 0, get, s, noisy(100));
        commands(d, 1, get, s, noisy(100));
        tick(d, c, s);
    }
    assert_int_equal(c->total, 0);
    struct anomaly_user_config ov[2] = {cfg.user, cfg.user};
    ov[1].disabled = true;
    cfg.overrides = ov;
    assert_int_equal(anomaly_reconfigure(d, &cfg, 2), 0);
    struct sockaddr_storage a = addr_v4("198.51.100.77", 40000);
    for (uint64_t s = 3600; s < 3700; s++) {
        for (int u = 0; u < 2; u++) {
            commands(d, u, get, s, 1000);
            anomaly_record_denial(d, u, NULL, s * 1000);
            anomaly_record_connection(d, u, NULL, s * 1000);
            anomaly_record_connection(d, u, NULL, s * 1000 + 1);
            if (s == 3650)
                anomaly_record_command(d, u, del, s * 1000);
        }
        anomaly_record_auth_failure(d, SA(a), s * 1000); /* per source: not a user's */
        tick(d, c, s);
    }
    assert_int_equal(count_user(c, 1), 0);
    assert_non_null(find(c, ANOMALY_RATE_SPIKE, ANOMALY_ONSET, 0));
    assert_non_null(find(c, ANOMALY_DENIAL_BURST, ANOMALY_ONSET, 0));
    assert_non_null(find(c, ANOMALY_CONNECTION_SURGE, ANOMALY_ONSET, 0));
    assert_int_equal(count(c, ANOMALY_NEW_BEHAVIOUR, ANOMALY_ONSET), 2);
    assert_non_null(find(c, ANOMALY_AUTH_FAILURE_BURST, ANOMALY_ONSET, -1));
    free(c);
    anomaly_free(d);
}

/* A first use seen just before the reconfigure that disables the user (reported at the next
 * tick) must not be reported either: a disabled user is forgotten. */
static void test_reconfigure_disable_drops_pending(void **state)
{
    (void)state;
    struct anomaly_config cfg;
    anomaly_config_defaults(&cfg);
    struct anomaly *d = make(&cfg, 1);
    struct cap *c = calloc(1, sizeof *c);
    uint32_t get = cats_of("get"), del = cats_of("del");
    steady(d, c, 0, get, 0, 700, 100);
    anomaly_record_command(d, 0, del, 700 * 1000 + 10); /* first write after warm-up */
    struct anomaly_user_config ov = cfg.user;
    ov.disabled = true;
    cfg.overrides = &ov;
    assert_int_equal(anomaly_reconfigure(d, &cfg, 1), 0);
    tick(d, c, 700);
    tick(d, c, 701);
    assert_int_equal(count_user(c, 0), 0);
    free(c);
    anomaly_free(d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_config_defaults_and_check),
        cmocka_unit_test(test_steady_traffic_is_quiet),
        cmocka_unit_test(test_burst_one_onset_one_recovery),
        cmocka_unit_test(test_short_bursts_raise_nothing),
        cmocka_unit_test(test_long_burst_recovers_cleanly),
        cmocka_unit_test(test_level_shift_becomes_normal),
        cmocka_unit_test(test_spike_needs_warmup_and_stddev),
        cmocka_unit_test(test_late_and_irregular_ticks),
        cmocka_unit_test(test_new_behaviour),
        cmocka_unit_test(test_denial_burst),
        cmocka_unit_test(test_auth_failure_burst),
        cmocka_unit_test(test_connection_surge),
        cmocka_unit_test(test_connection_surge_follows_baseline),
        cmocka_unit_test(test_source_table_bounded),
        cmocka_unit_test(test_source_set_full_of_open_episodes),
        cmocka_unit_test(test_per_user_overrides),
        cmocka_unit_test(test_long_noisy_run_does_not_flood),
        cmocka_unit_test(test_reconfigure_keeps_learnt_state),
        cmocka_unit_test(test_reconfigure_from_no_users),
        cmocka_unit_test(test_reconfigure_thresholds),
        cmocka_unit_test(test_reconfigure_refused),
        cmocka_unit_test(test_reconfigure_disables_user),
        cmocka_unit_test(test_reconfigure_disable_drops_pending),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
