/*
 * main: the command line, start-up, signals and shutdown.
 *
 *   respguard -c FILE              run
 *   respguard check -c FILE        validate the config and print what it sets up
 *   respguard passwd [--generate]  hash a secret (from stdin) for an ACL rule
 *
 * Start-up errors are fatal and say why; SIGTERM/SIGINT stop accepting, let replies in flight
 * drain within limits.shutdown_timeout, and exit 0. SIGHUP (and, with `watch: yes`, a change to
 * the configuration or a file it names) reloads the configuration without dropping a client.
 * Under systemd (Type=notify) the manager hears READY=1 once every listener is bound,
 * RELOADING=1 then READY=1 around each reload, and STOPPING=1 when shutdown begins (notify.h).
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
#include "respguard/rest.h"
#include "respguard/ratelimit.h"
#include "respguard/resp.h"
#include "respguard/session.h"
#include "respguard/snapshot.h"
#include "respguard/tlsconn.h"
#include "respguard/watch.h"
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

/* The running process: the worker (which holds the configuration snapshot in use) and what
 * main owns around it: signals, the once-a-second timer, the admin listener and its probe, and
 * the config watch. */
struct runtime {
    const char *path;              /* the configuration file, read again by each reload */
    struct worker w;
    struct snapshot *boot;         /* the snapshot respguard started with: what keys that need a
                                      restart are compared against (a reference) */
    struct snapshot *admin_snap;   /* whose admin.allow_from is in force (a reference) */
    uv_signal_t sig_term, sig_int, sig_hup;
    uv_timer_t second_timer;       /* once a second: anomalies, the end of rate-limit episodes */
    bool second_timer_started;
    struct admin *admin;           /* NULL unless the admin key is given */
    struct probe probe;            /* the upstream readiness probe (with admin) */
    bool probe_started;
    struct watch watch;            /* watch: yes */
    struct rest_server *rest;      /* the rest: listeners (rest.h) */
    size_t rest_count;
};

/* Build the snapshot at path, printing the first error. */
static struct snapshot *load(const char *path)
{
    char err[1024];
    struct snapshot *snap;
    if (snapshot_build(path, &snap, err, sizeof err) != 0 || rest_check_tls(snap, err, sizeof err) != 0) {
        fprintf(stderr, "%s\n", err);
        snapshot_unref(snap);
        return NULL;
    }
    return snap;
}

/* ---------------------------------------------------------------------------------------- */
/* check                                                                                     */
/* ---------------------------------------------------------------------------------------- */

