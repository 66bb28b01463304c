/*
 * metrics: per-worker counter shards and their Prometheus text exposition (the contract is in
 * metrics.h).
 *
 * Counting happens in the inline functions of the header; this file allocates the shards, maps
 * commands and upstream failures to their counters, and renders a scrape. A scrape loads every
 * slot of every shard relaxed and sums: each slot has a single writer, so each sum only grows
 * from one scrape to the next, but two slots may be seen at slightly different moments. Where
 * that would show as an inconsistency inside one scrape it is avoided by construction: a
 * histogram's _count is the sum of its buckets (not the count slot, which a writer updates after
 * the bucket), and an "open now" gauge (accepted - closed) is clamped at 0.
 *
 * Shards and their arrays are separate allocations aligned to and padded up to 64 bytes, so two
 * workers never write the same cache line.
 *
 * What it must not do: keep mutable globals, allocate anywhere but metrics_new,
 * metrics_add_users and metrics_render, expose a series whose label value comes from traffic (only configured user
 * names and the fixed names below), or emit a line the Prometheus parser rejects.
 */
#include "respguard/metrics.h"

#include <errno.h>
#include <pthread.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "respguard/anomaly.h"
#include "respguard/buf.h"
#include "respguard/cmdtab.h"

#define LINE 64 /* cache line: shard allocations are aligned to and padded up to this */
#define NS_PER_S 1000000000ull

_Static_assert(METRICS_ANOMALY_TYPES == ANOMALY_TYPE_COUNT, "anomaly types and metrics disagree");

const uint64_t metrics_bucket_ns[METRICS_BUCKETS] = {
    10000ull,      25000ull,      50000ull,      100000ull, /* 10 us .. 100 us */
    250000ull,     500000ull,     1000000ull,               /* .. 1 ms */
    2500000ull,    5000000ull,    10000000ull,              /* .. 10 ms */
    25000000ull,   50000000ull,   100000000ull,             /* .. 100 ms */
    250000000ull,  500000000ull,  1000000000ull,            /* .. 1 s */
    2500000000ull, 5000000000ull, 10000000000ull,           /* .. 10 s */
};

/* Upper bounds of respguard_pool_commands_per_write. */
static const uint64_t per_write_bounds[] = {1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024};

/* Each histogram: its family, its bucket bounds, and whether values are nanoseconds (exposed in
 * seconds) or plain counts. */
static const struct {
    const char *name;
    const char *help;
    const uint64_t *bounds;
    size_t count;
    bool seconds;
} histograms[MH_COUNT] = {
    [MH_UPSTREAM_RTT] = {"respguard_upstream_rtt_seconds",
                         "Time from handing a command to the upstream connection to receiving its complete reply.",
                         metrics_bucket_ns, METRICS_BUCKETS, true},
    [MH_ADDED_LATENCY] = {"respguard_added_latency_seconds",
                          "Time a command spends inside respguard, on its way to the upstream and its reply's way "
                          "back.",
                          metrics_bucket_ns, METRICS_BUCKETS, true},
    [MH_COMMANDS_PER_WRITE] = {"respguard_pool_commands_per_write",
                               "Client commands a pooled upstream connection sent in one write.", per_write_bounds,
                               sizeof per_write_bounds / sizeof per_write_bounds[0], false},
};
_Static_assert(sizeof per_write_bounds / sizeof per_write_bounds[0] <= METRICS_BUCKETS, "too many buckets");

struct metrics {
    /* Held by a scrape (metrics_render) and by metrics_add_users, never by the counting path:
     * the users' arrays are replaced under it. */
    pthread_mutex_t lock;
    size_t user_count;
    char **names; /* user_count copies */
    size_t shard_count;
    struct metrics_shard **shards;
};

/* ---------------------------------------------------------------------------------------- */
/* names and mappings                                                                       */
/* ---------------------------------------------------------------------------------------- */

static const char *const category_names[MCAT_COUNT] = {
    [MCAT_ADMIN] = "admin",
    [MCAT_DANGEROUS] = "dangerous",
    [MCAT_SCRIPTING] = "scripting",
    [MCAT_PUBSUB] = "pubsub",
    [MCAT_TRANSACTION] = "transaction",
    [MCAT_CONNECTION] = "connection",
    [MCAT_BLOCKING] = "blocking",
    [MCAT_WRITE] = "write",
    [MCAT_READ] = "read",
    [MCAT_KEYSPACE] = "keyspace",
    [MCAT_OTHER] = "other",
    [MCAT_UNKNOWN] = "unknown",
};

static const char *const verdict_names[MV_COUNT] = {
    [MV_ALLOWED] = "allowed",
    [MV_DENIED] = "denied",
    [MV_RATE_LIMITED] = "rate_limited",
    [MV_ERROR] = "error",
};

