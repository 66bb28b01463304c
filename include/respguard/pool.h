/*
 * pool: warm upstream connections, verified and logged in before a client needs one, and the
 * routing of their replies back to the clients whose commands they carry.
 *
 * A worker has one pool per upstream credential (the URL's, then each upstream.credentials
 * entry). A pool opens up to `size` connections (upstream.c: resolve, TCP, verified TLS, then
 * respguard's login, all within connect_timeout), keeps `min_idle` of them ready, PINGs idle
 * ones every `keepalive`, closes idle ones above min_idle after `idle_timeout` and replaces every
 * connection after `max_lifetime`. TLS sessions are resumed, so refills skip the certificate
 * exchange.
 *
 * Clients (sessions) use a connection in one of three ways:
 *  - HOLD (session mode): the client's alone from its login to its end;
 *  - PIN (multiplex mode): the client's alone while it has connection state (MULTI, WATCH,
 *    subscriptions, a blocking command, RESP3, ...);
 *  - SHARE (multiplex mode): shared with other clients; each client's commands are sent in
 *    order on one connection and the connection's route queue hands every reply frame to the
 *    client it answers.
 * A connection given back with state on it, or with replies still due, is reset before anyone
 * else may use it: RESET, respguard's login, and an ECHO of a fresh random nonce, whose reply
 * proves that everything before it (the previous client's replies included) has been read and
 * that the reset and the login succeeded. If that fails or takes longer than shutdown_timeout,
 * the connection is closed instead. No state and no reply of one client reaches another.
 *
 * Ownership: the worker owns its pools; a pool owns its connections and frees them in their last
 * close callback. A client is embedded in its owner (struct session) and must be given back
 * (pool_release) or cancelled (pool_cancel) before the owner is freed; after that the pool never
 * touches it again.
 */
#ifndef RESPGUARD_POOL_H
#define RESPGUARD_POOL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "respguard/metrics.h"
#include "respguard/resp.h"
#include "respguard/upstream.h"

struct worker;
struct pool;
struct pool_client;
struct tlsconn_resume;

enum pool_use {
    POOL_USE_HOLD,  /* session mode: the client's alone until it leaves */
    POOL_USE_PIN,   /* multiplex: the client's alone while it has connection state */
    POOL_USE_SHARE, /* multiplex: shared with other clients */
};

enum pool_failure {
    POOL_FAIL_TIMEOUT,  /* no connection became free within acquire_timeout */
    POOL_FAIL_UPSTREAM, /* the connection opened for it failed (logged as upstream_error) */
    POOL_FAIL_STOPPED,  /* the pool is shutting down */
};

/* How a HOLD or PIN client gives its connection back (pool_release). */
enum pool_return {
    POOL_RETURN_CLEAN,  /* provably nothing of the client's left on it: free at once */
    POOL_RETURN_DIRTY,  /* state or replies of the client may be on it: reset it first */
    POOL_RETURN_BROKEN, /* state RESET cannot clear (CLIENT NO-EVICT): close it */
};

enum upconn_state {
    UPCONN_CONNECTING, /* resolve, connect, TLS handshake, respguard's login */
    UPCONN_IDLE,       /* logged in and free: nothing due, no client */
    UPCONN_SHARED,     /* multiplex: carries the commands of one or more clients */
    UPCONN_HELD,       /* session mode: one client's */
    UPCONN_PINNED,     /* multiplex: one client's while it has connection state */
    UPCONN_RESETTING,  /* given back unclean: RESET, login, nonce check in flight */
    UPCONN_CLOSING,    /* closing its handles; freed in the last close callback */
};

/* One step of a connection's reply routing: who gets the next `frames` reply frames. */
struct pool_route {
    struct pool_client *client; /* CLIENT and OWNER routes */
    uint32_t frames;            /* frames left (OWNER: unbounded, 0) */
    uint8_t kind;               /* private to pool.c */
};

