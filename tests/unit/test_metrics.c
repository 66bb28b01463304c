/* Unit tests for metrics: shards are summed at render; fixed-label families list every value and
 * the commands family only non-zero series; the open-connection gauges; histogram buckets,
 * _sum and _count; label and HELP escaping; the command category precedence; the upstream
 * failure mapping; the caller's gauges; and a line-by-line check of the exposition format
 * (every line a comment or a well-formed sample, every family declared exactly once). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "respguard/anomaly.h"
#include "respguard/cmdtab.h"
#include "respguard/metrics.h"

/* ---------------------------------------------------------------------------------------- */
/* helpers                                                                                  */
/* ---------------------------------------------------------------------------------------- */

static struct metrics *make(size_t users, const char *const *names, size_t shards)
{
    struct metrics *m = NULL;
    assert_int_equal(metrics_new(users, names, shards, &m), 0);
    assert_non_null(m);
    return m;
}

/* The rendered text; free() it. Checks the length and the NUL. */
static char *render(struct metrics *m, const struct metrics_gauge *g, size_t n)
{
    char *out = NULL;
    size_t len = 0;
    assert_int_equal(metrics_render(m, g, n, &out, &len), 0);
    assert_non_null(out);
    assert_int_equal(strlen(out), len);
    assert_true(len > 0 && out[len - 1] == '\n');
    return out;
}

/* Whether text has line as one whole line. */
static bool has_line(const char *text, const char *line)
{
    size_t n = strlen(line);
    for (const char *p = text; (p = strstr(p, line)) != NULL; p++)
        if ((p == text || p[-1] == '\n') && p[n] == '\n')
            return true;
    return false;
}

#define EXPECT_LINE(text, line)                                                                                   \
    do {                                                                                                          \
        if (!has_line((text), (line)))                                                                            \
            fail_msg("missing line: %s\n--- output ---\n%s", (line), (text));                                     \
    } while (0)

#define EXPECT_NO_LINE(text, line)                                                                                \
    do {                                                                                                          \
        if (has_line((text), (line)))                                                                             \
            fail_msg("unexpected line: %s", (line));                                                              \
    } while (0)

/* Lines that start with prefix. */
static size_t count_prefix(const char *text, const char *prefix)
{
    size_t n = 0, len = strlen(prefix);
    for (const char *p = text; *p;) {
        if (strncmp(p, prefix, len) == 0)
            n++;
        const char *nl = strchr(p, '\n');
        if (!nl)
            break;
        p = nl + 1;
    }
    return n;
}

static uint32_t cats_of(const char *name)
{
    const struct cmdtab_cmd *cmd = cmdtab_lookup(name, strlen(name));
    assert_non_null(cmd);
    return cmd->categories;
}

static uint32_t sub_cats_of(const char *name, const char *sub)
{
    const struct cmdtab_cmd *cmd = cmdtab_lookup(name, strlen(name));
    assert_non_null(cmd);
    const struct cmdtab_cmd *s = cmdtab_lookup_sub(cmd, sub, strlen(sub));
    assert_non_null(s);
    return s->categories;
}

/* ---------------------------------------------------------------------------------------- */
/* the exposition format checker                                                            */
/* ---------------------------------------------------------------------------------------- */

static bool name_start(char c) { return isalpha((unsigned char)c) || c == '_' || c == ':'; }
static bool name_char(char c) { return name_start(c) || isdigit((unsigned char)c); }

/* A metric name at *p; advances past it. */
static bool metric_name(const char **p)
{
    if (!name_start(**p))
        return false;
    while (name_char(**p))
        (*p)++;
    return true;
}

/* {key="value",...} at *p (label names have no ':'); advances past it. */
static bool label_set(const char **p)
{
    const char *s = *p;
    if (*s++ != '{')
        return false;
    for (;;) {
        if (!isalpha((unsigned char)*s) && *s != '_')
            return false;
        while (isalnum((unsigned char)*s) || *s == '_')
            s++;
        if (*s++ != '=' || *s++ != '"')
            return false;
        while (*s != '"') {
            if (*s == '\0' || *s == '\n')
                return false;
            if (*s == '\\') {
                s++;
                if (*s != '\\' && *s != '"' && *s != 'n')
                    return false;
            }
            s++;
        }
        s++;
        if (*s == '}')
            break;
        if (*s++ != ',')
            return false;
    }
    *p = s + 1;
    return true;
}

static bool sample_value(const char *v)
{
    if (!strcmp(v, "NaN") || !strcmp(v, "+Inf") || !strcmp(v, "-Inf"))
        return true;
    if (*v == '\0' || strchr(v, ' '))
        return false;
    char *end;
    (void)strtod(v, &end);
    return *end == '\0' && !isspace((unsigned char)*v);
}

#define MAX_FAMILIES 64

struct family_seen {
    char name[128];
    char type[16];
};

static char bad[4096 + 256]; /* the checker's message */

#define BAD(...)                                                                                                  \
    do {                                                                                                          \
        snprintf(bad, sizeof bad, __VA_ARGS__);                                                                   \
        return bad;                                                                                               \
    } while (0)

/* What is wrong with an exposition (NULL: nothing); *families gets the number of families. Every
 * line is "# HELP name text", "# TYPE name counter|gauge|histogram" right after its HELP, or a
 * sample name{labels} value of the family declared last (a histogram's with _bucket, _sum or
 * _count); no family is declared twice; the text ends with a newline. */
static const char *exposition_error(const char *text, size_t *families)
{
    struct family_seen fams[MAX_FAMILIES];
    size_t nfam = 0;
    struct family_seen *cur = NULL;
    bool expect_type = false;
    char line[4096];

    *families = 0;
    for (const char *p = text; *p;) {
        const char *nl = strchr(p, '\n');
        if (!nl)
            BAD("no newline after the last line");
        size_t n = (size_t)(nl - p);
        if (n >= sizeof line)
            BAD("line too long");
        memcpy(line, p, n);
        line[n] = '\0';
        p = nl + 1;

        if (strncmp(line, "# HELP ", 7) == 0) {
            if (expect_type)
                BAD("HELP without TYPE before: %s", line);
            const char *s = line + 7, *start = s;
            if (!metric_name(&s) || *s != ' ')
                BAD("bad HELP line: %s", line);
            for (const char *t = s + 1; *t; t++) /* HELP text: only \\ and \n escapes */
                if (*t == '\\' && t[1] != '\\' && t[1] != 'n')
                    BAD("bad escape in HELP: %s", line);
                else if (*t == '\\')
                    t++;
            size_t len = (size_t)(s - start);
            for (size_t i = 0; i < nfam; i++)
                if (strlen(fams[i].name) == len && !strncmp(fams[i].name, start, len))
                    BAD("family declared twice: %s", line);
            if (nfam == MAX_FAMILIES || len >= sizeof fams[0].name)
                BAD("too many families or name too long");
            cur = &fams[nfam++];
            memset(cur, 0, sizeof *cur);
            memcpy(cur->name, start, len);
            expect_type = true;
        } else if (strncmp(line, "# TYPE ", 7) == 0) {
            if (!expect_type)
                BAD("TYPE without HELP: %s", line);
            const char *s = line + 7, *start = s;
            if (!metric_name(&s) || *s != ' ' || (size_t)(s - start) != strlen(cur->name) ||
                strncmp(start, cur->name, strlen(cur->name)) != 0)
                BAD("TYPE does not follow its HELP: %s", line);
            s++;
            if (strcmp(s, "counter") && strcmp(s, "gauge") && strcmp(s, "histogram"))
                BAD("bad type: %s", line);
            snprintf(cur->type, sizeof cur->type, "%s", s);
            expect_type = false;
        } else if (line[0] == '#') {
            BAD("unexpected comment: %s", line);
        } else {
            if (expect_type || !cur)
                BAD("sample outside a family: %s", line);
            const char *s = line, *start = s;
            if (!metric_name(&s))
                BAD("bad metric name: %s", line);
            size_t len = (size_t)(s - start), fl = strlen(cur->name);
            bool ok = len == fl && !strncmp(start, cur->name, fl);
            if (!strcmp(cur->type, "histogram"))
                ok = len > fl && !strncmp(start, cur->name, fl) &&
                     ((len - fl == 7 && !strncmp(start + fl, "_bucket", 7)) ||
                      (len - fl == 4 && !strncmp(start + fl, "_sum", 4)) ||
                      (len - fl == 6 && !strncmp(start + fl, "_count", 6)));
            if (!ok)
                BAD("sample of another family than %s: %s", cur->name, line);
            if (*s == '{' && !label_set(&s))
                BAD("bad labels: %s", line);
            if (*s != ' ' || !sample_value(s + 1))
                BAD("bad value: %s", line);
        }
    }
    if (expect_type)
        BAD("HELP without TYPE at the end");
    *families = nfam;
    return NULL;
}

