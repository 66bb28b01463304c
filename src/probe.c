/*
 * probe: is the upstream usable right now? The same path a session takes (upstream.c: resolve,
 * connect, verified TLS within the connect timeout), then respguard's own AUTH and a PING. A
 * probe that gets +PONG is a success; anything else reports the stage and reason it failed at.
 *
 * Handles: the interval timer, and while a probe runs its upstream (which reports on_closed once
 * all of its handles are closed). probe_stop closes both; the owner's loop then ends normally.
 */
#include "respguard/probe.h"

#include <stdio.h>
#include <string.h>

#include "respguard/tlsconn.h"
#include "respguard/worker.h"

static const char ping[] = "*1\r\n$4\r\nPING\r\n";

static void report(struct probe *p, bool ok, const char *stage, const char *reason)
{
    if (p->reported || p->stopping)
        return;
    p->reported = true;
    struct probe_result r = {.ok = ok, .stage = stage, .reason = reason,
                             .has_cert_expiry = p->has_cert_expiry, .cert_seconds_left = p->cert_seconds_left};
    p->cb(&r, p->ctx);
}

static void finish(struct probe *p, bool ok, const char *stage, const char *reason)
{
    report(p, ok, stage, reason);
    upstream_close(&p->up);
}

static void on_ready(struct upstream *u)
{
    struct probe *p = u->owner;
    p->has_cert_expiry = p->up.t.tls && tlsconn_peer_cert_expiry(p->up.t.tls, &p->cert_seconds_left) == 0;
    const struct worker_login *l = &p->w->upstream_logins[0];
    transport_write(&u->t, l->cmd, l->len);
    transport_write(&u->t, ping, sizeof ping - 1);
    transport_flush(&u->t);
}

/* The error line at the head of in, without its "-" and CRLF, into out. */
static void error_text(const struct buf *in, char *out, size_t cap)
{
    size_t n = 0;
    const char *s = buf_head(in) + 1;
    size_t len = buf_len(in) > 1 ? buf_len(in) - 1 : 0;
    while (n < len && n + 1 < cap && s[n] != '\r' && s[n] != '\n')
        n++;
    memcpy(out, s, n);
    out[n] = '\0';
}

static void on_data(struct upstream *u)
{
    struct probe *p = u->owner;
    struct buf *in = &u->t.in;
    while (buf_len(in) > 0 && !p->reported) {
        char err[160] = "";
        if (buf_head(in)[0] == '-' || buf_head(in)[0] == '!')
            error_text(in, err, sizeof err);
        size_t used = 0;
        struct resp_frame_info info;
        const char *perr = NULL;
        enum resp_frame_status st = resp_framer_feed(&p->framer, buf_head(in), buf_len(in), &used, &info, &perr);
        if (st == RESP_FRAME_ERROR) {
            finish(p, false, "lost", perr ? perr : "protocol error in reply");
            return;
        }
        buf_consume(in, used);
        if (st != RESP_FRAME_DONE)
            continue;
        p->replies++;
        if (info.is_error) {
            /* The first reply answers respguard's AUTH: the credential is refused. */
            finish(p, false, p->replies == 1 ? "auth" : "lost", err[0] ? err : "error reply");
            return;
        }
        if (p->replies == 2) {
            upstream_logged_in(u);
            finish(p, true, NULL, NULL);
            return;
        }
    }
}

static void on_drained(struct upstream *u) { (void)u; }

static void on_failed(struct upstream *u, const char *stage, const char *reason)
{
    finish(u->owner, false, stage, reason);
}

static void on_closed(struct upstream *u)
{
    struct probe *p = u->owner;
    p->running = false;
}

static const struct upstream_ops probe_ops = {
    .on_ready = on_ready,
    .on_data = on_data,
    .on_drained = on_drained,
    .on_failed = on_failed,
    .on_closed = on_closed,
};

static void on_tick(uv_timer_t *t)
{
    struct probe *p = t->data;
    if (p->running || p->stopping)
        return; /* the previous probe is still within its connect timeout */
    p->running = true;
    p->reported = false;
    p->replies = 0;
    p->has_cert_expiry = false;
    resp_framer_init(&p->framer);
    int rc = upstream_start(&p->up, p->w, &probe_ops, p);
    if (rc < 0) {
        char reason[128];
        snprintf(reason, sizeof reason, "cannot start the connection: %s", uv_strerror(rc));
        report(p, false, "connect", reason); /* on_closed follows by itself */
    }
}

int probe_start(struct probe *p, struct worker *w, uint64_t interval_ms, probe_cb cb, void *ctx)
{
    memset(p, 0, sizeof *p);
    p->w = w;
    p->cb = cb;
    p->ctx = ctx;
    int rc = uv_timer_init(w->loop, &p->timer);
    if (rc < 0)
        return rc;
    p->timer.data = p;
    return uv_timer_start(&p->timer, on_tick, 0, interval_ms);
}

void probe_stop(struct probe *p)
{
    if (p->stopping)
        return;
    p->stopping = true;
    uv_timer_stop(&p->timer);
    uv_close((uv_handle_t *)&p->timer, NULL);
    if (p->running)
        upstream_close(&p->up);
}
