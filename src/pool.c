/*
 * pool: upstream connections opened ahead of need, handed to clients, reset when they come back
 * unclean, and the routing of each connection's reply frames (the contract is in pool.h).
 *
 * Every connection has a route queue: who gets its next reply frames. A CLIENT route gives a
 * counted number of frames to a SHARE client, an OWNER route every frame to the HOLD or PIN
 * client until it gives the connection back, and respguard's own commands have their own routes
 * (LOGIN, PING, RESET) whose replies the pool checks itself. Routes are pushed in the order the
 * commands were queued on the connection, so the queue is the connection's reply order.
 *
 * Every state change goes through set_state, which asserts that the move is legal and keeps the
 * per-state counts and metrics. Frames are routed one piece at a time: a client's callback may
 * send, release or close, so the routing loop rereads the head route after every call and never
 * keeps a pointer into the ring across one.
 *
 * What this file must not do: hand a connection to a client while replies or state of another
 * client may still be on it, send a client's bytes on a connection it does not hold, or log a
 * secret (the login command and the reset nonce never reach the log).
 */
#include "respguard/pool.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "respguard/config.h"
#include "respguard/crypto.h"
#include "respguard/invariant.h"
#include "respguard/log.h"
#include "respguard/metrics.h"
#include "respguard/snapshot.h"
#include "respguard/tlsconn.h"
#include "respguard/transport.h"
#include "respguard/worker.h"

/* A shared connection takes new clients while fewer replies than this are due on it; past it the
 * least busy one does. Concentrating clients on one connection is what lets their commands leave
 * in one write; spreading under load keeps one slow reply from holding everyone up. */
#define SHARE_SPILL 1024
/* The clock is read once per read and again after this many reply frames of it (a read can
 * carry a thousand replies; a clock read per reply cost more than the rest of its routing). */
#define POOL_CLOCK_FRAMES 32
/* A shared connection with nothing in flight sends its batch as soon as it holds this many
 * commands, not at the end of the loop turn: the server starts on them while respguard reads its
 * other clients. With respguard and the server on different CPUs, waiting for the turn's end
 * made the two take turns (each idle while the other worked); with both on one CPU, or with
 * replies in flight, the one write per turn stays. */
#define EARLY_SEND 256
/* Refill backoff after connect failures: 250 ms doubling up to 10 s. */
#define BACKOFF_MIN_MS 250
#define BACKOFF_MAX_MS 10000

enum route_kind {
    ROUTE_CLIENT, /* `frames` frames for a SHARE client */
    ROUTE_OWNER,  /* every frame for the HOLD or PIN client, until it gives the connection back */
    ROUTE_DROP,   /* `frames` frames of a SHARE client that left: read and dropped */
    ROUTE_LOGIN,  /* respguard's login: anything but an error means logged in */
    ROUTE_PING,   /* keepalive: +PONG */
    ROUTE_RESET,  /* everything up to the nonce's echo, which must follow +RESET and the login */
};

enum seen { SEEN_OTHER, SEEN_RESET, SEEN_LOGIN };

static const char reset_cmd[] = "*1\r\n$5\r\nRESET\r\n";
static const char ping_cmd[] = "*1\r\n$4\r\nPING\r\n";

static void conn_close(struct upconn *c, const char *why);
static void became_free(struct upconn *c);
static void refill(struct pool *p, bool background);
static void route_input(struct upconn *c);

/* The pool settings in force: a reload may change them (but not the mode: worker.pool_mode). */
static const struct config_pool *cfg_of(const struct pool *p) { return &p->w->snap->cfg->upstream.pool; }
static uint64_t now_ms(const struct pool *p) { return uv_now(p->w->loop); }

/* ---------------------------------------------------------------------------------------- */
/* States                                                                                   */
/* ---------------------------------------------------------------------------------------- */

static enum metrics_pool_state metric_state(enum upconn_state s)
{
    switch (s) {
    case UPCONN_CONNECTING: return MPS_CONNECTING;
    case UPCONN_IDLE: return MPS_IDLE;
    case UPCONN_SHARED:
    case UPCONN_HELD: return MPS_BUSY;
    case UPCONN_PINNED: return MPS_PINNED;
    case UPCONN_RESETTING: return MPS_RESETTING;
    case UPCONN_CLOSING: break;
    }
    return MPS_NONE;
}

static bool legal(enum upconn_state from, enum upconn_state to)
{
    if (to == UPCONN_CLOSING)
        return from != UPCONN_CLOSING;
    switch (from) {
    case UPCONN_CONNECTING: return to == UPCONN_IDLE;
    case UPCONN_IDLE: return to == UPCONN_SHARED || to == UPCONN_HELD || to == UPCONN_PINNED;
    case UPCONN_SHARED: return to == UPCONN_IDLE;
    case UPCONN_HELD:
    case UPCONN_PINNED: return to == UPCONN_IDLE || to == UPCONN_RESETTING;
    case UPCONN_RESETTING: return to == UPCONN_IDLE;
    case UPCONN_CLOSING: return false;
    }
    return false;
}