/* Check an exposition; the number of families. */
static size_t check_exposition(const char *text)
{
    size_t n;
    const char *err = exposition_error(text, &n);
    if (err)
        fail_msg("%s\n--- output ---\n%s", err, text);
    return n;
}

/* ---------------------------------------------------------------------------------------- */
/* tests                                                                                    */
/* ---------------------------------------------------------------------------------------- */

/* The checker itself: it must reject what the format forbids, or the format test proves nothing. */
static void test_checker_rejects(void **state)
{
    (void)state;
    size_t n;
    static const char good[] = "# HELP a_total Help \\\\ and \\n.\n# TYPE a_total counter\n"
                               "a_total{k=\"v\\\"\\\\\\n\",k2=\"\"} 1\n"
                               "# HELP h x\n# TYPE h histogram\nh_bucket{le=\"+Inf\"} 1\nh_sum 0.5\nh_count 1\n"
                               "# HELP g \n# TYPE g gauge\ng NaN\ng{x=\"1\"} -Inf\n";
    assert_null(exposition_error(good, &n));
    assert_int_equal(n, 3);
    static const char *const bad_inputs[] = {
        "# HELP a x\n# TYPE a counter\na 1",                         /* no final newline */
        "# HELP a x\na 1\n",                                         /* no TYPE */
        "# TYPE a counter\na 1\n",                                   /* no HELP */
        "# HELP a x\n# TYPE a counter\n# HELP a y\n# TYPE a counter\n", /* declared twice */
        "# HELP a x\n# TYPE a summary\na 1\n",                       /* not a type we emit */
        "# HELP a x\n# TYPE b counter\n",                            /* TYPE of another name */
        "# HELP a x\n# TYPE a counter\nb 1\n",                       /* sample of another family */
        "# HELP a x\n# TYPE a counter\na_bucket 1\n",                /* suffix on a counter */
        "# HELP a x\n# TYPE a counter\n1a 1\n",                      /* bad name */
        "# HELP a x\n# TYPE a counter\na{k=v} 1\n",                  /* unquoted value */
        "# HELP a x\n# TYPE a counter\na{k=\"v\"\n",                 /* no value */
        "# HELP a x\n# TYPE a counter\na{k=\"v\\q\"} 1\n",           /* bad escape */
        "# HELP a x\n# TYPE a counter\na{k=\"v\",} 1\n",             /* trailing comma */
        "# HELP a x\n# TYPE a counter\na{1k=\"v\"} 1\n",             /* bad label name */
        "# HELP a x\n# TYPE a counter\na  1\n",                      /* two spaces */
        "# HELP a x\n# TYPE a counter\na 1 2\n",                     /* two values */
        "# HELP a x\n# TYPE a counter\na one\n",                     /* not a number */
        "# HELP a x\n# TYPE a counter\na \n",                        /* empty value */
        "# HELP a bad \\x escape\n# TYPE a counter\na 1\n",          /* HELP escape */
        "# a comment\n",                                             /* other comment */
        "\n",                                                        /* empty line */
    };
    for (size_t i = 0; i < sizeof bad_inputs / sizeof bad_inputs[0]; i++)
        if (exposition_error(bad_inputs[i], &n) == NULL)
            fail_msg("checker accepted input %zu: %s", i, bad_inputs[i]);
}

static void test_constants_and_names(void **state)
{
    (void)state;
    static const uint64_t want[METRICS_BUCKETS] = {
        10000,     25000,     50000,      100000,     250000,     500000,      1000000,
        2500000,   5000000,   10000000,   25000000,   50000000,   100000000,   250000000,
        500000000, 1000000000, 2500000000, 5000000000, 10000000000,
    };
    for (size_t i = 0; i < METRICS_BUCKETS; i++)
        assert_int_equal(metrics_bucket_ns[i], want[i]);
    assert_string_equal(metrics_category_name(MCAT_ADMIN), "admin");
    assert_string_equal(metrics_category_name(MCAT_TRANSACTION), "transaction");
    assert_string_equal(metrics_category_name(MCAT_KEYSPACE), "keyspace");
    assert_string_equal(metrics_category_name(MCAT_OTHER), "other");
    assert_string_equal(metrics_category_name(MCAT_UNKNOWN), "unknown");
    assert_string_equal(metrics_verdict_name(MV_ALLOWED), "allowed");
    assert_string_equal(metrics_verdict_name(MV_DENIED), "denied");
    assert_string_equal(metrics_verdict_name(MV_RATE_LIMITED), "rate_limited");
    assert_string_equal(metrics_verdict_name(MV_ERROR), "error");
    assert_non_null(metrics_category_name((enum metrics_category)99));
    assert_non_null(metrics_verdict_name((enum metrics_verdict)99));
}

static void test_new_and_shards(void **state)
{
    (void)state;
    struct metrics *m = (struct metrics *)&m;
    assert_int_equal(metrics_new(1, (const char *const[]){"a"}, 0, &m), -EINVAL);
    assert_null(m);
    assert_int_equal(metrics_new(SIZE_MAX / 8, NULL, 1, &m), -ENOMEM);
    assert_null(m);
    assert_int_equal(metrics_new(1, (const char *const[]){"a"}, SIZE_MAX / 2, &m), -ENOMEM);
    assert_null(m);
    metrics_free(NULL);

    const char *names[] = {"alice", "bob"};
    m = make(2, names, 3);
    for (size_t i = 0; i < 3; i++) {
        struct metrics_shard *s = metrics_shard(m, i);
        assert_non_null(s);
        assert_int_equal((uintptr_t)s % 64, 0);
        assert_int_equal((uintptr_t)s->commands % 64, 0);
        assert_int_equal((uintptr_t)s->anomalies % 64, 0);
        assert_int_equal(s->user_count, 2);
        for (size_t j = 0; j < i; j++)
            assert_ptr_not_equal(s, metrics_shard(m, j));
    }
    assert_null(metrics_shard(m, 3));
    assert_null(metrics_shard(NULL, 0));

    /* Out-of-range users and types are ignored, not written out of bounds (ASan would see it). */
    struct metrics_shard *s = metrics_shard(m, 0);
    metrics_count_command(s, 2, MCAT_READ, MV_ALLOWED);
    metrics_count_anomaly(s, METRICS_ANOMALY_TYPES, 0);
    metrics_count_anomaly(s, 0, 2);
    metrics_count_anomaly(s, 0, -2);
    char *out = render(m, NULL, 0);
    assert_int_equal(count_prefix(out, "respguard_commands_total{"), 0);
    EXPECT_LINE(out, "respguard_anomalies_total{type=\"rate_spike\",user=\"\"} 0");
    free(out);
    metrics_free(m);

    /* No users at all: still a valid exposition. */
    m = make(0, NULL, 1);
    out = render(m, NULL, 0);
    check_exposition(out);
    EXPECT_LINE(out, "respguard_anomalies_total{type=\"connection_surge\",user=\"\"} 0");
    assert_int_equal(count_prefix(out, "respguard_rate_limited_commands_total{"), 0);
    free(out);
    metrics_free(m);

    /* The names are copied. */
    char name[] = "carol";
    m = make(1, (const char *const[]){name}, 1);
    strcpy(name, "xxxxx");
    out = render(m, NULL, 0);
    EXPECT_LINE(out, "respguard_rate_limited_commands_total{user=\"carol\"} 0");
    free(out);
    metrics_free(m);
}

