/*
 * metrics: respguard's counters and histograms, and their Prometheus text exposition.
 *
 * Every worker thread owns one shard and is the only thread that writes it; the admin thread
 * reads every shard at scrape time and sums them. Slots are C11 atomics that their single
 * writer updates with a relaxed load and a relaxed store (an ordinary add on x86-64 and arm64:
 * no lock prefix, no fence, no shared cache line with another worker), and that the reader
 * loads relaxed: a scrape may see one counter a command ahead of another, never a torn value.
 * Gauges that are "how many now" (open connections) are kept as two monotonic counters (opened,
 * closed) and subtracted at scrape time, so they need no read-modify-write across threads.
 *
 * Pure: no I/O, no clock. Memory is allocated by metrics_new, metrics_add_users and
 * metrics_render only; the counting functions (inline below) allocate nothing, take no lock and
 * cost a few instructions. One lock serialises a scrape with metrics_add_users (a reload), which
 * replaces the per-user arrays.
 *
 * Label cardinality is bounded by construction: users are the configured users (an index into
 * the names given to metrics_new), command names appear only as one category, reasons and
 * results are the fixed enums below.
 */
#ifndef RESPGUARD_METRICS_H
#define RESPGUARD_METRICS_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Counters without a per-user dimension. The comment gives the exposed family and label. */
enum metrics_counter {
    /* respguard_client_connections_accepted_total; with MC_CONN_CLOSED the gauge
     * respguard_client_connections (accepted - closed) */
    MC_CONN_ACCEPTED,
    MC_CONN_CLOSED,
    /* respguard_client_connections_refused_total{reason=...} */
    MC_CONN_REFUSED_SOURCE,      /* reason="source_not_allowed": a listener's allow_from */
    MC_CONN_REFUSED_MAX_CLIENTS, /* reason="max_clients" */
    MC_CONN_REFUSED_TLS,         /* reason="tls_handshake": the client's TLS handshake failed */
    MC_CONN_REFUSED_LOGIN_TIMEOUT, /* reason="login_timeout": no login within login_timeout */
    /* respguard_logins_total{result=...} */
    MC_LOGIN_OK,                 /* result="ok" */
    MC_LOGIN_UNKNOWN_USER,       /* result="unknown_user" */
    MC_LOGIN_WRONG_PASSWORD,     /* result="wrong_password" (or the user is disabled) */
    MC_LOGIN_EXPIRED,            /* result="expired" */
    MC_LOGIN_SOURCE,             /* result="source_not_allowed": the user's allow_from */
    MC_LOGIN_LOCKED_OUT,         /* result="locked_out": refused unchecked during a lockout */
    /* respguard_login_lockouts_total: a lockout (of a name from an address, or of an address) began */
    MC_LOCKOUTS,
    /* respguard_refusals_total{reason=...}: commands respguard refused by policy */
    MC_REFUSED_COMMAND,          /* reason="command": the ACL (or the guard) denies the command */
    MC_REFUSED_KEY,              /* reason="key" */
    MC_REFUSED_CHANNEL,          /* reason="channel" */
    MC_REFUSED_SORT,             /* reason="sort": SORT BY/GET */
    MC_REFUSED_RATE_LIMIT,       /* reason="rate_limit" */
    MC_REFUSED_UNSUPPORTED,      /* reason="unsupported": MONITOR, CLIENT REPLY OFF, ... */
    /* plaintext bytes: respguard_client_bytes_received_total, respguard_client_bytes_sent_total,
     * respguard_upstream_bytes_received_total, respguard_upstream_bytes_sent_total */
    MC_CLIENT_BYTES_IN,
    MC_CLIENT_BYTES_OUT,
    MC_UPSTREAM_BYTES_IN,
    MC_UPSTREAM_BYTES_OUT,
    /* respguard_upstream_connections_opened_total (a verified TLS handshake completed); with
     * MC_UPSTREAM_CLOSED the gauge respguard_upstream_connections (opened - closed) */
    MC_UPSTREAM_OPENED,
    MC_UPSTREAM_CLOSED,
    /* respguard_upstream_failures_total{reason=...}: see metrics_upstream_failure() */
    MC_UPSTREAM_FAIL_DNS,        /* reason="dns" */
    MC_UPSTREAM_FAIL_CONNECT,    /* reason="connect": TCP connect refused or failed */
    MC_UPSTREAM_FAIL_TIMEOUT,    /* reason="timeout": no verified connection in connect_timeout */
    MC_UPSTREAM_FAIL_TLS,        /* reason="tls": handshake failed for another reason */
    MC_UPSTREAM_FAIL_CERTIFICATE,/* reason="certificate": verification failed (chain, name, date) */
    MC_UPSTREAM_FAIL_AUTH,       /* reason="auth": the upstream refused respguard's login */
    MC_UPSTREAM_FAIL_LOST,       /* reason="lost": an established connection broke */
    /* respguard_upstream_probes_total{result="ok"|"failed"}: the readiness probe */
    MC_PROBE_OK,
    MC_PROBE_FAILED,
    /* respguard_upstream_handshakes_total{type="full"|"resumed"}: completed upstream TLS
     * handshakes of pooled connections, by whether an earlier session was resumed */
    MC_HANDSHAKE_FULL,
    MC_HANDSHAKE_RESUMED,
    /* respguard_pool_acquire_waits_total: a client had to wait for a pooled connection */
    MC_POOL_ACQUIRE_WAITS,
    /* respguard_pool_acquire_timeouts_total: ... and got none within acquire_timeout */
    MC_POOL_ACQUIRE_TIMEOUTS,
    /* respguard_pool_resets_total{result="ok"|"failed"}: connections given back with state on
     * them, reset (RESET and respguard's login) before reuse; failed: closed instead */
    MC_POOL_RESET_OK,
    MC_POOL_RESET_FAILED,
    /* respguard_rest_connections_accepted_total; with MC_REST_CONN_CLOSED the gauge
     * respguard_rest_connections: HTTP connections of the REST listeners */
    MC_REST_CONN_ACCEPTED,
    MC_REST_CONN_CLOSED,
    /* respguard_rest_commands_total: commands that arrived over REST (any verdict; they are in
     * respguard_commands_total too) */
    MC_REST_COMMANDS,
    /* respguard_rest_requests_total{status=...}: REST requests answered, by HTTP status */
    MC_REST_STATUS_200,
    MC_REST_STATUS_204,
    MC_REST_STATUS_400,
    MC_REST_STATUS_401,
    MC_REST_STATUS_403,
    MC_REST_STATUS_405,
    MC_REST_STATUS_413,
    MC_REST_STATUS_429,
    MC_REST_STATUS_500,
    MC_REST_STATUS_503,
    MC_REST_STATUS_OTHER,
    MC_COUNT
};