/* The one door for state changes: checks the move, keeps counts and the metrics gauge. */
static void set_state(struct upconn *c, enum upconn_state to)
{
    struct pool *p = c->pool;
    if (!legal(c->state, to)) {
        log_event(LOG_ERROR, "internal_error", LOG_STR("what", "illegal pool connection state change"),
                  LOG_INT("from", c->state), LOG_INT("to", to), LOG_END);
        abort(); /* a broken invariant: continuing could hand one client's connection to another */
    }
    p->count[c->state]--;
    p->count[to]++;
    if (to == UPCONN_CLOSING)
        p->open--;
    enum metrics_pool_state m = metric_state(to);
    metrics_pool_move(p->w->metrics, c->mstate, m);
    c->mstate = m;
    c->state = to;
}

/* ---------------------------------------------------------------------------------------- */
/* Routes                                                                                   */
/* ---------------------------------------------------------------------------------------- */

static struct pool_route *route_at(struct upconn *c, size_t i)
{
    return &c->routes[(c->rhead + i) & (c->rcap - 1)];
}

static struct pool_route *route_head(struct upconn *c) { return c->rlen ? route_at(c, 0) : NULL; }

static int route_push(struct upconn *c, enum route_kind kind, struct pool_client *client, uint32_t frames)
{
    if (kind == ROUTE_CLIENT && c->rlen) {
        struct pool_route *t = route_at(c, c->rlen - 1);
        if (t->kind == ROUTE_CLIENT && t->client == client) {
            t->frames += frames; /* a client's batch continues */
            return 0;
        }
    }
    if (c->rlen == c->rcap) {
        size_t cap = c->rcap ? c->rcap * 2 : 8;
        struct pool_route *n = malloc(cap * sizeof *n);
        if (!n)
            return -ENOMEM;
        for (size_t i = 0; i < c->rlen; i++)
            n[i] = *route_at(c, i);
        free(c->routes);
        c->routes = n;
        c->rcap = cap;
        c->rhead = 0;
    }
    *route_at(c, c->rlen) = (struct pool_route){.client = client, .frames = frames, .kind = (uint8_t)kind};
    c->rlen++;
    return 0;
}

static void route_pop(struct upconn *c)
{
    c->rhead = (c->rhead + 1) & (c->rcap - 1);
    c->rlen--;
}

/* ---------------------------------------------------------------------------------------- */
/* Writing                                                                                  */
/* ---------------------------------------------------------------------------------------- */

/* Connections are flushed in the order their first output of the turn was queued: commands of
 * different clients leave for Redis in the order respguard read them, as they would have
 * arrived on direct connections. */
static void queue_flush(struct upconn *c)
{
    if (c->flush_queued || c->state == UPCONN_CLOSING)
        return;
    c->flush_queued = true;
    c->flush_next = NULL;
    if (c->pool->flush_tail)
        c->pool->flush_tail->flush_next = c;
    else
        c->pool->flush_head = c;
    c->pool->flush_tail = c;
}

static void unqueue_flush(struct upconn *c)
{
    if (!c->flush_queued)
        return;
    struct upconn *prev = NULL;
    for (struct upconn *x = c->pool->flush_head; x; prev = x, x = x->flush_next)
        if (x == c) {
            if (prev)
                prev->flush_next = c->flush_next;
            else
                c->pool->flush_head = c->flush_next;
            if (c->pool->flush_tail == c)
                c->pool->flush_tail = prev;
            break;
        }
    c->flush_queued = false;
}

void pool_flush(struct pool *p)
{
    struct upconn *c = p->flush_head, *next;
    p->flush_head = p->flush_tail = NULL;
    for (; c; c = next) {
        next = c->flush_next;
        c->flush_queued = false;
        if (c->batch) {
            metrics_observe(p->w->metrics, MH_COMMANDS_PER_WRITE, c->batch);
            c->batch = 0;
        }
        c->batch_frames = 0;
        transport_flush(&c->up.t);
    }
}

/* respguard's own command on c, answered to a route of its own. */
static void send_own(struct upconn *c, enum route_kind kind, const char *bytes, size_t len)
{
    if (route_push(c, kind, NULL, 1) != 0) {
        conn_close(c, "out of memory");
        return;
    }
    transport_write(&c->up.t, bytes, len);
    queue_flush(c);
}

static void send_login(struct upconn *c)
{
    RG_INVARIANT(!c->pool->retired && c->pool->login < c->pool->w->snap->login_count);
    const struct snapshot_login *l = &c->pool->w->snap->logins[c->pool->login];
    send_own(c, ROUTE_LOGIN, l->cmd, l->len);
}

/* ---------------------------------------------------------------------------------------- */
/* Waiters                                                                                  */
/* ---------------------------------------------------------------------------------------- */

static void wait_unlink(struct pool *p, struct pool_client *cl)
{
    if (cl->wprev)
        cl->wprev->wnext = cl->wnext;
    else
        p->wait_head = cl->wnext;
    if (cl->wnext)
        cl->wnext->wprev = cl->wprev;
    else
        p->wait_tail = cl->wprev;
    cl->wprev = cl->wnext = NULL;
    cl->waiting = false;
    if (cl->use == POOL_USE_SHARE)
        p->waiting_share--;
    else
        p->waiting_own--;
}

static void on_wait_timeout(uv_timer_t *t);

static void arm_wait_timer(struct pool *p)
{
    if (!p->wait_head || p->stopping) {
        uv_timer_stop(&p->wait_timer);
        return;
    }
    uint64_t now = now_ms(p), due = p->wait_head->wait_until_ms;
    uv_timer_start(&p->wait_timer, on_wait_timeout, due > now ? due - now : 0, 0);
}

