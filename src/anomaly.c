/*
 * anomaly: per-user, per-category command rates with learned baselines, and minute counts of
 * refusals, failed logins and connections per user and per source, turned into onset/recovery
 * events (the contract is in anomaly.h).
 *
 * What it must not do: read a clock, log, allocate outside anomaly_new and anomaly_reconfigure
 * (a reload), keep global state, grow with the number of distinct sources, or report the same episode twice (every event type has
 * one open/closed state per series or entity, and only a change of that state reports).
 *
 * Time: now_ms / 1000 is "the second". Command counts go into two slots by second parity: the
 * open second (d->open_sec) and the one after it, so a tick that fires a few milliseconds late
 * still closes the finished second exactly. Minute counts use a ring of six 10-second buckets
 * (the last 50 to 60 seconds), advanced lazily by whoever looks at them.
 */
#include "respguard/anomaly.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "respguard/cmdtab.h"
#include "respguard/source.h"

#define WAYS 8            /* entries per set of the source table */
#define NBUCKETS 6        /* buckets of a minute window */
#define BUCKET_S 10       /* seconds per bucket */
#define MAX_USERS 65536
#define MAX_SOURCES 65536
#define MAX_SECONDS (30u * 86400u) /* upper bound of every duration setting */

/* A minute count: the newest bucket is the current one (partial), the five before it complete. */
struct window {
    uint64_t epoch; /* number (sec / BUCKET_S) of the newest bucket */
    uint32_t b[NBUCKETS];
};

/* A minute count against a fixed threshold (denial, auth failure). */
struct burst {
    struct window w;
    bool active;
    uint32_t onset_threshold;
    uint32_t peak;
    uint64_t onset_ms;
};

/* A minute count against max(min, factor * learned mean) (connections). */
struct surge {
    struct window w;
    double mean;    /* connections per minute */
    uint64_t n;     /* samples learned while in the plain-average regime */
    bool active;
    uint32_t peak;
    uint64_t onset_ms;
};

/* One (user, category) series. */
struct series {
    uint32_t count[2]; /* commands in the open second and the next, by second parity */
    uint64_t above;    /* consecutive seconds above the threshold, while not active */
    uint64_t below;    /* consecutive calm seconds, while active */
    uint64_t n;        /* seconds learned while in the plain-average regime */
    double mean, var;  /* commands per second */
    double run_sum;    /* sum of the rates of the current run above the threshold */
    double peak;
    uint64_t onset_ms;
    bool active;
};

struct user_state {
    bool seen;
    uint64_t first_ms; /* first activity: the warm-up starts here */
    uint32_t used;     /* tracked categories ever issued */
    uint32_t fresh;    /* categories first issued after warm-up, not reported yet */
    struct burst denial;
    struct surge conn;
};

struct source {
    struct source_key key;
    bool in_use;
    uint64_t last_ms; /* last fact: the least recent inactive entry of a set is replaced */
    struct burst denial, auth;
    struct surge conn;
};

struct anomaly {
    struct anomaly_config cfg; /* overrides pointer cleared: they live in ucfg */
    size_t user_count;
    struct anomaly_user_config *ucfg; /* user_count entries */
    struct user_state *users;
    struct series *series;            /* user_count * nslots, user-major */
    unsigned nslots;
    uint8_t slot_bit[CMDTAB_CATEGORY_COUNT]; /* category bit index of each slot */
    uint8_t bit_slot[CMDTAB_CATEGORY_COUNT]; /* and back: the slot of each watched bit */
    struct source *sources;           /* nsets * WAYS */
    size_t nsets;
    bool started;
    uint64_t open_sec; /* the oldest second not closed yet */
    struct anomaly_stats stats;
};

/* ---------------------------------------------------------------------------------------- */
/* names, defaults, checks                                                                  */
/* ---------------------------------------------------------------------------------------- */

const char *anomaly_type_name(enum anomaly_type type)
{
    switch (type) {
    case ANOMALY_RATE_SPIKE:
        return "rate_spike";
    case ANOMALY_NEW_BEHAVIOUR:
        return "new_behaviour";
    case ANOMALY_DENIAL_BURST:
        return "denial_burst";
    case ANOMALY_AUTH_FAILURE_BURST:
        return "auth_failure_burst";
    case ANOMALY_CONNECTION_SURGE:
        return "connection_surge";
    }
    return "unknown";
}

