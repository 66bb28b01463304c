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

#include "respguard/config.h"
#include "respguard/tlsconn.h"
#include "respguard/snapshot.h"
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

/* The URL's credential when it has a password; else the one the first user logs in with (all
 * users may be mapped to upstream.credentials, with no password in the URL). */
static size_t probe_login(const struct worker *w)
{
    const struct snapshot *snap = w->snap;
    return snap->cfg->upstream.password || snap->user_count == 0 ? 0 : snap->user_login[0];
}

static void on_ready(struct upstream *u)
{
    struct probe *p = u->owner;
    p->has_cert_expiry = p->up.t.tls && tlsconn_peer_cert_expiry(p->up.t.tls, &p->cert_seconds_left) == 0;
    const struct snapshot_login *l = &p->w->snap->logins[probe_login(p->w)];
    transport_write(&u->t, l->cmd, l->len);
    transport_write(&u->t, ping, sizeof ping - 1);
    transport_flush(&u->t);
}

static void on_data(struct upstream *u)
{
    struct probe *p = u->owner;
    struct buf *in = &u->t.in;
    while (buf_len(in) > 0 && !p->reported) {
        if (!p->mid_frame) {
            /* An error's code is in its first line: wait for the whole line (short, or it is
             * not the error reply of a Redis server: then take what there is). */
            bool is_error = buf_head(in)[0] == '-' || buf_head(in)[0] == '!';
            if (is_error && !memchr(buf_head(in), '\n', buf_len(in)) && buf_len(in) < 512)
                break;
            resp_error_code(buf_head(in), buf_len(in), p->err_code, sizeof p->err_code);
        }
        size_t used = 0;
        struct resp_frame_info info;
        const char *perr = NULL;
        enum resp_frame_status st = resp_framer_feed(&p->framer, buf_head(in), buf_len(in), &used, &info, &perr);
        if (st == RESP_FRAME_ERROR) {
            finish(p, false, "lost", perr ? perr : "protocol error in reply");
            return;
        }
        buf_consume(in, used);
        p->mid_frame = st != RESP_FRAME_DONE;
        if (p->mid_frame)
            continue;
        p->replies++;
        if (info.is_error) {
            /* The first reply answers respguard's AUTH: the credential is refused. Only the
             * error's code is reported: its text may echo the AUTH arguments. */
            char reason[96];
            snprintf(reason, sizeof reason, "%s (%s)",
                     p->replies == 1 ? "the upstream refused respguard's login" : "PING failed",
                     p->err_code[0] ? p->err_code : "error");
            finish(p, false, p->replies == 1 ? "auth" : "lost", reason);
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
    resp_framer_deinit(&p->framer);
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
    p->mid_frame = false;
    p->has_cert_expiry = false;
    resp_framer_init(&p->framer);
    /* Always a full handshake: the probe is what notices a changed or expiring certificate. */
    int rc = upstream_start(&p->up, p->w, &probe_ops, p, NULL);
    if (rc < 0) {
        char reason[128];
        snprintf(reason, sizeof reason, "cannot start the connection: %s", uv_strerror(rc));
        report(p, false, "connect", reason);
        /* on_closed follows by itself, unless not even the upstream's timer existed */
        if (p->up.open_handles == 0)
            p->running = false;
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
    rc = uv_timer_start(&p->timer, on_tick, 0, interval_ms);
    if (rc < 0)
        uv_close((uv_handle_t *)&p->timer, NULL);
    return rc;
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
