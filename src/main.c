/*
 * main: the command line, start-up, signals and shutdown.
 *
 *   respguard -c FILE              run
 *   respguard check -c FILE        validate the config and print what it sets up
 *   respguard passwd [--generate]  hash a secret (from stdin) for an ACL rule
 *
 * Start-up errors are fatal and say why; SIGTERM/SIGINT stop accepting, let replies in flight
 * drain within limits.shutdown_timeout, and exit 0. Under systemd (Type=notify) the manager hears
 * READY=1 once every listener is bound and STOPPING=1 when shutdown begins (notify.h).
 */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "respguard/acl.h"
#include "respguard/admin.h"
#include "respguard/anomaly.h"
#include "respguard/cmdtab.h"
#include "respguard/config.h"
#include "respguard/crypto.h"
#include "respguard/listener.h"
#include "respguard/log.h"
#include "respguard/metrics.h"
#include "respguard/notify.h"
#include "respguard/probe.h"
#include "respguard/ratelimit.h"
#include "respguard/resp.h"
#include "respguard/session.h"
#include "respguard/tlsconn.h"
#include "respguard/worker.h"

#ifndef RESPGUARD_VERSION
#define RESPGUARD_VERSION "dev"
#endif

static void usage(FILE *out)
{
    fprintf(out,
            "respguard %s: a TLS-enforcing Redis proxy with per-user ACLs\n"
            "\n"
            "usage:\n"
            "  respguard -c FILE | --config FILE   run with this configuration\n"
            "  respguard check -c FILE             validate the configuration, print what it sets up\n"
            "  respguard dryrun -c FILE USER COMMAND [ARG...]\n"
            "                                      print OK or the exact error USER would get (ACL DRYRUN)\n"
            "  respguard passwd                    read a secret on stdin, print its #<sha256> ACL form\n"
            "  respguard passwd --generate         make a random 256-bit secret, print it and its hash\n"
            "  respguard --version | --help\n"
            "\n"
            "Logs are JSON lines on stderr. SIGTERM/SIGINT drain and exit.\n",
            RESPGUARD_VERSION);
}

/* Everything built from a loaded config that the worker refers to. */
struct runtime {
    struct config *cfg;
    struct worker w;
    struct listener *listeners;
    struct tlsconn_ctx **listener_tls;
    uv_signal_t sig_term, sig_int, sig_hup;
    uv_timer_t second_timer;       /* once a second: anomalies, the end of rate-limit episodes */
    bool second_timer_started;
    struct metrics *metrics;
    struct admin *admin;           /* NULL unless the admin key is given */
    struct probe probe;            /* the upstream readiness probe (with admin) */
    bool probe_started;
    double config_loaded_at;       /* UTC epoch seconds */
    double config_load_seconds;
};

static int compile_users(struct runtime *rt, char *err, size_t errlen)
{
    struct config *cfg = rt->cfg;
    for (size_t i = 0; i < cfg->never_count; i++) {
        const char *g = cfg->never_by_category[i];
        if (!acl_command_known(g, strlen(g))) {
            if (cfg->never_pos)
                snprintf(err, errlen, "%s:%d:%d: guard.never_by_category[%zu]: unknown command '%s'", cfg->path,
                         cfg->never_pos[i][0], cfg->never_pos[i][1], i, g);
            else
                snprintf(err, errlen, "%s: guard.never_by_category: unknown command '%s'", cfg->path, g);
            return -EINVAL;
        }
    }
    rt->w.users = calloc(cfg->user_count ? cfg->user_count : 1, sizeof *rt->w.users);
    if (!rt->w.users)
        return -ENOMEM;
    for (size_t i = 0; i < cfg->user_count; i++) {
        const struct config_user *u = &cfg->users[i];
        char why[256];
        size_t off = 0;
        int rc = acl_user_compile(u->name, u->acl, (const char *const *)cfg->never_by_category, cfg->never_count,
                                  &rt->w.users[i], why, sizeof why, &off);
        rt->w.user_count = i + 1;
        if (rc != 0) {
            snprintf(err, errlen, "%s:%d:%d: users.%s.acl: %s", u->file ? u->file : cfg->path, u->acl_line,
                     u->acl_column + (int)off, u->name, rc == -EINVAL ? why : strerror(-rc));
            return rc;
        }
    }
    return 0;
}