/* The one category a command is counted under in respguard_commands_total{category=...}. */
enum metrics_category {
    MCAT_ADMIN,       /* "admin" */
    MCAT_DANGEROUS,   /* "dangerous" */
    MCAT_SCRIPTING,   /* "scripting" */
    MCAT_PUBSUB,      /* "pubsub" */
    MCAT_TRANSACTION, /* "transaction" */
    MCAT_CONNECTION,  /* "connection" */
    MCAT_BLOCKING,    /* "blocking" */
    MCAT_WRITE,       /* "write" */
    MCAT_READ,        /* "read" */
    MCAT_KEYSPACE,    /* "keyspace" */
    MCAT_OTHER,       /* "other": a known command in none of the above */
    MCAT_UNKNOWN,     /* "unknown": not a command of the table (answered with an error) */
    MCAT_COUNT
};

/* respguard_commands_total{verdict=...} */
enum metrics_verdict {
    MV_ALLOWED,      /* "allowed": forwarded (or answered by respguard as Redis would: AUTH ...) */
    MV_DENIED,       /* "denied": refused by the ACL, the guard or as unsupported */
    MV_RATE_LIMITED, /* "rate_limited" */
    MV_ERROR,        /* "error": unknown command or subcommand, wrong arity: never forwarded */
    MV_COUNT
};

/* respguard_pool_connections{state=...}: pooled upstream connections by state, kept as how many
 * entered and how many left each state (metrics_pool_move). */