static void fail_waiter(struct pool *p, struct pool_client *cl, enum pool_failure why)
{
    wait_unlink(p, cl);
    cl->ops->failed(cl, why);
}

static void on_wait_timeout(uv_timer_t *t)
{
    struct pool *p = t->data;
    uint64_t now = now_ms(p);
    while (p->wait_head && p->wait_head->wait_until_ms <= now) {
        metrics_inc(p->w->metrics, MC_POOL_ACQUIRE_TIMEOUTS);
        fail_waiter(p, p->wait_head, POOL_FAIL_TIMEOUT);
    }
    arm_wait_timer(p);
}

/* ---------------------------------------------------------------------------------------- */
/* Handing connections out                                                                  */
/* ---------------------------------------------------------------------------------------- */

static void attach_share(struct upconn *c, struct pool_client *cl)
{
    if (c->state != UPCONN_IDLE && c->state != UPCONN_SHARED) {
        log_event(LOG_ERROR, "internal_error", LOG_STR("what", "shared use of a connection that is not shared"),
                  LOG_INT("state", c->state), LOG_END);
        abort(); /* its replies would reach the wrong client */
    }
    if (c->state == UPCONN_IDLE)
        set_state(c, UPCONN_SHARED);
    c->clients++;
    cl->conn = c;
    cl->use = POOL_USE_SHARE;
    cl->due = 0;
}

static int take(struct upconn *c, struct pool_client *cl, enum pool_use use)
{
    if (route_push(c, ROUTE_OWNER, cl, 0) != 0)
        return -ENOMEM;
    set_state(c, use == POOL_USE_HOLD ? UPCONN_HELD : UPCONN_PINNED);
    c->owner = cl;
    cl->conn = c;
    cl->use = use;
    cl->due = 0;
    return 0;
}

static bool usable(const struct upconn *c)
{
    return !c->retiring && (c->state == UPCONN_IDLE || c->state == UPCONN_SHARED);
}

/* Where a SHARE client goes: the current connection while it is not too busy, else the least
 * busy ready one. */
static struct upconn *pick_shared(struct pool *p)
{
    if (p->current && usable(p->current) && p->current->due < SHARE_SPILL)
        return p->current;
    struct upconn *best = NULL;
    for (struct upconn *c = p->conns; c; c = c->next)
        if (usable(c) && (!best || c->due < best->due))
            best = c;
    p->current = best;
    return best;
}

static struct upconn *pick_idle(struct pool *p)
{
    struct upconn *best = NULL;
    for (struct upconn *c = p->conns; c; c = c->next)
        if (c->state == UPCONN_IDLE && !c->retiring && (!best || c->idle_ms > best->idle_ms))
            best = c; /* the most recently used: the others may reach idle_timeout */
    return best;
}

/* c is IDLE: give it to whoever waits, in order. */
static void became_free(struct upconn *c)
{
    struct pool *p = c->pool;
    c->idle_ms = c->active_ms = now_ms(p);
    if (c->retiring || p->stopping) {
        conn_close(c, c->retiring ? "max_lifetime reached" : "shutdown");
        return;
    }
    bool served = false;
    while (p->wait_head && c->state != UPCONN_CLOSING) {
        struct pool_client *cl = p->wait_head;
        if (cl->use == POOL_USE_SHARE) {
            if (c->state != UPCONN_IDLE && c->state != UPCONN_SHARED)
                break; /* an earlier waiter took it for itself */
            wait_unlink(p, cl);
            attach_share(c, cl);
        } else {
            if (c->state != UPCONN_IDLE)
                break;
            wait_unlink(p, cl);
            if (take(c, cl, cl->use) != 0) {
                cl->ops->failed(cl, POOL_FAIL_UPSTREAM);
                continue;
            }
        }
        served = true;
        cl->ops->acquired(cl);
    }
    if (served)
        arm_wait_timer(p);
}

int pool_acquire(struct pool *p, struct pool_client *cl, enum pool_use use)
{
    if (p->stopping || p->retired)
        return -ESHUTDOWN;
    cl->conn = NULL;
    cl->use = use;
    cl->pool = p;
    if (use == POOL_USE_SHARE) {
        struct upconn *c = pick_shared(p);
        if (c) {
            attach_share(c, cl);
            return 0;
        }
    } else {
        struct upconn *c = pick_idle(p);
        if (c)
            return take(c, cl, use);
    }
    /* Wait: for a connection being opened, or given back. */
    metrics_inc(p->w->metrics, MC_POOL_ACQUIRE_WAITS);
    cl->waiting = true;
    cl->wait_until_ms = now_ms(p) + cfg_of(p)->acquire_timeout_ms;
    cl->wnext = NULL;
    cl->wprev = p->wait_tail;
    if (p->wait_tail)
        p->wait_tail->wnext = cl;
    else
        p->wait_head = cl;
    p->wait_tail = cl;
    if (use == POOL_USE_SHARE)
        p->waiting_share++;
    else
        p->waiting_own++;
    if (p->wait_head == cl)
        arm_wait_timer(p);
    /* A connection opened for cl may fail at once (its start cannot even begin): cl then hears
     * it from the return value, never through a callback from inside this call. */
    cl->doomed = false;
    p->acquiring = cl;
    refill(p, false);
    p->acquiring = NULL;
    if (cl->doomed) {
        cl->doomed = false;
        arm_wait_timer(p);
        return -EHOSTUNREACH;
    }
    return 1;
}