/* Encode the command that logs an upstream connection in: AUTH [user] pass, or PING when there
 * is no password (it still proves the connection answers). */
static int encode_login(struct worker_login *out, const char *username, const char *password)
{
    struct resp_arg argv[3];
    size_t argc = 0;
    if (password) {
        argv[argc++] = (struct resp_arg){"AUTH", 4};
        if (username)
            argv[argc++] = (struct resp_arg){username, strlen(username)};
        argv[argc++] = (struct resp_arg){password, strlen(password)};
    } else {
        argv[argc++] = (struct resp_arg){"PING", 4};
    }
    size_t n = resp_encoded_size(argc, argv);
    out->cmd = malloc(n);
    if (!out->cmd)
        return -ENOMEM;
    out->len = resp_encode_command(out->cmd, argc, argv);
    return 0;
}

/* The upstream logins: the URL's credential, then each named credential; and which one each
 * user's sessions use (upstream_credential). */
static int build_upstream_logins(struct runtime *rt)
{
    const struct config_upstream *up = &rt->cfg->upstream;
    size_t n = 1 + up->credential_count;
    rt->w.upstream_logins = calloc(n, sizeof *rt->w.upstream_logins);
    rt->w.user_login = calloc(rt->cfg->user_count ? rt->cfg->user_count : 1, sizeof *rt->w.user_login);
    if (!rt->w.upstream_logins || !rt->w.user_login)
        return -ENOMEM;
    rt->w.upstream_login_count = n;
    if (encode_login(&rt->w.upstream_logins[0], up->username, up->password) != 0)
        return -ENOMEM;
    for (size_t i = 0; i < up->credential_count; i++)
        if (encode_login(&rt->w.upstream_logins[i + 1], up->credentials[i].username, up->credentials[i].password) != 0)
            return -ENOMEM;
    for (size_t u = 0; u < rt->cfg->user_count; u++) {
        const char *cred = rt->cfg->users[u].upstream_credential;
        for (size_t i = 0; cred && i < up->credential_count; i++)
            if (strcmp(up->credentials[i].name, cred) == 0)
                rt->w.user_login[u] = i + 1;
    }
    return 0;
}

static int build_tls(struct runtime *rt, char *err, size_t errlen)
{
    struct config *cfg = rt->cfg;
    char why[512];
    rt->w.upstream_tls = tlsconn_ctx_new_client(cfg->upstream.ca_file, why, sizeof why);
    if (!rt->w.upstream_tls) {
        snprintf(err, errlen, "upstream TLS: %s", why);
        return -EINVAL;
    }
    rt->w.upstream_verify_name = cfg->upstream.server_name ? cfg->upstream.server_name : cfg->upstream.host;
    rt->listener_tls = calloc(cfg->listener_count, sizeof *rt->listener_tls);
    if (!rt->listener_tls)
        return -ENOMEM;
    for (size_t i = 0; i < cfg->listener_count; i++) {
        const struct config_listener *l = &cfg->listeners[i];
        if (!l->tls_enabled)
            continue;
        rt->listener_tls[i] = tlsconn_ctx_new_server(l->tls.cert_file, l->tls.key_file, l->tls.client_ca_file,
                                                     why, sizeof why);
        if (!rt->listener_tls[i]) {
            snprintf(err, errlen, "listener %s: %s", l->bind, why);
            return -EINVAL;
        }
    }
    return 0;
}