enum metrics_pool_state {
    MPS_CONNECTING, /* "connecting": connect, TLS handshake, respguard's login */
    MPS_IDLE,       /* "idle": ready, no client */
    MPS_BUSY,       /* "busy": held by a client (session mode) or shared by clients (multiplex) */
    MPS_PINNED,     /* "pinned": multiplex, one client's while it has connection state */
    MPS_RESETTING,  /* "resetting": given back with state on it, being reset */
    MPS_COUNT,
    MPS_NONE = -1,  /* not in the pool (before it opens, after it closed) */
};

enum metrics_histogram {
    /* respguard_upstream_rtt_seconds: from the moment a command is handed to the upstream
     * connection to the moment its complete reply has arrived */
    MH_UPSTREAM_RTT,
    /* respguard_added_latency_seconds: the time a command spends inside respguard: from the
     * read that delivered it to its hand-off upstream, plus from its reply's arrival to the
     * hand-off of that reply to the client connection */
    MH_ADDED_LATENCY,
    /* respguard_pool_commands_per_write: client commands a pooled connection sent upstream in
     * one write (multiplexing at work: several clients' commands in one TLS batch). Counts, not
     * time. */
    MH_COMMANDS_PER_WRITE,
    MH_COUNT
};

/* Upper bounds of the time histograms' buckets in nanoseconds (10 us .. 10 s); +Inf is
 * implicit. No histogram has more buckets than this. */
#define METRICS_BUCKETS 19
extern const uint64_t metrics_bucket_ns[METRICS_BUCKETS];

/* Types of respguard_anomalies_total{type=...}: the anomaly module's enum anomaly_type values
 * 0 .. METRICS_ANOMALY_TYPES-1, named by anomaly_type_name(). */
#define METRICS_ANOMALY_TYPES 5

struct metrics_histogram_data {
    _Atomic uint64_t buckets[METRICS_BUCKETS + 1]; /* per bucket, not cumulative; +Inf after the
                                                      histogram's own last bound */
    _Atomic uint64_t count;
    _Atomic uint64_t sum_ns; /* the sum of observations (nanoseconds, or counts) */
};

/* One worker's counters. Written only by that worker's thread. */
struct metrics_shard {
    _Atomic uint64_t c[MC_COUNT];
    struct metrics_histogram_data hist[MH_COUNT];
    _Atomic uint64_t pool_entered[MPS_COUNT];
    _Atomic uint64_t pool_left[MPS_COUNT];
    size_t user_count;
    _Atomic uint64_t *commands;  /* [user][category][verdict]: user_count * MCAT_COUNT * MV_COUNT */
    _Atomic uint64_t *anomalies; /* [type][user + 1] (0: per-source events, no user):
                                    METRICS_ANOMALY_TYPES * (user_count + 1) */
    /* Where metrics_observe starts looking: per histogram and power of two 2^e, the first
     * bucket whose bound is >= 2^e (a value below 2^(e+1) is at most two buckets on, as the
     * bounds at least double). Set once by metrics_new. */
    uint8_t first_bucket[MH_COUNT][64];
};

/* The single writer's increment. */
static inline void metrics_add(_Atomic uint64_t *slot, uint64_t n)
{
    atomic_store_explicit(slot, atomic_load_explicit(slot, memory_order_relaxed) + n, memory_order_relaxed);
}

static inline void metrics_inc(struct metrics_shard *s, enum metrics_counter c) { metrics_add(&s->c[c], 1); }

/* user: index below s->user_count (others are ignored). */
static inline void metrics_count_command(struct metrics_shard *s, size_t user, enum metrics_category cat,
                                         enum metrics_verdict v)
{
    if (user < s->user_count)
        metrics_add(&s->commands[(user * MCAT_COUNT + (size_t)cat) * MV_COUNT + (size_t)v], 1);
}

/* type: enum anomaly_type; user: index, or -1 for a per-source event (out of range: ignored). */
static inline void metrics_count_anomaly(struct metrics_shard *s, int type, int user)
{
    if (type < 0 || type >= METRICS_ANOMALY_TYPES || user < -1 || (user >= 0 && (size_t)user >= s->user_count))
        return;
    metrics_add(&s->anomalies[(size_t)type * (s->user_count + 1) + (size_t)(user + 1)], 1);
}