const char *metrics_category_name(enum metrics_category c)
{
    return (unsigned)c < MCAT_COUNT ? category_names[c] : "unknown";
}

const char *metrics_verdict_name(enum metrics_verdict v)
{
    return (unsigned)v < MV_COUNT ? verdict_names[v] : "unknown";
}

/* The precedence of metrics_category_of: the most telling category first (CONFIG SET is admin
 * and dangerous; FLUSHALL is dangerous and write; BLPOP is blocking and write). */
static const struct {
    uint32_t bit;
    enum metrics_category cat;
} category_order[] = {
    {CMDTAB_CAT_ADMIN, MCAT_ADMIN},
    {CMDTAB_CAT_DANGEROUS, MCAT_DANGEROUS},
    {CMDTAB_CAT_SCRIPTING, MCAT_SCRIPTING},
    {CMDTAB_CAT_PUBSUB, MCAT_PUBSUB},
    {CMDTAB_CAT_TRANSACTION, MCAT_TRANSACTION},
    {CMDTAB_CAT_CONNECTION, MCAT_CONNECTION},
    {CMDTAB_CAT_BLOCKING, MCAT_BLOCKING},
    {CMDTAB_CAT_WRITE, MCAT_WRITE},
    {CMDTAB_CAT_READ, MCAT_READ},
    {CMDTAB_CAT_KEYSPACE, MCAT_KEYSPACE},
};

/* The categories that come before write, read and keyspace in the precedence. */
#define RARE_CATEGORIES                                                                                      \
    (CMDTAB_CAT_ADMIN | CMDTAB_CAT_DANGEROUS | CMDTAB_CAT_SCRIPTING | CMDTAB_CAT_PUBSUB |                    \
     CMDTAB_CAT_TRANSACTION | CMDTAB_CAT_CONNECTION | CMDTAB_CAT_BLOCKING)

enum metrics_category metrics_category_of(uint32_t cmdtab_categories)
{
    /* Called per command: most commands are plain reads and writes, answered in three tests. */
    if (!(cmdtab_categories & RARE_CATEGORIES)) {
        if (cmdtab_categories & CMDTAB_CAT_WRITE)
            return MCAT_WRITE;
        if (cmdtab_categories & CMDTAB_CAT_READ)
            return MCAT_READ;
        return cmdtab_categories & CMDTAB_CAT_KEYSPACE ? MCAT_KEYSPACE : MCAT_OTHER;
    }
    for (size_t i = 0; i < sizeof category_order / sizeof category_order[0]; i++)
        if (cmdtab_categories & category_order[i].bit)
            return category_order[i].cat;
    return MCAT_OTHER;
}

static bool starts_with(const char *s, const char *prefix) { return strncmp(s, prefix, strlen(prefix)) == 0; }

/* The upstream module's texts (upstream.c): a failed getaddrinfo, and the connect timer, which
 * fires in whatever stage the connection is in (connect or tls). */
#define DNS_TEXT "cannot resolve"
#define TIMEOUT_TEXT "no verified connection within"

enum metrics_counter metrics_upstream_failure(const char *stage, const char *reason)
{
    if (!stage)
        return MC_UPSTREAM_FAIL_LOST;
    if (!reason)
        reason = "";
    /* The connect timer covers the login too: a server that completes TLS but never answers
     * respguard's AUTH times out in stage "lost". */
    if (starts_with(reason, TIMEOUT_TEXT))
        return MC_UPSTREAM_FAIL_TIMEOUT;
    if (strcmp(stage, "connect") == 0) {
        if (starts_with(reason, DNS_TEXT))
            return MC_UPSTREAM_FAIL_DNS;
        return MC_UPSTREAM_FAIL_CONNECT;
    }
    if (strcmp(stage, "tls") == 0) {
        if (strstr(reason, "certificate"))
            return MC_UPSTREAM_FAIL_CERTIFICATE;
        return MC_UPSTREAM_FAIL_TLS;
    }
    if (strcmp(stage, "auth") == 0)
        return MC_UPSTREAM_FAIL_AUTH;
    return MC_UPSTREAM_FAIL_LOST;
}

/* ---------------------------------------------------------------------------------------- */
/* counting                                                                                 */
/* ---------------------------------------------------------------------------------------- */

void metrics_observe(struct metrics_shard *s, enum metrics_histogram h, uint64_t v)
{
    if ((unsigned)h >= MH_COUNT)
        return;
    struct metrics_histogram_data *d = &s->hist[h];
    const uint64_t *bounds = histograms[h].bounds;
    /* The first bound >= v, from where its power of two starts (two observations per
     * command: no search); n: the +Inf slot */
    size_t i = s->first_bucket[h][v ? 63 - __builtin_clzll(v) : 0], n = histograms[h].count;
    while (i < n && v > bounds[i])
        i++;
    metrics_add(&d->buckets[i], 1);
    metrics_add(&d->count, 1);
    metrics_add(&d->sum_ns, v);
}