const char *anomaly_phase_name(enum anomaly_phase phase)
{
    return phase == ANOMALY_ONSET ? "onset" : phase == ANOMALY_RECOVERY ? "recovery" : "unknown";
}

void anomaly_config_defaults(struct anomaly_config *cfg)
{
    /* The reasons for each number are in anomaly.h, next to anomaly_config_defaults. */
    memset(cfg, 0, sizeof *cfg);
    cfg->half_life_s = 600;
    cfg->active_half_life_s = 6 * 3600;
    cfg->warmup_s = 600;
    cfg->recovery_s = 30;
    cfg->recovery_ratio = 0.8;
    cfg->categories = CMDTAB_CAT_KEYSPACE | CMDTAB_CAT_READ | CMDTAB_CAT_WRITE | CMDTAB_CAT_ADMIN |
                      CMDTAB_CAT_PUBSUB | CMDTAB_CAT_SCRIPTING | CMDTAB_CAT_DANGEROUS |
                      CMDTAB_CAT_BLOCKING;
    cfg->user.disabled = false;
    cfg->user.min_rate = 20.0;
    cfg->user.factor = 3.0;
    cfg->user.k = 4.0;
    cfg->user.sustain_s = 10;
    cfg->user.denial_burst = 30;
    cfg->user.connection_surge_min = 100;
    cfg->user.connection_surge_factor = 10.0;
    cfg->overrides = NULL;
    cfg->denial_burst_source = 30;
    cfg->auth_failure_burst = 10;
    cfg->connection_surge_min_source = 100;
    cfg->connection_surge_factor_source = 10.0;
    cfg->source_table_size = 1024;
    cfg->hash_seed = 0x9e3779b97f4a7c15ull;
}