static void test_two_shards_summed(void **state)
{
    (void)state;
    const char *names[] = {"alice", "bob"};
    struct metrics *m = make(2, names, 2);
    struct metrics_shard *a = metrics_shard(m, 0), *b = metrics_shard(m, 1);

    metrics_inc(a, MC_CONN_ACCEPTED);
    metrics_inc(b, MC_CONN_ACCEPTED);
    metrics_inc(b, MC_CONN_ACCEPTED);
    metrics_inc(a, MC_CONN_REFUSED_MAX_CLIENTS);
    metrics_inc(b, MC_CONN_REFUSED_MAX_CLIENTS);
    metrics_inc(b, MC_LOGIN_WRONG_PASSWORD);
    metrics_inc(a, MC_LOCKOUTS);
    metrics_add(&a->c[MC_CLIENT_BYTES_IN], 1000);
    metrics_add(&b->c[MC_CLIENT_BYTES_IN], 234);
    metrics_add(&b->c[MC_UPSTREAM_BYTES_OUT], 77);
    metrics_inc(a, MC_REFUSED_KEY);
    metrics_inc(a, MC_UPSTREAM_FAIL_CERTIFICATE);
    metrics_inc(b, MC_UPSTREAM_FAIL_CERTIFICATE);
    metrics_inc(b, MC_PROBE_OK);

    for (int i = 0; i < 5; i++)
        metrics_count_command(a, 0, MCAT_READ, MV_ALLOWED);
    for (int i = 0; i < 3; i++)
        metrics_count_command(b, 0, MCAT_READ, MV_ALLOWED);
    metrics_count_command(b, 1, MCAT_WRITE, MV_DENIED);
    metrics_count_command(a, 1, MCAT_WRITE, MV_RATE_LIMITED);
    metrics_count_command(b, 1, MCAT_READ, MV_RATE_LIMITED);
    metrics_count_command(b, 1, MCAT_UNKNOWN, MV_ERROR);
    metrics_count_anomaly(a, ANOMALY_RATE_SPIKE, 1);
    metrics_count_anomaly(b, ANOMALY_RATE_SPIKE, 1);
    metrics_count_anomaly(b, ANOMALY_AUTH_FAILURE_BURST, -1);

    char *out = render(m, NULL, 0);
    check_exposition(out);
    EXPECT_LINE(out, "respguard_client_connections_accepted_total 3");
    EXPECT_LINE(out, "respguard_client_connections_refused_total{reason=\"max_clients\"} 2");
    EXPECT_LINE(out, "respguard_logins_total{result=\"wrong_password\"} 1");
    EXPECT_LINE(out, "respguard_login_lockouts_total 1");
    EXPECT_LINE(out, "respguard_client_bytes_received_total 1234");
    EXPECT_LINE(out, "respguard_upstream_bytes_sent_total 77");
    EXPECT_LINE(out, "respguard_refusals_total{reason=\"key\"} 1");
    EXPECT_LINE(out, "respguard_upstream_failures_total{reason=\"certificate\"} 2");
    EXPECT_LINE(out, "respguard_upstream_probes_total{result=\"ok\"} 1");

    /* commands: only the non-zero series */
    EXPECT_LINE(out, "respguard_commands_total{user=\"alice\",category=\"read\",verdict=\"allowed\"} 8");
    EXPECT_LINE(out, "respguard_commands_total{user=\"bob\",category=\"write\",verdict=\"denied\"} 1");
    EXPECT_LINE(out, "respguard_commands_total{user=\"bob\",category=\"write\",verdict=\"rate_limited\"} 1");
    EXPECT_LINE(out, "respguard_commands_total{user=\"bob\",category=\"read\",verdict=\"rate_limited\"} 1");
    EXPECT_LINE(out, "respguard_commands_total{user=\"bob\",category=\"unknown\",verdict=\"error\"} 1");
    assert_int_equal(count_prefix(out, "respguard_commands_total{"), 5);
    EXPECT_NO_LINE(out, "respguard_commands_total{user=\"alice\",category=\"read\",verdict=\"denied\"} 0");

    /* rate-limited: every user, summed over categories */
    EXPECT_LINE(out, "respguard_rate_limited_commands_total{user=\"alice\"} 0");
    EXPECT_LINE(out, "respguard_rate_limited_commands_total{user=\"bob\"} 2");

    /* anomalies: every type for every user and for per-source events */
    EXPECT_LINE(out, "respguard_anomalies_total{type=\"rate_spike\",user=\"bob\"} 2");
    EXPECT_LINE(out, "respguard_anomalies_total{type=\"rate_spike\",user=\"alice\"} 0");
    EXPECT_LINE(out, "respguard_anomalies_total{type=\"auth_failure_burst\",user=\"\"} 1");
    assert_int_equal(count_prefix(out, "respguard_anomalies_total{"), METRICS_ANOMALY_TYPES * 3);
    for (int t = 0; t < METRICS_ANOMALY_TYPES; t++)
        for (int u = 0; u < 3; u++) {
            char want[160];
            snprintf(want, sizeof want, "respguard_anomalies_total{type=\"%s\",user=\"%s\"} ",
                     anomaly_type_name((enum anomaly_type)t), u ? names[u - 1] : "");
            assert_int_equal(count_prefix(out, want), 1);
        }

    /* every fixed label value, zeros included */
    static const char *const fixed[] = {
        "respguard_client_connections_refused_total{reason=\"source_not_allowed\"} 0",
        "respguard_client_connections_refused_total{reason=\"tls_handshake\"} 0",
        "respguard_client_connections_refused_total{reason=\"login_timeout\"} 0",
        "respguard_logins_total{result=\"ok\"} 0",
        "respguard_logins_total{result=\"unknown_user\"} 0",
        "respguard_logins_total{result=\"expired\"} 0",
        "respguard_logins_total{result=\"source_not_allowed\"} 0",
        "respguard_logins_total{result=\"locked_out\"} 0",
        "respguard_refusals_total{reason=\"command\"} 0",
        "respguard_refusals_total{reason=\"channel\"} 0",
        "respguard_refusals_total{reason=\"sort\"} 0",
        "respguard_refusals_total{reason=\"rate_limit\"} 0",
        "respguard_refusals_total{reason=\"unsupported\"} 0",
        "respguard_client_bytes_sent_total 0",
        "respguard_upstream_bytes_received_total 0",
        "respguard_upstream_connections_opened_total 0",
        "respguard_upstream_failures_total{reason=\"dns\"} 0",
        "respguard_upstream_failures_total{reason=\"connect\"} 0",
        "respguard_upstream_failures_total{reason=\"timeout\"} 0",
        "respguard_upstream_failures_total{reason=\"tls\"} 0",
        "respguard_upstream_failures_total{reason=\"auth\"} 0",
        "respguard_upstream_failures_total{reason=\"lost\"} 0",
        "respguard_upstream_probes_total{result=\"failed\"} 0",
    };
    for (size_t i = 0; i < sizeof fixed / sizeof fixed[0]; i++)
        EXPECT_LINE(out, fixed[i]);
    assert_int_equal(count_prefix(out, "respguard_client_connections_refused_total{"), 4);
    assert_int_equal(count_prefix(out, "respguard_logins_total{"), 6);
    assert_int_equal(count_prefix(out, "respguard_refusals_total{"), 6);
    assert_int_equal(count_prefix(out, "respguard_upstream_failures_total{"), 7);
    assert_int_equal(count_prefix(out, "respguard_upstream_probes_total{"), 2);
    free(out);

    /* A later scrape sees the new counts. */
    metrics_inc(b, MC_CONN_ACCEPTED);
    out = render(m, NULL, 0);
    EXPECT_LINE(out, "respguard_client_connections_accepted_total 4");
    free(out);
    metrics_free(m);
}