static int cmd_check(const char *path)
{
    struct snapshot *snap = load(path);
    if (!snap)
        return 1;
    const struct config *cfg = snap->cfg;
    printf("config %s: ok\n", path);
    for (size_t i = 0; i < cfg->listener_count; i++) {
        const struct config_listener *l = &cfg->listeners[i];
        printf("listener %s %s%s%s\n", l->bind, l->tls_enabled ? "tls" : "plaintext",
               l->tls_enabled && l->tls.client_ca_file ? " client-certificates-required" : "",
               l->allow_from.count ? " allow_from" : "");
    }
    printf("upstream rediss://%s:%u verify-name %s ca %s%s\n", cfg->upstream.host, (unsigned)cfg->upstream.port,
           snap->upstream_verify_name, cfg->upstream.ca_file ? cfg->upstream.ca_file : "system",
           cfg->upstream.password ? " login" : "");
    const struct config_pool *pc = &cfg->upstream.pool;
    printf("upstream pool %s size %llu min_idle %llu idle_timeout %llums max_lifetime %llums keepalive %llums "
           "acquire_timeout %llums (per credential: %zu)\n",
           pc->mode == CONFIG_POOL_MULTIPLEX ? "multiplex" : "session", (unsigned long long)pc->size,
           (unsigned long long)pc->min_idle, (unsigned long long)pc->idle_timeout_ms,
           (unsigned long long)pc->max_lifetime_ms, (unsigned long long)pc->keepalive_ms,
           (unsigned long long)pc->acquire_timeout_ms, 1 + cfg->upstream.credential_count);
    for (size_t i = 0; i < snap->user_count; i++) {
        const struct acl_user *u = &snap->users[i];
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
    if (cfg->watch)
        printf("watch %zu files for changes (reload)\n", 1 + cfg->file_count);
    snapshot_unref(snap);
    return 0;
}

/* ---------------------------------------------------------------------------------------- */
/* dryrun                                                                                    */
/* ---------------------------------------------------------------------------------------- */

/* Like ACL DRYRUN: what would USER get for this command? Prints OK or the exact error. */
static int cmd_dryrun(const char *path, int argc, char **argv)
{
    struct snapshot *snap = load(path);
    if (!snap)
        return 2;
    const struct acl_user *u = snapshot_find_user(snap, argv[0], strlen(argv[0]));
    if (!u) {
        fprintf(stderr, "respguard: no user '%s' in %s\n", argv[0], path);
        snapshot_unref(snap);
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
    snapshot_unref(snap);
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
    const char *user = ev->user >= 0 && (size_t)ev->user < rt->w.slot_count ? rt->w.slot_names[ev->user] : NULL;
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

static void start_second_timer(struct runtime *rt)
{
    uv_timer_init(rt->w.loop, &rt->second_timer);
    rt->second_timer.data = rt;
    uv_timer_start(&rt->second_timer, on_second, 1000, 1000);
    rt->second_timer_started = true;
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

/* What the admin listener says about the configuration in use: allow_from, the listeners'
 * certificates' expiry, when it was loaded. 0, or -1 when out of memory. */
static int admin_config(struct runtime *rt, int (*apply)(struct runtime *rt, const struct admin_config_info *info))
{
    const struct snapshot *snap = rt->w.snap;
    const struct config *cfg = snap->cfg;
    struct admin_cert *certs = calloc(cfg->listener_count + 1, sizeof *certs);
    char (*names)[300] = calloc(cfg->listener_count + 1, sizeof *names);
    int rc = -1;
    if (certs && names) {
        size_t n = 0;
        for (size_t i = 0; i < cfg->listener_count; i++) {
            long long left;
            const struct config_listener *l = &cfg->listeners[i];
            if (!l->tls_enabled || tlsconn_cert_file_expiry(l->tls.cert_file, &left) != 0)
                continue;
            snprintf(names[n], sizeof names[n], "listener %s", l->bind);
            certs[n] = (struct admin_cert){.name = names[n], .not_after = time(NULL) + (time_t)left};
            n++;
        }
        char upstream[300];
        snprintf(upstream, sizeof upstream, "upstream %s:%u", worker_verify_name(&rt->w),
                 (unsigned)rt->w.upstream_port);
        /* allow_from goes with the bind it was checked against (a non-loopback bind needs one):
         * a file whose admin bind differs from the running one leaves both as they are. */
        const struct config_admin *boot = &rt->boot->cfg->admin;
        if (cfg->admin.enabled && config_same_address(&cfg->admin.listen, &boot->listen)) {
            snapshot_unref(rt->admin_snap);
            rt->admin_snap = snapshot_ref(rt->w.snap);
        }
        struct admin_config_info info = {.allow_from = &rt->admin_snap->cfg->admin.allow_from, .certs = certs,
                                         .cert_count = n, .upstream_name = upstream,
                                         .loaded_at = snap->loaded_at, .load_seconds = snap->load_seconds};
        rc = apply(rt, &info);
    }
    free(certs);
    free(names);
    return rc;
}

static int admin_begin(struct runtime *rt, const struct admin_config_info *info)
{
    struct admin_start_info start = {.admin = &rt->boot->cfg->admin, .metrics = rt->w.metrics_all,
                                     .config = *info};
    char err[300];
    if (admin_start(&start, &rt->admin, err, sizeof err) == 0)
        return 0;
    log_event(LOG_ERROR, "listen_error", LOG_STR("reason", err), LOG_END);
    fprintf(stderr, "respguard: %s\n", err);
    return 1; /* reported */
}

static int admin_update(struct runtime *rt, const struct admin_config_info *info)
{
    return admin_set_config(rt->admin, info);
}

/* The admin listener and, for its /readyz, the upstream probe. 0, or -1 after printing why. */
static int start_admin(struct runtime *rt)
{
    const struct config *cfg = rt->w.snap->cfg;
    if (!cfg->admin.enabled)
        return 0;
    int rc = admin_config(rt, admin_begin);
    if (rc != 0) {
        if (rc < 0)
            fprintf(stderr, "respguard: out of memory\n");
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
    watch_close(&rt->watch);
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
    struct runtime *rt = (struct runtime *)((char *)w - offsetof(struct runtime, w));
    log_event(LOG_WARN, "shutdown", LOG_STR("phase", "timeout"), LOG_INT("sessions", (long long)w->session_count),
              LOG_END);
    rest_close(rt->rest, rt->rest_count);
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
    watch_close(&rt->watch);
    log_event(LOG_INFO, "shutdown", LOG_STR("phase", "begin"), LOG_STR("signal", signame),
              LOG_INT("sessions", (long long)w->session_count), LOG_END);
    for (size_t i = 0; i < w->listener_count; i++)
        listener_stop(&w->listeners[i], NULL);
    worker_stop_pools(w);
    uv_timer_init(w->loop, &w->shutdown_timer);
    w->shutdown_timer.data = w;
    uv_timer_start(&w->shutdown_timer, on_shutdown_timeout, w->snap->cfg->limits.shutdown_timeout_ms, 0);
    rest_drain(rt->rest, rt->rest_count);
    worker_drain_sessions(w);
    worker_check_drained(w);
}

/* ---------------------------------------------------------------------------------------- */
/* reload                                                                                    */
/* ---------------------------------------------------------------------------------------- */

static void reload_failed(struct runtime *rt, const char *trigger, const char *reason, double at)
{
    log_event(LOG_ERROR, "reload", LOG_STR("result", "failed"), LOG_STR("trigger", trigger),
              LOG_STR("reason", reason), LOG_END);
    admin_record_reload(rt->admin, false, at);
}

/* Read the configuration again and, if all of it is valid, run under it: see worker_install for
 * what changes. Otherwise the running configuration stays and the error is logged with its
 * place. Under systemd the manager hears RELOADING=1, then READY=1 whatever the outcome. */
static void reload(struct runtime *rt, const char *trigger)
{
    if (rt->w.shutting_down)
        return;
    notify_reloading();
    double at = (double)time(NULL);
    char err[1024];
    struct snapshot *next;
    if (snapshot_build(rt->path, &next, err, sizeof err) != 0) {
        reload_failed(rt, trigger, err, at);
        notify_ready();
        return;
    }
    if (rest_check_tls(next, err, sizeof err) != 0) {
        snapshot_unref(next);
        reload_failed(rt, trigger, err, at);
        notify_ready();
        return;
    }
    char keys[512];
    size_t restart = config_restart_keys(rt->boot->cfg, next->cfg, keys, sizeof keys);
    struct worker_reload_result r;
    if (worker_install(&rt->w, next, &r, err, sizeof err) != 0) {
        reload_failed(rt, trigger, err, at);
        notify_ready();
        return;
    }
    const struct config *cfg = rt->w.snap->cfg;
    rest_reload(rt->rest, rt->rest_count, rt->w.snap);
    log_set_level((enum log_level)cfg->log_level);
    if (restart)
        log_event(LOG_WARN, "reload_restart_required", LOG_STR("keys", keys),
                  LOG_STR("reason", "these keys keep their running values until respguard restarts"), LOG_END);
    if (rt->admin && admin_config(rt, admin_update) != 0)
        log_event(LOG_ERROR, "reload", LOG_STR("part", "admin"),
                  LOG_STR("reason", "out of memory: the admin listener keeps its previous settings"), LOG_END);
    admin_record_reload(rt->admin, true, at);
    (void)watch_set(&rt->watch, cfg); /* the files named may have changed */
    log_event(LOG_INFO, "reload", LOG_STR("result", "ok"), LOG_STR("trigger", trigger),
              LOG_INT("users", (long long)rt->w.snap->user_count),
              LOG_INT("sessions_closed", (long long)r.sessions_closed),
              LOG_INT("pools_drained", (long long)r.pools_drained), LOG_END);
    notify_ready();
}

static void on_watch(struct watch *wt)
{
    reload(wt->data, "watch");
}

static void on_signal(uv_signal_t *h, int signum)
{
    struct runtime *rt = h->data;
    if (signum == SIGHUP) {
        reload(rt, "signal");
        return;
    }
    begin_shutdown(rt, signum == SIGTERM ? "SIGTERM" : "SIGINT");
}

static int cmd_run(const char *path)
{
    struct runtime rt;
    memset(&rt, 0, sizeof rt);
    rt.path = path;
    struct snapshot *snap = load(path);
    if (!snap)
        return 1;
    log_set_level((enum log_level)snap->cfg->log_level);
    signal(SIGPIPE, SIG_IGN);

    uv_loop_t loop;
    if (uv_loop_init(&loop) != 0) {
        fprintf(stderr, "respguard: cannot create the event loop\n");
        snapshot_unref(snap);
        return 1;
    }
    rt.boot = snapshot_ref(snap);
    rt.admin_snap = snapshot_ref(snap);
    char err[256];
    int status = 0;
    if (worker_init(&rt.w, &loop, snap, err, sizeof err) != 0) {
        fprintf(stderr, "respguard: %s\n", err);
        status = 1;
    }
    rt.w.on_drained = on_all_drained;
    log_event(LOG_INFO, "start", LOG_STR("version", RESPGUARD_VERSION), LOG_STR("config", path),
              LOG_INT("pid", getpid()), LOG_END);
    if (status == 0 && worker_start(&rt.w) != 0) {
        fprintf(stderr, "respguard: cannot start the upstream pools\n");
        status = 1;
    }
    for (size_t i = 0; status == 0 && i < rt.w.listener_count; i++) {
        if (listener_start(&rt.w.listeners[i], &rt.w, snap, i, err, sizeof err) != 0) {
            log_event(LOG_ERROR, "listen_error", LOG_STR("reason", err), LOG_END);
            fprintf(stderr, "respguard: %s\n", err);
            status = 1;
            break;
        }
        log_event(LOG_INFO, "listening", LOG_STR("bind", rt.w.listeners[i].bound),
                  LOG_BOOL("tls", snap->cfg->listeners[i].tls_enabled), LOG_END);
    }
    if (status == 0 && rest_start(&rt.w, &rt.rest, &rt.rest_count, err, sizeof err) != 0) {
        log_event(LOG_ERROR, "listen_error", LOG_STR("reason", err), LOG_END);
        fprintf(stderr, "respguard: %s\n", err);
        status = 1;
    }
    if (status == 0)
        start_second_timer(&rt);
    if (status == 0 && start_admin(&rt) != 0)
        status = 1;
    rt.watch.loop = &loop;
    rt.watch.changed = on_watch;
    rt.watch.data = &rt;
    if (status == 0)
        (void)watch_set(&rt.watch, snap->cfg); /* a directory that cannot be watched is logged */

    uv_signal_init(&loop, &rt.sig_term);
    uv_signal_init(&loop, &rt.sig_int);
    uv_signal_init(&loop, &rt.sig_hup);
    rt.sig_term.data = rt.sig_int.data = rt.sig_hup.data = &rt;
    if (status == 0) {
        uv_signal_start(&rt.sig_term, on_signal, SIGTERM);
        uv_signal_start(&rt.sig_int, on_signal, SIGINT);
        uv_signal_start(&rt.sig_hup, on_signal, SIGHUP);
        log_event(LOG_INFO, "ready", LOG_INT("listeners", (long long)rt.w.listener_count), LOG_END);
        notify_ready();
        uv_run(&loop, UV_RUN_DEFAULT);
    } else {
        for (size_t i = 0; rt.w.listeners && i < rt.w.listener_count; i++)
            listener_stop(&rt.w.listeners[i], NULL);
        rest_close(rt.rest, rt.rest_count);
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
    rest_free(rt.rest, rt.rest_count);
    worker_free(&rt.w);
    snapshot_unref(rt.admin_snap);
    snapshot_unref(rt.boot);
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