void pool_cancel(struct pool_client *cl)
{
    if (!cl->waiting)
        return;
    wait_unlink(cl->pool, cl);
    arm_wait_timer(cl->pool);
}

/* ---------------------------------------------------------------------------------------- */
/* Opening, failing, closing                                                                */
/* ---------------------------------------------------------------------------------------- */

static void on_ready(struct upstream *u)
{
    struct upconn *c = u->owner;
    struct pool *p = c->pool;
    c->counted_open = true;
    metrics_inc(p->w->metrics, MC_UPSTREAM_OPENED);
    bool resumed = u->t.tls && tlsconn_resumed(u->t.tls);
    metrics_inc(p->w->metrics, resumed ? MC_HANDSHAKE_RESUMED : MC_HANDSHAKE_FULL);
    log_event(LOG_DEBUG, "upstream_connected", LOG_INT("conn", c->id), LOG_STR("credential", p->name),
              LOG_BOOL("resumed", resumed), LOG_END);
    /* The login waited in the transport for the verified handshake; it leaves now. */
    transport_flush(&u->t);
}

/* Everyone whose replies were due on c hears that it broke. The routes are taken off c first, so
 * whatever the callbacks do to the pool cannot touch them. */
static void notify_lost(struct upconn *c, const char *stage, const char *reason)
{
    struct pool_route *routes = c->routes;
    size_t head = c->rhead, len = c->rlen, cap = c->rcap;
    c->routes = NULL;
    c->rlen = c->rcap = c->rhead = 0;
    c->due = 0;
    c->clients = 0;
    c->owner = NULL;
    for (size_t i = 0; i < len; i++) {
        struct pool_route *r = &routes[(head + i) & (cap - 1)];
        struct pool_client *cl = r->client;
        if ((r->kind != ROUTE_CLIENT && r->kind != ROUTE_OWNER) || !cl || cl->conn != c)
            continue;
        cl->conn = NULL;
        cl->due = 0;
        cl->ops->lost(cl, stage, reason);
    }
    free(routes);
}

/* Connect or connection failure: log it once, count it, tell the clients, close. */
static void conn_failed(struct upconn *c, const char *stage, const char *reason)
{
    struct pool *p = c->pool;
    if (c->state == UPCONN_CLOSING)
        return;
    bool connecting = c->state == UPCONN_CONNECTING;
    size_t affected = 0;
    for (size_t i = 0; i < c->rlen; i++)
        affected += route_at(c, i)->kind == ROUTE_CLIENT || route_at(c, i)->kind == ROUTE_OWNER;
    log_event(LOG_WARN, "upstream_error", LOG_INT("conn", c->id),
              LOG_STR("credential", p->name), LOG_STR("stage", stage), LOG_STR("reason", reason),
              LOG_INT("clients", (long long)affected), LOG_END);
    metrics_inc(p->w->metrics, metrics_upstream_failure(stage, reason));
    if (connecting) {
        p->failures++;
        uint64_t backoff = BACKOFF_MIN_MS;
        for (uint32_t i = 1; i < p->failures && backoff < BACKOFF_MAX_MS; i++)
            backoff *= 2;
        p->retry_ms = now_ms(p) + (backoff < BACKOFF_MAX_MS ? backoff : BACKOFF_MAX_MS);
        if (strcmp(stage, "tls") == 0)
            tlsconn_resume_forget(p->resume); /* in case the offered session is what failed */
    }
    set_state(c, UPCONN_CLOSING);
    unqueue_flush(c);
    if (p->current == c)
        p->current = NULL;
    notify_lost(c, stage, reason);
    upstream_close(&c->up);
    if (connecting) {
        /* Waiters that no connection being opened can serve any more hear it now, as a client
         * of a session that could not connect always did: all of them when no attempt is left,
         * else the clients needing a connection of their own beyond the attempts left (the
         * oldest are served first; a client that can share waits for any of them). */
        size_t left = p->count[UPCONN_CONNECTING], keep = 0;
        struct pool_client *cl = p->wait_head;
        while (cl) {
            struct pool_client *next = cl->wnext;
            bool served = left > 0 && (cl->use == POOL_USE_SHARE || keep++ < left);
            if (!served && cl == p->acquiring) { /* inside its pool_acquire: returned there */
                wait_unlink(p, cl);
                cl->doomed = true;
            } else if (!served) {
                fail_waiter(p, cl, POOL_FAIL_UPSTREAM);
            }
            cl = next;
        }
        arm_wait_timer(p);
    }
}

static void conn_close(struct upconn *c, const char *why)
{
    struct pool *p = c->pool;
    if (c->state == UPCONN_CLOSING)
        return;
    log_event(LOG_DEBUG, "upstream_close", LOG_INT("conn", c->id), LOG_STR("credential", p->name),
              LOG_STR("reason", why), LOG_END);
    set_state(c, UPCONN_CLOSING);
    unqueue_flush(c);
    if (p->current == c)
        p->current = NULL;
    notify_lost(c, "lost", why);
    upstream_close(&c->up);
    refill(p, true);
}