struct upconn {
    struct upstream up;          /* the TLS stream; must not move */
    struct pool *pool;
    struct upconn *prev, *next;  /* every connection of the pool */
    struct upconn *flush_next;   /* on the pool's list of connections with output to flush */
    enum upconn_state state;
    uint64_t id;                 /* for the log */
    struct resp_framer framer;
    struct pool_route *routes;   /* power-of-two ring */
    size_t rhead, rlen, rcap;
    uint32_t due;                /* reply frames due to CLIENT and DROP routes */
    uint32_t clients;            /* SHARE clients attached */
    struct pool_client *owner;   /* HOLD or PIN */
    uint64_t opened_ms;          /* loop time when it became ready */
    uint64_t idle_ms;            /* loop time it last became free (idle_timeout counts from it) */
    uint64_t active_ms;          /* ... or its last keepalive was answered (keepalive counts) */
    uint64_t ping_ms;            /* a keepalive PING is in flight since then (0: none) */
    uint64_t reset_deadline_ms;  /* RESETTING: closed if the nonce has not come back by then */
    uint32_t batch;              /* client commands queued since the last flush */
    uint32_t batch_frames;       /* ... and the reply frames they expect (shared) */
    bool flush_queued;
    bool retiring;               /* past max_lifetime: takes no new client, closes once free */
    bool paused;                 /* the owner's back-pressure: not reading */
    bool routing;                /* route_input is running (callbacks may call back into it) */
    bool counted_open;           /* counted in respguard_upstream_connections */
    enum metrics_pool_state mstate; /* the state it is counted under */
    /* The reply frame being read: its first bytes (for respguard's own checks) and length. */
    char head[48];
    size_t head_len;
    uint64_t frame_len;
    /* RESETTING: the nonce ECHOed, and what the two frames before the current one were. */
    char nonce[33];
    uint8_t seen[2];
};

struct pool_client_ops {
    /* A waiting pool_acquire succeeded: c->conn is the connection. */
    void (*acquired)(struct pool_client *c);
    /* A waiting pool_acquire failed (c->conn stays NULL). */
    void (*failed)(struct pool_client *c, enum pool_failure why);
    /* A piece of a reply frame for this client; end is non-NULL when the frame ends with it.
     * For SHARE clients the pool has already detached the client when this was its last frame
     * due (c->conn NULL). The client may send, release or close from here. */
    void (*reply)(struct pool_client *c, const char *p, size_t n, const struct resp_frame_info *end);
    /* The connection carrying this client's commands broke; c->conn is NULL already. stage and
     * reason are for the log ("lost", "connection closed by the server"). */
    void (*lost)(struct pool_client *c, const char *stage, const char *reason);
    /* HOLD and PIN: a write on c's connection finished (its pending output may be lower). */
    void (*drained)(struct pool_client *c);
};

struct pool_client {
    const struct pool_client_ops *ops;
    struct pool *pool;            /* the pool it last acquired from */
    struct upconn *conn;          /* where this client's commands go; NULL: none */
    enum pool_use use;            /* how it holds conn, or what it waits for */
    uint32_t due;                 /* SHARE: reply frames due to it on conn */
    bool waiting;                 /* on the pool's wait list */
    bool doomed;                  /* private to pool.c: failed inside its own pool_acquire */
    struct pool_client *wprev, *wnext;
    uint64_t wait_until_ms;
};