/* A pooled connection moved from one state to another (MPS_NONE: it opened, or it closed). */
static inline void metrics_pool_move(struct metrics_shard *s, enum metrics_pool_state from, enum metrics_pool_state to)
{
    if (from == to)
        return;
    if (from != MPS_NONE)
        metrics_add(&s->pool_left[from], 1);
    if (to != MPS_NONE)
        metrics_add(&s->pool_entered[to], 1);
}

/* Record one observation: nanoseconds for the time histograms, a count for
 * MH_COMMANDS_PER_WRITE. */
void metrics_observe(struct metrics_shard *s, enum metrics_histogram h, uint64_t v);

/* The category a command with these cmdtab category bits (enum cmdtab_category) is counted
 * under: the first of admin, dangerous, scripting, pubsub, transaction, connection, blocking,
 * write, read, keyspace that it belongs to; MCAT_OTHER when none. */
enum metrics_category metrics_category_of(uint32_t cmdtab_categories);

/* The counter for an upstream failure as the upstream and session modules report it: stage is
 * "connect", "tls", "auth" or "lost"; reason the human text. "no verified connection within
 * ..." is timeout in any stage. connect: "cannot resolve ..." is dns, the rest connect. tls: a
 * reason containing "certificate" is certificate, the rest tls. auth: auth. lost (and anything
 * else): lost. */
enum metrics_counter metrics_upstream_failure(const char *stage, const char *reason);

/* Names for labels ("admin", "allowed", ...). */
const char *metrics_category_name(enum metrics_category c);
const char *metrics_verdict_name(enum metrics_verdict v);

struct metrics;

/* Metrics for user_count users named names[0..user_count-1] (copied) and shard_count worker
 * shards. 0 and *out, -EINVAL (shard_count 0), -ENOMEM. */
int metrics_new(size_t user_count, const char *const *names, size_t shard_count, struct metrics **out)
    __attribute__((warn_unused_result));
/* n more users (indexes user_count .. user_count+n-1 from now on), named names[0..n-1]; the
 * counts of the others are kept. Users are never removed (a counter must not go back). Called
 * on the thread that writes the shards (one worker). 0, or -ENOMEM (nothing changed). */
int metrics_add_users(struct metrics *m, size_t n, const char *const *names) __attribute__((warn_unused_result));
void metrics_free(struct metrics *m); /* NULL is fine */
struct metrics_shard *metrics_shard(struct metrics *m, size_t i);

/* A value the caller knows at scrape time (readiness, certificate expiry, config load), exposed
 * as a gauge. Consecutive entries with the same name form one family (one HELP and TYPE line,
 * help taken from the first). label_key NULL: no label. */
struct metrics_gauge {
    const char *name;
    const char *help;
    const char *label_key;
    const char *label_value;
    double value; /* a name ending in _total is exposed as a counter (the caller keeps it monotonic) */
};

/*
 * The Prometheus text exposition (format 0.0.4) of every shard summed, followed by the caller's
 * gauges, into a malloc'd NUL-terminated buffer (*out, *len without the NUL; free() it).
 * 0 or -ENOMEM. Every family has "# HELP" and "# TYPE" lines; label values are escaped (\\, \",
 * \n). Families, in this order:
 *   respguard_client_connections (gauge), respguard_client_connections_accepted_total,
 *   respguard_client_connections_refused_total{reason}, respguard_logins_total{result},
 *   respguard_login_lockouts_total, respguard_commands_total{user,category,verdict} (only
 *   non-zero series), respguard_rate_limited_commands_total{user} (every user),
 *   respguard_refusals_total{reason}, the four byte counters, respguard_upstream_connections
 *   (gauge), respguard_upstream_connections_opened_total, respguard_upstream_failures_total
 *   {reason}, respguard_upstream_probes_total{result}, respguard_anomalies_total{type,user}
 *   (every type for every user, and user="" for per-source events), the two histograms
 *   (_bucket{le=...} cumulative with le="+Inf", _sum in seconds, _count), then the gauges.
 * Fixed-label families list every label value, zero or not.
 */
int metrics_render(struct metrics *m, const struct metrics_gauge *gauges, size_t gauge_count, char **out,
                   size_t *len) __attribute__((warn_unused_result));

#endif