/* ---------------------------------------------------------------------------------------- */
/* allocation                                                                               */
/* ---------------------------------------------------------------------------------------- */

/* a * b into *out; false on overflow. */
static bool mul_size(size_t a, size_t b, size_t *out)
{
    if (b && a > SIZE_MAX / b)
        return false;
    *out = a * b;
    return true;
}

/* n bytes (at least one line) aligned to a cache line and padded to whole lines; NULL on
 * overflow or failure. Not zeroed: the caller initialises every slot it uses. */
static void *alloc_lines(size_t n)
{
    if (n == 0)
        n = 1;
    if (n > SIZE_MAX - (LINE - 1))
        return NULL;
    return aligned_alloc(LINE, (n + LINE - 1) / LINE * LINE);
}

/* atomic_init rather than memset: the representation of an atomic is the implementation's. */
static void zero_slots(_Atomic uint64_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        atomic_init(&p[i], 0);
}

static void shard_free(struct metrics_shard *s)
{
    if (!s)
        return;
    free(s->commands);
    free(s->anomalies);
    free(s);
}

static struct metrics_shard *shard_new(size_t user_count, size_t ncommands, size_t nanomalies)
{
    struct metrics_shard *s = alloc_lines(sizeof *s);
    if (!s)
        return NULL;
    memset(s, 0, sizeof *s); /* the pointers and padding; the slots are initialised below */
    s->user_count = user_count;
    s->commands = alloc_lines(ncommands * sizeof *s->commands);
    s->anomalies = alloc_lines(nanomalies * sizeof *s->anomalies);
    if (!s->commands || !s->anomalies) {
        shard_free(s);
        return NULL;
    }
    zero_slots(s->c, MC_COUNT);
    for (size_t h = 0; h < MH_COUNT; h++) {
        zero_slots(s->hist[h].buckets, METRICS_BUCKETS + 1);
        atomic_init(&s->hist[h].count, 0);
        atomic_init(&s->hist[h].sum_ns, 0);
    }
    zero_slots(s->commands, ncommands);
    zero_slots(s->anomalies, nanomalies);
    zero_slots(s->pool_entered, MPS_COUNT);
    zero_slots(s->pool_left, MPS_COUNT);
    for (size_t h = 0; h < MH_COUNT; h++)
        for (unsigned e = 0; e < 64; e++) {
            size_t i = 0;
            while (i < histograms[h].count && histograms[h].bounds[i] < (1ull << e))
                i++;
            s->first_bucket[h][e] = (uint8_t)i;
        }
    return s;
}

void metrics_free(struct metrics *m)
{
    if (!m)
        return;
    if (m->shards)
        for (size_t i = 0; i < m->shard_count; i++)
            shard_free(m->shards[i]);
    free(m->shards);
    if (m->names)
        for (size_t i = 0; i < m->user_count; i++)
            free(m->names[i]);
    free(m->names);
    pthread_mutex_destroy(&m->lock);
    free(m);
}

int metrics_new(size_t user_count, const char *const *names, size_t shard_count, struct metrics **out)
{
    *out = NULL;
    if (shard_count == 0)
        return -EINVAL;
    /* Slot counts, checked so that the byte sizes (times 8) cannot overflow either. */
    size_t ncommands, nanomalies, bytes;
    if (user_count == SIZE_MAX || !mul_size(user_count, (size_t)MCAT_COUNT * MV_COUNT, &ncommands) ||
        !mul_size(user_count + 1, METRICS_ANOMALY_TYPES, &nanomalies) ||
        !mul_size(ncommands, sizeof(uint64_t), &bytes) || !mul_size(nanomalies, sizeof(uint64_t), &bytes) ||
        !mul_size(user_count, sizeof(char *), &bytes) || !mul_size(shard_count, sizeof(void *), &bytes))
        return -ENOMEM;

    struct metrics *m = calloc(1, sizeof *m);
    if (!m)
        return -ENOMEM;
    pthread_mutex_init(&m->lock, NULL);
    m->user_count = user_count;
    m->shard_count = shard_count;
    m->names = calloc(user_count ? user_count : 1, sizeof *m->names);
    m->shards = calloc(shard_count, sizeof *m->shards);
    if (!m->names || !m->shards)
        goto nomem;
    for (size_t i = 0; i < user_count; i++) {
        /* Names come from the checked config (unique, 1..64 bytes, no control character), so
         * they are not checked again; a missing one is exposed as user="". An empty or duplicate
         * name would give duplicate series (user="" is also the per-source anomaly series). */
        const char *name = names && names[i] ? names[i] : "";
        if (!(m->names[i] = strdup(name)))
            goto nomem;
    }
    for (size_t i = 0; i < shard_count; i++)
        if (!(m->shards[i] = shard_new(user_count, ncommands, nanomalies)))
            goto nomem;
    *out = m;
    return 0;

nomem:
    metrics_free(m);
    return -ENOMEM;
}

