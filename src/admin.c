/*
 * admin: /metrics, /healthz and /readyz over HTTP with libmicrohttpd (its own thread, its own
 * poll loop), so an operator's scrape never runs on, or waits for, the data plane's loop.
 *
 * Thread rules: the request handler runs on libmicrohttpd's thread. It reads the immutable
 * configuration, sums the metric shards (relaxed atomic loads, see metrics.h) and copies the
 * status under a mutex; the worker thread writes that status once per probe result.
 */
#include "respguard/admin.h"

#include <errno.h>
#include <microhttpd.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "respguard/config.h"
#include "respguard/metrics.h"

#ifndef RESPGUARD_VERSION
#define RESPGUARD_VERSION "dev"
#endif

/* Bounds for a listener nobody but operators should reach. */
#define ADMIN_MAX_CONNECTIONS 32
#define ADMIN_CONNECTION_TIMEOUT_S 10
/* Listener certificates exported at most (a gauge array on the stack per scrape); the upstream's
 * certificate comes on top. */
#define ADMIN_MAX_CERTS 64

/* What the worker tells the admin thread; copied whole under the lock. */
struct status {
    bool probed;      /* a probe has reported */
    bool upstream_ok; /* ... and the latest one succeeded */
    bool draining;
    char reason[200]; /* the latest probe's failure */
    time_t upstream_cert_not_after; /* 0: not known */
    double config_loaded_at;        /* of the configuration in use */
    double config_load_seconds;
    uint64_t reloads_ok, reloads_failed;
    bool last_reload_failed;
    double last_reload_at;          /* 0: no reload yet */
};

/* What a reload may change, replaced whole under the lock (admin_set_config). */
struct published {
    struct config_cidr_list allow_from; /* owned copy */
    struct admin_cert *certs;
    size_t cert_count;
    char **cert_names;                  /* owned copies of certs[i].name */
    char upstream_cert_name[300];
};

struct admin {
    struct MHD_Daemon *daemon;
    struct metrics *metrics;
    pthread_mutex_t lock; /* guards status and pub */
    struct status status;
    struct published pub;
};

static void read_status(struct admin *a, struct status *st)
{
    pthread_mutex_lock(&a->lock);
    *st = a->status;
    pthread_mutex_unlock(&a->lock);
}

static bool ready(const struct status *st) { return st->probed && st->upstream_ok && !st->draining; }

static enum MHD_Result respond(struct MHD_Connection *c, unsigned code, char *body, size_t len,
                               enum MHD_ResponseMemoryMode mode, const char *type)
{
    struct MHD_Response *r = MHD_create_response_from_buffer(len, body, mode);
    if (!r) {
        if (mode == MHD_RESPMEM_MUST_FREE)
            free(body);
        return MHD_NO;
    }
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, type);
    MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
    if (code == MHD_HTTP_METHOD_NOT_ALLOWED)
        MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW, "GET, HEAD");
    enum MHD_Result ret = MHD_queue_response(c, code, r);
    MHD_destroy_response(r);
    return ret;
}

static enum MHD_Result respond_text(struct MHD_Connection *c, unsigned code, const char *text)
{
    return respond(c, code, (char *)text, strlen(text), MHD_RESPMEM_PERSISTENT, "text/plain; charset=utf-8");
}

static enum MHD_Result serve_readyz(struct admin *a, struct MHD_Connection *c)
{
    struct status st;
    read_status(a, &st);
    if (ready(&st))
        return respond_text(c, MHD_HTTP_OK, "ready\n");
    char *body = malloc(320);
    if (!body)
        return MHD_NO;
    int n;
    if (st.draining)
        n = snprintf(body, 320, "not ready: shutting down\n");
    else if (!st.probed)
        n = snprintf(body, 320, "not ready: the upstream has not been probed yet\n");
    else
        n = snprintf(body, 320, "not ready: upstream: %s\n", st.reason);
    return respond(c, MHD_HTTP_SERVICE_UNAVAILABLE, body, (size_t)n, MHD_RESPMEM_MUST_FREE,
                   "text/plain; charset=utf-8");
}