static void test_family_order(void **state)
{
    (void)state;
    struct metrics *m = make(1, (const char *const[]){"u"}, 1);
    const struct metrics_gauge g[] = {{"respguard_ready", "Ready.", NULL, NULL, 1}};
    char *out = render(m, g, 1);
    static const char *const order[] = {
        "respguard_client_connections",
        "respguard_client_connections_accepted_total",
        "respguard_client_connections_refused_total",
        "respguard_logins_total",
        "respguard_login_lockouts_total",
        "respguard_commands_total",
        "respguard_rate_limited_commands_total",
        "respguard_refusals_total",
        "respguard_client_bytes_received_total",
        "respguard_client_bytes_sent_total",
        "respguard_upstream_bytes_received_total",
        "respguard_upstream_bytes_sent_total",
        "respguard_upstream_connections",
        "respguard_upstream_connections_opened_total",
        "respguard_upstream_failures_total",
        "respguard_upstream_probes_total",
        "respguard_upstream_handshakes_total",
        "respguard_pool_connections",
        "respguard_pool_acquire_waits_total",
        "respguard_pool_acquire_timeouts_total",
        "respguard_pool_resets_total",
        "respguard_rest_connections",
        "respguard_rest_connections_accepted_total",
        "respguard_rest_requests_total",
        "respguard_rest_commands_total",
        "respguard_anomalies_total",
        "respguard_upstream_rtt_seconds",
        "respguard_added_latency_seconds",
        "respguard_pool_commands_per_write",
        "respguard_ready",
    };
    size_t n = sizeof order / sizeof order[0];
    assert_int_equal(check_exposition(out), n);
    const char *p = out;
    for (size_t i = 0; i < n; i++) {
        char want[160];
        snprintf(want, sizeof want, "# HELP %s ", order[i]);
        const char *q = strstr(p, want);
        if (!q)
            fail_msg("family %s missing or out of order", order[i]);
        p = q + 1;
    }
    EXPECT_LINE(out, "# TYPE respguard_client_connections gauge");
    EXPECT_LINE(out, "# TYPE respguard_upstream_connections gauge");
    EXPECT_LINE(out, "# TYPE respguard_commands_total counter");
    EXPECT_LINE(out, "# TYPE respguard_added_latency_seconds histogram");
    EXPECT_LINE(out, "# TYPE respguard_ready gauge");
    free(out);
    metrics_free(m);
}

static void test_connection_gauges(void **state)
{
    (void)state;
    struct metrics *m = make(0, NULL, 2);
    struct metrics_shard *a = metrics_shard(m, 0), *b = metrics_shard(m, 1);
    for (int i = 0; i < 5; i++)
        metrics_inc(a, MC_CONN_ACCEPTED);
    metrics_inc(b, MC_CONN_ACCEPTED);
    metrics_inc(a, MC_CONN_CLOSED);
    metrics_inc(b, MC_CONN_CLOSED);
    metrics_inc(b, MC_CONN_CLOSED);
    for (int i = 0; i < 3; i++)
        metrics_inc(b, MC_UPSTREAM_OPENED);
    metrics_inc(a, MC_UPSTREAM_CLOSED);

    char *out = render(m, NULL, 0);
    EXPECT_LINE(out, "respguard_client_connections 3");
    EXPECT_LINE(out, "respguard_client_connections_accepted_total 6");
    EXPECT_LINE(out, "respguard_upstream_connections 2");
    EXPECT_LINE(out, "respguard_upstream_connections_opened_total 3");
    free(out);

    /* A scrape that sees more closes than opens shows 0, not a wrapped huge number. */
    for (int i = 0; i < 10; i++) {
        metrics_inc(a, MC_CONN_CLOSED);
        metrics_inc(b, MC_UPSTREAM_CLOSED);
    }
    out = render(m, NULL, 0);
    EXPECT_LINE(out, "respguard_client_connections 0");
    EXPECT_LINE(out, "respguard_upstream_connections 0");
    free(out);
    metrics_free(m);
}

static void test_histogram(void **state)
{
    (void)state;
    struct metrics *m = make(0, NULL, 2);
    struct metrics_shard *a = metrics_shard(m, 0), *b = metrics_shard(m, 1);
    metrics_observe(a, MH_UPSTREAM_RTT, 10000);       /* exactly the first bound: in it */
    metrics_observe(b, MH_UPSTREAM_RTT, 3000000);     /* 3 ms: le 0.005 */
    metrics_observe(a, MH_UPSTREAM_RTT, 20000000000); /* 20 s: +Inf only */
    assert_int_equal(a->hist[MH_UPSTREAM_RTT].count, 2);
    assert_int_equal(a->hist[MH_UPSTREAM_RTT].buckets[0], 1);
    assert_int_equal(a->hist[MH_UPSTREAM_RTT].buckets[METRICS_BUCKETS], 1);
    assert_int_equal(b->hist[MH_UPSTREAM_RTT].buckets[8], 1);

    char *out = render(m, NULL, 0);
    check_exposition(out);
    static const char *const want[] = {
        "respguard_upstream_rtt_seconds_bucket{le=\"0.00001\"} 1",
        "respguard_upstream_rtt_seconds_bucket{le=\"0.000025\"} 1",
        "respguard_upstream_rtt_seconds_bucket{le=\"0.00005\"} 1",
        "respguard_upstream_rtt_seconds_bucket{le=\"0.0001\"} 1",
        "respguard_upstream_rtt_seconds_bucket{le=\"0.00025\"} 1",
        "respguard_upstream_rtt_seconds_bucket{le=\"0.0005\"} 1",
        "respguard_upstream_rtt_seconds_bucket{le=\"0.001\"} 1",
        "respguard_upstream_rtt_seconds_bucket{le=\"0.0025\"} 1",
        "respguard_upstream_rtt_seconds_bucket{le=\"0.005\"} 2",
        "respguard_upstream_rtt_seconds_bucket{le=\"0.01\"} 2",
        "respguard_upstream_rtt_seconds_bucket{le=\"0.025\"} 2",
        "respguard_upstream_rtt_seconds_bucket{le=\"0.05\"} 2",
        "respguard_upstream_rtt_seconds_bucket{le=\"0.1\"} 2",
        "respguard_upstream_rtt_seconds_bucket{le=\"0.25\"} 2",
        "respguard_upstream_rtt_seconds_bucket{le=\"0.5\"} 2",
        "respguard_upstream_rtt_seconds_bucket{le=\"1\"} 2",
        "respguard_upstream_rtt_seconds_bucket{le=\"2.5\"} 2",
        "respguard_upstream_rtt_seconds_bucket{le=\"5\"} 2",
        "respguard_upstream_rtt_seconds_bucket{le=\"10\"} 2",
        "respguard_upstream_rtt_seconds_bucket{le=\"+Inf\"} 3",
        "respguard_upstream_rtt_seconds_sum 20.00301",
        "respguard_upstream_rtt_seconds_count 3",
    };
    /* In this order, consecutive. */
    char block[2048] = "";
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        strcat(block, want[i]);
        strcat(block, "\n");
    }
    if (!strstr(out, block))
        fail_msg("histogram block not found:\n%s\n--- output ---\n%s", block, out);
    assert_int_equal(count_prefix(out, "respguard_upstream_rtt_seconds_bucket{"), METRICS_BUCKETS + 1);

    /* The other histogram is untouched. */
    EXPECT_LINE(out, "respguard_added_latency_seconds_bucket{le=\"+Inf\"} 0");
    EXPECT_LINE(out, "respguard_added_latency_seconds_sum 0");
    EXPECT_LINE(out, "respguard_added_latency_seconds_count 0");
    free(out);

    /* Every bound falls in its own bucket, one nanosecond more in the next. */
    metrics_free(m);
    m = make(0, NULL, 1);
    a = metrics_shard(m, 0);
    for (size_t i = 0; i < METRICS_BUCKETS; i++) {
        metrics_observe(a, MH_ADDED_LATENCY, metrics_bucket_ns[i]);
        metrics_observe(a, MH_ADDED_LATENCY, metrics_bucket_ns[i] + 1);
    }
    metrics_observe(a, MH_ADDED_LATENCY, 0);
    metrics_observe(a, MH_ADDED_LATENCY, UINT64_MAX / 4);
    const struct metrics_histogram_data *d = &a->hist[MH_ADDED_LATENCY];
    assert_int_equal(d->buckets[0], 2);
    for (size_t i = 1; i < METRICS_BUCKETS; i++)
        assert_int_equal(d->buckets[i], 2);
    assert_int_equal(d->buckets[METRICS_BUCKETS], 2);
    assert_int_equal(d->count, 2 * METRICS_BUCKETS + 2);
    out = render(m, NULL, 0);
    check_exposition(out);
    EXPECT_LINE(out, "respguard_added_latency_seconds_bucket{le=\"0.00001\"} 2");
    EXPECT_LINE(out, "respguard_added_latency_seconds_bucket{le=\"10\"} 38");
    EXPECT_LINE(out, "respguard_added_latency_seconds_bucket{le=\"+Inf\"} 40");
    EXPECT_LINE(out, "respguard_added_latency_seconds_count 40");
    free(out);
    metrics_free(m);
}