/* A shard's per-user arrays, grown. */
struct grown {
    _Atomic uint64_t *commands, *anomalies;
};

/* New per-user arrays for user_count users, the counts of the shard's users copied in (their
 * writer is the caller's thread, so nothing is counted meanwhile). */
static int shard_grow(const struct metrics_shard *s, size_t user_count, struct grown *g)
{
    size_t old_count = s->user_count;
    size_t ncommands = user_count * MCAT_COUNT * MV_COUNT, nanomalies = (user_count + 1) * METRICS_ANOMALY_TYPES;
    g->commands = alloc_lines(ncommands * sizeof *g->commands);
    g->anomalies = alloc_lines(nanomalies * sizeof *g->anomalies);
    if (!g->commands || !g->anomalies) {
        free(g->commands);
        free(g->anomalies);
        return -ENOMEM;
    }
    zero_slots(g->commands, ncommands);
    zero_slots(g->anomalies, nanomalies);
    for (size_t i = 0; i < old_count * MCAT_COUNT * MV_COUNT; i++)
        atomic_init(&g->commands[i], atomic_load_explicit(&s->commands[i], memory_order_relaxed));
    for (size_t t = 0; t < METRICS_ANOMALY_TYPES; t++) /* [type][user + 1]: each type's row grows */
        for (size_t u = 0; u <= old_count; u++)
            atomic_init(&g->anomalies[t * (user_count + 1) + u],
                        atomic_load_explicit(&s->anomalies[t * (old_count + 1) + u], memory_order_relaxed));
    return 0;
}

int metrics_add_users(struct metrics *m, size_t n, const char *const *names)
{
    if (n == 0)
        return 0;
    size_t total = m->user_count + n, bytes;
    if (total < n || !mul_size(total, (size_t)MCAT_COUNT * MV_COUNT * sizeof(uint64_t), &bytes) ||
        !mul_size(total + 1, METRICS_ANOMALY_TYPES * sizeof(uint64_t), &bytes))
        return -ENOMEM;
    char **more = calloc(total, sizeof *more);
    struct grown *g = calloc(m->shard_count, sizeof *g);
    bool ok = more && g;
    for (size_t i = 0; ok && i < n; i++)
        ok = (more[m->user_count + i] = strdup(names[i] ? names[i] : "")) != NULL;
    size_t made = 0;
    pthread_mutex_lock(&m->lock);
    while (ok && made < m->shard_count && shard_grow(m->shards[made], total, &g[made]) == 0)
        made++;
    ok = ok && made == m->shard_count;
    if (ok) { /* all or nothing: every shard and the names change together */
        for (size_t i = 0; i < m->shard_count; i++) {
            struct metrics_shard *s = m->shards[i];
            free(s->commands);
            free(s->anomalies);
            s->commands = g[i].commands;
            s->anomalies = g[i].anomalies;
            s->user_count = total;
        }
        memcpy(more, m->names, m->user_count * sizeof *more);
        free(m->names);
        m->names = more;
        m->user_count = total;
    }
    pthread_mutex_unlock(&m->lock);
    if (!ok) {
        for (size_t i = 0; i < made; i++) {
            free(g[i].commands);
            free(g[i].anomalies);
        }
        for (size_t i = 0; more && i < n; i++)
            free(more[m->user_count + i]);
        free(more);
    }
    free(g);
    return ok ? 0 : -ENOMEM;
}

struct metrics_shard *metrics_shard(struct metrics *m, size_t i)
{
    return m && i < m->shard_count ? m->shards[i] : NULL;
}

/* ---------------------------------------------------------------------------------------- */
/* sums at scrape time                                                                      */
/* ---------------------------------------------------------------------------------------- */

static uint64_t load(const _Atomic uint64_t *slot) { return atomic_load_explicit(slot, memory_order_relaxed); }

static uint64_t sum_counter(const struct metrics *m, enum metrics_counter c)
{
    uint64_t n = 0;
    for (size_t i = 0; i < m->shard_count; i++)
        n += load(&m->shards[i]->c[c]);
    return n;
}

static uint64_t sum_command(const struct metrics *m, size_t user, enum metrics_category cat, enum metrics_verdict v)
{
    size_t idx = (user * MCAT_COUNT + (size_t)cat) * MV_COUNT + (size_t)v;
    uint64_t n = 0;
    for (size_t i = 0; i < m->shard_count; i++)
        n += load(&m->shards[i]->commands[idx]);
    return n;
}

