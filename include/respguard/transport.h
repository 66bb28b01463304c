/*
 * transport: one TCP connection, optionally TLS, as buffered plaintext in and out.
 *
 * Both sides of a session use it: the client connection (accepted, plaintext or TLS server) and
 * the upstream connection (connected, TLS client). The owner reads plaintext from t->in, queues
 * plaintext with transport_write and calls transport_flush once per batch, so everything one
 * batch produces leaves in one uv_write (one TLS record batch). Events reach the owner through
 * one callback. The transport is embedded in its owner and must not move; it is finished only
 * when TRANSPORT_CLOSED has been delivered.
 */
#ifndef RESPGUARD_TRANSPORT_H
#define RESPGUARD_TRANSPORT_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "respguard/buf.h"

struct tlsconn_ctx;
struct tlsconn;
struct tlsconn_resume;
struct transport;

enum transport_event {
    TRANSPORT_CONNECTED, /* connect or TLS handshake finished (client side: TCP + TLS; server
                            side: TLS handshake). Not sent for plaintext accepted sockets. */
    TRANSPORT_DATA,      /* new plaintext was appended to t->in */
    TRANSPORT_DRAINED,   /* a write finished; transport_pending() may now be lower */
    TRANSPORT_EOF,       /* the peer closed its side (FIN or TLS close_notify) */
    TRANSPORT_ERROR,     /* connect, read, write or TLS failure: reason says what */
    TRANSPORT_CLOSED,    /* the handle is closed: the owner may free the memory now */
};

typedef void (*transport_event_cb)(struct transport *t, enum transport_event ev, const char *reason);

struct transport {
    uv_tcp_t tcp;
    uv_connect_t connect_req;
    uv_write_t write_req;
    struct tlsconn *tls;
    struct buf in;       /* plaintext received and not yet consumed by the owner */
    struct buf out;      /* bytes for the socket (ciphertext on TLS), not yet handed to libuv */
    struct buf inflight; /* bytes handed to uv_write, untouched until its callback */
    struct buf hold;     /* plaintext queued before the TLS handshake completes */
    char *cipher;        /* TLS: read buffer for ciphertext */
    size_t cipher_cap;
    transport_event_cb cb;
    void *owner;
    /* Optional metric slots (metrics.h, written by this thread only): plaintext bytes received
     * and queued for sending. NULL: not counted. */
    _Atomic uint64_t *bytes_in_counter;
    _Atomic uint64_t *bytes_out_counter;
    bool reading;        /* the owner wants input */
    bool writing;        /* a uv_write is in flight */
    bool quiet;          /* inside transport_flush_quiet: errors wait in deferred_error */
    const char *deferred_error;
    bool closing;        /* transport_close was called */
    bool close_when_flushed;
    bool handshake_done; /* TLS handshake complete (always true for plaintext) */
    bool is_client;
    bool tcp_connected;  /* the TCP connect (or accept) completed */
};

/* Embed and initialise: uv_tcp_init on loop. Returns 0 or a negative uv error. After success the
 * transport must be closed with transport_close and awaited until TRANSPORT_CLOSED. */
int transport_init(struct transport *t, uv_loop_t *loop, transport_event_cb cb, void *owner)
    __attribute__((warn_unused_result));

/* Accept a pending connection from server; tls_ctx non-NULL: TLS server side. Starts reading. */
int transport_accept(struct transport *t, uv_stream_t *server, struct tlsconn_ctx *tls_ctx)
    __attribute__((warn_unused_result));

/* Connect to addr; then, with tls_ctx, run a TLS client handshake verifying verify_name, offering
 * the session kept in resume (NULL: none; see tlsconn.h). TRANSPORT_CONNECTED or TRANSPORT_ERROR
 * follows. */
int transport_connect(struct transport *t, const struct sockaddr *addr, struct tlsconn_ctx *tls_ctx,
                      const char *verify_name, struct tlsconn_resume *resume) __attribute__((warn_unused_result));

/* Queue plaintext. Never fails short of memory (then the transport reports an error and closes).
 * Before a TLS handshake completes the bytes wait and are encrypted right after it. */
void transport_write(struct transport *t, const void *data, size_t len);
/* Hand everything queued to libuv in one write, unless a write is already in flight (its
 * callback sends the rest). */
void transport_flush(struct transport *t);
/* The same, from inside another connection's callback: nothing is emitted from here; an error
 * waits for the next transport_flush, which the caller must make (the end of the turn). */
void transport_flush_quiet(struct transport *t);
/* Bytes queued or in flight towards the socket. */
size_t transport_pending(const struct transport *t);

/* Give back an input buffer grown for one big value once the owner has consumed it all. The
 * transport does this after every TRANSPORT_DATA; owners call it after consuming input later. */
void transport_shrink_input(struct transport *t);
/* An idle connection gives back every buffer that holds nothing (input, output, TLS staging and
 * record buffers): thousands of idle clients then cost little more than their structs. They are
 * allocated again when traffic resumes; call it for connections idle a while, not per command. */
void transport_trim(struct transport *t);

void transport_pause(struct transport *t);
void transport_resume(struct transport *t);

/* Close now (idempotent); TRANSPORT_CLOSED follows. */
void transport_close(struct transport *t);
/* Stop reading, send what is queued (and a TLS close_notify), then close. */
void transport_close_when_flushed(struct transport *t);

#endif
