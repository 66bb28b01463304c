/*
 * worker: what one event-loop thread owns: its loop, the shared immutable configuration and
 * compiled users, the upstream TLS context, its listeners and its live sessions.
 *
 * respguard runs one worker today; everything a session needs is reached through its worker,
 * never through a global, so more workers can be added later without locks on the hot path.
 */
#ifndef RESPGUARD_WORKER_H
#define RESPGUARD_WORKER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "respguard/pool.h"
#include "respguard/ratelimit.h"

struct config;
struct acl_user;
struct tlsconn_ctx;
struct listener;
struct session;
struct config_user;
struct anomaly;
struct metrics_shard;
struct lockout;

struct worker_login {
    char *cmd; /* encoded AUTH (or PING when there is no password) */
    size_t len;
};

/* A user's command rate limit in this worker: its bucket, and whether it is refusing commands
 * now (an episode is logged once when it starts and once when it ends). */
struct worker_user_rate {
    struct token_bucket bucket;
    bool limiting;
    uint64_t refused;         /* commands refused in the current episode */
    uint64_t last_refused_ms; /* loop time of the last refusal */
};

struct worker {
    uv_loop_t *loop;
    const struct config *cfg;
    struct acl_user *users;        /* compiled from cfg->users, same order */
    size_t user_count;
    struct tlsconn_ctx *upstream_tls;
    const char *upstream_verify_name; /* server_name or the URL's host */
    /* The AUTH commands respguard sends upstream (secrets): [0] for the URL's credential, then
     * one per upstream.credentials entry. user_login[i] is the one compiled user i logs in with. */
    struct worker_login *upstream_logins;
    size_t upstream_login_count;
    size_t *user_login;
    struct listener *listeners;
    size_t listener_count;
    struct anomaly *anomaly;       /* rate baselines and anomaly events; NULL when disabled */
    struct metrics_shard *metrics; /* this worker's counters (never NULL while running) */
    struct worker_user_rate *rates;/* per compiled user (used when its rate_limit is enabled) */
    struct lockout *lockout;       /* failed logins per source; NULL when login_lockout is off */
    struct pool *pools;            /* one per upstream login, same index (pool.h) */
    size_t pool_count;             /* pools started */
    uv_prepare_t turn;             /* once a loop turn, before the loop waits: deferred input,
                                      then every write of the turn */
    uv_idle_t spin;                /* keeps the loop from waiting while deferred input is left */
    bool turn_open;                /* turn and spin are initialised and not closed */
    struct session *input_head;    /* sessions to read again at the turn's end, in order (session.c) */
    struct session *input_tail;
    struct session *flush_head;    /* sessions with client writes to send (session.c) */
    struct session *sessions;      /* intrusive list of live sessions */
    size_t session_count;
    uint64_t next_session_id;
    bool shutting_down;
    uv_timer_t shutdown_timer;
    void (*on_drained)(struct worker *w); /* called once no session is left while shutting down */
};

/* The compiled user called name (exact, case-sensitive as in Redis), or NULL. */
const struct acl_user *worker_find_user(const struct worker *w, const char *name, size_t len);
/* The config entry of a compiled user (same index). */
const struct config_user *worker_user_config(const struct worker *w, const struct acl_user *u);

/* Once a second: a user whose commands were refused by its rate limit, and none in the last
 * second, gets the end of its episode logged (one line, with the count). */
void worker_rate_limit_tick(struct worker *w, uint64_t now_ms);

/* Start the pools (one per upstream login, opening their min_idle connections) and the
 * per-turn handles. 0, or -1 after logging why. */
int worker_start(struct worker *w) __attribute__((warn_unused_result));
/* Shutdown: the pools stop (waiters fail, idle connections close, busy ones close when given
 * back). */
void worker_stop_pools(struct worker *w);
/* Once no session is left: close the per-turn handles. */
void worker_close_turn(struct worker *w);
/* After the loop ended: free the pools. */
void worker_free(struct worker *w);

/* Session registry (implemented in session.c, which knows the session's links). */
void worker_add_session(struct worker *w, struct session *s);
void worker_remove_session(struct worker *w, struct session *s);
/* Shutdown: every session stops reading and closes once its replies are out. */
void worker_drain_sessions(struct worker *w);
/* Shutdown deadline: close whatever is left. */
void worker_close_sessions(struct worker *w);

#endif