/* user_slot: 0 for per-source events, user + 1 otherwise (the shard's layout). */
static uint64_t sum_anomaly(const struct metrics *m, int type, size_t user_slot)
{
    size_t idx = (size_t)type * (m->user_count + 1) + user_slot;
    uint64_t n = 0;
    for (size_t i = 0; i < m->shard_count; i++)
        n += load(&m->shards[i]->anomalies[idx]);
    return n;
}

/* Per-bucket sums (not cumulative) and the sum of observations. */
static void sum_histogram(const struct metrics *m, enum metrics_histogram h, uint64_t buckets[METRICS_BUCKETS + 1],
                          uint64_t *sum_ns)
{
    memset(buckets, 0, (METRICS_BUCKETS + 1) * sizeof buckets[0]);
    *sum_ns = 0;
    for (size_t i = 0; i < m->shard_count; i++) {
        const struct metrics_histogram_data *d = &m->shards[i]->hist[h];
        for (size_t b = 0; b <= METRICS_BUCKETS; b++)
            buckets[b] += load(&d->buckets[b]);
        *sum_ns += load(&d->sum_ns);
    }
}

/* An "open now" gauge from its two monotonic counters. The loads are not a snapshot, so a
 * scrape racing a close may see closed ahead of opened. */
static uint64_t open_now(const struct metrics *m, enum metrics_counter opened, enum metrics_counter closed)
{
    uint64_t o = sum_counter(m, opened), c = sum_counter(m, closed);
    return o > c ? o - c : 0;
}

/* ---------------------------------------------------------------------------------------- */
/* text output                                                                              */
/* ---------------------------------------------------------------------------------------- */

/* The output buffer with a sticky error, so writers need not check each append. */
struct out {
    struct buf b;
    bool failed;
};

static void put_n(struct out *o, const char *p, size_t n)
{
    if (!o->failed && buf_append(&o->b, p, n) != 0)
        o->failed = true;
}

static void put(struct out *o, const char *s) { put_n(o, s, strlen(s)); }

static void put_u64(struct out *o, uint64_t v)
{
    char tmp[24];
    put_n(o, tmp, (size_t)snprintf(tmp, sizeof tmp, "%llu", (unsigned long long)v));
}

/* Nanoseconds as exact decimal seconds: "0.00001", "2.5", "10", "0". No float rounding, and a
 * form every Prometheus parser reads. */
static void put_seconds(struct out *o, uint64_t ns)
{
    char tmp[40];
    int n = snprintf(tmp, sizeof tmp, "%llu", (unsigned long long)(ns / NS_PER_S));
    uint64_t frac = ns % NS_PER_S;
    if (frac) {
        n += snprintf(tmp + n, sizeof tmp - (size_t)n, ".%09llu", (unsigned long long)frac);
        while (tmp[n - 1] == '0')
            n--;
    }
    put_n(o, tmp, (size_t)n);
}

/* A caller's gauge value: Prometheus spells the non-finite ones NaN, +Inf, -Inf. */
static void put_double(struct out *o, double v)
{
    if (isnan(v)) {
        put(o, "NaN");
    } else if (isinf(v)) {
        put(o, v > 0 ? "+Inf" : "-Inf");
    } else {
        char tmp[40];
        put_n(o, tmp, (size_t)snprintf(tmp, sizeof tmp, "%.17g", v));
    }
}

/* Escape backslash and newline, and in a label value also the double quote (the format's two
 * escaping rules). */
static void put_escaped(struct out *o, const char *s, bool label_value)
{
    const char *run = s;
    for (; *s; s++) {
        const char *esc = *s == '\\' ? "\\\\" : *s == '\n' ? "\\n" : *s == '"' && label_value ? "\\\"" : NULL;
        if (!esc)
            continue;
        put_n(o, run, (size_t)(s - run));
        put(o, esc);
        run = s + 1;
    }
    put_n(o, run, (size_t)(s - run));
}

static void family(struct out *o, const char *name, const char *type, const char *help)
{
    put(o, "# HELP ");
    put(o, name);
    put(o, " ");
    put_escaped(o, help ? help : "", false);
    put(o, "\n# TYPE ");
    put(o, name);
    put(o, " ");
    put(o, type);
    put(o, "\n");
}

struct label {
    const char *key;
    const char *value;
};

/* "name{k="v",...} " up to the value; the caller writes the value and the newline. */
static void sample_start(struct out *o, const char *name, const char *suffix, const struct label *labels, size_t n)
{
    put(o, name);
    put(o, suffix);
    for (size_t i = 0; i < n; i++) {
        put(o, i ? "," : "{");
        put(o, labels[i].key);
        put(o, "=\"");
        put_escaped(o, labels[i].value, true);
        put(o, "\"");
    }
    put(o, n ? "} " : " ");
}