static void on_failed(struct upstream *u, const char *stage, const char *reason)
{
    struct upconn *c = u->owner;
    struct pool *p = c->pool;
    conn_failed(c, stage, reason);
    refill(p, true);
}

static void on_closed(struct upstream *u)
{
    struct upconn *c = u->owner;
    struct pool *p = c->pool;
    if (c->counted_open)
        metrics_inc(p->w->metrics, MC_UPSTREAM_CLOSED);
    if (c->state != UPCONN_CLOSING)
        set_state(c, UPCONN_CLOSING); /* closed by itself before it was up */
    p->count[UPCONN_CLOSING]--;
    if (c->prev)
        c->prev->next = c->next;
    else
        p->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    free(c->routes);
    resp_framer_deinit(&c->framer);
    free(c);
}

static void on_data(struct upstream *u)
{
    struct upconn *c = u->owner;
    if (!c->paused)
        route_input(c);
}

static void on_drained(struct upstream *u)
{
    struct upconn *c = u->owner;
    if (c->owner && c->owner->ops->drained)
        c->owner->ops->drained(c->owner);
}

static const struct upstream_ops conn_ops = {
    .on_ready = on_ready,
    .on_data = on_data,
    .on_drained = on_drained,
    .on_failed = on_failed,
    .on_closed = on_closed,
};

static void conn_open(struct pool *p)
{
    struct upconn *c = calloc(1, sizeof *c);
    if (!c)
        return;
    c->pool = p;
    c->id = ++p->next_conn_id;
    c->state = UPCONN_CONNECTING;
    c->mstate = MPS_NONE;
    resp_framer_init(&c->framer);
    c->next = p->conns;
    if (p->conns)
        p->conns->prev = c;
    p->conns = c;
    p->count[UPCONN_CONNECTING]++;
    p->open++;
    metrics_pool_move(p->w->metrics, MPS_NONE, MPS_CONNECTING);
    c->mstate = MPS_CONNECTING;
    int rc = upstream_start(&c->up, p->w, &conn_ops, c, p->resume);
    if (rc < 0) {
        char reason[128];
        snprintf(reason, sizeof reason, "cannot start the connection: %s", uv_strerror(rc));
        conn_failed(c, "connect", reason); /* on_closed follows and frees it */
        return;
    }
    if (c->state == UPCONN_CLOSING)
        return; /* it failed at once (resolution): on_closed frees it */
    c->up.t.bytes_in_counter = &p->w->metrics->c[MC_UPSTREAM_BYTES_IN];
    c->up.t.bytes_out_counter = &p->w->metrics->c[MC_UPSTREAM_BYTES_OUT];
    send_login(c);
}

/* Open what waiters need now, and (background, not before the failure backoff ends) what
 * min_idle asks for. Never more than size. */
static void refill(struct pool *p, bool background)
{
    if (p->stopping || p->retired)
        return;
    const struct config_pool *pc = cfg_of(p);
    /* each client waiting for a connection of its own needs one; those that can share, one */
    size_t need = p->waiting_own + (p->waiting_share ? 1 : 0);
    size_t connecting = p->count[UPCONN_CONNECTING];
    size_t opening = need > connecting ? need - connecting : 0;
    if (background && now_ms(p) >= p->retry_ms) {
        size_t ready = p->count[UPCONN_IDLE] + connecting + opening;
        if (p->w->pool_mode == CONFIG_POOL_MULTIPLEX)
            ready += p->count[UPCONN_SHARED];
        if (ready < pc->min_idle)
            opening += pc->min_idle - ready;
    }
    while (opening-- && p->open < pc->size)
        conn_open(p);
}

/* ---------------------------------------------------------------------------------------- */
/* Reading                                                                                  */
/* ---------------------------------------------------------------------------------------- */

static bool frame_is(const struct upconn *c, const char *s)
{
    size_t n = strlen(s);
    return c->frame_len == n && c->head_len == n && memcmp(c->head, s, n) == 0;
}

static bool frame_is_nonce(const struct upconn *c)
{
    char want[48];
    int n = snprintf(want, sizeof want, "$32\r\n%s\r\n", c->nonce);
    return n > 0 && c->frame_len == (size_t)n && c->head_len == (size_t)n && memcmp(c->head, want, (size_t)n) == 0;
}

static bool frame_is_error(const struct upconn *c) { return c->head_len && (c->head[0] == '-' || c->head[0] == '!'); }