static enum MHD_Result serve_metrics(struct admin *a, struct MHD_Connection *c)
{
    struct status st;
    read_status(a, &st);
    double now = (double)time(NULL);
    static const char reloads_help[] = "Configuration reloads (SIGHUP or watch), by result.";
    struct metrics_gauge g[ADMIN_MAX_CERTS + 12];
    size_t n = 0;
    g[n++] = (struct metrics_gauge){"respguard_ready", "1 when /readyz answers 200: config loaded, not draining, "
                                    "last upstream probe succeeded.", NULL, NULL, ready(&st) ? 1 : 0};
    /* The certificate names are copied out under the lock (a reload may replace them), so that
     * the worker never waits for a render. */
    char (*names)[sizeof a->pub.upstream_cert_name] = malloc((ADMIN_MAX_CERTS + 1) * sizeof *names);
    if (!names)
        return respond_text(c, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of memory\n");
    pthread_mutex_lock(&a->lock);
    for (size_t i = 0; i < a->pub.cert_count; i++) {
        snprintf(names[i], sizeof names[i], "%s", a->pub.certs[i].name);
        g[n++] = (struct metrics_gauge){"respguard_cert_expiry_seconds",
                                        "Seconds until the certificate expires (negative: expired).", "cert",
                                        names[i], (double)a->pub.certs[i].not_after - now};
    }
    snprintf(names[ADMIN_MAX_CERTS], sizeof names[ADMIN_MAX_CERTS], "%s", a->pub.upstream_cert_name);
    pthread_mutex_unlock(&a->lock);
    if (st.upstream_cert_not_after)
        g[n++] = (struct metrics_gauge){"respguard_cert_expiry_seconds",
                                        "Seconds until the certificate expires (negative: expired).", "cert",
                                        names[ADMIN_MAX_CERTS], (double)st.upstream_cert_not_after - now};
    g[n++] = (struct metrics_gauge){"respguard_config_load_success",
                                    "1 when the configuration in use loaded without error.", NULL, NULL, 1};
    g[n++] = (struct metrics_gauge){"respguard_config_load_timestamp_seconds",
                                    "When the configuration in use was loaded (UTC epoch seconds).", NULL, NULL,
                                    st.config_loaded_at};
    g[n++] = (struct metrics_gauge){"respguard_config_load_duration_seconds",
                                    "How long loading and compiling the configuration took.", NULL, NULL,
                                    st.config_load_seconds};
    g[n++] = (struct metrics_gauge){"respguard_config_reloads_total", reloads_help, "result", "ok",
                                    (double)st.reloads_ok};
    g[n++] = (struct metrics_gauge){"respguard_config_reloads_total", reloads_help, "result", "failed",
                                    (double)st.reloads_failed};
    g[n++] = (struct metrics_gauge){"respguard_config_last_reload_success",
                                    "0 when the last reload failed (the configuration in use is older than "
                                    "the file), else 1.", NULL, NULL, st.last_reload_failed ? 0 : 1};
    g[n++] = (struct metrics_gauge){"respguard_config_last_reload_timestamp_seconds",
                                    "When the last reload was tried (UTC epoch seconds; 0: none yet).", NULL, NULL,
                                    st.last_reload_at};
    g[n++] = (struct metrics_gauge){"respguard_build_info", "respguard's version.", "version", RESPGUARD_VERSION,
                                    1};
    char *text = NULL;
    size_t len = 0;
    int rc = metrics_render(a->metrics, g, n, &text, &len);
    free(names);
    if (rc != 0)
        return respond_text(c, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of memory\n");
    return respond(c, MHD_HTTP_OK, text, len, MHD_RESPMEM_MUST_FREE, "text/plain; version=0.0.4; charset=utf-8");
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                                  const char *version, const char *upload_data, size_t *upload_data_size,
                                  void **con_cls)
{
    struct admin *a = cls;
    (void)version;
    (void)upload_data;
    if (*upload_data_size != 0)
        return MHD_NO; /* no endpoint takes a body */
    (void)con_cls;
    if (strcmp(method, MHD_HTTP_METHOD_GET) != 0 && strcmp(method, MHD_HTTP_METHOD_HEAD) != 0)
        return respond_text(c, MHD_HTTP_METHOD_NOT_ALLOWED, "method not allowed\n");
    if (strcmp(url, "/metrics") == 0)
        return serve_metrics(a, c);
    if (strcmp(url, "/healthz") == 0)
        return respond_text(c, MHD_HTTP_OK, "ok\n");
    if (strcmp(url, "/readyz") == 0)
        return serve_readyz(a, c);
    return respond_text(c, MHD_HTTP_NOT_FOUND, "not found: try /metrics, /healthz or /readyz\n");
}

static enum MHD_Result on_accept(void *cls, const struct sockaddr *addr, socklen_t addrlen)
{
    struct admin *a = cls;
    (void)addrlen;
    pthread_mutex_lock(&a->lock);
    bool ok = config_cidr_match(&a->pub.allow_from, addr);
    pthread_mutex_unlock(&a->lock);
    return ok ? MHD_YES : MHD_NO;
}

static void published_free(struct published *p)
{
    for (size_t i = 0; p->cert_names && i < p->cert_count; i++)
        free(p->cert_names[i]);
    free(p->cert_names);
    free(p->certs);
    free(p->allow_from.items);
    memset(p, 0, sizeof *p);
}

static void admin_free(struct admin *a)
{
    published_free(&a->pub);
    pthread_mutex_destroy(&a->lock);
    free(a);
}

int admin_set_config(struct admin *a, const struct admin_config_info *info)
{
    struct published p = {0};
    size_t ncidr = info->allow_from ? info->allow_from->count : 0;
    p.cert_count = info->cert_count < ADMIN_MAX_CERTS ? info->cert_count : ADMIN_MAX_CERTS;
    p.certs = calloc(p.cert_count + 1, sizeof *p.certs);
    p.cert_names = calloc(p.cert_count + 1, sizeof *p.cert_names);
    p.allow_from.items = calloc(ncidr + 1, sizeof *p.allow_from.items);
    bool oom = !p.certs || !p.cert_names || !p.allow_from.items;
    for (size_t i = 0; !oom && i < p.cert_count; i++) {
        p.certs[i] = info->certs[i];
        oom = !(p.cert_names[i] = strdup(info->certs[i].name));
        p.certs[i].name = p.cert_names[i];
    }
    if (oom) {
        published_free(&p);
        return -1;
    }
    if (ncidr)
        memcpy(p.allow_from.items, info->allow_from->items, ncidr * sizeof *p.allow_from.items);
    p.allow_from.count = ncidr;
    snprintf(p.upstream_cert_name, sizeof p.upstream_cert_name, "%s", info->upstream_name);
    pthread_mutex_lock(&a->lock);
    struct published old = a->pub;
    a->pub = p;
    a->status.config_loaded_at = info->loaded_at;
    a->status.config_load_seconds = info->load_seconds;
    pthread_mutex_unlock(&a->lock);
    published_free(&old);
    return 0;
}

void admin_record_reload(struct admin *a, bool ok, double at)
{
    if (!a)
        return;
    pthread_mutex_lock(&a->lock);
    if (ok)
        a->status.reloads_ok++;
    else
        a->status.reloads_failed++;
    a->status.last_reload_failed = !ok;
    a->status.last_reload_at = at;
    pthread_mutex_unlock(&a->lock);
}

int admin_start(const struct admin_start_info *info, struct admin **out, char *err, size_t errlen)
{
    const struct config_admin *ac = info->admin;
    struct admin *a = calloc(1, sizeof *a);
    if (!a || pthread_mutex_init(&a->lock, NULL) != 0) {
        free(a);
        snprintf(err, errlen, "admin: out of memory");
        return -1;
    }
    a->metrics = info->metrics;
    if (admin_set_config(a, &info->config) != 0) {
        admin_free(a);
        snprintf(err, errlen, "admin: out of memory");
        return -1;
    }

    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_POLL;
    if (ac->listen.addr.ss_family == AF_INET6)
        flags |= MHD_USE_IPv6;
    errno = 0;
    a->daemon = MHD_start_daemon(flags, ac->listen.port, on_accept, a, on_request, a,
                                 MHD_OPTION_SOCK_ADDR, (const struct sockaddr *)&ac->listen.addr,
                                 MHD_OPTION_CONNECTION_LIMIT, (unsigned)ADMIN_MAX_CONNECTIONS,
                                 MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)ADMIN_CONNECTION_TIMEOUT_S,
                                 MHD_OPTION_END);
    if (!a->daemon) {
        int e = errno;
        snprintf(err, errlen, "admin: cannot listen on %s: %s", ac->listen.bind,
                 e ? strerror(e) : "the HTTP server did not start");
        admin_free(a);
        return -1;
    }
    *out = a;
    return 0;
}

bool admin_set_upstream(struct admin *a, bool ok, const char *reason, time_t upstream_cert_not_after)
{
    pthread_mutex_lock(&a->lock);
    struct status *st = &a->status;
    bool changed = !st->probed || st->upstream_ok != ok;
    st->probed = true;
    st->upstream_ok = ok;
    snprintf(st->reason, sizeof st->reason, "%s", reason ? reason : "");
    if (upstream_cert_not_after)
        st->upstream_cert_not_after = upstream_cert_not_after;
    pthread_mutex_unlock(&a->lock);
    return changed;
}

void admin_set_draining(struct admin *a)
{
    if (!a)
        return;
    pthread_mutex_lock(&a->lock);
    a->status.draining = true;
    pthread_mutex_unlock(&a->lock);
}

void admin_stop(struct admin *a)
{
    if (!a)
        return;
    MHD_stop_daemon(a->daemon);
    admin_free(a);
}