static void sample_u64(struct out *o, const char *name, const struct label *labels, size_t n, uint64_t v)
{
    sample_start(o, name, "", labels, n);
    put_u64(o, v);
    put(o, "\n");
}

/* A family of one unlabelled series. */
static void single(struct out *o, const char *name, const char *type, const char *help, uint64_t v)
{
    family(o, name, type, help);
    sample_u64(o, name, NULL, 0, v);
}

/* A counter family with one label over a contiguous range of enum metrics_counter: values[i]
 * names counter first + i. */
struct counter_family {
    const char *name;
    const char *help;
    const char *key;
    enum metrics_counter first;
    const char *const *values;
    size_t count;
};

static void labelled(struct out *o, const struct metrics *m, const struct counter_family *f)
{
    family(o, f->name, "counter", f->help);
    for (size_t i = 0; i < f->count; i++) {
        struct label l = {f->key, f->values[i]};
        sample_u64(o, f->name, &l, 1, sum_counter(m, (enum metrics_counter)(f->first + i)));
    }
}

#define NVALUES(a) (sizeof(a) / sizeof((a)[0]))

static const char *const refused_reasons[] = {"source_not_allowed", "max_clients", "tls_handshake", "login_timeout"};
_Static_assert(NVALUES(refused_reasons) == MC_CONN_REFUSED_LOGIN_TIMEOUT - MC_CONN_REFUSED_SOURCE + 1, "reasons");

static const char *const login_results[] = {"ok",      "unknown_user",       "wrong_password",
                                            "expired", "source_not_allowed", "locked_out"};
_Static_assert(NVALUES(login_results) == MC_LOGIN_LOCKED_OUT - MC_LOGIN_OK + 1, "login results");

static const char *const refusal_reasons[] = {"command", "key", "channel", "sort", "rate_limit", "unsupported"};
_Static_assert(NVALUES(refusal_reasons) == MC_REFUSED_UNSUPPORTED - MC_REFUSED_COMMAND + 1, "refusal reasons");

static const char *const upstream_reasons[] = {"dns", "connect", "timeout", "tls", "certificate", "auth", "lost"};
_Static_assert(NVALUES(upstream_reasons) == MC_UPSTREAM_FAIL_LOST - MC_UPSTREAM_FAIL_DNS + 1, "upstream reasons");

static const char *const probe_results[] = {"ok", "failed"};
_Static_assert(NVALUES(probe_results) == MC_PROBE_FAILED - MC_PROBE_OK + 1, "probe results");

static const struct counter_family refused_family = {
    "respguard_client_connections_refused_total",
    "Client connections closed before login: source not allowed, client limit reached, TLS handshake failed, "
    "or no login within login_timeout.",
    "reason", MC_CONN_REFUSED_SOURCE, refused_reasons, NVALUES(refused_reasons)};

static const struct counter_family logins_family = {
    "respguard_logins_total", "Login attempts by result (wrong_password includes disabled users).", "result",
    MC_LOGIN_OK, login_results, NVALUES(login_results)};

static const struct counter_family refusals_family = {
    "respguard_refusals_total", "Commands respguard refused by policy, by reason.", "reason", MC_REFUSED_COMMAND,
    refusal_reasons, NVALUES(refusal_reasons)};

static const struct counter_family upstream_failures_family = {
    "respguard_upstream_failures_total",
    "Upstream connections that failed to open (dns, connect, timeout, tls, certificate, auth) or broke once "
    "established (lost).",
    "reason", MC_UPSTREAM_FAIL_DNS, upstream_reasons, NVALUES(upstream_reasons)};

static const struct counter_family probes_family = {
    "respguard_upstream_probes_total", "Upstream readiness probes by result.", "result", MC_PROBE_OK,
    probe_results, NVALUES(probe_results)};

static const struct {
    const char *name;
    const char *help;
    enum metrics_counter c;
} byte_counters[] = {
    {"respguard_client_bytes_received_total", "Plaintext bytes received from clients.", MC_CLIENT_BYTES_IN},
    {"respguard_client_bytes_sent_total", "Plaintext bytes sent to clients.", MC_CLIENT_BYTES_OUT},
    {"respguard_upstream_bytes_received_total", "Plaintext bytes received from the upstream.", MC_UPSTREAM_BYTES_IN},
    {"respguard_upstream_bytes_sent_total", "Plaintext bytes sent to the upstream.", MC_UPSTREAM_BYTES_OUT},
};

static const char *const handshake_types[] = {"full", "resumed"};
_Static_assert(NVALUES(handshake_types) == MC_HANDSHAKE_RESUMED - MC_HANDSHAKE_FULL + 1, "handshake types");

