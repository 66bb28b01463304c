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
struct tlsconn_ctx;

struct listener {
    uv_tcp_t tcp;
    struct worker *w;
    const struct config_listener *cfg;
    struct tlsconn_ctx *tls_ctx; /* NULL for plaintext */
    char bound[64];              /* "ip:port" actually bound */
    bool started;
    bool closing;
    void (*done)(struct listener *l); /* listener_stop's callback */
};

/* Bind and listen. 0, or a negative code with a reason in err. */
int listener_start(struct listener *l, struct worker *w, const struct config_listener *cfg, char *err,
                   size_t errlen) __attribute__((warn_unused_result));
/* Stop accepting and close the socket; done(l) runs when it is closed. */
void listener_stop(struct listener *l, void (*done)(struct listener *l));

#endif