static void test_label_escaping(void **state)
{
    (void)state;
    const char *names[] = {"we\"ird\\na\nme", "plain"};
    struct metrics *m = make(2, names, 1);
    metrics_count_command(metrics_shard(m, 0), 0, MCAT_ADMIN, MV_DENIED);
    const struct metrics_gauge g[] = {
        {"respguard_cert_expiry_seconds", "Back\\slash and\nnewline \"quoted\".", "file", "/etc/\"x\"\\y\nz", 5},
    };
    char *out = render(m, g, 1);
    check_exposition(out);
    EXPECT_LINE(out, "respguard_commands_total{user=\"we\\\"ird\\\\na\\nme\",category=\"admin\",verdict=\"denied\"} 1");
    EXPECT_LINE(out, "respguard_rate_limited_commands_total{user=\"we\\\"ird\\\\na\\nme\"} 0");
    EXPECT_LINE(out, "respguard_anomalies_total{type=\"new_behaviour\",user=\"we\\\"ird\\\\na\\nme\"} 0");
    EXPECT_LINE(out, "# HELP respguard_cert_expiry_seconds Back\\\\slash and\\nnewline \"quoted\".");
    EXPECT_LINE(out, "respguard_cert_expiry_seconds{file=\"/etc/\\\"x\\\"\\\\y\\nz\"} 5");
    free(out);
    metrics_free(m);
}

static void test_category_of(void **state)
{
    (void)state;
    assert_int_equal(metrics_category_of(cats_of("get")), MCAT_READ);
    assert_int_equal(metrics_category_of(cats_of("set")), MCAT_WRITE);
    assert_int_equal(metrics_category_of(cats_of("del")), MCAT_WRITE);
    assert_int_equal(metrics_category_of(cats_of("flushall")), MCAT_DANGEROUS);
    assert_int_equal(metrics_category_of(sub_cats_of("config", "set")), MCAT_ADMIN);
    assert_int_equal(metrics_category_of(cats_of("eval")), MCAT_SCRIPTING);
    assert_int_equal(metrics_category_of(cats_of("publish")), MCAT_PUBSUB);
    assert_int_equal(metrics_category_of(cats_of("multi")), MCAT_TRANSACTION);
    assert_int_equal(metrics_category_of(cats_of("ping")), MCAT_CONNECTION);
    assert_int_equal(metrics_category_of(cats_of("blpop")), MCAT_BLOCKING);
    assert_int_equal(metrics_category_of(0), MCAT_OTHER);

    /* The bits as the brief spells them, independent of the generated table. */
    assert_int_equal(metrics_category_of(CMDTAB_CAT_READ | CMDTAB_CAT_STRING | CMDTAB_CAT_FAST), MCAT_READ);
    assert_int_equal(metrics_category_of(CMDTAB_CAT_WRITE | CMDTAB_CAT_STRING | CMDTAB_CAT_SLOW), MCAT_WRITE);
    assert_int_equal(metrics_category_of(CMDTAB_CAT_KEYSPACE | CMDTAB_CAT_WRITE | CMDTAB_CAT_SLOW), MCAT_WRITE);
    assert_int_equal(metrics_category_of(CMDTAB_CAT_KEYSPACE | CMDTAB_CAT_WRITE | CMDTAB_CAT_SLOW |
                                         CMDTAB_CAT_DANGEROUS),
                     MCAT_DANGEROUS);
    assert_int_equal(metrics_category_of(CMDTAB_CAT_ADMIN | CMDTAB_CAT_SLOW | CMDTAB_CAT_DANGEROUS), MCAT_ADMIN);
    assert_int_equal(metrics_category_of(CMDTAB_CAT_SLOW | CMDTAB_CAT_SCRIPTING), MCAT_SCRIPTING);
    assert_int_equal(metrics_category_of(CMDTAB_CAT_PUBSUB | CMDTAB_CAT_FAST), MCAT_PUBSUB);
    assert_int_equal(metrics_category_of(CMDTAB_CAT_FAST | CMDTAB_CAT_TRANSACTION), MCAT_TRANSACTION);
    assert_int_equal(metrics_category_of(CMDTAB_CAT_FAST | CMDTAB_CAT_CONNECTION), MCAT_CONNECTION);
    assert_int_equal(metrics_category_of(CMDTAB_CAT_WRITE | CMDTAB_CAT_LIST | CMDTAB_CAT_SLOW |
                                         CMDTAB_CAT_BLOCKING),
                     MCAT_BLOCKING);
    assert_int_equal(metrics_category_of(CMDTAB_CAT_KEYSPACE | CMDTAB_CAT_READ), MCAT_READ);
    assert_int_equal(metrics_category_of(CMDTAB_CAT_KEYSPACE | CMDTAB_CAT_FAST), MCAT_KEYSPACE);
    assert_int_equal(metrics_category_of(CMDTAB_CAT_FAST | CMDTAB_CAT_SLOW | CMDTAB_CAT_HASH), MCAT_OTHER);
}

static void test_upstream_failure(void **state)
{
    (void)state;
    assert_int_equal(metrics_upstream_failure("connect", "cannot resolve upstream host: unknown node or service"),
                     MC_UPSTREAM_FAIL_DNS);
    assert_int_equal(metrics_upstream_failure("connect", "no verified connection within 5000 ms"),
                     MC_UPSTREAM_FAIL_TIMEOUT);
    assert_int_equal(metrics_upstream_failure("connect", "connection refused"), MC_UPSTREAM_FAIL_CONNECT);
    assert_int_equal(metrics_upstream_failure("connect", ""), MC_UPSTREAM_FAIL_CONNECT);
    /* prefixes only: a text that merely mentions them elsewhere is a plain connect failure */
    assert_int_equal(metrics_upstream_failure("connect", "x: cannot resolve"), MC_UPSTREAM_FAIL_CONNECT);

    assert_int_equal(metrics_upstream_failure("tls", "no verified connection within 5000 ms"),
                     MC_UPSTREAM_FAIL_TIMEOUT);
    assert_int_equal(metrics_upstream_failure("tls", "certificate verify failed: hostname mismatch"),
                     MC_UPSTREAM_FAIL_CERTIFICATE);
    assert_int_equal(metrics_upstream_failure("tls", "error:0A000086:SSL routines::certificate verify failed"),
                     MC_UPSTREAM_FAIL_CERTIFICATE);
    assert_int_equal(metrics_upstream_failure("tls", "TLS failure (SSL_get_error 5)"), MC_UPSTREAM_FAIL_TLS);
    assert_int_equal(metrics_upstream_failure("tls", "connection closed by the server"), MC_UPSTREAM_FAIL_TLS);

    assert_int_equal(metrics_upstream_failure("auth", "WRONGPASS invalid username-password pair"),
                     MC_UPSTREAM_FAIL_AUTH);
    assert_int_equal(metrics_upstream_failure("auth", "certificate"), MC_UPSTREAM_FAIL_AUTH);
    assert_int_equal(metrics_upstream_failure("lost", "connection reset by peer"), MC_UPSTREAM_FAIL_LOST);
    assert_int_equal(metrics_upstream_failure("lost", "cannot resolve"), MC_UPSTREAM_FAIL_LOST);
    assert_int_equal(metrics_upstream_failure("other", "whatever"), MC_UPSTREAM_FAIL_LOST);
    /* the connect timer also covers the login after TLS: a timeout in any stage is a timeout */
    assert_int_equal(metrics_upstream_failure("lost", "no verified connection within 5000 ms"),
                     MC_UPSTREAM_FAIL_TIMEOUT);
    assert_int_equal(metrics_upstream_failure("", "no verified connection within 1 ms"), MC_UPSTREAM_FAIL_TIMEOUT);
    assert_int_equal(metrics_upstream_failure(NULL, NULL), MC_UPSTREAM_FAIL_LOST);
    assert_int_equal(metrics_upstream_failure("connect", NULL), MC_UPSTREAM_FAIL_CONNECT);
}