static const char *const reset_results[] = {"ok", "failed"};
_Static_assert(NVALUES(reset_results) == MC_POOL_RESET_FAILED - MC_POOL_RESET_OK + 1, "reset results");

static const struct counter_family handshakes_family = {
    "respguard_upstream_handshakes_total",
    "Upstream TLS handshakes of pooled connections: full, or resumed from an earlier session.", "type",
    MC_HANDSHAKE_FULL, handshake_types, NVALUES(handshake_types)};

static const struct counter_family resets_family = {
    "respguard_pool_resets_total",
    "Pooled connections given back with connection state on them and reset (RESET, login) before reuse; "
    "failed: closed instead.",
    "result", MC_POOL_RESET_OK, reset_results, NVALUES(reset_results)};

static const char *const rest_statuses[] = {"200", "204", "400", "401", "403", "405",
                                            "413", "429", "500", "503", "other"};
_Static_assert(NVALUES(rest_statuses) == MC_REST_STATUS_OTHER - MC_REST_STATUS_200 + 1, "rest statuses");

static const struct counter_family rest_requests_family = {
    "respguard_rest_requests_total", "REST requests answered, by HTTP status.", "status", MC_REST_STATUS_200,
    rest_statuses, NVALUES(rest_statuses)};

static const char *const pool_state_names[MPS_COUNT] = {
    [MPS_CONNECTING] = "connecting", [MPS_IDLE] = "idle", [MPS_BUSY] = "busy", [MPS_PINNED] = "pinned",
    [MPS_RESETTING] = "resetting"};

static void pool_states(struct out *o, const struct metrics *m)
{
    static const char name[] = "respguard_pool_connections";
    family(o, name, "gauge", "Pooled upstream connections by state.");
    for (int st = 0; st < MPS_COUNT; st++) {
        uint64_t in = 0, out = 0;
        for (size_t i = 0; i < m->shard_count; i++) {
            in += load(&m->shards[i]->pool_entered[st]);
            out += load(&m->shards[i]->pool_left[st]);
        }
        struct label l = {"state", pool_state_names[st]};
        sample_u64(o, name, &l, 1, in > out ? in - out : 0);
    }
}

static void commands(struct out *o, const struct metrics *m)
{
    static const char name[] = "respguard_commands_total";
    family(o, name, "counter",
           "Commands by user, command category and verdict (only combinations that occurred).");
    for (size_t u = 0; u < m->user_count; u++)
        for (int c = 0; c < MCAT_COUNT; c++)
            for (int v = 0; v < MV_COUNT; v++) {
                uint64_t n = sum_command(m, u, (enum metrics_category)c, (enum metrics_verdict)v);
                if (n == 0)
                    continue;
                struct label l[] = {{"user", m->names[u]},
                                    {"category", category_names[c]},
                                    {"verdict", verdict_names[v]}};
                sample_u64(o, name, l, NVALUES(l), n);
            }
}

static void rate_limited(struct out *o, const struct metrics *m)
{
    static const char name[] = "respguard_rate_limited_commands_total";
    family(o, name, "counter", "Commands refused by a rate limit, by user.");
    for (size_t u = 0; u < m->user_count; u++) {
        uint64_t n = 0;
        for (int c = 0; c < MCAT_COUNT; c++)
            n += sum_command(m, u, (enum metrics_category)c, MV_RATE_LIMITED);
        struct label l = {"user", m->names[u]};
        sample_u64(o, name, &l, 1, n);
    }
}

static void anomalies(struct out *o, const struct metrics *m)
{
    static const char name[] = "respguard_anomalies_total";
    family(o, name, "counter", "Anomaly onsets by type and user (user=\"\": per-source events).");
    for (int t = 0; t < METRICS_ANOMALY_TYPES; t++)
        for (size_t slot = 0; slot <= m->user_count; slot++) { /* slot 0: per source */
            struct label l[] = {{"type", anomaly_type_name((enum anomaly_type)t)},
                                {"user", slot ? m->names[slot - 1] : ""}};
            sample_u64(o, name, l, NVALUES(l), sum_anomaly(m, t, slot));
        }
}

static void histogram(struct out *o, const struct metrics *m, enum metrics_histogram h)
{
    const char *name = histograms[h].name;
    uint64_t buckets[METRICS_BUCKETS + 1], sum_ns, cum = 0;
    sum_histogram(m, h, buckets, &sum_ns);
    family(o, name, "histogram", histograms[h].help);
    size_t n = histograms[h].count;
    for (size_t b = 0; b <= n; b++) {
        cum += buckets[b];
        put(o, name);
        put(o, "_bucket{le=\"");
        if (b == n)
            put(o, "+Inf");
        else if (histograms[h].seconds)
            put_seconds(o, histograms[h].bounds[b]);
        else
            put_u64(o, histograms[h].bounds[b]);
        put(o, "\"} ");
        put_u64(o, cum);
        put(o, "\n");
    }
    sample_start(o, name, "_sum", NULL, 0);
    if (histograms[h].seconds)
        put_seconds(o, sum_ns);
    else
        put_u64(o, sum_ns);
    put(o, "\n");
    /* The buckets' total rather than the count slot, so that _count always equals +Inf. */
    sample_start(o, name, "_count", NULL, 0);
    put_u64(o, cum);
    put(o, "\n");
}

