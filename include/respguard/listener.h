/*
 * listener: a listening socket from the config (plaintext on loopback, or TLS), accepting into
 * sessions within the connection limit and the listener's allow_from networks.
 */
#ifndef RESPGUARD_LISTENER_H
#define RESPGUARD_LISTENER_H

#include <stdbool.h>
#include <stddef.h>
#include <uv.h>

struct worker;
struct config_listener;
struct snapshot;
struct tlsconn_ctx;

struct listener {
    uv_tcp_t tcp;
    struct worker *w;
    /* Its settings: listeners[index] of snap, which it holds a reference to. A reload moves it
     * to the new snapshot when that has the same bind (new certificates and allow_from apply to
     * the next connection); one whose bind is gone keeps its snapshot until a restart. */
    struct snapshot *snap;
    size_t index;
    char bound[64];              /* "ip:port" actually bound */
    bool started;
    bool closing;
    void (*done)(struct listener *l); /* listener_stop's callback */
};

/* What a connection accepted now gets from its listener. */
struct listener_settings {
    const struct config_listener *cfg;
    struct tlsconn_ctx *tls_ctx; /* NULL for plaintext */
};
struct listener_settings listener_settings(const struct listener *l);

/* Bind and listen on listeners[index] of snap (a reference is taken). 0, or a negative code
 * with a reason in err. */
int listener_start(struct listener *l, struct worker *w, struct snapshot *snap, size_t index, char *err,
                   size_t errlen) __attribute__((warn_unused_result));
/* Reload: take next's settings for the same bind (nothing happens when next has none). */
void listener_reload(struct listener *l, struct snapshot *next);
/* After the loop ended: drop the snapshot reference. */
void listener_free(struct listener *l);
/* Stop accepting and close the socket; done(l) runs when it is closed. */
void listener_stop(struct listener *l, void (*done)(struct listener *l));

#endif
