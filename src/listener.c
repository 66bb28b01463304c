/*
 * listener: binds one configured address and hands accepted connections to sessions.
 * Connection limits and allowlists are enforced in session_accept, which owns the socket from
 * the moment it is accepted.
 */
#include "respguard/listener.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <string.h>

#include "respguard/config.h"
#include "respguard/log.h"
#include "respguard/snapshot.h"
#include "respguard/session.h"
#include "respguard/worker.h"

static void on_connection(uv_stream_t *server, int status)
{
    struct listener *l = server->data;
    if (status < 0) {
        log_event(LOG_WARN, "accept_error", LOG_STR("bind", l->bound), LOG_STR("reason", uv_strerror(status)),
                  LOG_END);
        return;
    }
    if (l->closing)
        return;
    int rc = session_accept(l->w, l, server);
    if (rc < 0)
        log_event(LOG_WARN, "accept_error", LOG_STR("bind", l->bound), LOG_STR("reason", uv_strerror(rc)),
                  LOG_END);
}

struct listener_settings listener_settings(const struct listener *l)
{
    return (struct listener_settings){.cfg = &l->snap->cfg->listeners[l->index],
                                      .tls_ctx = l->snap->listener_tls[l->index]};
}

void listener_reload(struct listener *l, struct snapshot *next)
{
    if (!l->snap)
        return;
    const struct config_listener *cur = &l->snap->cfg->listeners[l->index];
    for (size_t i = 0; i < next->cfg->listener_count; i++) {
        const struct config_listener *c = &next->cfg->listeners[i];
        if (config_same_address(c, cur) && c->tls_enabled == cur->tls_enabled) {
            snapshot_unref(l->snap);
            l->snap = snapshot_ref(next);
            l->index = i;
            return;
        }
    }
}

void listener_free(struct listener *l)
{
    snapshot_unref(l->snap);
    l->snap = NULL;
}

int listener_start(struct listener *l, struct worker *w, struct snapshot *snap, size_t index, char *err,
                   size_t errlen)
{
    const struct config_listener *cfg = &snap->cfg->listeners[index];
    l->w = w;
    l->snap = snapshot_ref(snap);
    l->index = index;
    int rc = uv_tcp_init(w->loop, &l->tcp);
    if (rc < 0) {
        snprintf(err, errlen, "%s: %s", cfg->bind, uv_strerror(rc));
        return rc;
    }
    l->tcp.data = l;
    l->started = true;
    rc = uv_tcp_bind(&l->tcp, (const struct sockaddr *)&cfg->addr, 0);
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)&l->tcp, 511, on_connection);
    if (rc < 0) {
        snprintf(err, errlen, "cannot listen on %s: %s", cfg->bind, uv_strerror(rc));
        return rc;
    }
    struct sockaddr_storage ss;
    int len = sizeof ss;
    char ip[INET6_ADDRSTRLEN] = "?";
    int port = 0;
    memset(&ss, 0, sizeof ss);
    if (uv_tcp_getsockname(&l->tcp, (struct sockaddr *)&ss, &len) == 0) {
        if (ss.ss_family == AF_INET6) {
            uv_ip6_name((struct sockaddr_in6 *)&ss, ip, sizeof ip);
            port = ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
            snprintf(l->bound, sizeof l->bound, "[%s]:%d", ip, port);
        } else {
            uv_ip4_name((struct sockaddr_in *)&ss, ip, sizeof ip);
            port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
            snprintf(l->bound, sizeof l->bound, "%s:%d", ip, port);
        }
    }
    return 0;
}

static void on_closed(uv_handle_t *h)
{
    struct listener *l = h->data;
    if (l->done)
        l->done(l);
}

void listener_stop(struct listener *l, void (*done)(struct listener *l))
{
    if (!l->started || l->closing) {
        if (!l->started && done)
            done(l);
        return;
    }
    l->closing = true;
    l->done = done;
    uv_close((uv_handle_t *)&l->tcp, on_closed);
}