__attribute__((format(printf, 3, 4))) static int check_fail(char *err, size_t errlen, const char *fmt, ...)
{
    if (err != NULL && errlen > 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return -EINVAL;
}

static bool in_range(double v, double lo, double hi)
{
    return isfinite(v) && v >= lo && v <= hi; /* NaN fails every comparison */
}

static int check_user(const struct anomaly_user_config *u, const char *who, char *err, size_t errlen)
{
    if (!in_range(u->min_rate, 0.0, 1e9))
        return check_fail(err, errlen, "%s.min_rate must be a number from 0 to 1e9", who);
    if (!in_range(u->factor, 1.0, 1e6))
        return check_fail(err, errlen, "%s.factor must be a number from 1 to 1e6", who);
    if (!in_range(u->k, 0.0, 1e6))
        return check_fail(err, errlen, "%s.k must be a number from 0 to 1e6", who);
    if (u->sustain_s < 1 || u->sustain_s > MAX_SECONDS)
        return check_fail(err, errlen, "%s.sustain_s must be from 1 to %u", who, MAX_SECONDS);
    if (!in_range(u->connection_surge_factor, 1.0, 1e6))
        return check_fail(err, errlen, "%s.connection_surge_factor must be a number from 1 to 1e6", who);
    return 0;
}

int anomaly_config_check(const struct anomaly_config *cfg, size_t user_count, char *err, size_t errlen)
{
    if (err != NULL && errlen > 0)
        err[0] = '\0';
    if (cfg == NULL)
        return check_fail(err, errlen, "no anomaly config");
    if (user_count > MAX_USERS)
        return check_fail(err, errlen, "at most %u users", MAX_USERS);
    if (cfg->half_life_s < 1 || cfg->half_life_s > MAX_SECONDS)
        return check_fail(err, errlen, "half_life_s must be from 1 to %u", MAX_SECONDS);
    if (cfg->active_half_life_s < 1 || cfg->active_half_life_s > MAX_SECONDS)
        return check_fail(err, errlen, "active_half_life_s must be from 1 to %u", MAX_SECONDS);
    if (cfg->warmup_s > MAX_SECONDS)
        return check_fail(err, errlen, "warmup_s must be at most %u", MAX_SECONDS);
    if (cfg->recovery_s < 1 || cfg->recovery_s > MAX_SECONDS)
        return check_fail(err, errlen, "recovery_s must be from 1 to %u", MAX_SECONDS);
    if (!(isfinite(cfg->recovery_ratio) && cfg->recovery_ratio > 0.0 && cfg->recovery_ratio <= 1.0))
        return check_fail(err, errlen, "recovery_ratio must be a number above 0 and at most 1");
    if (cfg->categories >= (1u << CMDTAB_CATEGORY_COUNT))
        return check_fail(err, errlen, "categories has bits of no ACL category");
    if (!in_range(cfg->connection_surge_factor_source, 1.0, 1e6))
        return check_fail(err, errlen, "connection_surge_factor_source must be a number from 1 to 1e6");
    if (cfg->source_table_size < WAYS || cfg->source_table_size > MAX_SOURCES)
        return check_fail(err, errlen, "source_table_size must be from %d to %d", WAYS, MAX_SOURCES);
    int rc = check_user(&cfg->user, "user", err, errlen);
    if (rc != 0)
        return rc;
    if (cfg->overrides != NULL) {
        for (size_t i = 0; i < user_count; i++) {
            char who[32];
            snprintf(who, sizeof who, "overrides[%zu]", i);
            rc = check_user(&cfg->overrides[i], who, err, errlen);
            if (rc != 0)
                return rc;
        }
    }
    return 0;
}

/* ---------------------------------------------------------------------------------------- */
/* arithmetic                                                                               */
/* ---------------------------------------------------------------------------------------- */

/* 2^-x: the weight left after x half-lives. */
static double pow2_neg(double x)
{
    return x > 0.0 ? exp2(-x) : 1.0;
}

/* ---------------------------------------------------------------------------------------- */
/* learning                                                                                 */
/* ---------------------------------------------------------------------------------------- */

/* Per-sample weight of an exponentially weighted average whose half-life is hl samples. */
static double ew_alpha(double hl)
{
    return 1.0 - pow2_neg(1.0 / hl);
}

/*
 * Fold m samples of the same value x into a mean (and variance when var is not NULL).
 *
 * Until about 1/alpha samples have been seen, an exponentially weighted average started from
 * nothing is dominated by its first samples (or by an arbitrary initial value), so that regime
 * uses the plain average and population variance (the parallel-combination formula, m samples
 * of zero spread at once). After it, m identical samples in a row have a closed form for the
 * update of Welford/West (m' = m + a d, v' = (1 - a)(v + a d^2), d = x - m), so a long gap of
 * idle seconds costs the same as one: with b = (1 - a)^m, m_n = x - b d, v_n = b v + d^2 b (1 - b).
 */
static void learn(double *mean, double *var, uint64_t *n, double x, uint64_t m, double hl)
{
    uint64_t cross = (uint64_t)(1.0 / ew_alpha(hl));
    if (*n < cross) {
        uint64_t take = m < cross - *n ? m : cross - *n;
        double old_n = (double)*n, add = (double)take, total = old_n + add;
        double d = x - *mean;
        *mean += d * add / total;
        if (var != NULL)
            *var = (old_n * *var + old_n * add / total * d * d) / total;
        *n += take;
        m -= take;
        if (m == 0)
            return;
    }
    double b = pow2_neg((double)m / hl);
    double d = x - *mean;
    *mean = x - b * d;
    if (var != NULL)
        *var = b * *var + d * d * b * (1.0 - b);
}

/* The mean alone, purely exponential (used while an episode is open; the variance is frozen). */
static void learn_mean_slowly(double *mean, double x, uint64_t m, double hl)
{
    *mean = x - pow2_neg((double)m / hl) * (x - *mean);
}

static void emit(struct anomaly *d, anomaly_event_cb cb, void *ctx, const struct anomaly_event *ev)
{
    d->stats.events++;
    if (cb != NULL)
        cb(ev, ctx);
}

static void event_init(struct anomaly_event *ev, enum anomaly_type type, enum anomaly_phase phase, int user,
                       uint64_t at_ms)
{
    memset(ev, 0, sizeof *ev);
    ev->type = type;
    ev->phase = phase;
    ev->user = user;
    ev->at_ms = at_ms;
}

/* ---------------------------------------------------------------------------------------- */
/* minute windows                                                                           */
/* ---------------------------------------------------------------------------------------- */

static void window_init(struct window *w, uint64_t sec)
{
    memset(w, 0, sizeof *w);
    w->epoch = sec / BUCKET_S;
}

/* Move the window so that its newest bucket holds sec. Returns how many buckets closed (0 when
 * sec is in the newest bucket, or earlier: a late fact counts in the newest); *closed gets the
 * count of the first of them, the others closed empty. */
static uint64_t window_advance(struct window *w, uint64_t sec, uint32_t *closed)
{
    uint64_t e = sec / BUCKET_S;
    if (e <= w->epoch)
        return 0;
    *closed = w->b[w->epoch % NBUCKETS];
    uint64_t gap = e - w->epoch;
    uint64_t clear = gap < NBUCKETS ? gap : NBUCKETS;
    for (uint64_t i = 1; i <= clear; i++)
        w->b[(w->epoch + i) % NBUCKETS] = 0;
    w->epoch = e;
    return gap;
}

static uint32_t window_sum(const struct window *w)
{
    uint64_t sum = 0;
    for (int i = 0; i < NBUCKETS; i++)
        sum += w->b[i];
    return sum > UINT32_MAX ? UINT32_MAX : (uint32_t)sum;
}

static void window_add(struct window *w)
{
    uint32_t *b = &w->b[w->epoch % NBUCKETS];
    if (*b < UINT32_MAX)
        (*b)++;
}

static void burst_add(struct burst *b, uint64_t sec)
{
    uint32_t closed;
    (void)window_advance(&b->w, sec, &closed);
    window_add(&b->w);
}

static void burst_eval(struct anomaly *d, struct burst *b, uint32_t threshold, uint64_t now_ms,
                       enum anomaly_type type, int user, const struct source_key *source, anomaly_event_cb cb,
                       void *ctx)
{
    uint32_t closed;
    (void)window_advance(&b->w, now_ms / 1000, &closed);
    uint32_t sum = window_sum(&b->w);
    struct anomaly_event ev;
    if (!b->active) {
        if (threshold == 0 || sum < threshold)
            return;
        b->active = true;
        b->onset_threshold = threshold;
        b->peak = sum;
        b->onset_ms = now_ms;
        event_init(&ev, type, ANOMALY_ONSET, user, now_ms);
    } else {
        if (sum > b->peak)
            b->peak = sum;
        if ((uint64_t)sum * 2 > b->onset_threshold)
            return;
        b->active = false;
        event_init(&ev, type, ANOMALY_RECOVERY, user, now_ms);
        ev.duration_s = (now_ms - b->onset_ms) / 1000;
    }
    if (source != NULL)
        source_key_text(source, ev.source, sizeof ev.source);
    ev.observed = sum;
    ev.threshold = b->onset_threshold;
    ev.peak = b->peak;
    emit(d, cb, ctx, &ev);
}

static double surge_threshold(const struct surge *s, uint32_t min, double factor)
{
    double t = s->mean * factor;
    return t > min ? t : min;
}

/* Advance a connection window and learn the buckets that closed. A closed bucket is a sample of
 * connections per minute (count * 6). A sample that would itself be a surge (eligible and at or
 * above the threshold) is not learned: the surge must not teach the baseline. Before a user's
 * warm-up everything is learned, or a busy pool above the minimum would never get a baseline.
 * While an episode is open only the slow half-life applies, as for rate spikes. */
static void surge_advance(struct anomaly *d, struct surge *s, uint64_t sec, uint32_t min, double factor,
                          bool eligible)
{
    uint32_t closed = 0;
    uint64_t gap = window_advance(&s->w, sec, &closed);
    if (gap == 0)
        return;
    double hl = (double)d->cfg.half_life_s / BUCKET_S;
    double sample = (double)closed * (60.0 / BUCKET_S);
    if (s->active) {
        learn_mean_slowly(&s->mean, sample, 1, (double)d->cfg.active_half_life_s / BUCKET_S);
        if (gap > 1)
            learn_mean_slowly(&s->mean, 0.0, gap - 1, (double)d->cfg.active_half_life_s / BUCKET_S);
        return;
    }
    if (!eligible || sample < surge_threshold(s, min, factor))
        learn(&s->mean, NULL, &s->n, sample, 1, hl);
    if (gap > 1)
        learn(&s->mean, NULL, &s->n, 0.0, gap - 1, hl);
}

static void surge_eval(struct anomaly *d, struct surge *s, uint32_t min, double factor, bool eligible,
                       uint64_t now_ms, int user, const struct source_key *source, anomaly_event_cb cb,
                       void *ctx)
{
    surge_advance(d, s, now_ms / 1000, min, factor, eligible);
    uint32_t sum = window_sum(&s->w);
    double threshold = surge_threshold(s, min, factor);
    struct anomaly_event ev;
    if (!s->active) {
        if (min == 0 || !eligible || sum < threshold)
            return;
        s->active = true;
        s->peak = sum;
        s->onset_ms = now_ms;
        event_init(&ev, ANOMALY_CONNECTION_SURGE, ANOMALY_ONSET, user, now_ms);
    } else {
        if (sum > s->peak)
            s->peak = sum;
        /* Against the current threshold: its mean still learns slowly, so a source that now
         * always opens many connections is accepted after hours, as for rate spikes. */
        if ((double)sum * 2 > threshold)
            return;
        s->active = false;
        event_init(&ev, ANOMALY_CONNECTION_SURGE, ANOMALY_RECOVERY, user, now_ms);
        ev.duration_s = (now_ms - s->onset_ms) / 1000;
    }
    if (source != NULL)
        source_key_text(source, ev.source, sizeof ev.source);
    ev.observed = sum;
    ev.baseline = s->mean;
    ev.threshold = threshold;
    ev.peak = s->peak;
    emit(d, cb, ctx, &ev);
}

/* ---------------------------------------------------------------------------------------- */
/* sources                                                                                  */
/* ---------------------------------------------------------------------------------------- */

static bool source_open(const struct source *s)
{
    return s->denial.active || s->auth.active || s->conn.active;
}

/* The entry of a source, created if needed. NULL: no address, or its set is all open events. */
static struct source *source_get(struct anomaly *d, const struct sockaddr *sa, uint64_t now_ms)
{
    struct source_key k;
    if (!source_key_from(sa, &k))
        return NULL;
    struct source *set = &d->sources[(source_key_hash(&k, d->cfg.hash_seed) & (d->nsets - 1)) * WAYS];
    struct source *victim = NULL;
    for (int w = 0; w < WAYS; w++) {
        if (set[w].in_use && source_key_equal(&set[w].key, &k)) {
            if (now_ms > set[w].last_ms)
                set[w].last_ms = now_ms;
            return &set[w];
        }
        if (!set[w].in_use && victim == NULL)
            victim = &set[w];
    }
    if (victim == NULL) {
        /* Replace the least recently seen entry without an open episode: an open one must stay
         * to report its recovery, or the log would show an onset that never ends. */
        for (int w = 0; w < WAYS; w++) {
            if (!source_open(&set[w]) && (victim == NULL || set[w].last_ms < victim->last_ms))
                victim = &set[w];
        }
        if (victim == NULL) {
            d->stats.sources_dropped++;
            return NULL;
        }
        d->stats.sources_evicted++;
    } else {
        d->stats.sources_tracked++;
    }
    uint64_t sec = now_ms / 1000;
    memset(victim, 0, sizeof *victim);
    victim->key = k;
    victim->in_use = true;
    victim->last_ms = now_ms;
    window_init(&victim->denial.w, sec);
    window_init(&victim->auth.w, sec);
    window_init(&victim->conn.w, sec);
    return victim;
}

/* ---------------------------------------------------------------------------------------- */
/* detector                                                                                 */
/* ---------------------------------------------------------------------------------------- */

int anomaly_new(const struct anomaly_config *cfg, size_t user_count, struct anomaly **out)
{
    *out = NULL;
    int rc = anomaly_config_check(cfg, user_count, NULL, 0);
    if (rc != 0)
        return rc;
    struct anomaly *d = calloc(1, sizeof *d);
    if (d == NULL)
        return -ENOMEM;
    d->cfg = *cfg;
    d->cfg.overrides = NULL;
    d->user_count = user_count;
    for (unsigned bit = 0; bit < CMDTAB_CATEGORY_COUNT; bit++) {
        if (cfg->categories & (1u << bit)) {
            d->bit_slot[bit] = (uint8_t)d->nslots;
            d->slot_bit[d->nslots++] = (uint8_t)bit;
        }
    }
    size_t table = WAYS;
    while (table < cfg->source_table_size)
        table *= 2;
    d->nsets = table / WAYS;
    /* calloc(0) may return NULL; ask for at least one element so NULL always means no memory. */
    size_t nu = user_count > 0 ? user_count : 1;
    size_t ns = user_count * d->nslots > 0 ? user_count * d->nslots : 1;
    d->ucfg = calloc(nu, sizeof *d->ucfg);
    d->users = calloc(nu, sizeof *d->users);
    d->series = calloc(ns, sizeof *d->series);
    d->sources = calloc(table, sizeof *d->sources);
    if (d->ucfg == NULL || d->users == NULL || d->series == NULL || d->sources == NULL) {
        anomaly_free(d);
        return -ENOMEM;
    }
    for (size_t i = 0; i < user_count; i++)
        d->ucfg[i] = cfg->overrides != NULL ? cfg->overrides[i] : cfg->user;
    *out = d;
    return 0;
}

/* Grow an array of old_n elements of size sz to new_n, the new ones zeroed (the unseen state). */
static int grow_zeroed(void **p, size_t old_n, size_t new_n, size_t sz)
{
    void *q = realloc(*p, (new_n ? new_n : 1) * sz);
    if (q == NULL)
        return -ENOMEM;
    memset((char *)q + old_n * sz, 0, (new_n - old_n) * sz);
    *p = q;
    return 0;
}

int anomaly_reconfigure(struct anomaly *d, const struct anomaly_config *cfg, size_t user_count)
{
    int rc = anomaly_config_check(cfg, user_count, NULL, 0);
    if (rc != 0)
        return rc;
    if (user_count < d->user_count || cfg->categories != d->cfg.categories ||
        cfg->source_table_size != d->cfg.source_table_size)
        return -EINVAL;
    if (user_count > d->user_count) {
        if (grow_zeroed((void **)&d->ucfg, d->user_count, user_count, sizeof *d->ucfg) != 0 ||
            grow_zeroed((void **)&d->users, d->user_count, user_count, sizeof *d->users) != 0 ||
            grow_zeroed((void **)&d->series, d->user_count * d->nslots, user_count * d->nslots,
                        sizeof *d->series) != 0)
            return -ENOMEM; /* what grew is zeroed and unused until user_count says so */
        d->user_count = user_count;
    }
    uint64_t seed = d->cfg.hash_seed; /* the source table is placed by it */
    d->cfg = *cfg;
    d->cfg.overrides = NULL;
    d->cfg.hash_seed = seed;
    for (size_t i = 0; i < user_count; i++) {
        struct anomaly_user_config next = cfg->overrides != NULL ? cfg->overrides[i] : cfg->user;
        if (next.disabled && !d->ucfg[i].disabled) {
            /* Forgotten: nothing pending is reported, no episode is left open. */
            memset(&d->users[i], 0, sizeof d->users[i]);
            memset(&d->series[i * d->nslots], 0, d->nslots * sizeof *d->series);
        }
        d->ucfg[i] = next;
    }
    return 0;
}

void anomaly_free(struct anomaly *d)
{
    if (d == NULL)
        return;
    free(d->ucfg);
    free(d->users);
    free(d->series);
    free(d->sources);
    free(d);
}

void anomaly_get_stats(const struct anomaly *d, struct anomaly_stats *out)
{
    *out = d->stats;
}

/* The first fact or tick fixes the open second; nothing before it is ever counted. */
static void clock_start(struct anomaly *d, uint64_t sec)
{
    if (!d->started) {
        d->started = true;
        d->open_sec = sec;
    }
}

static bool warmed(const struct anomaly *d, const struct user_state *us, uint64_t at_ms)
{
    return us->seen && at_ms >= us->first_ms && at_ms - us->first_ms >= (uint64_t)d->cfg.warmup_s * 1000;
}

/* The state of a user for a fact at now_ms, marking its first activity. NULL: no such user, or
 * one that is not watched. */
static struct user_state *user_touch(struct anomaly *d, int user, uint64_t now_ms)
{
    if (user < 0 || (size_t)user >= d->user_count || d->ucfg[user].disabled)
        return NULL;
    struct user_state *us = &d->users[user];
    if (!us->seen) {
        us->seen = true;
        us->first_ms = now_ms;
        window_init(&us->denial.w, now_ms / 1000);
        window_init(&us->conn.w, now_ms / 1000);
    }
    return us;
}

void anomaly_record_command(struct anomaly *d, int user, uint32_t categories, uint64_t now_ms)
{
    uint64_t sec = now_ms / 1000;
    clock_start(d, sec);
    struct user_state *us = user_touch(d, user, now_ms);
    if (us == NULL)
        return;
    uint32_t cats = categories & d->cfg.categories;
    uint32_t first = cats & ~us->used;
    if (first != 0) {
        if (warmed(d, us, now_ms))
            us->fresh |= first;
        us->used |= first;
    }
    /* A fact from before the open second counts in it; one from beyond the next second (the
     * tick is late) counts in the next, which the late tick spreads over the missed seconds. */
    if (sec < d->open_sec)
        sec = d->open_sec;
    else if (sec > d->open_sec + 1)
        sec = d->open_sec + 1;
    struct series *row = &d->series[(size_t)user * d->nslots];
    for (; cats != 0; cats &= cats - 1) { /* each watched category of the command */
        uint32_t *c = &row[d->bit_slot[__builtin_ctz(cats)]].count[sec & 1];
        if (*c < UINT32_MAX)
            (*c)++;
    }
}

void anomaly_record_denial(struct anomaly *d, int user, const struct sockaddr *src, uint64_t now_ms)
{
    uint64_t sec = now_ms / 1000;
    clock_start(d, sec);
    struct user_state *us = user_touch(d, user, now_ms);
    if (us != NULL)
        burst_add(&us->denial, sec);
    struct source *s = source_get(d, src, now_ms);
    if (s != NULL)
        burst_add(&s->denial, sec);
}

void anomaly_record_auth_failure(struct anomaly *d, const struct sockaddr *src, uint64_t now_ms)
{
    uint64_t sec = now_ms / 1000;
    clock_start(d, sec);
    struct source *s = source_get(d, src, now_ms);
    if (s != NULL)
        burst_add(&s->auth, sec);
}

void anomaly_record_connection(struct anomaly *d, int user, const struct sockaddr *src, uint64_t now_ms)
{
    uint64_t sec = now_ms / 1000;
    clock_start(d, sec);
    struct user_state *us = user_touch(d, user, now_ms);
    if (us != NULL) {
        const struct anomaly_user_config *uc = &d->ucfg[user];
        surge_advance(d, &us->conn, sec, uc->connection_surge_min, uc->connection_surge_factor,
                      warmed(d, us, now_ms));
        window_add(&us->conn.w);
    }
    struct source *s = source_get(d, src, now_ms);
    if (s != NULL) {
        surge_advance(d, &s->conn, sec, d->cfg.connection_surge_min_source, d->cfg.connection_surge_factor_source,
                      true);
        window_add(&s->conn.w);
    }
}

static double spike_threshold(const struct series *s, const struct anomaly_user_config *uc)
{
    double t = uc->min_rate;
    double by_factor = s->mean * uc->factor;
    double by_spread = s->mean + uc->k * sqrt(s->var > 0.0 ? s->var : 0.0);
    if (by_factor > t)
        t = by_factor;
    if (by_spread > t)
        t = by_spread;
    return t;
}

/* m closed seconds of one series, all at rate x, the last ending at end_ms. */
static void series_step(struct anomaly *d, int user, unsigned slot, double x, uint64_t m, uint64_t end_ms,
                        anomaly_event_cb cb, void *ctx)
{
    struct series *s = &d->series[(size_t)user * d->nslots + slot];
    const struct anomaly_user_config *uc = &d->ucfg[user];
    double threshold = spike_threshold(s, uc);
    struct anomaly_event ev;
    if (!s->active) {
        if (!warmed(d, &d->users[user], end_ms) || x <= threshold) {
            s->above = 0;
            s->run_sum = 0.0;
            s->peak = 0.0;
            learn(&s->mean, &s->var, &s->n, x, m, d->cfg.half_life_s);
            return;
        }
        /* Above: not learned, whether or not it lasts long enough to be reported. */
        s->above += m;
        s->run_sum += x * (double)m;
        if (x > s->peak)
            s->peak = x;
        if (s->above < uc->sustain_s)
            return;
        s->active = true;
        s->below = 0;
        s->onset_ms = end_ms;
        event_init(&ev, ANOMALY_RATE_SPIKE, ANOMALY_ONSET, user, end_ms);
        ev.observed = s->run_sum / (double)s->above;
        ev.peak = ev.observed;
    } else {
        learn_mean_slowly(&s->mean, x, m, d->cfg.active_half_life_s);
        threshold = spike_threshold(s, uc);
        if (x > s->peak)
            s->peak = x;
        if (x > d->cfg.recovery_ratio * threshold) {
            s->below = 0;
            return;
        }
        s->below += m;
        if (s->below < d->cfg.recovery_s)
            return;
        s->active = false;
        event_init(&ev, ANOMALY_RATE_SPIKE, ANOMALY_RECOVERY, user, end_ms);
        ev.observed = x;
        ev.peak = s->peak;
        ev.duration_s = (end_ms - s->onset_ms) / 1000;
        s->above = 0;
        s->below = 0;
        s->run_sum = 0.0;
        s->peak = 0.0;
    }
    ev.category = cmdtab_category_name(d->slot_bit[slot]);
    ev.baseline = s->mean;
    ev.threshold = threshold;
    emit(d, cb, ctx, &ev);
}

/* Close the seconds open_sec .. sec-1 of every watched series. */
static void close_seconds(struct anomaly *d, uint64_t sec, anomaly_event_cb cb, void *ctx)
{
    uint64_t first = d->open_sec;
    uint64_t n = sec - first;
    for (size_t u = 0; u < d->user_count; u++) {
        if (!d->users[u].seen || d->ucfg[u].disabled)
            continue;
        for (unsigned i = 0; i < d->nslots; i++) {
            struct series *s = &d->series[u * d->nslots + i];
            uint32_t c0 = s->count[first & 1];
            s->count[first & 1] = 0;
            series_step(d, (int)u, i, c0, 1, (first + 1) * 1000, cb, ctx);
            if (n > 1) {
                uint32_t c1 = s->count[(first + 1) & 1];
                s->count[(first + 1) & 1] = 0;
                series_step(d, (int)u, i, (double)c1 / (double)(n - 1), n - 1, sec * 1000, cb, ctx);
            }
        }
    }
    d->open_sec = sec;
}

void anomaly_tick(struct anomaly *d, uint64_t now_ms, anomaly_event_cb cb, void *ctx)
{
    uint64_t sec = now_ms / 1000;
    clock_start(d, sec);

    /* new_behaviour first: it is the earliest sign, and the rate of the same commands may
     * become a spike only later. */
    for (size_t u = 0; u < d->user_count; u++) {
        struct user_state *us = &d->users[u];
        while (us->fresh != 0) {
            unsigned bit = (unsigned)__builtin_ctz(us->fresh);
            us->fresh &= us->fresh - 1;
            struct anomaly_event ev;
            event_init(&ev, ANOMALY_NEW_BEHAVIOUR, ANOMALY_ONSET, (int)u, now_ms);
            ev.category = cmdtab_category_name(bit);
            emit(d, cb, ctx, &ev);
        }
    }

    if (sec > d->open_sec)
        close_seconds(d, sec, cb, ctx);

    for (size_t u = 0; u < d->user_count; u++) {
        struct user_state *us = &d->users[u];
        const struct anomaly_user_config *uc = &d->ucfg[u];
        if (!us->seen || uc->disabled)
            continue;
        burst_eval(d, &us->denial, uc->denial_burst, now_ms, ANOMALY_DENIAL_BURST, (int)u, NULL, cb, ctx);
        surge_eval(d, &us->conn, uc->connection_surge_min, uc->connection_surge_factor, warmed(d, us, now_ms),
                   now_ms, (int)u, NULL, cb, ctx);
    }

    for (size_t i = 0; i < d->nsets * WAYS; i++) {
        struct source *s = &d->sources[i];
        if (!s->in_use)
            continue;
        burst_eval(d, &s->denial, d->cfg.denial_burst_source, now_ms, ANOMALY_DENIAL_BURST, -1, &s->key, cb, ctx);
        burst_eval(d, &s->auth, d->cfg.auth_failure_burst, now_ms, ANOMALY_AUTH_FAILURE_BURST, -1, &s->key, cb, ctx);
        surge_eval(d, &s->conn, d->cfg.connection_surge_min_source, d->cfg.connection_surge_factor_source, true,
                   now_ms, -1, &s->key, cb, ctx);
    }
}