/* A frame of respguard's own (LOGIN, PING, RESET routes) ended: check it. */
static void own_frame_done(struct upconn *c, enum route_kind kind)
{
    struct pool *p = c->pool;
    switch (kind) {
    case ROUTE_LOGIN:
        route_pop(c);
        if (frame_is_error(c)) {
            /* Only the error's code: its text may echo respguard's AUTH arguments. */
            char code[32], reason[96];
            resp_error_code(c->head, c->head_len, code, sizeof code);
            snprintf(reason, sizeof reason, "the upstream refused respguard's login (%s)", code[0] ? code : "error");
            conn_failed(c, "auth", reason);
            refill(p, true);
            return;
        }
        upstream_logged_in(&c->up);
        c->opened_ms = now_ms(p);
        p->failures = 0;
        p->retry_ms = 0;
        set_state(c, UPCONN_IDLE);
        became_free(c);
        return;
    case ROUTE_PING:
        route_pop(c);
        c->ping_ms = 0;
        if (!frame_is(c, "+PONG\r\n")) {
            conn_failed(c, "lost", "keepalive PING failed");
            refill(p, true);
            return;
        }
        c->active_ms = now_ms(p);
        return;
    case ROUTE_RESET:
        if (!frame_is_nonce(c)) {
            c->seen[0] = c->seen[1];
            c->seen[1] = frame_is(c, "+RESET\r\n") ? SEEN_RESET
                         : frame_is(c, "+OK\r\n") || frame_is(c, "+PONG\r\n") ? SEEN_LOGIN : SEEN_OTHER;
            return;
        }
        route_pop(c);
        if (c->seen[0] != SEEN_RESET || c->seen[1] != SEEN_LOGIN || c->rlen != 0) {
            metrics_inc(p->w->metrics, MC_POOL_RESET_FAILED);
            conn_close(c, "reset failed");
            return;
        }
        metrics_inc(p->w->metrics, MC_POOL_RESET_OK);
        set_state(c, UPCONN_IDLE);
        became_free(c);
        return;
    default:
        return;
    }
}

/* The connection is in a state where an unexpected frame means the stream is out of step. */
static void unexpected(struct upconn *c)
{
    log_event(LOG_WARN, "unexpected_reply", LOG_INT("conn", c->id), LOG_STR("credential", c->pool->name), LOG_END);
    conn_close(c, "reply nobody asked for");
}

static void route_input(struct upconn *c)
{
    struct buf *in = &c->up.t.in;
    if (c->routing)
        return; /* called from inside a callback of the loop below: it goes on by itself */
    c->routing = true;
    c->pool->read_ns = c->pool->route_ns = uv_hrtime(); /* for the replies' latency */
    unsigned frames = 0;
    while (buf_len(in) > 0 && c->state != UPCONN_CLOSING && !c->paused) {
        struct pool_route *r = route_head(c);
        if (!r) {
            c->routing = false;
            unexpected(c);
            return;
        }
        size_t used = 0;
        struct resp_frame_info info;
        const char *err = NULL;
        enum resp_frame_status st = resp_framer_feed(&c->framer, buf_head(in), buf_len(in), &used, &info, &err);
        if (st == RESP_FRAME_ERROR) {
            c->routing = false;
            conn_failed(c, "lost", err ? err : "protocol error in reply");
            refill(c->pool, true);
            return;
        }
        const char *chunk = buf_head(in);
        if (c->head_len < sizeof c->head) {
            size_t n = sizeof c->head - c->head_len;
            memcpy(c->head + c->head_len, chunk, used < n ? used : n);
            c->head_len += used < n ? used : n;
        }
        c->frame_len += used;
        bool done = st == RESP_FRAME_DONE;
        enum route_kind kind = (enum route_kind)r->kind;
        struct pool_client *cl = r->client;
        /* Counted routes move on before the callback, which may change the routes. An attribute
         * is not a reply of its own (only RESP3 connections have them: never shared ones). */
        if (done && (kind == ROUTE_CLIENT || kind == ROUTE_DROP) && info.kind != RESP_FRAME_ATTRIBUTE) {
            c->due--;
            if (--r->frames == 0)
                route_pop(c);
            if (kind == ROUTE_CLIENT && --cl->due == 0) {
                cl->conn = NULL; /* its last reply here: it leaves the connection */
                c->clients--;
            }
            if (c->state == UPCONN_SHARED && c->clients == 0 && c->due == 0) {
                set_state(c, UPCONN_IDLE);
                became_free(c);
            }
        }
        /* Consumed before the callback (which may close the connection); the bytes stay where
         * they are until the buffer is next written to, which only a read does. */
        buf_consume(in, used);
        switch (kind) {
        case ROUTE_CLIENT:
        case ROUTE_OWNER:
            cl->ops->reply(cl, chunk, used, done ? &info : NULL);
            break;
        case ROUTE_DROP:
            break;
        case ROUTE_LOGIN:
        case ROUTE_PING:
        case ROUTE_RESET:
            if (done)
                own_frame_done(c, kind);
            break;
        }
        if (done) {
            c->head_len = 0;
            c->frame_len = 0;
            if (++frames % POOL_CLOCK_FRAMES == 0)
                c->pool->route_ns = uv_hrtime();
        }
    }
    c->routing = false;
    if (c->state != UPCONN_CLOSING)
        transport_shrink_input(&c->up.t);
}

/* ---------------------------------------------------------------------------------------- */
/* Giving back                                                                              */
/* ---------------------------------------------------------------------------------------- */

/* c comes back with state or replies of its last owner on it: RESET, respguard's login, and an
 * ECHO of a fresh nonce. Everything up to the nonce's echo is read and dropped; the two replies
 * before it must be +RESET and the login's. Only then is c free again. */