static void test_caller_gauges(void **state)
{
    (void)state;
    struct metrics *m = make(0, NULL, 1);
    const struct metrics_gauge g[] = {
        {"respguard_ready", "Whether respguard accepts clients.", NULL, NULL, 1},
        {"respguard_cert_expiry_timestamp_seconds", "Expiry of each certificate.", "file", "a.pem", 1700000000},
        {"respguard_cert_expiry_timestamp_seconds", "ignored help", "file", "b.pem", 0.5},
        {"respguard_cert_expiry_timestamp_seconds", NULL, "file", "c.pem", NAN},
        {"respguard_config_load", "Config loads.", "result", "ok", INFINITY},
        {"respguard_config_load", "Config loads.", "result", "failed", -INFINITY},
        {"respguard_ratio", NULL, NULL, NULL, 0.1},
        {"respguard_negative", "Negative.", NULL, NULL, -3},
    };
    size_t n = sizeof g / sizeof g[0];
    char *out = render(m, g, n);
    check_exposition(out); /* also fails on a family declared twice */
    EXPECT_LINE(out, "# HELP respguard_ready Whether respguard accepts clients.");
    EXPECT_LINE(out, "# TYPE respguard_ready gauge");
    EXPECT_LINE(out, "respguard_ready 1");
    EXPECT_LINE(out, "# HELP respguard_cert_expiry_timestamp_seconds Expiry of each certificate.");
    assert_int_equal(count_prefix(out, "# HELP respguard_cert_expiry_timestamp_seconds "), 1);
    assert_int_equal(count_prefix(out, "# TYPE respguard_cert_expiry_timestamp_seconds "), 1);
    assert_null(strstr(out, "ignored help"));
    EXPECT_LINE(out, "respguard_cert_expiry_timestamp_seconds{file=\"a.pem\"} 1700000000");
    EXPECT_LINE(out, "respguard_cert_expiry_timestamp_seconds{file=\"b.pem\"} 0.5");
    EXPECT_LINE(out, "respguard_cert_expiry_timestamp_seconds{file=\"c.pem\"} NaN");
    EXPECT_LINE(out, "respguard_config_load{result=\"ok\"} +Inf");
    EXPECT_LINE(out, "respguard_config_load{result=\"failed\"} -Inf");
    assert_int_equal(count_prefix(out, "# HELP respguard_config_load "), 1);
    EXPECT_LINE(out, "respguard_ratio 0.10000000000000001");
    EXPECT_LINE(out, "respguard_negative -3");

    /* The gauges come last, in the caller's order. */
    const char *ready = strstr(out, "# HELP respguard_ready ");
    assert_non_null(ready);
    assert_non_null(strstr(out, "respguard_added_latency_seconds_count"));
    assert_true(strstr(out, "respguard_added_latency_seconds_count") < ready);
    assert_true(ready < strstr(out, "# HELP respguard_cert_expiry_timestamp_seconds "));
    assert_true(strstr(out, "# HELP respguard_config_load ") < strstr(out, "# HELP respguard_ratio "));
    free(out);
    metrics_free(m);
}

/* A busy exposition with many users, every counter and both histograms, checked line by line. */
static void test_exposition_format(void **state)
{
    (void)state;
    enum { USERS = 7, SHARDS = 4 };
    const char *names[USERS] = {"alice", "bob", "ca\"rol", "d\\ave", "e\nve", "", "f:g h"};
    struct metrics *m = make(USERS, names, SHARDS);
    uint64_t x = 12345;
    for (int i = 0; i < 20000; i++) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        struct metrics_shard *s = metrics_shard(m, (size_t)(x >> 60) % SHARDS);
        metrics_inc(s, (enum metrics_counter)((x >> 32) % MC_COUNT));
        metrics_count_command(s, (x >> 20) % USERS, (enum metrics_category)((x >> 24) % MCAT_COUNT),
                              (enum metrics_verdict)((x >> 28) % MV_COUNT));
        metrics_count_anomaly(s, (int)((x >> 40) % METRICS_ANOMALY_TYPES), (int)((x >> 44) % (USERS + 1)) - 1);
        metrics_observe(s, (enum metrics_histogram)((x >> 50) % MH_COUNT), (x >> 13) % 20000000000ull);
    }
    const struct metrics_gauge g[] = {
        {"respguard_ready", "Ready.", NULL, NULL, 1},
        {"respguard_cert_expiry_timestamp_seconds", "Expiry.", "file", "x", 1.7e9},
        {"respguard_cert_expiry_timestamp_seconds", "Expiry.", "file", "y", 1.8e9},
        {"respguard_weird", "", "k", "", -0.0},
    };
    char *out = render(m, g, sizeof g / sizeof g[0]);
    assert_int_equal(check_exposition(out), 29 + 3);
    assert_int_equal(count_prefix(out, "respguard_rate_limited_commands_total{"), USERS);
    assert_int_equal(count_prefix(out, "respguard_anomalies_total{"), METRICS_ANOMALY_TYPES * (USERS + 1));
    assert_int_equal(count_prefix(out, "respguard_commands_total{"), USERS * MCAT_COUNT * MV_COUNT);

    /* Histogram buckets are cumulative and +Inf equals _count. */
    static const char *const hists[] = {"respguard_upstream_rtt_seconds", "respguard_added_latency_seconds"};
    for (size_t h = 0; h < 2; h++) {
        char prefix[96];
        snprintf(prefix, sizeof prefix, "%s_bucket{le=\"", hists[h]);
        unsigned long long prev = 0, last = 0, count = 0;
        size_t seen = 0;
        for (const char *p = strstr(out, prefix); p; p = strstr(p + 1, prefix)) {
            const char *v = strstr(p, "} ");
            assert_non_null(v);
            last = strtoull(v + 2, NULL, 10);
            assert_true(last >= prev);
            prev = last;
            seen++;
        }
        assert_int_equal(seen, METRICS_BUCKETS + 1);
        snprintf(prefix, sizeof prefix, "\n%s_count ", hists[h]);
        const char *c = strstr(out, prefix);
        assert_non_null(c);
        count = strtoull(c + strlen(prefix), NULL, 10);
        assert_int_equal(count, last);
        assert_true(count > 0);
    }
    free(out);
    metrics_free(m);
}

/* Pool connections by state (entered - left, over shards), the pool counters, and the one
 * histogram of counts rather than time. */
/* The REST listeners' families: a gauge from two counters, statuses by label, commands. */
static void test_rest_metrics(void **state)
{
    (void)state;
    struct metrics *m = make(0, NULL, 2);
    struct metrics_shard *a = metrics_shard(m, 0), *b = metrics_shard(m, 1);
    for (int i = 0; i < 3; i++)
        metrics_inc(a, MC_REST_CONN_ACCEPTED);
    metrics_inc(b, MC_REST_CONN_CLOSED);
    metrics_inc(a, MC_REST_STATUS_200);
    metrics_inc(b, MC_REST_STATUS_200);
    metrics_inc(b, MC_REST_STATUS_429);
    metrics_inc(a, MC_REST_STATUS_OTHER);
    for (int i = 0; i < 5; i++)
        metrics_inc(b, MC_REST_COMMANDS);
    char *out = render(m, NULL, 0);
    EXPECT_LINE(out, "respguard_rest_connections 2");
    EXPECT_LINE(out, "respguard_rest_connections_accepted_total 3");
    EXPECT_LINE(out, "respguard_rest_requests_total{status=\"200\"} 2");
    EXPECT_LINE(out, "respguard_rest_requests_total{status=\"429\"} 1");
    EXPECT_LINE(out, "respguard_rest_requests_total{status=\"401\"} 0");
    EXPECT_LINE(out, "respguard_rest_requests_total{status=\"other\"} 1");
    EXPECT_LINE(out, "respguard_rest_commands_total 5");
    assert_int_equal(count_prefix(out, "respguard_rest_requests_total{"), 11);
    free(out);
    metrics_free(m);
}