static void runtime_free(struct runtime *rt)
{
    worker_free(&rt->w);
    for (size_t i = 0; i < rt->w.user_count; i++)
        acl_user_deinit(&rt->w.users[i]);
    free(rt->w.users);
    for (size_t i = 0; rt->w.upstream_logins && i < rt->w.upstream_login_count; i++) {
        crypto_wipe(rt->w.upstream_logins[i].cmd, rt->w.upstream_logins[i].len);
        free(rt->w.upstream_logins[i].cmd);
    }
    free(rt->w.upstream_logins);
    free(rt->w.user_login);
    if (rt->w.upstream_tls)
        tlsconn_ctx_free(rt->w.upstream_tls);
    if (rt->listener_tls) {
        for (size_t i = 0; i < rt->cfg->listener_count; i++)
            if (rt->listener_tls[i])
                tlsconn_ctx_free(rt->listener_tls[i]);
        free(rt->listener_tls);
    }
    free(rt->listeners);
    anomaly_free(rt->w.anomaly);
    lockout_free(rt->w.lockout);
    free(rt->w.rates);
    metrics_free(rt->metrics);
    config_free(rt->cfg);
}

/* Load, compile and build everything the config describes; print the first error. */
static int prepare(struct runtime *rt, const char *path)
{
    char err[1024];
    struct timespec t0, t1;
    memset(rt, 0, sizeof *rt);
    clock_gettime(CLOCK_MONOTONIC, &t0);
    if (config_load(path, &rt->cfg, err, sizeof err) != 0) {
        fprintf(stderr, "%s\n", err);
        return -1;
    }
    rt->w.cfg = rt->cfg;
    if (compile_users(rt, err, sizeof err) != 0 || build_upstream_logins(rt) != 0 ||
        build_tls(rt, err, sizeof err) != 0) {
        fprintf(stderr, "%s\n", err[0] ? err : "out of memory");
        runtime_free(rt);
        return -1;
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    rt->config_loaded_at = (double)time(NULL);
    rt->config_load_seconds = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    return 0;
}

/* ---------------------------------------------------------------------------------------- */
/* check                                                                                     */
/* ---------------------------------------------------------------------------------------- */

static int cmd_check(const char *path)
{
    struct runtime rt;
    if (prepare(&rt, path) != 0)
        return 1;
    const struct config *cfg = rt.cfg;
    printf("config %s: ok\n", path);
    for (size_t i = 0; i < cfg->listener_count; i++) {
        const struct config_listener *l = &cfg->listeners[i];
        printf("listener %s %s%s%s\n", l->bind, l->tls_enabled ? "tls" : "plaintext",
               l->tls_enabled && l->tls.client_ca_file ? " client-certificates-required" : "",
               l->allow_from.count ? " allow_from" : "");
    }
    printf("upstream rediss://%s:%u verify-name %s ca %s%s\n", cfg->upstream.host, (unsigned)cfg->upstream.port,
           rt.w.upstream_verify_name, cfg->upstream.ca_file ? cfg->upstream.ca_file : "system",
           cfg->upstream.password ? " login" : "");
    const struct config_pool *pc = &cfg->upstream.pool;
    printf("upstream pool %s size %llu min_idle %llu idle_timeout %llums max_lifetime %llums keepalive %llums "
           "acquire_timeout %llums (per credential: %zu)\n",
           pc->mode == CONFIG_POOL_MULTIPLEX ? "multiplex" : "session", (unsigned long long)pc->size,
           (unsigned long long)pc->min_idle, (unsigned long long)pc->idle_timeout_ms,
           (unsigned long long)pc->max_lifetime_ms, (unsigned long long)pc->keepalive_ms,
           (unsigned long long)pc->acquire_timeout_ms, 1 + cfg->upstream.credential_count);
    for (size_t i = 0; i < rt.w.user_count; i++) {
        const struct acl_user *u = &rt.w.users[i];
        const struct config_rate_limit *rl = &cfg->users[i].rate_limit;
        printf("user %s %s %s", u->name, u->enabled ? "on" : "off",
               u->nopass ? "nopass" : u->hash_count ? "password" : "no-password-set");
        if (rl->enabled)
            printf(" rate-limit %g/s burst %g", rl->rate, rl->burst);
        printf("\n");
    }
    const struct config_login_lockout *lo = &cfg->limits.login_lockout;
    if (lo->enabled)
        printf("login-lockout %u failures within %llums for %llums\n", (unsigned)lo->failures,
               (unsigned long long)lo->window_ms, (unsigned long long)lo->duration_ms);
    if (cfg->admin.enabled)
        printf("admin http://%s /metrics /healthz /readyz, upstream probe every %llums\n", cfg->admin.listen.bind,
               (unsigned long long)cfg->admin.probe_interval_ms);
    printf("guard never_by_category:");
    for (size_t i = 0; i < cfg->never_count; i++)
        printf(" %s", cfg->never_by_category[i]);
    printf("\n");
    runtime_free(&rt);
    return 0;
}

/* ---------------------------------------------------------------------------------------- */
/* dryrun                                                                                    */
/* ---------------------------------------------------------------------------------------- */

/* Like ACL DRYRUN: what would USER get for this command? Prints OK or the exact error. */
static int cmd_dryrun(const char *path, int argc, char **argv)
{
    struct runtime rt;
    if (prepare(&rt, path) != 0)
        return 2;
    const struct acl_user *u = worker_find_user(&rt.w, argv[0], strlen(argv[0]));
    if (!u) {
        fprintf(stderr, "respguard: no user '%s' in %s\n", argv[0], path);
        runtime_free(&rt);
        return 2;
    }
    size_t n = (size_t)argc - 1;
    struct resp_arg *args = calloc(n, sizeof *args);
    struct cmdtab_key *keys = calloc(n, sizeof *keys);
    struct cmdtab_channel *chans = calloc(n, sizeof *chans);
    int status = 2;
    if (args && keys && chans) {
        for (size_t i = 0; i < n; i++)
            args[i] = (struct resp_arg){argv[i + 1], strlen(argv[i + 1])};
        struct acl_verdict v;
        if (acl_check_ex(u, n, args, &v, keys, chans, n) == 0) {
            if (v.result == ACL_OK_APPEND_MATCH)
                printf("OK (respguard appends MATCH %.*s)\n", (int)v.match_len, v.match);
            else if (v.result == ACL_OK_SCOPED)
                printf("OK (respguard answers its scoped form)\n");
            else
                printf("OK\n");
            status = 0;
        } else {
            char line[ACL_ERROR_MAX];
            acl_verdict_error(&v, n, args, line, sizeof line);
            printf("%s\n", line);
            status = 1;
        }
    }
    free(args);
    free(keys);
    free(chans);
    runtime_free(&rt);
    return status;
}

/* ---------------------------------------------------------------------------------------- */
/* passwd                                                                                    */
/* ---------------------------------------------------------------------------------------- */

static int cmd_passwd(bool generate)
{
    char secret[4096];
    size_t n = 0;
    if (generate) {
        static const char hex[] = "0123456789abcdef";
        unsigned char raw[32];
        if (crypto_random(raw, sizeof raw) != 0) {
            fprintf(stderr, "respguard: no random bytes available\n");
            return 1;
        }
        for (size_t i = 0; i < sizeof raw; i++) {
            secret[2 * i] = hex[raw[i] >> 4];
            secret[2 * i + 1] = hex[raw[i] & 15];
        }
        n = 2 * sizeof raw;
        crypto_wipe(raw, sizeof raw);
    } else {
        n = fread(secret, 1, sizeof secret, stdin);
        if (n == sizeof secret) {
            fprintf(stderr, "respguard: secret too long\n");
            return 1;
        }
        if (n && secret[n - 1] == '\n')
            n--;
        if (n && secret[n - 1] == '\r')
            n--;
        if (n == 0) {
            fprintf(stderr, "respguard: empty secret on stdin\n");
            return 1;
        }
    }
    char hash[66];
    acl_hash_password(secret, n, hash);
    if (generate)
        printf("secret: %.*s\nacl: %s\n", (int)n, secret, hash);
    else
        printf("%s\n", hash);
    crypto_wipe(secret, sizeof secret);
    return 0;
}

/* ---------------------------------------------------------------------------------------- */
/* run                                                                                       */
/* ---------------------------------------------------------------------------------------- */

/* One JSON line per anomaly onset and recovery: never one per command. */
static void log_anomaly(const struct anomaly_event *ev, void *ctx)
{
    struct runtime *rt = ctx;
    const char *user = ev->user >= 0 && (size_t)ev->user < rt->w.user_count ? rt->w.users[ev->user].name : NULL;
    log_event(ev->phase == ANOMALY_ONSET ? LOG_WARN : LOG_INFO, "anomaly",
              LOG_STR("type", anomaly_type_name(ev->type)), LOG_STR("phase", anomaly_phase_name(ev->phase)),
              LOG_STR("user", user), LOG_STR("source", ev->source[0] ? ev->source : NULL),
              LOG_STR("category", ev->category), LOG_NUM("observed", ev->observed),
              LOG_NUM("baseline", ev->baseline), LOG_NUM("threshold", ev->threshold), LOG_NUM("peak", ev->peak),
              LOG_INT("duration_s", (long long)ev->duration_s), LOG_END);
    if (ev->phase == ANOMALY_ONSET)
        metrics_count_anomaly(rt->w.metrics, (int)ev->type, ev->user);
}

static void on_second(uv_timer_t *t)
{
    struct runtime *rt = t->data;
    uint64_t now = uv_now(rt->w.loop);
    if (rt->w.anomaly)
        anomaly_tick(rt->w.anomaly, now, log_anomaly, rt);
    worker_rate_limit_tick(&rt->w, now);
    session_trim_idle(&rt->w, now);
}

/* The detector, with a random seed for its source table. 0, or -1 after printing why. */
static int start_anomaly(struct runtime *rt)
{
    if (!rt->cfg->anomaly_enabled)
        return 0;
    struct anomaly_config ac = rt->cfg->anomaly;
    if (crypto_random(&ac.hash_seed, sizeof ac.hash_seed) != 0 ||
        anomaly_new(&ac, rt->w.user_count, &rt->w.anomaly) != 0) {
        fprintf(stderr, "respguard: cannot start the anomaly detector\n");
        return -1;
    }
    return 0;
}

static void start_second_timer(struct runtime *rt)
{
    uv_timer_init(rt->w.loop, &rt->second_timer);
    rt->second_timer.data = rt;
    uv_timer_start(&rt->second_timer, on_second, 1000, 1000);
    rt->second_timer_started = true;
}

/* Metrics (one shard: one worker), the users' rate-limit buckets and the login lockout table.
 * 0, or -1 after printing why. */
static int start_enforcement(struct runtime *rt)
{
    const char **names = calloc(rt->w.user_count ? rt->w.user_count : 1, sizeof *names);
    if (!names)
        goto oom;
    for (size_t i = 0; i < rt->w.user_count; i++)
        names[i] = rt->w.users[i].name;
    int rc = metrics_new(rt->w.user_count, names, 1, &rt->metrics);
    free(names);
    if (rc != 0)
        goto oom;
    rt->w.metrics = metrics_shard(rt->metrics, 0);
    rt->w.rates = calloc(rt->w.user_count ? rt->w.user_count : 1, sizeof *rt->w.rates);
    if (!rt->w.rates)
        goto oom;
    const struct config_login_lockout *lo = &rt->cfg->limits.login_lockout;
    if (lo->enabled) {
        /* The whole source may fail ten times as often as one name: a few apps with stale
         * passwords behind one address are not locked out together, a name sprayer is. */
        uint64_t source_max = (uint64_t)lo->failures * 10;
        struct lockout_config lc = {.max_failures = lo->failures,
                                    .source_max_failures = source_max > UINT32_MAX ? UINT32_MAX : (uint32_t)source_max,
                                    .window_ms = lo->window_ms,
                                    .duration_ms = lo->duration_ms, .table_size = 4096};
        if (crypto_random(&lc.hash_seed, sizeof lc.hash_seed) != 0 || lockout_new(&lc, &rt->w.lockout) != 0)
            goto oom;
    }
    return 0;
oom:
    fprintf(stderr, "respguard: out of memory\n");
    return -1;
}

/* The probe's verdict goes to /readyz; the log hears about changes only. */
static void on_probe(const struct probe_result *r, void *ctx)
{
    struct runtime *rt = ctx;
    metrics_inc(rt->w.metrics, r->ok ? MC_PROBE_OK : MC_PROBE_FAILED);
    if (!r->ok)
        metrics_inc(rt->w.metrics, metrics_upstream_failure(r->stage, r->reason));
    time_t not_after = r->has_cert_expiry ? time(NULL) + (time_t)r->cert_seconds_left : 0;
    char reason[200];
    snprintf(reason, sizeof reason, "%s: %s", r->stage ? r->stage : "", r->reason ? r->reason : "");
    if (!admin_set_upstream(rt->admin, r->ok, r->ok ? NULL : reason, not_after))
        return;
    if (r->ok)
        log_event(LOG_INFO, "upstream_probe", LOG_STR("result", "ok"), LOG_END);
    else
        log_event(LOG_WARN, "upstream_probe", LOG_STR("result", "fail"), LOG_STR("stage", r->stage),
                  LOG_STR("reason", r->reason), LOG_END);
}

/* The admin listener and, for its /readyz, the upstream probe. 0, or -1 after printing why. */
static int start_admin(struct runtime *rt)
{
    const struct config *cfg = rt->cfg;
    if (!cfg->admin.enabled)
        return 0;
    struct admin_cert *certs = calloc(cfg->listener_count + 1, sizeof *certs);
    char (*names)[300] = calloc(cfg->listener_count + 1, sizeof *names);
    size_t n = 0;
    if (!certs || !names) {
        free(certs);
        free(names);
        fprintf(stderr, "respguard: out of memory\n");
        return -1;
    }
    for (size_t i = 0; i < cfg->listener_count; i++) {
        long long left;
        const struct config_listener *l = &cfg->listeners[i];
        if (!l->tls_enabled || tlsconn_cert_file_expiry(l->tls.cert_file, &left) != 0)
            continue;
        snprintf(names[n], sizeof names[n], "listener %s", l->bind);
        certs[n] = (struct admin_cert){.name = names[n], .not_after = time(NULL) + (time_t)left};
        n++;
    }
    struct admin_start_info info = {.cfg = cfg, .metrics = rt->metrics, .config_loaded_at = rt->config_loaded_at,
                                    .config_load_seconds = rt->config_load_seconds, .certs = certs,
                                    .cert_count = n};
    char err[300];
    int rc = admin_start(&info, &rt->admin, err, sizeof err);
    free(certs);
    free(names);
    if (rc != 0) {
        log_event(LOG_ERROR, "listen_error", LOG_STR("reason", err), LOG_END);
        fprintf(stderr, "respguard: %s\n", err);
        return -1;
    }
    log_event(LOG_INFO, "listening", LOG_STR("bind", cfg->admin.listen.bind), LOG_STR("role", "admin"), LOG_END);
    if (probe_start(&rt->probe, &rt->w, cfg->admin.probe_interval_ms, on_probe, rt) != 0) {
        fprintf(stderr, "respguard: cannot start the upstream probe\n");
        return -1;
    }
    rt->probe_started = true;
    return 0;
}

static void close_signals(struct runtime *rt)
{
    if (rt->probe_started)
        probe_stop(&rt->probe);
    if (rt->second_timer_started && !uv_is_closing((uv_handle_t *)&rt->second_timer)) {
        worker_rate_limit_tick(&rt->w, uv_now(rt->w.loop) + 1000); /* episodes still open end now */
        uv_close((uv_handle_t *)&rt->second_timer, NULL);
    }
    uv_close((uv_handle_t *)&rt->sig_term, NULL);
    uv_close((uv_handle_t *)&rt->sig_int, NULL);
    uv_close((uv_handle_t *)&rt->sig_hup, NULL);
}

static void on_all_drained(struct worker *w)
{
    struct runtime *rt = (struct runtime *)((char *)w - offsetof(struct runtime, w));
    if (!uv_is_closing((uv_handle_t *)&w->shutdown_timer)) {
        uv_timer_stop(&w->shutdown_timer);
        uv_close((uv_handle_t *)&w->shutdown_timer, NULL);
        close_signals(rt);
        worker_close_turn(w);
    }
}

static void on_shutdown_timeout(uv_timer_t *t)
{
    struct worker *w = t->data;
    log_event(LOG_WARN, "shutdown", LOG_STR("phase", "timeout"), LOG_INT("sessions", (long long)w->session_count),
              LOG_END);
    worker_close_sessions(w);
}

static void begin_shutdown(struct runtime *rt, const char *signame)
{
    struct worker *w = &rt->w;
    if (w->shutting_down)
        return;
    w->shutting_down = true;
    notify_stopping();
    admin_set_draining(rt->admin);
    if (rt->probe_started)
        probe_stop(&rt->probe);
    log_event(LOG_INFO, "shutdown", LOG_STR("phase", "begin"), LOG_STR("signal", signame),
              LOG_INT("sessions", (long long)w->session_count), LOG_END);
    for (size_t i = 0; i < rt->cfg->listener_count; i++)
        listener_stop(&rt->listeners[i], NULL);
    worker_stop_pools(w);
    uv_timer_init(w->loop, &w->shutdown_timer);
    w->shutdown_timer.data = w;
    uv_timer_start(&w->shutdown_timer, on_shutdown_timeout, rt->cfg->limits.shutdown_timeout_ms, 0);
    if (w->session_count == 0)
        on_all_drained(w);
    else
        worker_drain_sessions(w);
}

static void on_signal(uv_signal_t *h, int signum)
{
    struct runtime *rt = h->data;
    if (signum == SIGHUP) {
        /* Reload hook: when reload exists it goes notify_reloading(), build and swap the new
         * snapshot, then notify_ready() whatever the outcome (the unit's ExecReload sends
         * SIGHUP). Until then the signal is only logged. */
        log_event(LOG_WARN, "reload", LOG_STR("result", "unsupported"),
                  LOG_STR("reason", "configuration reload is not implemented yet; restart to apply changes"),
                  LOG_END);
        return;
    }
    begin_shutdown(rt, signum == SIGTERM ? "SIGTERM" : "SIGINT");
}

static int cmd_run(const char *path)
{
    struct runtime rt;
    if (prepare(&rt, path) != 0)
        return 1;
    log_set_level((enum log_level)rt.cfg->log_level);
    signal(SIGPIPE, SIG_IGN);

    uv_loop_t loop;
    if (uv_loop_init(&loop) != 0) {
        fprintf(stderr, "respguard: cannot create the event loop\n");
        runtime_free(&rt);
        return 1;
    }
    rt.w.loop = &loop;
    rt.w.on_drained = on_all_drained;
    log_event(LOG_INFO, "start", LOG_STR("version", RESPGUARD_VERSION), LOG_STR("config", path),
              LOG_INT("pid", getpid()), LOG_END);

    rt.listeners = calloc(rt.cfg->listener_count, sizeof *rt.listeners);
    int status = start_enforcement(&rt) == 0 ? 0 : 1;
    if (status == 0 && worker_start(&rt.w) != 0) {
        fprintf(stderr, "respguard: cannot start the upstream pools\n");
        status = 1;
    }
    for (size_t i = 0; status == 0 && rt.listeners && i < rt.cfg->listener_count; i++) {
        char err[256];
        rt.listeners[i].tls_ctx = rt.listener_tls[i];
        if (listener_start(&rt.listeners[i], &rt.w, &rt.cfg->listeners[i], err, sizeof err) != 0) {
            log_event(LOG_ERROR, "listen_error", LOG_STR("reason", err), LOG_END);
            fprintf(stderr, "respguard: %s\n", err);
            status = 1;
            break;
        }
        log_event(LOG_INFO, "listening", LOG_STR("bind", rt.listeners[i].bound),
                  LOG_BOOL("tls", rt.cfg->listeners[i].tls_enabled), LOG_END);
    }
    if (!rt.listeners)
        status = 1;
    if (status == 0 && start_anomaly(&rt) != 0)
        status = 1;
    if (status == 0)
        start_second_timer(&rt);
    if (status == 0 && start_admin(&rt) != 0)
        status = 1;

    uv_signal_init(&loop, &rt.sig_term);
    uv_signal_init(&loop, &rt.sig_int);
    uv_signal_init(&loop, &rt.sig_hup);
    rt.sig_term.data = rt.sig_int.data = rt.sig_hup.data = &rt;
    if (status == 0) {
        uv_signal_start(&rt.sig_term, on_signal, SIGTERM);
        uv_signal_start(&rt.sig_int, on_signal, SIGINT);
        uv_signal_start(&rt.sig_hup, on_signal, SIGHUP);
        log_event(LOG_INFO, "ready", LOG_INT("listeners", (long long)rt.cfg->listener_count), LOG_END);
        notify_ready();
        uv_run(&loop, UV_RUN_DEFAULT);
    } else {
        for (size_t i = 0; rt.listeners && i < rt.cfg->listener_count; i++)
            listener_stop(&rt.listeners[i], NULL);
        close_signals(&rt);
        worker_stop_pools(&rt.w);
        worker_close_turn(&rt.w);
        uv_run(&loop, UV_RUN_DEFAULT);
    }
    admin_stop(rt.admin); /* after the loop: scrapes keep working while sessions drain */
    rt.admin = NULL;
    int rc = uv_loop_close(&loop);
    if (rc != 0) {
        log_event(LOG_ERROR, "shutdown", LOG_STR("phase", "end"), LOG_STR("reason", "handles left open"), LOG_END);
        status = status ? status : 1;
    } else if (status == 0) {
        log_event(LOG_INFO, "shutdown", LOG_STR("phase", "end"), LOG_END);
    }
    runtime_free(&rt);
    return status;
}

int main(int argc, char **argv)
{
    if (argc >= 2 && strcmp(argv[1], "passwd") == 0) {
        bool generate = argc >= 3 && strcmp(argv[2], "--generate") == 0;
        if (argc > 3 || (argc == 3 && !generate)) {
            usage(stderr);
            return 2;
        }
        return cmd_passwd(generate);
    }
    bool check = false, dryrun = false;
    int first = 1;
    if (argc >= 2 && strcmp(argv[1], "check") == 0) {
        check = true;
        first = 2;
    } else if (argc >= 2 && strcmp(argv[1], "dryrun") == 0) {
        dryrun = true;
        first = 2;
    }
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'},
        {"help", no_argument, NULL, 'h'},
        {"version", no_argument, NULL, 'V'},
        {NULL, 0, NULL, 0},
    };
    const char *path = NULL;
    optind = first;
    int c;
    /* dryrun's USER COMMAND ARGS may look like options ("-1"): stop at the first non-option. */
    while ((c = getopt_long(argc, argv, dryrun ? "+c:hV" : "c:hV", opts, NULL)) != -1) {
        switch (c) {
        case 'c':
            path = optarg;
            break;
        case 'h':
            usage(stdout);
            return 0;
        case 'V':
            printf("respguard %s\n", RESPGUARD_VERSION);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (dryrun) {
        if (!path || argc - optind < 2) {
            usage(stderr);
            return 2;
        }
        return cmd_dryrun(path, argc - optind, argv + optind);
    }
    if (!path || optind != argc) {
        usage(stderr);
        return 2;
    }
    return check ? cmd_check(path) : cmd_run(path);
}