static void caller_gauges(struct out *o, const struct metrics_gauge *g, size_t n)
{
    const char *current = NULL; /* name of the open family */
    for (size_t i = 0; i < n; i++) {
        if (!g[i].name)
            continue;
        if (!current || strcmp(current, g[i].name) != 0) {
            size_t len = strlen(g[i].name);
            bool counter = len > 6 && strcmp(g[i].name + len - 6, "_total") == 0;
            family(o, g[i].name, counter ? "counter" : "gauge", g[i].help);
            current = g[i].name;
        }
        struct label l = {g[i].label_key, g[i].label_value ? g[i].label_value : ""};
        sample_start(o, g[i].name, "", &l, g[i].label_key ? 1 : 0);
        put_double(o, g[i].value);
        put(o, "\n");
    }
}

int metrics_render(struct metrics *m, const struct metrics_gauge *gauges, size_t gauge_count, char **out,
                   size_t *len)
{
    struct out o = {{NULL, 0, 0, 0}, false};
    *out = NULL;
    *len = 0;
    pthread_mutex_lock(&m->lock);

    single(&o, "respguard_client_connections", "gauge", "Client connections open now.",
           open_now(m, MC_CONN_ACCEPTED, MC_CONN_CLOSED));
    single(&o, "respguard_client_connections_accepted_total", "counter", "Client connections accepted.",
           sum_counter(m, MC_CONN_ACCEPTED));
    labelled(&o, m, &refused_family);
    labelled(&o, m, &logins_family);
    single(&o, "respguard_login_lockouts_total", "counter",
           "Login lockouts begun, of a user name from an address or of a whole address, after repeated failures.",
           sum_counter(m, MC_LOCKOUTS));
    commands(&o, m);
    rate_limited(&o, m);
    labelled(&o, m, &refusals_family);
    for (size_t i = 0; i < NVALUES(byte_counters); i++)
        single(&o, byte_counters[i].name, "counter", byte_counters[i].help, sum_counter(m, byte_counters[i].c));
    single(&o, "respguard_upstream_connections", "gauge", "Verified upstream connections open now.",
           open_now(m, MC_UPSTREAM_OPENED, MC_UPSTREAM_CLOSED));
    single(&o, "respguard_upstream_connections_opened_total", "counter",
           "Upstream connections opened (TLS handshake completed and verified).", sum_counter(m, MC_UPSTREAM_OPENED));
    labelled(&o, m, &upstream_failures_family);
    labelled(&o, m, &probes_family);
    labelled(&o, m, &handshakes_family);
    pool_states(&o, m);
    single(&o, "respguard_pool_acquire_waits_total", "counter",
           "Times a client waited for a pooled upstream connection.", sum_counter(m, MC_POOL_ACQUIRE_WAITS));
    single(&o, "respguard_pool_acquire_timeouts_total", "counter",
           "Times a client got no pooled upstream connection within acquire_timeout.",
           sum_counter(m, MC_POOL_ACQUIRE_TIMEOUTS));
    labelled(&o, m, &resets_family);
    single(&o, "respguard_rest_connections", "gauge", "HTTP connections of the REST listeners open now.",
           open_now(m, MC_REST_CONN_ACCEPTED, MC_REST_CONN_CLOSED));
    single(&o, "respguard_rest_connections_accepted_total", "counter", "HTTP connections the REST listeners accepted.",
           sum_counter(m, MC_REST_CONN_ACCEPTED));
    labelled(&o, m, &rest_requests_family);
    single(&o, "respguard_rest_commands_total", "counter",
           "Commands received over REST, whatever their verdict (also counted in respguard_commands_total).",
           sum_counter(m, MC_REST_COMMANDS));
    anomalies(&o, m);
    for (int h = 0; h < MH_COUNT; h++)
        histogram(&o, m, (enum metrics_histogram)h);
    caller_gauges(&o, gauges, gauge_count);
    pthread_mutex_unlock(&m->lock);

    put_n(&o, "", 1); /* the NUL, also makes an empty output a valid allocation */
    if (o.failed) {
        buf_free(&o.b);
        return -ENOMEM;
    }
    *out = buf_head(&o.b); /* start is 0: nothing was consumed */
    *len = buf_len(&o.b) - 1;
    return 0;
}