static void test_pool_metrics(void **state)
{
    (void)state;
    struct metrics *m = make(0, NULL, 2);
    struct metrics_shard *a = metrics_shard(m, 0), *b = metrics_shard(m, 1);
    metrics_pool_move(a, MPS_NONE, MPS_CONNECTING);
    metrics_pool_move(a, MPS_CONNECTING, MPS_IDLE);
    metrics_pool_move(a, MPS_IDLE, MPS_BUSY);
    metrics_pool_move(b, MPS_NONE, MPS_CONNECTING);
    metrics_pool_move(b, MPS_CONNECTING, MPS_IDLE);
    metrics_pool_move(b, MPS_IDLE, MPS_PINNED);
    metrics_pool_move(b, MPS_PINNED, MPS_RESETTING);
    metrics_pool_move(b, MPS_RESETTING, MPS_IDLE);
    metrics_pool_move(b, MPS_NONE, MPS_CONNECTING);
    metrics_pool_move(b, MPS_CONNECTING, MPS_NONE); /* failed */
    metrics_pool_move(b, MPS_IDLE, MPS_IDLE);       /* no move */
    metrics_inc(a, MC_HANDSHAKE_FULL);
    metrics_inc(b, MC_HANDSHAKE_RESUMED);
    metrics_inc(b, MC_HANDSHAKE_RESUMED);
    metrics_inc(a, MC_POOL_ACQUIRE_WAITS);
    metrics_inc(a, MC_POOL_ACQUIRE_TIMEOUTS);
    metrics_inc(b, MC_POOL_RESET_OK);
    metrics_inc(b, MC_POOL_RESET_FAILED);
    metrics_observe(a, MH_COMMANDS_PER_WRITE, 1);
    metrics_observe(a, MH_COMMANDS_PER_WRITE, 3);
    metrics_observe(b, MH_COMMANDS_PER_WRITE, 2000);
    char *out = render(m, NULL, 0);
    EXPECT_LINE(out, "respguard_pool_connections{state=\"connecting\"} 0");
    EXPECT_LINE(out, "respguard_pool_connections{state=\"idle\"} 1");
    EXPECT_LINE(out, "respguard_pool_connections{state=\"busy\"} 1");
    EXPECT_LINE(out, "respguard_pool_connections{state=\"pinned\"} 0");
    EXPECT_LINE(out, "respguard_pool_connections{state=\"resetting\"} 0");
    EXPECT_LINE(out, "respguard_upstream_handshakes_total{type=\"full\"} 1");
    EXPECT_LINE(out, "respguard_upstream_handshakes_total{type=\"resumed\"} 2");
    EXPECT_LINE(out, "respguard_pool_acquire_waits_total 1");
    EXPECT_LINE(out, "respguard_pool_acquire_timeouts_total 1");
    EXPECT_LINE(out, "respguard_pool_resets_total{result=\"ok\"} 1");
    EXPECT_LINE(out, "respguard_pool_resets_total{result=\"failed\"} 1");
    EXPECT_LINE(out, "respguard_pool_commands_per_write_bucket{le=\"1\"} 1");
    EXPECT_LINE(out, "respguard_pool_commands_per_write_bucket{le=\"2\"} 1");
    EXPECT_LINE(out, "respguard_pool_commands_per_write_bucket{le=\"4\"} 2");
    EXPECT_LINE(out, "respguard_pool_commands_per_write_bucket{le=\"1024\"} 2");
    EXPECT_LINE(out, "respguard_pool_commands_per_write_bucket{le=\"+Inf\"} 3");
    EXPECT_LINE(out, "respguard_pool_commands_per_write_sum 2004");
    EXPECT_LINE(out, "respguard_pool_commands_per_write_count 3");
    assert_int_equal(count_prefix(out, "respguard_pool_commands_per_write_bucket{"), 12);
    free(out);
    metrics_free(m);
}

/* metrics_add_users (a reload adds users): the counts of the users there were are kept under
 * their own names, new users start at zero and count, n = 0 changes nothing. */