static void start_reset(struct upconn *c)
{
    struct pool *p = c->pool;
    unsigned char raw[16];
    if (crypto_random(raw, sizeof raw) != 0) {
        conn_close(c, "no random bytes for the reset nonce");
        return;
    }
    static const char hex[] = "0123456789abcdef";
    for (size_t i = 0; i < sizeof raw; i++) {
        c->nonce[2 * i] = hex[raw[i] >> 4];
        c->nonce[2 * i + 1] = hex[raw[i] & 15];
    }
    c->nonce[32] = '\0';
    char echo[64];
    int n = snprintf(echo, sizeof echo, "*2\r\n$4\r\nECHO\r\n$32\r\n%s\r\n", c->nonce);
    RG_INVARIANT(!p->retired && p->login < p->w->snap->login_count);
    const struct snapshot_login *l = &p->w->snap->logins[p->login];
    c->seen[0] = c->seen[1] = SEEN_OTHER;
    set_state(c, UPCONN_RESETTING);
    c->reset_deadline_ms = now_ms(p) + p->w->snap->cfg->limits.shutdown_timeout_ms;
    if (route_push(c, ROUTE_RESET, NULL, 0) != 0) {
        conn_close(c, "out of memory");
        return;
    }
    transport_write(&c->up.t, reset_cmd, sizeof reset_cmd - 1);
    transport_write(&c->up.t, l->cmd, l->len);
    transport_write(&c->up.t, echo, (size_t)n);
    queue_flush(c);
    if (c->paused) {
        c->paused = false;
        transport_resume(&c->up.t);
    }
    route_input(c); /* what the last owner left unread */
}

void pool_release(struct pool_client *cl, enum pool_return how)
{
    struct upconn *c = cl->conn;
    if (!c)
        return;
    cl->conn = NULL;
    if (cl->use == POOL_USE_SHARE) {
        /* Replies still due to it are read and dropped. */
        for (size_t i = 0; i < c->rlen; i++) {
            struct pool_route *r = route_at(c, i);
            if (r->kind == ROUTE_CLIENT && r->client == cl) {
                r->kind = ROUTE_DROP;
                r->client = NULL;
            }
        }
        cl->due = 0;
        RG_INVARIANT(c->clients > 0);
        c->clients--;
        if (c->state == UPCONN_SHARED && c->clients == 0 && c->due == 0) {
            set_state(c, UPCONN_IDLE);
            became_free(c);
        }
        return;
    }
    /* HOLD or PIN: its OWNER route is the last one (only a keepalive PING sent before it was
     * taken can be ahead of it). */
    c->owner = NULL;
    if (c->rlen && route_at(c, c->rlen - 1)->kind == ROUTE_OWNER)
        c->rlen--;
    if (c->state == UPCONN_CLOSING)
        return;
    if (c->retiring || c->pool->stopping || how == POOL_RETURN_BROKEN) {
        conn_close(c, how == POOL_RETURN_BROKEN ? "given back with state RESET cannot clear" : "shutdown");
        return;
    }
    if (how == POOL_RETURN_CLEAN && c->rlen == 0 && !c->paused && resp_framer_idle(&c->framer)) {
        set_state(c, UPCONN_IDLE);
        became_free(c);
        return;
    }
    start_reset(c);
}

void pool_pause(struct pool_client *cl)
{
    struct upconn *c = cl->conn;
    if (c && cl->use != POOL_USE_SHARE && !c->paused) {
        c->paused = true;
        transport_pause(&c->up.t);
    }
}

void pool_resume(struct pool_client *cl)
{
    struct upconn *c = cl->conn;
    if (!c || cl->use == POOL_USE_SHARE || !c->paused)
        return;
    c->paused = false;
    transport_resume(&c->up.t);
    route_input(c); /* what arrived before the pause and is still unread */
}

size_t pool_pending(const struct pool_client *cl)
{
    return cl->conn ? transport_pending(&cl->conn->up.t) : 0;
}

void pool_trim(struct pool_client *cl)
{
    struct upconn *c = cl->conn;
    if (c && cl->use != POOL_USE_SHARE && c->state != UPCONN_CLOSING && !c->routing)
        transport_trim(&c->up.t);
}

void pool_send(struct pool_client *cl, const char *bytes, size_t len, uint32_t frames, uint32_t commands)
{
    struct upconn *c = cl->conn;
    if (cl->use == POOL_USE_SHARE && frames) {
        if (route_push(c, ROUTE_CLIENT, cl, frames) != 0) {
            conn_failed(c, "lost", "out of memory");
            return;
        }
        c->due += frames;
        cl->due += frames;
    }
    transport_write(&c->up.t, bytes, len);
    c->batch += commands;
    queue_flush(c);
    if (cl->use != POOL_USE_SHARE)
        return;
    c->batch_frames += frames;
    if (c->batch >= EARLY_SEND && c->due <= c->batch_frames && c->flush_queued) {
        metrics_observe(c->pool->w->metrics, MH_COMMANDS_PER_WRITE, c->batch);
        c->batch = 0;
        c->batch_frames = 0;
        transport_flush_quiet(&c->up.t); /* inside a client's callback: no event from here */
    }
}

/* ---------------------------------------------------------------------------------------- */
/* Upkeep                                                                                   */
/* ---------------------------------------------------------------------------------------- */

