/*
 * worker: what one event-loop thread owns: its loop, the snapshot of the configuration it runs
 * under (snapshot.h: compiled users, TLS contexts, upstream logins), its listeners, pools and live
 * sessions, and what it counts per user across reloads.
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

#include "respguard/config.h"
#include "respguard/pool.h"
#include "respguard/ratelimit.h"

struct acl_user;
struct listener;
struct session;
struct config_user;
struct anomaly;
struct metrics;
struct metrics_shard;
struct lockout;
struct snapshot;

/* A user's command rate limit in this worker: its bucket, and whether it is refusing commands
 * now (an episode is logged once when it starts and once when it ends). */
struct worker_user_rate {
    struct token_bucket bucket;
    bool limiting;
    uint64_t refused;         /* commands refused in the current episode */
    uint64_t last_refused_ms; /* loop time of the last refusal */
};

/* What a reload did (worker_install). */
struct worker_reload_result {
    size_t sessions_closed; /* of users removed or turned off */
    size_t pools_drained;   /* credentials whose login or verification changed */
};

struct worker {
    uv_loop_t *loop;
    struct snapshot *snap;         /* the configuration in use (one reference; reloads swap it) */
    /* What a reload cannot change: taken from the snapshot respguard started with. */
    enum config_pool_mode pool_mode;
    char *upstream_host;
    uint16_t upstream_port;
    /* Every user name configured since the start has a slot, never reused: what is counted or
     * learnt about a user (metrics, rate bucket, anomaly baselines) survives reloads, and a
     * snapshot's user_slot maps its users to them. */
    char **slot_names;
    size_t slot_count;
    struct worker_user_rate *rates;/* per slot (used when the user's rate_limit is enabled) */
    struct listener *listeners;
    size_t listener_count;
    struct anomaly *anomaly;       /* rate baselines and anomaly events per slot; NULL: disabled */
    struct metrics *metrics_all;   /* every shard (one worker: one shard) */
    struct metrics_shard *metrics; /* this worker's counters (never NULL while running) */
    struct lockout *lockout;       /* failed logins per source; NULL when login_lockout is off */
    /* One pool per upstream credential name ever configured (pool.h); login_pool[i] is the pool
     * of the snapshot's login i. A credential a reload removes keeps its retired pool until
     * exit, so that nothing points at freed memory. */
    struct pool **pools;
    size_t pool_count;
    size_t *login_pool;
    struct pool **spare;           /* allocated ahead for the next pools (reserve_pools) */
    size_t spare_count;
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
    size_t rest_running;           /* REST listeners not stopped yet (rest.c): shutdown ends
                                      once they and the sessions are gone */
    bool shutting_down;
    uv_timer_t shutdown_timer;
    void (*on_drained)(struct worker *w); /* called once no session is left while shutting down */
};

/* The slot of the snapshot's user u (see slot_names). */
size_t worker_user_slot(const struct worker *w, const struct snapshot *snap, const struct acl_user *u);
/* The config entry of a compiled user of snap (same index). */
const struct config_user *worker_user_config(const struct snapshot *snap, const struct acl_user *u);
/* The name upstream certificates must match (and the SNI): server_name, else the host respguard
 * started with (a reload cannot move the upstream). */
const char *worker_verify_name(const struct worker *w);
/* Is p the pool of a credential of the current snapshot? (A removed credential's is not, also
 * before it is retired.) */
bool worker_pool_current(const struct worker *w, const struct pool *p);
/* The pool user u of the current snapshot logs in with. */
struct pool *worker_user_pool(const struct worker *w, const struct acl_user *u);

/* Set w up to run snap (its reference passes to w): the fixed settings, metrics, rate buckets,
 * login lockout and anomaly detector. 0, or -1 with the reason in err. */
int worker_init(struct worker *w, uv_loop_t *loop, struct snapshot *snap, char *err, size_t errlen)
    __attribute__((warn_unused_result));
/* Reload: run under next from now on (its reference passes to w). Users keep their slots, new
 * credentials get pools, changed ones are drained and removed ones retired; sessions move to
 * next (those of removed or disabled users are closed), listeners take their new settings.
 * Keys that need a restart keep their running values. 0, or -1 with the reason in err (out of
 * memory, a pool that cannot start): then nothing changed and next is dropped. */
int worker_install(struct worker *w, struct snapshot *next, struct worker_reload_result *out, char *err,
                   size_t errlen) __attribute__((warn_unused_result));

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
/* After the loop ended: free the pools and everything worker_init made, and drop the snapshot. */
void worker_free(struct worker *w);

/* Session registry (implemented in session.c, which knows the session's links). */
void worker_add_session(struct worker *w, struct session *s);
void worker_remove_session(struct worker *w, struct session *s);
/* Shutdown: once no session is left and every REST listener has stopped, call on_drained. */
void worker_check_drained(struct worker *w);
/* Shutdown: every session stops reading and closes once its replies are out. */
void worker_drain_sessions(struct worker *w);
/* Shutdown deadline: close whatever is left. */
void worker_close_sessions(struct worker *w);
/* Reload (session.c), first: every session that may go on moves to w->snap (one waiting in a
 * pool its user no longer maps to waits in the right one); the others (user gone or turned off,
 * address no longer allowed, own connection under a credential the user left, a subscription
 * whose rules changed) keep their snapshot and are marked. Then, once the removed credentials'
 * pools are retired, worker_close_reloaded_sessions closes the marked ones, as Redis closes the
 * clients of a deleted or disabled user, and returns how many. */
void worker_reload_sessions(struct worker *w);
size_t worker_close_reloaded_sessions(struct worker *w);

#endif