static void test_add_users(void **state)
{
    (void)state;
    const char *names[] = {"alice", "bob"};
    struct metrics *m = make(2, names, 2);
    struct metrics_shard *a = metrics_shard(m, 0), *b = metrics_shard(m, 1);
    for (int i = 0; i < 3; i++)
        metrics_count_command(a, 0, MCAT_READ, MV_ALLOWED);
    metrics_count_command(b, 0, MCAT_READ, MV_ALLOWED);
    metrics_count_command(b, 1, MCAT_WRITE, MV_DENIED);
    metrics_count_command(a, 1, MCAT_KEYSPACE, MV_RATE_LIMITED);
    metrics_count_command(b, 1, MCAT_KEYSPACE, MV_RATE_LIMITED);
    metrics_count_anomaly(a, ANOMALY_RATE_SPIKE, 0);
    metrics_count_anomaly(a, ANOMALY_AUTH_FAILURE_BURST, -1);
    metrics_count_anomaly(b, ANOMALY_AUTH_FAILURE_BURST, -1);
    metrics_count_anomaly(b, ANOMALY_CONNECTION_SURGE, 1);
    metrics_count_anomaly(a, ANOMALY_CONNECTION_SURGE, -1);
    for (int i = 0; i < 3; i++)
        metrics_count_anomaly(b, ANOMALY_DENIAL_BURST, 1);
    metrics_inc(a, MC_CONN_ACCEPTED);

    /* n = 0: nothing changes, byte for byte. */
    char *before = render(m, NULL, 0);
    assert_int_equal(metrics_add_users(m, 0, NULL), 0);
    assert_int_equal(a->user_count, 2);
    char *out = render(m, NULL, 0);
    assert_string_equal(out, before);
    free(out);
    free(before);

    /* The names are copied. */
    char carol[] = "carol", dave[] = "dave";
    assert_int_equal(metrics_add_users(m, 2, (const char *const[]){carol, dave}), 0);
    strcpy(carol, "xxxxx");
    strcpy(dave, "yyyy");
    assert_ptr_equal(metrics_shard(m, 0), a); /* the shards stay, their arrays grow */
    assert_ptr_equal(metrics_shard(m, 1), b);
    assert_null(metrics_shard(m, 2));
    assert_int_equal(a->user_count, 4);
    assert_int_equal(b->user_count, 4);

    out = render(m, NULL, 0);
    check_exposition(out);
    EXPECT_LINE(out, "respguard_client_connections_accepted_total 1");
    EXPECT_LINE(out, "respguard_commands_total{user=\"alice\",category=\"read\",verdict=\"allowed\"} 4");
    EXPECT_LINE(out, "respguard_commands_total{user=\"bob\",category=\"write\",verdict=\"denied\"} 1");
    EXPECT_LINE(out, "respguard_commands_total{user=\"bob\",category=\"keyspace\",verdict=\"rate_limited\"} 2");
    assert_int_equal(count_prefix(out, "respguard_commands_total{"), 3);
    EXPECT_LINE(out, "respguard_rate_limited_commands_total{user=\"alice\"} 0");
    EXPECT_LINE(out, "respguard_rate_limited_commands_total{user=\"bob\"} 2");
    EXPECT_LINE(out, "respguard_rate_limited_commands_total{user=\"carol\"} 0");
    EXPECT_LINE(out, "respguard_rate_limited_commands_total{user=\"dave\"} 0");
    assert_int_equal(count_prefix(out, "respguard_rate_limited_commands_total{"), 4);
    assert_null(strstr(out, "xxxxx"));
    /* Every anomaly series, each with its count of before (per type, per user, per source). */
    const char *all[] = {"", "alice", "bob", "carol", "dave"};
    assert_int_equal(count_prefix(out, "respguard_anomalies_total{"), METRICS_ANOMALY_TYPES * 5);
    for (int t = 0; t < METRICS_ANOMALY_TYPES; t++)
        for (int u = 0; u < 5; u++) {
            unsigned want = 0;
            if (t == ANOMALY_RATE_SPIKE && u == 1)
                want = 1;
            if (t == ANOMALY_AUTH_FAILURE_BURST && u == 0)
                want = 2;
            if (t == ANOMALY_CONNECTION_SURGE && (u == 0 || u == 2))
                want = 1;
            if (t == ANOMALY_DENIAL_BURST && u == 2)
                want = 3;
            char line[160];
            snprintf(line, sizeof line, "respguard_anomalies_total{type=\"%s\",user=\"%s\"} %u",
                     anomaly_type_name((enum anomaly_type)t), all[u], want);
            EXPECT_LINE(out, line);
        }
    free(out);

    /* New users count, on every shard; the old ones go on counting. */
    metrics_count_command(a, 2, MCAT_WRITE, MV_ALLOWED);
    metrics_count_command(b, 2, MCAT_WRITE, MV_ALLOWED);
    metrics_count_command(b, 3, MCAT_ADMIN, MV_DENIED);
    metrics_count_command(a, 3, MCAT_READ, MV_RATE_LIMITED);
    metrics_count_command(a, 0, MCAT_READ, MV_ALLOWED);
    metrics_count_anomaly(b, ANOMALY_NEW_BEHAVIOUR, 3);
    metrics_count_anomaly(a, ANOMALY_RATE_SPIKE, 0);
    metrics_count_anomaly(a, ANOMALY_AUTH_FAILURE_BURST, -1);
    metrics_count_command(a, 4, MCAT_READ, MV_ALLOWED); /* out of range: ignored */
    metrics_count_anomaly(a, ANOMALY_RATE_SPIKE, 4);
    out = render(m, NULL, 0);
    check_exposition(out);
    EXPECT_LINE(out, "respguard_commands_total{user=\"alice\",category=\"read\",verdict=\"allowed\"} 5");
    EXPECT_LINE(out, "respguard_commands_total{user=\"carol\",category=\"write\",verdict=\"allowed\"} 2");
    EXPECT_LINE(out, "respguard_commands_total{user=\"dave\",category=\"admin\",verdict=\"denied\"} 1");
    EXPECT_LINE(out, "respguard_commands_total{user=\"dave\",category=\"read\",verdict=\"rate_limited\"} 1");
    assert_int_equal(count_prefix(out, "respguard_commands_total{"), 6);
    EXPECT_LINE(out, "respguard_rate_limited_commands_total{user=\"dave\"} 1");
    EXPECT_LINE(out, "respguard_anomalies_total{type=\"new_behaviour\",user=\"dave\"} 1");
    EXPECT_LINE(out, "respguard_anomalies_total{type=\"rate_spike\",user=\"alice\"} 2");
    EXPECT_LINE(out, "respguard_anomalies_total{type=\"auth_failure_burst\",user=\"\"} 3");
    EXPECT_LINE(out, "respguard_anomalies_total{type=\"denial_burst\",user=\"bob\"} 3");
    EXPECT_LINE(out, "respguard_anomalies_total{type=\"rate_spike\",user=\"carol\"} 0");
    free(out);

    /* A second growth keeps the counts of the users added by the first. */
    assert_int_equal(metrics_add_users(m, 1, (const char *const[]){"erin"}), 0);
    metrics_count_command(b, 4, MCAT_PUBSUB, MV_ALLOWED);
    metrics_count_anomaly(b, ANOMALY_CONNECTION_SURGE, 4);
    out = render(m, NULL, 0);
    check_exposition(out);
    EXPECT_LINE(out, "respguard_commands_total{user=\"carol\",category=\"write\",verdict=\"allowed\"} 2");
    EXPECT_LINE(out, "respguard_commands_total{user=\"dave\",category=\"admin\",verdict=\"denied\"} 1");
    EXPECT_LINE(out, "respguard_commands_total{user=\"erin\",category=\"pubsub\",verdict=\"allowed\"} 1");
    EXPECT_LINE(out, "respguard_anomalies_total{type=\"new_behaviour\",user=\"dave\"} 1");
    EXPECT_LINE(out, "respguard_anomalies_total{type=\"connection_surge\",user=\"erin\"} 1");
    EXPECT_LINE(out, "respguard_anomalies_total{type=\"connection_surge\",user=\"bob\"} 1");
    EXPECT_LINE(out, "respguard_anomalies_total{type=\"connection_surge\",user=\"\"} 1");
    EXPECT_LINE(out, "respguard_anomalies_total{type=\"denial_burst\",user=\"bob\"} 3");
    EXPECT_LINE(out, "respguard_anomalies_total{type=\"auth_failure_burst\",user=\"\"} 3");
    assert_int_equal(count_prefix(out, "respguard_anomalies_total{"), METRICS_ANOMALY_TYPES * 6);
    free(out);
    metrics_free(m);

    /* From no users at all (how a worker starts): the per-source counts are kept. */
    m = make(0, NULL, 1);
    a = metrics_shard(m, 0);
    for (int t = 0; t < METRICS_ANOMALY_TYPES; t++)
        for (int i = 0; i <= t; i++)
            metrics_count_anomaly(a, t, -1);
    assert_int_equal(metrics_add_users(m, 1, (const char *const[]){"web"}), 0);
    metrics_count_anomaly(a, ANOMALY_DENIAL_BURST, 0);
    metrics_count_command(a, 0, MCAT_OTHER, MV_ERROR);
    out = render(m, NULL, 0);
    check_exposition(out);
    for (int t = 0; t < METRICS_ANOMALY_TYPES; t++) {
        char line[160];
        snprintf(line, sizeof line, "respguard_anomalies_total{type=\"%s\",user=\"\"} %d",
                 anomaly_type_name((enum anomaly_type)t), t + 1);
        EXPECT_LINE(out, line);
        snprintf(line, sizeof line, "respguard_anomalies_total{type=\"%s\",user=\"web\"} %d",
                 anomaly_type_name((enum anomaly_type)t), t == ANOMALY_DENIAL_BURST);
        EXPECT_LINE(out, line);
    }
    EXPECT_LINE(out, "respguard_commands_total{user=\"web\",category=\"other\",verdict=\"error\"} 1");
    free(out);
    metrics_free(m);
}

/* A caller's value whose name ends in _total is a counter; anything else a gauge. */
static void test_caller_counters(void **state)
{
    (void)state;
    struct metrics *m = make(0, NULL, 1);
    const struct metrics_gauge g[] = {
        {"respguard_config_reloads_total", "Reloads by result.", "result", "ok", 3},
        {"respguard_config_reloads_total", NULL, "result", "failed", 1},
        {"respguard_config_last_reload_success", "Whether the last reload worked.", NULL, NULL, 1},
        {"respguard_total_users", "Not a counter: _total is not its end.", NULL, NULL, 2},
        {"respguard_subtotal", "Not a counter either.", NULL, NULL, 4},
        {"respguard_totals", "Nor this.", NULL, NULL, 5},
        {"respguard_restarts_total", "Unlabelled counter.", NULL, NULL, 0},
    };
    char *out = render(m, g, sizeof g / sizeof g[0]);
    check_exposition(out);
    EXPECT_LINE(out, "# TYPE respguard_config_reloads_total counter");
    assert_int_equal(count_prefix(out, "# TYPE respguard_config_reloads_total "), 1);
    EXPECT_LINE(out, "respguard_config_reloads_total{result=\"ok\"} 3");
    EXPECT_LINE(out, "respguard_config_reloads_total{result=\"failed\"} 1");
    EXPECT_LINE(out, "# TYPE respguard_config_last_reload_success gauge");
    EXPECT_LINE(out, "# TYPE respguard_total_users gauge");
    EXPECT_LINE(out, "# TYPE respguard_subtotal gauge");
    EXPECT_LINE(out, "# TYPE respguard_totals gauge");
    EXPECT_LINE(out, "# TYPE respguard_restarts_total counter");
    EXPECT_LINE(out, "respguard_restarts_total 0");
    free(out);
    metrics_free(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_checker_rejects),
        cmocka_unit_test(test_constants_and_names),
        cmocka_unit_test(test_new_and_shards),
        cmocka_unit_test(test_two_shards_summed),
        cmocka_unit_test(test_family_order),
        cmocka_unit_test(test_connection_gauges),
        cmocka_unit_test(test_histogram),
        cmocka_unit_test(test_pool_metrics),
        cmocka_unit_test(test_rest_metrics),
        cmocka_unit_test(test_label_escaping),
        cmocka_unit_test(test_category_of),
        cmocka_unit_test(test_upstream_failure),
        cmocka_unit_test(test_caller_gauges),
        cmocka_unit_test(test_exposition_format),
        cmocka_unit_test(test_add_users),
        cmocka_unit_test(test_caller_counters),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