static void maintain(struct upconn *c, uint64_t now)
{
    struct pool *p = c->pool;
    const struct config_pool *pc = cfg_of(p);
    bool old = pc->max_lifetime_ms && c->opened_ms && now - c->opened_ms >= pc->max_lifetime_ms;
    switch (c->state) {
    case UPCONN_IDLE:
        if (old) {
            conn_close(c, "max_lifetime reached");
            return;
        }
        if (c->ping_ms && now - c->ping_ms > p->w->snap->cfg->upstream.connect_timeout_ms) {
            conn_failed(c, "lost", "keepalive PING not answered within connect_timeout");
            refill(p, true);
            return;
        }
        if (pc->idle_timeout_ms && now - c->idle_ms >= pc->idle_timeout_ms &&
            p->count[UPCONN_IDLE] > pc->min_idle) {
            conn_close(c, "idle_timeout reached");
            return;
        }
        if (pc->keepalive_ms && !c->ping_ms && now - c->active_ms >= pc->keepalive_ms) {
            c->ping_ms = now;
            send_own(c, ROUTE_PING, ping_cmd, sizeof ping_cmd - 1);
        }
        return;
    case UPCONN_SHARED:
    case UPCONN_HELD:
    case UPCONN_PINNED:
        if (old)
            c->retiring = true; /* closed once its clients are done with it */
        return;
    case UPCONN_RESETTING:
        if (now >= c->reset_deadline_ms) {
            metrics_inc(p->w->metrics, MC_POOL_RESET_FAILED);
            conn_close(c, "reset not done within shutdown_timeout");
        }
        return;
    case UPCONN_CONNECTING:
    case UPCONN_CLOSING:
        return;
    }
}

static void on_tick(uv_timer_t *t)
{
    struct pool *p = t->data;
    uint64_t now = now_ms(p);
    struct upconn *c = p->conns;
    while (c) {
        struct upconn *next = c->next; /* c may close, never free, here */
        maintain(c, now);
        c = next;
    }
    if (p->retired && !p->conns)
        uv_timer_stop(&p->tick); /* nothing left to look after, and nothing will be opened */
    refill(p, true);
}

int pool_start(struct pool *p, struct worker *w, size_t login, const char *name)
{
    memset(p, 0, sizeof *p);
    p->w = w;
    p->login = login;
    p->name = strdup(name);
    p->resume = tlsconn_resume_new();
    if (!p->resume || !p->name) {
        pool_free(p);
        return UV_ENOMEM;
    }
    int rc = uv_timer_init(w->loop, &p->tick);
    if (rc < 0) {
        pool_free(p);
        return rc;
    }
    uv_timer_init(w->loop, &p->wait_timer);
    p->tick.data = p->wait_timer.data = p;
    p->timers_open = true;
    uv_timer_start(&p->tick, on_tick, 1000, 1000);
    refill(p, true);
    return 0;
}

/* Every connection stops taking clients: idle ones close now, the others once free. */
static void retire_all(struct pool *p, const char *why)
{
    /* A fresh resumption slot: the old one holds sessions made under what is being replaced,
     * and connections still in their handshake keep filling it (their SSL points at it), so it
     * is kept aside until the pool is freed rather than emptied. */
    struct tlsconn_resume **old = realloc(p->old_resume, (p->old_resume_count + 1) * sizeof *old);
    struct tlsconn_resume *fresh = old ? tlsconn_resume_new() : NULL;
    if (old)
        p->old_resume = old;
    if (fresh) {
        p->old_resume[p->old_resume_count++] = p->resume;
        p->resume = fresh;
    } else { /* out of memory: no resumption from now on is the safe side */
        tlsconn_resume_forget(p->resume);
        if (old) {
            p->old_resume[p->old_resume_count++] = p->resume;
            p->resume = NULL;
        }
    }
    if (p->current)
        p->current = NULL;
    struct upconn *c = p->conns;
    while (c) {
        struct upconn *next = c->next;
        if (c->state == UPCONN_IDLE)
            conn_close(c, why);
        else if (c->state != UPCONN_CLOSING)
            c->retiring = true;
        c = next;
    }
}

void pool_drain(struct pool *p)
{
    if (p->stopping)
        return;
    retire_all(p, "credential or upstream verification changed");
    refill(p, true);
}

void pool_retire(struct pool *p)
{
    if (p->stopping || p->retired)
        return;
    p->retired = true;
    while (p->wait_head)
        fail_waiter(p, p->wait_head, POOL_FAIL_STOPPED);
    retire_all(p, "credential removed");
}

void pool_stop(struct pool *p)
{
    if (p->stopping)
        return;
    p->stopping = true;
    while (p->wait_head)
        fail_waiter(p, p->wait_head, POOL_FAIL_STOPPED);
    struct upconn *c = p->conns;
    while (c) {
        struct upconn *next = c->next;
        if (c->state == UPCONN_IDLE || c->state == UPCONN_CONNECTING || c->state == UPCONN_RESETTING)
            conn_close(c, "shutdown");
        else
            c->retiring = true;
        c = next;
    }
    if (p->timers_open) {
        p->timers_open = false;
        uv_close((uv_handle_t *)&p->tick, NULL);
        uv_close((uv_handle_t *)&p->wait_timer, NULL);
    }
}

void pool_free(struct pool *p)
{
    tlsconn_resume_free(p->resume);
    p->resume = NULL;
    for (size_t i = 0; i < p->old_resume_count; i++)
        tlsconn_resume_free(p->old_resume[i]);
    free(p->old_resume);
    p->old_resume = NULL;
    p->old_resume_count = 0;
    free(p->name);
    p->name = NULL;
}
