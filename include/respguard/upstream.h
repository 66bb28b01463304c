/*
 * upstream: one session's connection to the Redis server: resolve, connect, TLS handshake with
 * full verification, all within the connect timeout. The RESP conversation (the login AUTH, the
 * client's commands and the replies) is the session's business; this module only brings the
 * verified TLS byte stream up and reports how it failed when it does.
 */
#ifndef RESPGUARD_UPSTREAM_H
#define RESPGUARD_UPSTREAM_H

#include <stdbool.h>
#include <uv.h>

#include "respguard/transport.h"

struct worker;
struct upstream;
struct tlsconn_resume;

enum upstream_state {
    UPSTREAM_IDLE,      /* not started */
    UPSTREAM_RESOLVING, /* getaddrinfo in flight */
    UPSTREAM_CONNECTING,/* TCP connect and TLS handshake */
    UPSTREAM_READY,     /* verified TLS stream up; the session may still await its login reply */
    UPSTREAM_CLOSING,   /* closing its handles */
    UPSTREAM_CLOSED,    /* every handle closed */
};

struct upstream_ops {
    void (*on_ready)(struct upstream *u);
    void (*on_data)(struct upstream *u);   /* plaintext in u->t.in */
    void (*on_drained)(struct upstream *u);
    /* stage: "connect", "tls", "lost"; reason: human text without secrets. Called once; the
     * session then closes the upstream. */
    void (*on_failed)(struct upstream *u, const char *stage, const char *reason);
    void (*on_closed)(struct upstream *u); /* all handles closed */
};

struct upstream {
    struct transport t;
    uv_getaddrinfo_t gai;
    uv_timer_t timer;
    enum upstream_state state;
    int open_handles;    /* tcp + timer, plus the getaddrinfo request while in flight */
    bool failed;
    struct worker *w;
    const struct upstream_ops *ops;
    void *owner;
    struct tlsconn_resume *resume; /* session resumption slot, or NULL */
};

/* Start connecting. resume: where TLS sessions are kept and resumed from (NULL: always a full
 * handshake). 0, or a negative uv error when even the first step failed; in both cases
 * on_closed is called once every handle is closed (after upstream_close, or by itself on error). */
int upstream_start(struct upstream *u, struct worker *w, const struct upstream_ops *ops, void *owner,
                   struct tlsconn_resume *resume) __attribute__((warn_unused_result));
/* The login reply arrived: stop the connect timer. */
void upstream_logged_in(struct upstream *u);
/* Close everything; on_closed follows (also when never started: then at once). */
void upstream_close(struct upstream *u);

#endif