struct pool {
    struct worker *w;
    size_t login;                 /* which login of the worker's snapshot its connections use
                                     (kept in step by reloads; meaningless once retired) */
    char *name;                   /* the credential's name ("url" or upstream.credentials') */
    struct upconn *conns;         /* every connection, any state */
    size_t count[UPCONN_CLOSING + 1]; /* connections by state */
    size_t open;                  /* connections not CLOSING: never more than size */
    struct pool_client *wait_head, *wait_tail;
    size_t waiting_own, waiting_share; /* waiters by what they need (HOLD or PIN; SHARE) */
    uv_timer_t tick;              /* once a second: keepalive, idle timeout, lifetime, refill */
    uv_timer_t wait_timer;        /* the first waiter's acquire_timeout */
    int open_handles;             /* the two timers, while open */
    uint32_t failures;            /* connect failures in a row (refill backs off) */
    uint64_t retry_ms;            /* no background refill before this loop time */
    struct upconn *current;       /* multiplex: where new shared batches go */
    struct pool_client *acquiring;/* the client inside pool_acquire (its failure is returned) */
    struct upconn *flush_head;    /* connections with output queued this loop turn, in order */
    struct upconn *flush_tail;
    struct tlsconn_resume *resume;/* TLS session resumption for its connections; NULL: none */
    struct tlsconn_resume **old_resume; /* slots replaced by drains, freed with the pool */
    size_t old_resume_count;
    uint64_t read_ns;             /* uv_hrtime when the read being routed arrived (latency) */
    uint64_t route_ns;            /* uv_hrtime, read again every POOL_CLOCK_FRAMES frames while
                                     a read is routed: when a reply was handed on (latency) */
    bool stopping;
    bool retired;                 /* its credential was removed by a reload: opens nothing */
    bool timers_open;
    uint64_t next_conn_id;
};

/* Set up p (allocated by the worker, must not move) for upstream login `login` of credential
 * `name` (copied) and start opening min_idle connections. 0 or a negative uv error (then
 * pool_free it). */
int pool_start(struct pool *p, struct worker *w, size_t login, const char *name) __attribute__((warn_unused_result));
/* Shutdown: fail waiters, close idle connections now and every other one as soon as its client
 * gives it back; close the timers. The loop ends once all handles are closed. */
void pool_stop(struct pool *p);
/* Reload: the credential or upstream verification changed. Idle connections close now, every
 * other one once its client is done with it; new ones are made with the current login. */
void pool_drain(struct pool *p);
/* Reload: the credential is gone. Waiters fail, connections close as in pool_drain, and none
 * is opened again. */
void pool_retire(struct pool *p);
/* After the loop has ended (every connection closed): free what pool_start allocated. */
void pool_free(struct pool *p);

/* Get a connection for c (c->ops set, c not waiting and without a connection). Returns 0 when
 * c->conn is set now, 1 when c waits (ops->acquired or ops->failed follows, never from inside
 * this call), or a negative errno: -ESHUTDOWN (stopping or retired), -EHOSTUNREACH (the
 * connection opened for it failed at once). Other clients' callbacks may run inside it. HOLD
 * and PIN take a free connection (opening one if the pool is below size); SHARE joins the least
 * busy ready connection. */
int pool_acquire(struct pool *p, struct pool_client *c, enum pool_use use) __attribute__((warn_unused_result));
/* Stop waiting (nothing happens if c is not waiting). */
void pool_cancel(struct pool_client *c);

/* Queue command bytes on c->conn; frames: the reply frames they will bring (SHARE clients; HOLD
 * and PIN get every frame anyway). commands: how many client commands they are (metrics). The
 * bytes leave at pool_flush. */
void pool_send(struct pool_client *c, const char *bytes, size_t len, uint32_t frames, uint32_t commands);

/* Give c's connection back (c->conn becomes NULL; nothing happens without one). HOLD and PIN:
 * how says whether the client knows the connection carries nothing of its own (nothing due, not
 * mid-reply, no MULTI, WATCH, subscription, RESP3, name, database or other setting): then it
 * serves the next client at once, otherwise it is reset first (or closed). SHARE: replies still
 * due to c are read and dropped. */
void pool_release(struct pool_client *c, enum pool_return how);
/* HOLD and PIN: stop or resume reading c's connection (the client's back-pressure). Resuming
 * delivers what was read before the pause, from inside the call. */
void pool_pause(struct pool_client *c);
void pool_resume(struct pool_client *c);
/* Bytes queued or in flight towards the upstream on c's connection (0 without one). */
size_t pool_pending(const struct pool_client *c);
/* An idle client's own (HOLD or PIN) connection gives back its buffers, as an idle client's
 * connection does (transport_trim); allocated again by its next use. */
void pool_trim(struct pool_client *c);

/* Send what the connections queued this loop turn, one write each. The worker calls this once
 * per loop turn, before the loop waits for I/O. */
void pool_flush(struct pool *p);

#endif
