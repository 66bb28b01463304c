/*
 * upstream: resolve -> TCP connect -> verified TLS handshake, bounded by the connect timeout.
 * It reports failures once, with the stage and a reason fit for the log (never a secret), and
 * counts its handles so the session frees nothing while a libuv callback is still due.
 */
#include "respguard/upstream.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <string.h>

#include "respguard/config.h"
#include "respguard/snapshot.h"
#include "respguard/worker.h"

static void fail(struct upstream *u, const char *stage, const char *reason)
{
    if (u->failed || u->state >= UPSTREAM_CLOSING)
        return;
    u->failed = true;
    u->ops->on_failed(u, stage, reason);
}

static const char *current_stage(const struct upstream *u)
{
    if (u->state == UPSTREAM_READY)
        return "lost";
    if (u->t.tcp_connected)
        return "tls";
    return "connect";
}

static void handle_closed(struct upstream *u)
{
    if (--u->open_handles == 0) {
        u->state = UPSTREAM_CLOSED;
        u->ops->on_closed(u);
    }
}

static void on_transport(struct transport *t, enum transport_event ev, const char *reason)
{
    struct upstream *u = t->owner;
    switch (ev) {
    case TRANSPORT_CONNECTED:
        u->state = UPSTREAM_READY;
        u->ops->on_ready(u);
        break;
    case TRANSPORT_DATA:
        u->ops->on_data(u);
        break;
    case TRANSPORT_DRAINED:
        u->ops->on_drained(u);
        break;
    case TRANSPORT_EOF:
        fail(u, current_stage(u), "connection closed by the server");
        break;
    case TRANSPORT_ERROR:
        fail(u, current_stage(u), reason);
        break;
    case TRANSPORT_CLOSED:
        handle_closed(u);
        break;
    }
}

static void on_timer_closed(uv_handle_t *h) { handle_closed(h->data); }

static void on_timeout(uv_timer_t *timer)
{
    struct upstream *u = timer->data;
    char reason[96];
    snprintf(reason, sizeof reason, "no verified connection within %llu ms",
             (unsigned long long)u->w->snap->cfg->upstream.connect_timeout_ms);
    fail(u, current_stage(u), reason);
}

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    struct upstream *u = req->data;
    u->open_handles--; /* the request is done; handles below keep the count above zero */
    if (u->state >= UPSTREAM_CLOSING) {
        if (res)
            uv_freeaddrinfo(res);
        if (u->open_handles == 0) {
            u->state = UPSTREAM_CLOSED;
            u->ops->on_closed(u);
        }
        return;
    }
    if (status < 0 || !res) {
        char reason[160];
        snprintf(reason, sizeof reason, "cannot resolve upstream host: %s", uv_strerror(status));
        fail(u, "connect", reason);
        return;
    }
    struct sockaddr_storage addr;
    memset(&addr, 0, sizeof addr);
    memcpy(&addr, res->ai_addr, res->ai_addrlen);
    uv_freeaddrinfo(res);
    uint16_t port = htons(u->w->upstream_port);
    if (addr.ss_family == AF_INET)
        ((struct sockaddr_in *)&addr)->sin_port = port;
    else
        ((struct sockaddr_in6 *)&addr)->sin6_port = port;
    u->state = UPSTREAM_CONNECTING;
    int rc = transport_connect(&u->t, (struct sockaddr *)&addr, u->w->snap->upstream_tls, worker_verify_name(u->w),
                               u->resume);
    if (rc < 0)
        fail(u, "connect", uv_strerror(rc));
}

int upstream_start(struct upstream *u, struct worker *w, const struct upstream_ops *ops, void *owner,
                   struct tlsconn_resume *resume)
{
    memset(u, 0, sizeof *u);
    u->w = w;
    u->ops = ops;
    u->owner = owner;
    u->resume = resume;
    int rc = uv_timer_init(w->loop, &u->timer);
    if (rc < 0)
        return rc;
    u->timer.data = u;
    u->open_handles = 1;
    rc = transport_init(&u->t, w->loop, on_transport, u);
    if (rc < 0) {
        /* Only the timer exists: close it and report through on_closed. */
        u->state = UPSTREAM_CLOSING;
        uv_close((uv_handle_t *)&u->timer, on_timer_closed);
        return rc;
    }
    u->open_handles = 2;
    uv_timer_start(&u->timer, on_timeout, w->snap->cfg->upstream.connect_timeout_ms, 0);

    struct addrinfo hints;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    u->gai.data = u;
    u->state = UPSTREAM_RESOLVING;
    char port[8];
    snprintf(port, sizeof port, "%u", (unsigned)w->upstream_port);
    rc = uv_getaddrinfo(w->loop, &u->gai, on_resolved, w->upstream_host, port, &hints);
    if (rc < 0) {
        fail(u, "connect", uv_strerror(rc));
        return 0;
    }
    u->open_handles++;
    return 0;
}

void upstream_logged_in(struct upstream *u)
{
    uv_timer_stop(&u->timer);
}

void upstream_close(struct upstream *u)
{
    if (u->state == UPSTREAM_IDLE) {
        u->state = UPSTREAM_CLOSED;
        u->ops->on_closed(u);
        return;
    }
    if (u->state >= UPSTREAM_CLOSING)
        return;
    u->state = UPSTREAM_CLOSING;
    if (u->open_handles > 2)
        uv_cancel((uv_req_t *)&u->gai); /* its callback runs with UV_ECANCELED */
    uv_timer_stop(&u->timer);
    uv_close((uv_handle_t *)&u->timer, on_timer_closed);
    transport_close(&u->t);
}
