/*
 * probe: the readiness check of the upstream. Every interval it opens a connection exactly as a
 * session does (resolve, connect, TLS handshake with full verification, bounded by the connect
 * timeout), logs in with respguard's own credential (the URL's, or else the one the first user
 * uses), sends PING, and reports whether all of that worked; then it closes the connection. One
 * probe runs at a time; the first starts at once.
 *
 * Probe connections are not client sessions: they count in respguard_upstream_probes_total, not
 * in the upstream connection gauges.
 */
#ifndef RESPGUARD_PROBE_H
#define RESPGUARD_PROBE_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "respguard/resp.h"
#include "respguard/upstream.h"

struct worker;

struct probe_result {
    bool ok;
    const char *stage;  /* failure: "connect", "tls", "auth", "lost"; NULL on success */
    const char *reason; /* failure: human text without secrets; NULL on success */
    bool has_cert_expiry;         /* the handshake was verified: the server certificate's ... */
    long long cert_seconds_left;  /* ... seconds until it expires */
};

typedef void (*probe_cb)(const struct probe_result *r, void *ctx);

struct probe {
    struct worker *w;
    uv_timer_t timer;
    struct upstream up;
    struct resp_framer framer;
    probe_cb cb;
    void *ctx;
    unsigned replies;    /* replies read on the current connection */
    bool mid_frame;      /* the framer is inside a reply */
    char err_code[32];   /* the code of the reply being read, when it is an error */
    bool running;        /* a probe connection exists (until its on_closed) */
    bool reported;       /* the current probe's result was handed to cb */
    bool stopping;
    bool has_cert_expiry;
    long long cert_seconds_left;
};

/* Start probing every interval_ms; the first probe starts on the next loop turn. 0, or a
 * negative uv error (then nothing needs probe_stop). */
int probe_start(struct probe *p, struct worker *w, uint64_t interval_ms, probe_cb cb, void *ctx)
    __attribute__((warn_unused_result));
/* Stop: the probe in flight (if any) is closed without a report; the handles close and the
 * loop can end. */
void probe_stop(struct probe *p);

#endif
