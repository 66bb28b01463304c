/*
 * session: one client connection: its login, the judgement of each command, the upstream
 * connection each command goes to (from the pool), the reply queue that puts the answers back
 * in order, and the session's lifetime.
 *
 * A command goes through three steps. The plan says which upstream connection it needs, from
 * nothing the step changes: none (respguard answers it), the user's pool's connection (held for
 * the session's life in session mode, shared in multiplex mode), or one of its own (pinned, in
 * multiplex mode, for connection state). If that connection is not at hand yet, the session
 * waits: the command stays unread and the pool calls back. Only then does anything happen: the
 * rate limit, the verdict's effects (counting, the audit line, the refusal), and the forwarding.
 * Dispatch is on the command table's roles and flags, never on names.
 *
 * What this file must not do: forward a byte it did not parse and check, let a refused command
 * reach the upstream, log a secret, leave state of its own on a connection it gives back
 * unmarked, or free itself while a libuv callback is due.
 */
#include "respguard/session.h"

#include <ctype.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "respguard/acl.h"
#include "respguard/anomaly.h"
#include "respguard/buf.h"
#include "respguard/config.h"
#include "respguard/invariant.h"
#include "respguard/listener.h"
#include "respguard/log.h"
#include "respguard/login.h"
#include "respguard/metrics.h"
#include "respguard/policy.h"
#include "respguard/pool.h"
#include "respguard/ratelimit.h"
#include "respguard/replyq.h"
#include "respguard/resp.h"
#include "respguard/scoped.h"
#include "respguard/snapshot.h"
#include "respguard/source.h"
#include "respguard/tlsconn.h"
#include "respguard/transport.h"
#include "respguard/worker.h"

/* A pipeline deeper than this waits for replies before more of it is read. */
#define MAX_PENDING (1u << 20)

enum session_state {
    SESSION_LOGIN,    /* connected, no user yet: only AUTH, HELLO, QUIT, RESET are served */
    SESSION_ACTIVE,   /* a user is logged in: commands are judged and forwarded */
    SESSION_DRAINING, /* reads nothing more (QUIT, a protocol error, shutdown, the client's
                         half-close): answers what is due, then closes */
    SESSION_CLOSING,  /* closing its handles; freed when the last one is closed */
};

/* Connection state a client can leave on a held or pinned upstream connection: any of it makes
 * the connection unclean when it is given back (the reply queue knows the rest: replies due,
 * subscriptions, RESP3). */
enum conn_state {
    CS_WATCH = 1u << 0,      /* WATCH sent, no successful EXEC, DISCARD or UNWATCH since */
    CS_NAME = 1u << 1,       /* CLIENT SETNAME or HELLO SETNAME sent */
    CS_DB = 1u << 2,         /* SELECT of a database other than 0 */
    CS_SETTING = 1u << 3,    /* CLIENT TRACKING/CACHING, SCRIPT DEBUG, READONLY, ... */
    CS_CREDENTIAL = 1u << 4, /* logged in upstream with another credential than its pool's */
    CS_STICKY = 1u << 5,     /* CLIENT NO-EVICT: RESET does not clear it, the connection goes */
    CS_IDENTITY = 1u << 6,   /* the client learnt the connection's id (CLIENT ID/INFO): it may
                                hand it to others (TRACKING REDIRECT, CLIENT KILL, UNBLOCK), so
                                the connection goes with the client, as a direct one would */
};

/* What a queue entry tells the session when it leaves (replyq_entry.tag). */
enum entry_tag {
    TAG_NONE,
    TAG_MULTI,  /* MULTI: an error means no transaction was opened */
    TAG_TX_END, /* EXEC, DISCARD, UNWATCH: on success WATCH is over */
    TAG_RESET,  /* the client's RESET: on success the connection's state is gone */
    TAG_LOGIN,  /* respguard's upstream login: an error ends the session */
    TAG_SELECT, /* SELECT: on success the database is the entry's seq */
    TAG_MONITOR, /* MONITOR: on success the connection is the monitor stream */
    TAG_BLOCKING, /* a command that may block (BLPOP, XREAD BLOCK, WAIT...) */
};

/* MONITOR on the client's connection. */
enum monitor_state {
    MON_NONE,
    MON_PENDING, /* sent: later commands wait for its reply */
    MON_ON,      /* the connection carries the monitor stream: only QUIT and RESET are served */
};

/* A transaction whose MULTI respguard refused: nothing runs until EXEC or DISCARD. */
enum tx_refusal {
    TX_NONE,
    TX_RATE_LIMIT, /* the rate limit refused the MULTI */
    TX_NO_CONN,    /* no upstream connection was free for it */
};

/* What the step before a command's effects decided it needs. */
enum go { GO, WAIT, FAIL };

/* A command resolved in the table once: the container and the entry that runs. */
struct command {
    const struct cmdtab_cmd *top;
    const struct cmdtab_cmd *cmd; /* the subcommand when there is one; NULL: unknown */
    enum cmdtab_role role;
};

struct session {
    struct worker *w;
    struct session *prev, *next;     /* the worker's sessions */
    /* Work for the end of the loop turn (the worker's lists): commands that waited for the pool
     * are read again; what was written to the client leaves in one write. */
    struct session *input_next, *flush_next;
    bool input_queued, flush_queued;
    const struct listener *listener;
    /* The configuration it runs under (a reference): its user points into it. A reload moves
     * every session to the new snapshot (worker_reload_sessions). */
    struct snapshot *snap;
    const char *reload_close;        /* during a reload: why it is closed once all have moved */
    bool cert_login;                 /* its listener names users by client certificate CN */
    uint64_t id;
    char peer[64];
    struct sockaddr_storage peer_addr; /* for allow_from and per-source counts */
    enum session_state state;
    int refs;                        /* open handles + one while a function of ours runs */
    uint64_t created_ms, last_ms;    /* loop time of the accept and of the last command */

    struct transport client;
    uv_timer_t timer;                /* login timeout, then the user's expiry, then the close
                                        deadline */
    const struct acl_user *user;     /* NULL before login */

    struct pool_client pc;           /* its use of the pool */
    struct pool *pool;               /* its user's pool (the user's upstream credential) */
    struct pool *up_cred;            /* whose credential its held or pinned connection speaks */
    bool stalled;                    /* the command at the input's head waits for the pool */
    bool have_failure;               /* ... and the pool could not serve it */
    enum pool_failure failure;
    const struct acl_user *pending_user; /* certificate or default login waiting for a connection */

    struct resp_parser parser;
    const struct cmdtab_cmd *last_top; /* the last command looked up (most clients repeat theirs) */
    struct replyq q;
    struct buf enc;                  /* scratch for re-encoded commands */
    /* ACL scratch for commands with more keys than acl_check holds on its stack, and argv
     * with an appended MATCH: grown to the largest seen, never per command. */
    struct acl_scratch scratch;

    /* request side */
    bool in_multi;                   /* MULTI sent, no EXEC/DISCARD yet */
    bool multi_dirty;                /* a command was refused inside it: EXEC becomes EXECABORT */
    uint8_t tx_refused;              /* enum tx_refusal */
    uint32_t multi_seq;              /* counts MULTIs that opened a transaction here */
    uint32_t multi_queued;           /* commands queued in the open transaction */
    int req_proto;                   /* 2 or 3, as the client asked by the commands read so far */
    uint8_t cs;                      /* enum conn_state */
    uint32_t db;                     /* the database, after SELECTs that succeeded */
    char *name;                      /* CLIENT SETNAME when respguard answers the identity commands
                                        (multiplex mode, tenants) */
    /* CLIENT REPLY, kept by respguard (never sent upstream): the upstream answers every command
     * and replies the client switched off are dropped here. */
    bool reply_off;                  /* CLIENT REPLY OFF until ON (or RESET) */
    bool reply_skip;                 /* no reply to the command being handled (SKIP before it) */
    bool reply_skip_next;            /* ... nor to the next one (SKIP now) */
    bool silent;                     /* the command being handled gets no reply */
    uint8_t monitor;                 /* enum monitor_state */
    uint32_t blocking_due;           /* TAG_BLOCKING entries in the queue */
    bool peer_closed;                /* the client half-closed: answer what it sent, then close */
    bool client_paused, upstream_paused;
    bool counted;                    /* counted as an accepted connection: count its close too */
    bool trimmed;                    /* idle, its buffers given back (session_trim_idle) */
    uint64_t batch_t;                /* uv_hrtime at the start of the current client read batch */
    size_t batch_pushed;             /* queue entries added in the current batch */
    uint64_t reply_t;                /* uv_hrtime when the reply being delivered began */
    uint64_t handoff_t;              /* ... and when its last piece was handed on (the pool's
                                        route clock: a few frames late at most) */
    /* Replies to one read leave together (hold_replies): entries_done counts queue entries
     * answered so far; the client's output is held until it reaches hold_until. */
    uint64_t entries_done;
    uint64_t hold_until;
    struct policy_actor actor;       /* see actor_of */
};

static void process_input(struct session *s);
static void maybe_resume_client(struct session *s);
static void unref(struct session *s);
static void on_user_expired(uv_timer_t *t);
static void on_close_deadline(uv_timer_t *t);
static void on_login_timeout(uv_timer_t *t);
static void close_after_reply(struct session *s);
static void apply_login(struct session *s, const struct acl_user *u, const char *reply, size_t reply_len);
static void login_unavailable(struct session *s);

static const char err_lost[] = "-ERR respguard: upstream connection lost\r\n";
static const char err_failed[] = "-ERR respguard: upstream connection failed\r\n";
static const char err_no_conn[] = "-ERR respguard: no upstream connection available\r\n";

/* ---------------------------------------------------------------------------------------- */
/* Small helpers                                                                            */
/* ---------------------------------------------------------------------------------------- */

static bool arg_is(const struct resp_arg *a, const char *lower)
{
    size_t n = strlen(lower);
    if (a->len != n)
        return false;
    for (size_t i = 0; i < n; i++)
        if (tolower((unsigned char)a->ptr[i]) != lower[i])
            return false;
    return true;
}

static bool authenticated(const struct session *s) { return s->user != NULL; }
static bool multiplex(const struct session *s) { return s->w->pool_mode == CONFIG_POOL_MULTIPLEX; }
static bool owns_conn(const struct session *s) { return s->pc.conn && s->pc.use != POOL_USE_SHARE; }
/* Does respguard answer CLIENT ID/INFO/GETNAME/SETNAME itself? In multiplex mode (the upstream
 * connection is shared) and for tenants (the upstream connection is respguard's business). */
static bool own_identity(const struct session *s)
{
    return multiplex(s) || (s->user && acl_user_is_tenant(s->user));
}
/* The user's slot: what respguard counts per user (metrics, rate bucket, anomaly baselines). */
static size_t user_slot(const struct session *s) { return worker_user_slot(s->w, s->snap, s->user); }

static struct pool *pool_of(const struct session *s, const struct acl_user *u) { return worker_user_pool(s->w, u); }

static struct login_source source_of(struct session *s)
{
    return (struct login_source){.w = s->w, .addr = (const struct sockaddr *)&s->peer_addr, .peer = s->peer,
                                 .session = s->id};
}

static struct command resolve(struct session *s, const struct resp_request *req)
{
    struct command c = {NULL, NULL, CMDTAB_ROLE_NONE};
    /* Clients repeat their commands: the last one is compared first. */
    if (cmdtab_is(s->last_top, req->argv[0].ptr, req->argv[0].len))
        c.top = s->last_top;
    else
        c.top = s->last_top = cmdtab_lookup(req->argv[0].ptr, req->argv[0].len);
    c.cmd = c.top;
    if (c.top && c.top->subcommands)
        c.cmd = req->argc > 1 ? cmdtab_lookup_sub(c.top, req->argv[1].ptr, req->argv[1].len) : NULL;
    if (c.cmd)
        c.role = (enum cmdtab_role)c.cmd->role;
    else if (c.top && !c.top->subcommands)
        c.role = (enum cmdtab_role)c.top->role;
    return c;
}

/* The entry counted for a command (a container alone: the container). */
static const struct cmdtab_cmd *counted_cmd(const struct command *c) { return c->cmd ? c->cmd : c->top; }

/* ---------------------------------------------------------------------------------------- */
/* State                                                                                    */
/* ---------------------------------------------------------------------------------------- */

static bool legal_move(enum session_state from, enum session_state to)
{
    switch (to) {
    case SESSION_LOGIN: return from == SESSION_ACTIVE; /* RESET */
    case SESSION_ACTIVE: return from == SESSION_LOGIN || from == SESSION_ACTIVE;
    case SESSION_DRAINING: return from == SESSION_LOGIN || from == SESSION_ACTIVE;
    case SESSION_CLOSING: return from != SESSION_CLOSING;
    }
    return false;
}

/* The one door for state changes. */
static void set_state(struct session *s, enum session_state to)
{
    if (!legal_move(s->state, to)) {
        log_event(LOG_ERROR, "internal_error", LOG_STR("what", "illegal session state change"),
                  LOG_INT("from", s->state), LOG_INT("to", to), LOG_INT("session", s->id), LOG_END);
        abort();
    }
    s->state = to;
    if (to == SESSION_DRAINING)
        transport_pause(&s->client); /* later pipelined commands are not run, as in Redis */
}

/* Read nothing more: answer what is due, then close. */
static void stop_reading(struct session *s)
{
    if (s->state == SESSION_LOGIN || s->state == SESSION_ACTIVE)
        set_state(s, SESSION_DRAINING);
}

/* ---------------------------------------------------------------------------------------- */
/* Work at the end of the loop turn                                                         */
/* ---------------------------------------------------------------------------------------- */

/* Replies written now leave with everything else of this turn, in one write. */
static void flush_later(struct session *s)
{
    if (s->flush_queued || s->state == SESSION_CLOSING)
        return;
    s->flush_queued = true;
    s->flush_next = s->w->flush_head;
    s->w->flush_head = s;
}

/* Read the commands that waited, at the end of this turn (never from inside a pool callback). */
static void input_later(struct session *s)
{
    if (s->input_queued || s->state == SESSION_CLOSING)
        return;
    s->input_queued = true;
    /* in order: the session that waited longest is read first */
    s->input_next = NULL;
    if (s->w->input_tail)
        s->w->input_tail->input_next = s;
    else
        s->w->input_head = s;
    s->w->input_tail = s;
}

static void unlink_from(struct session **head, struct session *s, size_t next_off)
{
    for (struct session **pp = head; *pp; pp = (struct session **)((char *)*pp + next_off))
        if (*pp == s) {
            *pp = *(struct session **)((char *)s + next_off);
            return;
        }
}

/* A session being freed leaves the turn's lists. */
static void unqueue(struct session *s)
{
    if (s->input_queued) {
        unlink_from(&s->w->input_head, s, offsetof(struct session, input_next));
        if (s->w->input_tail == s) {
            struct session *t = s->w->input_head;
            while (t && t->input_next)
                t = t->input_next;
            s->w->input_tail = t;
        }
    }
    if (s->flush_queued)
        unlink_from(&s->w->flush_head, s, offsetof(struct session, flush_next));
    s->input_queued = s->flush_queued = false;
}

bool session_turn_input(struct worker *w)
{
    /* A few rounds: reading one session's commands may free a connection another waits for. */
    for (int round = 0; round < 4 && w->input_head; round++) {
        struct session *s = w->input_head;
        w->input_head = w->input_tail = NULL;
        while (s) {
            struct session *next = s->input_next;
            s->input_queued = false;
            s->refs++;
            s->stalled = false; /* the command that waited is planned again */
            process_input(s);
            unref(s);
            s = next;
        }
    }
    return w->input_head != NULL;
}

/* The most reply bytes held back for the rest of a read's replies: past it they stream. */
#define HOLD_MAX_BYTES (64u * 1024)

/* Redis answers the commands of one read together, in one write when the replies are small.
 * respguard does the same: what it answered itself and what the upstream answered first wait
 * for the other replies to that read (one write and one wakeup of the client instead of one
 * each), but never behind a command that may block, in subscribed mode or MONITOR, while the
 * session winds down, nor past HOLD_MAX_BYTES. The last entry answered queues the flush. */
static bool hold_replies(const struct session *s)
{
    return s->entries_done < s->hold_until && s->state == SESSION_ACTIVE && s->blocking_due == 0 &&
           s->monitor == MON_NONE && !s->peer_closed && !replyq_subscribed(&s->q) &&
           transport_pending(&s->client) < HOLD_MAX_BYTES;
}

void session_turn_flush(struct worker *w)
{
    struct session *s = w->flush_head;
    w->flush_head = NULL;
    while (s) {
        struct session *next = s->flush_next;
        s->flush_queued = false;
        if (!hold_replies(s))
            transport_flush(&s->client);
        s = next;
    }
}

/* ---------------------------------------------------------------------------------------- */
/* Replies                                                                                  */
/* ---------------------------------------------------------------------------------------- */

static void write_client(void *owner, const char *p, size_t n)
{
    struct session *s = owner;
    transport_write(&s->client, p, n);
    flush_later(s);
}

/* A forwarded command's reply is complete and handed to the client connection. */
static void observe_latency(struct session *s, const struct replyq_entry *e)
{
    if (e->kind != REPLYQ_FORWARD || !e->t_sent || s->reply_t < e->t_sent)
        return;
    uint64_t now = s->handoff_t > s->reply_t ? s->handoff_t : s->reply_t;
    metrics_observe(s->w->metrics, MH_UPSTREAM_RTT, s->reply_t - e->t_sent);
    metrics_observe(s->w->metrics, MH_ADDED_LATENCY, (e->t_sent - e->t_in) + (now - s->reply_t));
}

static void fail_upstream(struct session *s, const char *err, size_t len, bool keep);

static void entry_done(void *owner, const struct replyq_entry *e, bool error, const char *reply, size_t len)
{
    struct session *s = owner;
    if (++s->entries_done == s->hold_until)
        flush_later(s); /* the replies to one read are all in: they leave */
    observe_latency(s, e);
    switch ((enum entry_tag)e->tag) {
    case TAG_MULTI:
        if (error && e->seq == s->multi_seq)
            s->in_multi = s->multi_dirty = false; /* Redis refused the MULTI: no transaction */
        break;
    case TAG_TX_END:
        if (!error)
            s->cs &= (uint8_t)~CS_WATCH;
        break;
    case TAG_RESET:
        if (!error) {
            s->cs &= CS_STICKY | CS_IDENTITY | CS_CREDENTIAL; /* the login after it decides the credential */
            s->db = 0;
        }
        break;
    case TAG_SELECT:
        if (!error)
            s->db = e->seq;
        break;
    case TAG_BLOCKING:
        s->blocking_due--;
        break;
    case TAG_MONITOR:
        s->monitor = error ? MON_NONE : MON_ON;
        if (error)
            s->cs &= (uint8_t)~CS_STICKY;
        input_later(s); /* what the client sent after MONITOR waited for this */
        break;
    case TAG_LOGIN:
        if (error) {
            /* Only the error's code goes to the log: its text may echo respguard's AUTH
             * arguments (an upstream without AUTH answers "unknown command ... with args"). */
            char code[32], reason[96];
            resp_error_code(reply, len, code, sizeof code);
            snprintf(reason, sizeof reason, "the upstream refused respguard's login (%s)", code[0] ? code : "error");
            log_event(LOG_WARN, "upstream_error", LOG_INT("session", s->id), LOG_STR("peer", s->peer),
                      LOG_STR("user", s->user ? s->user->name : NULL), LOG_STR("stage", "auth"),
                      LOG_STR("reason", reason), LOG_END);
            metrics_inc(s->w->metrics, MC_UPSTREAM_FAIL_AUTH);
            if (e->local_len)
                write_client(s, err_failed, sizeof err_failed - 1); /* the AUTH that rode on it */
            fail_upstream(s, err_failed, sizeof err_failed - 1, false);
        }
        break;
    case TAG_NONE:
        break;
    }
    if (e->flags & REPLYQ_CLOSE_AFTER)
        close_after_reply(s);
}

/* A scoped INFO: the upstream's INFO, cut down to what a tenant may see. */
static void transform_reply(void *owner, const struct replyq_entry *e, const char *reply, size_t len,
                            struct buf *out)
{
    (void)owner;
    static const char too_big[] = "-ERR respguard: the upstream's INFO reply is too large\r\n";
    static const char no_memory[] = "-ERR respguard: out of memory\r\n";
    if (!reply) {
        if (buf_append(out, too_big, sizeof too_big - 1) != 0)
            buf_reset(out);
        return;
    }
    if (scoped_info_filter(reply, len, e->seq, out) != 0) {
        buf_reset(out);
        if (buf_append(out, no_memory, sizeof no_memory - 1) != 0)
            buf_reset(out);
    }
}

static const struct replyq_ops replyq_ops = {.write = write_client, .done = entry_done, .transform = transform_reply};

static void reply_local(struct session *s, const char *bytes, size_t len, uint8_t flags)
{
    if (s->silent)
        len = 0; /* CLIENT REPLY OFF|SKIP: respguard's own replies obey it too */
    if (replyq_local(&s->q, bytes, len, flags, TAG_NONE) != 0)
        session_close(s, "out of memory");
}

static void reply_error(struct session *s, const char *text)
{
    char line[512];
    int n = snprintf(line, sizeof line, "-%s\r\n", text);
    if (n < 0 || (size_t)n >= sizeof line)
        n = (int)sizeof line - 1;
    reply_local(s, line, (size_t)n, 0);
}

#define REPLY_LITERAL(s, lit) reply_local((s), (lit), sizeof(lit) - 1, 0)

/* Queue an entry that waits for the upstream; local bytes (if any) are sent on success. */
static void expect_upstream(struct session *s, enum replyq_kind kind, uint8_t flags, uint32_t expected,
                            uint8_t tag, const char *local, size_t local_len)
{
    if (s->silent)
        flags |= REPLYQ_SILENT;
    struct replyq_entry e = {.kind = (uint8_t)kind, .flags = flags, .tag = tag, .expected = expected,
                             .seq = s->multi_seq, .t_in = s->batch_t};
    if (replyq_expect(&s->q, e, local, local_len) != 0) {
        session_close(s, "out of memory");
        return;
    }
    s->batch_pushed++;
}

/* ---------------------------------------------------------------------------------------- */
/* The upstream connection                                                                  */
/* ---------------------------------------------------------------------------------------- */

/* What giving the connection back means: does it carry anything of this session's? */
static enum pool_return connection_return(const struct session *s)
{
    /* A command still blocked upstream would hold a reset back for as long as it blocks (and
     * take what other clients push meanwhile): the connection goes, as Redis frees the client. */
    if ((s->cs & (CS_STICKY | CS_IDENTITY)) || s->blocking_due)
        return POOL_RETURN_BROKEN;
    if (s->q.upstream_due || s->q.frame_open || s->in_multi || s->cs || replyq_subscribed(&s->q) ||
        s->q.proto != 2 || s->req_proto != 2)
        return POOL_RETURN_DIRTY;
    return POOL_RETURN_CLEAN;
}

/* Multiplex mode: a pinned connection whose state has ended rejoins the shared ones. */
static void maybe_unpin(struct session *s)
{
    if (multiplex(s) && owns_conn(s) && connection_return(s) == POOL_RETURN_CLEAN)
        pool_release(&s->pc, POOL_RETURN_CLEAN);
}

/* Send bytes that answer `frames` reply frames (commands: client commands among them). */
static void send_upstream(struct session *s, const char *bytes, size_t len, uint32_t frames, uint32_t commands)
{
    pool_send(&s->pc, bytes, len, frames, commands);
}

static void forward_command(struct session *s, const char *frame, const struct resp_request *req)
{
    if (req->canonical) {
        send_upstream(s, frame, req->frame_len, 1, 1);
        return;
    }
    /* Inline or non-canonical multibulk: what leaves is the canonical encoding of what we
     * parsed and checked, never the client's bytes. */
    size_t need = resp_encoded_size(req->argc, req->argv);
    buf_reset(&s->enc);
    if (buf_reserve(&s->enc, need) != 0) {
        session_close(s, "out of memory");
        return;
    }
    size_t n = resp_encode_command(buf_tail(&s->enc), req->argc, req->argv);
    send_upstream(s, buf_head(&s->enc), n, 1, 1);
    if (s->enc.cap > 256 * 1024)
        buf_free(&s->enc); /* a one-off big inline or odd command: do not keep its size */
}

/* Log the connection in with the credential of pool cred (AUTH); reply (if any) goes to the
 * client once the upstream accepted it. */
static void upstream_login(struct session *s, struct pool *cred, const char *reply, size_t reply_len)
{
    RG_INVARIANT(!cred->retired && cred->login < s->snap->login_count);
    const struct snapshot_login *l = &s->snap->logins[cred->login];
    s->up_cred = cred;
    if (s->pc.conn && cred != s->pc.conn->pool)
        s->cs |= CS_CREDENTIAL;
    else
        s->cs &= (uint8_t)~CS_CREDENTIAL;
    send_upstream(s, l->cmd, l->len, 1, 0);
    expect_upstream(s, REPLYQ_LOGIN, 0, 1, TAG_LOGIN, reply, reply_len);
}

/* The upstream connection broke (or never came): every reply still due becomes err. keep: the
 * session goes on (multiplex, shared: nothing of the client's was on the connection but its
 * commands in flight); otherwise the client is closed once the errors are out, so that its
 * reconnect logic takes over. */
static void fail_upstream(struct session *s, const char *err, size_t len, bool keep)
{
    if (s->state == SESSION_CLOSING)
        return;
    bool midframe = replyq_fail(&s->q, err, len);
    flush_later(s);
    if (midframe || !keep) {
        stop_reading(s);
        close_after_reply(s);
        return;
    }
    input_later(s); /* a command may have waited for these replies */
}

static struct session *of_client(struct pool_client *pc)
{
    return (struct session *)((char *)pc - offsetof(struct session, pc));
}

static void on_pool_acquired(struct pool_client *pc)
{
    struct session *s = of_client(pc);
    if (pc->use != POOL_USE_SHARE)
        s->up_cred = pc->conn->pool;
    if (s->pending_user) {
        /* A login at connect (certificate, default user) waited for this. */
        const struct acl_user *u = s->pending_user;
        s->pending_user = NULL;
        s->refs++;
        if (s->state == SESSION_LOGIN)
            apply_login(s, u, NULL, 0);
        unref(s);
    }
    input_later(s);
}

static void on_pool_failed(struct pool_client *pc, enum pool_failure why)
{
    struct session *s = of_client(pc);
    if (s->pending_user) {
        s->pending_user = NULL;
        s->refs++;
        s->failure = why;
        login_unavailable(s);
        unref(s);
        return;
    }
    s->have_failure = true;
    s->failure = why;
    input_later(s);
}

static void after_reply(struct session *s);

static void on_pool_reply(struct pool_client *pc, const char *p, size_t n, const struct resp_frame_info *end)
{
    struct session *s = of_client(pc);
    if (s->state == SESSION_CLOSING)
        return;
    s->refs++;
    if (!s->q.frame_open)
        s->reply_t = pc->pool->read_ns;
    s->handoff_t = pc->pool->route_ns;
    if (replyq_feed(&s->q, p, n, end) != 0)
        session_close(s, "out of memory");
    else if (end)
        after_reply(s);
    unref(s);
}

static void on_pool_lost(struct pool_client *pc, const char *stage, const char *reason)
{
    struct session *s = of_client(pc);
    (void)stage;
    (void)reason; /* the pool logged it, once for every client */
    s->refs++;
    /* Shared in multiplex mode: only the commands in flight on it are lost; the client's next
     * ones go to another connection. Held or pinned: the connection's state is gone with it. */
    bool keep = multiplex(s) && pc->use == POOL_USE_SHARE;
    fail_upstream(s, err_lost, sizeof err_lost - 1, keep);
    unref(s);
}

static void on_pool_drained(struct pool_client *pc)
{
    struct session *s = of_client(pc);
    s->refs++;
    maybe_resume_client(s);
    unref(s);
}

static const struct pool_client_ops pool_client_ops = {
    .acquired = on_pool_acquired,
    .failed = on_pool_failed,
    .reply = on_pool_reply,
    .lost = on_pool_lost,
    .drained = on_pool_drained,
};

/* Make sure the connection a command needs is at hand: the held or pinned one serves
 * everything; a shared one serves SHARE commands of its pool. Changing connections waits until
 * nothing is due on the old one, so the client's commands run in the order it sent them. */
static enum go ensure_conn(struct session *s, struct pool *pool, enum pool_use use)
{
    struct pool_client *pc = &s->pc;
    if (s->have_failure) {
        s->have_failure = false;
        return FAIL;
    }
    if (pc->waiting)
        return WAIT;
    if (pc->conn) {
        if (pc->use != POOL_USE_SHARE)
            return GO;
        if (use == POOL_USE_SHARE && pc->conn->pool == pool)
            return GO;
        if (pc->due)
            return WAIT; /* input_later when its last reply is in */
        pool_release(pc, POOL_RETURN_CLEAN);
    }
    int rc = pool_acquire(pool, pc, use);
    if (rc == 1)
        return WAIT;
    if (rc < 0) {
        s->failure = POOL_FAIL_STOPPED;
        return FAIL;
    }
    if (use != POOL_USE_SHARE)
        s->up_cred = pool;
    return GO;
}

static const char *failure_error(const struct session *s, size_t *len)
{
    if (s->failure == POOL_FAIL_TIMEOUT) {
        *len = sizeof err_no_conn - 1;
        return err_no_conn;
    }
    *len = sizeof err_failed - 1;
    return err_failed;
}

/* ---------------------------------------------------------------------------------------- */
/* Login                                                                                     */
/* ---------------------------------------------------------------------------------------- */

/* A user with an expiry: the session ends when the user does. */
static void start_expiry(struct session *s)
{
    uv_timer_stop(&s->timer);
    const struct config_user *uc = worker_user_config(s->snap, s->user);
    if (uc->has_expires) {
        time_t now = time(NULL);
        uint64_t ms = uc->expires > now ? (uint64_t)(uc->expires - now) * 1000 : 0;
        uv_timer_start(&s->timer, on_user_expired, ms, 0);
    }
}

/* Log in as u (checked). The reply (local bytes, e.g. "+OK") is sent once the connection the
 * user's credential needs is ready: at once, or after respguard's AUTH on a held connection. */
static void apply_login(struct session *s, const struct acl_user *u, const char *reply, size_t reply_len)
{
    s->user = u;
    set_state(s, SESSION_ACTIVE);
    start_expiry(s);
    struct login_source src = source_of(s);
    login_record_success(&src, u);
    s->pool = pool_of(s, u);
    if (owns_conn(s) && s->pool != s->up_cred) {
        upstream_login(s, s->pool, reply, reply_len); /* this user maps to another credential */
        return;
    }
    if (owns_conn(s))
        s->up_cred = s->pool;
    if (reply_len)
        reply_local(s, reply, reply_len, 0);
}

/* The pool and use a login as u needs: session mode holds a connection of u's pool (a held one
 * serves a re-login too); multiplex mode proves at the first login that u's pool can serve, and
 * a RESP3 HELLO pins. */
static bool login_needs(struct session *s, const struct acl_user *u, bool resp3, struct pool **pool,
                        enum pool_use *use)
{
    *pool = pool_of(s, u);
    if (!multiplex(s)) {
        *use = POOL_USE_HOLD;
        return true;
    }
    if (resp3) {
        *use = POOL_USE_PIN;
        return true;
    }
    *use = POOL_USE_SHARE;
    return !authenticated(s);
}

static void login_unavailable(struct session *s)
{
    size_t len;
    const char *err = failure_error(s, &len);
    stop_reading(s);
    reply_local(s, err, len, REPLYQ_CLOSE_AFTER);
}

/* The user AUTH user pass (or HELLO ... AUTH) would log in as, without recording anything;
 * NULL when it would fail (locked out, unknown, wrong password, not allowed). */
static const struct acl_user *login_would_succeed(struct session *s, const struct resp_arg *user,
                                                  const struct resp_arg *pass)
{
    struct login_source src = source_of(s);
    if (s->w->lockout &&
        lockout_locked(s->w->lockout, src.addr, user->ptr, user->len, uv_now(s->w->loop), NULL))
        return NULL;
    const struct acl_user *u = NULL;
    return login_check(&src, user, pass, &u) == LOGIN_OK ? u : NULL;
}

/* AUTH [user] pass: the effects (the plan has made sure of the connection). */
static void cmd_auth(struct session *s, const struct resp_request *req)
{
    static const struct resp_arg default_user = {"default", 7};
    if (req->argc < 2) {
        REPLY_LITERAL(s, "-ERR wrong number of arguments for 'auth' command\r\n");
        return;
    }
    if (req->argc > 3) {
        REPLY_LITERAL(s, "-ERR syntax error\r\n");
        return;
    }
    const struct resp_arg *user = req->argc == 3 ? &req->argv[1] : &default_user;
    const struct resp_arg *pass = &req->argv[req->argc - 1];
    struct login_source src = source_of(s);
    char line[160];
    if (login_locked_out(&src, user, line, sizeof line)) {
        reply_local(s, line, strlen(line), 0);
        return;
    }
    const struct acl_user *u = NULL;
    enum login_result r = login_check(&src, user, pass, &u);
    if (r != LOGIN_OK) {
        login_record_failure(&src, user, r, NULL);
        reply_local(s, login_wrongpass, strlen(login_wrongpass), 0);
        return;
    }
    apply_login(s, u, "+OK\r\n", 5);
}

static bool valid_client_name(const struct resp_arg *a)
{
    for (size_t i = 0; i < a->len; i++)
        if (a->ptr[i] < '!' || a->ptr[i] > '~')
            return false;
    return true;
}

/* HELLO [protover [AUTH user pass] [SETNAME name]], parsed. */
struct hello {
    long long ver;                     /* 0: not given */
    const struct resp_arg *user, *pass, *name;
    const char *error;                 /* a syntax error to answer instead (with '-', no CRLF) */
    char errbuf[160];
};

static void parse_hello(const struct resp_request *req, struct hello *h)
{
    memset(h, 0, sizeof *h);
    if (req->argc >= 2) {
        if (!resp_string2ll(req->argv[1].ptr, req->argv[1].len, &h->ver)) {
            h->error = "-ERR Protocol version is not an integer or out of range";
            return;
        }
        if (h->ver < 2 || h->ver > 3) {
            h->error = "-NOPROTO unsupported protocol version";
            return;
        }
    }
    for (size_t j = 2; j < req->argc; j++) {
        size_t more = req->argc - 1 - j;
        if (arg_is(&req->argv[j], "auth") && more >= 2) {
            h->user = &req->argv[j + 1];
            h->pass = &req->argv[j + 2];
            j += 2;
        } else if (arg_is(&req->argv[j], "setname") && more >= 1) {
            h->name = &req->argv[j + 1];
            if (!valid_client_name(h->name)) {
                h->error = "-ERR Client names cannot contain spaces, newlines or special characters.";
                return;
            }
            j++;
        } else {
            const struct resp_arg *o = &req->argv[j];
            snprintf(h->errbuf, sizeof h->errbuf, "-ERR Syntax error in HELLO option '%.*s'",
                     (int)(o->len > 64 ? 64 : o->len), o->ptr);
            h->error = h->errbuf;
            return;
        }
    }
}

static const char hello_noauth[] =
    "-NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO AUTH <user> <pass> "
    "option can be used to authenticate the client and select the RESP protocol version at the same time\r\n";

static bool set_name(struct session *s, const struct resp_arg *name)
{
    char *n = NULL;
    if (name->len) {
        n = malloc(name->len + 1);
        if (!n) {
            session_close(s, "out of memory");
            return false;
        }
        memcpy(n, name->ptr, name->len);
        n[name->len] = '\0';
    }
    free(s->name);
    s->name = n;
    return true;
}

/* HELLO: the effects (the plan has made sure of the connection). */
static void cmd_hello(struct session *s, const struct resp_request *req)
{
    struct hello h;
    parse_hello(req, &h);
    if (h.error) {
        reply_error(s, h.error + 1);
        return;
    }
    if (h.user) {
        struct login_source src = source_of(s);
        char line[160];
        if (login_locked_out(&src, h.user, line, sizeof line)) {
            reply_local(s, line, strlen(line), 0);
            return;
        }
        const struct acl_user *u = NULL;
        enum login_result r = login_check(&src, h.user, h.pass, &u);
        if (r != LOGIN_OK) {
            login_record_failure(&src, h.user, r, NULL);
            reply_local(s, login_wrongpass, strlen(login_wrongpass), 0);
            return;
        }
        apply_login(s, u, NULL, 0);
        if (s->state == SESSION_CLOSING)
            return;
    }
    if (!authenticated(s)) {
        REPLY_LITERAL(s, hello_noauth);
        return;
    }
    /* The upstream answers HELLO itself (server, version, id, ...), without the AUTH part: it is
     * already logged in as respguard. Where respguard answers the identity commands the name
     * stays with respguard (CLIENT GETNAME answers it): a shared connection must not carry it. */
    struct resp_arg argv[4];
    size_t argc = 0;
    argv[argc++] = req->argv[0];
    if (req->argc >= 2)
        argv[argc++] = req->argv[1];
    if (h.name && own_identity(s)) {
        if (!set_name(s, h.name))
            return;
    } else if (h.name) {
        argv[argc++] = (struct resp_arg){"SETNAME", 7};
        argv[argc++] = *h.name;
        s->cs |= CS_NAME;
    }
    buf_reset(&s->enc);
    if (buf_reserve(&s->enc, resp_encoded_size(argc, argv)) != 0) {
        session_close(s, "out of memory");
        return;
    }
    size_t n = resp_encode_command(buf_tail(&s->enc), argc, argv);
    send_upstream(s, buf_head(&s->enc), n, 1, 1);
    uint8_t flags = h.ver == 3 ? REPLYQ_SET_RESP3 : h.ver == 2 ? REPLYQ_SET_RESP2 : 0;
    if (h.ver)
        s->req_proto = (int)h.ver;
    expect_upstream(s, REPLYQ_FORWARD, flags, 1, TAG_NONE, NULL, 0);
}

/* user_from_cert: cn. The verified client certificate's CN names the user; no password. A CN
 * that names no usable user leaves the session unauthenticated (AUTH still works). */
static const struct acl_user *certificate_user(struct session *s)
{
    char cn[256];
    if (tlsconn_peer_cn(s->client.tls, cn, sizeof cn) != 0)
        return NULL;
    struct resp_arg name = {cn, strlen(cn)};
    struct login_source src = source_of(s);
    const struct acl_user *u = snapshot_find_user(s->snap, name.ptr, name.len);
    enum login_result r = u ? login_check_user(&src, u) : LOGIN_UNKNOWN_USER;
    if (r != LOGIN_OK) {
        login_record_failure(&src, &name, r, "certificate");
        return NULL;
    }
    return u;
}

/* As in Redis, a default user without a password logs everyone in at connect. */
static const struct acl_user *default_user(struct session *s)
{
    const struct acl_user *d = snapshot_find_user(s->snap, "default", 7);
    struct login_source src = source_of(s);
    if (d && d->enabled && d->nopass && login_check_user(&src, d) == LOGIN_OK)
        return d;
    return NULL;
}

/* A login without a command (certificate, default user): once the connection is there. */
static void login_at_connect(struct session *s, const struct acl_user *u)
{
    struct pool *pool;
    enum pool_use use;
    if (!login_needs(s, u, false, &pool, &use)) {
        apply_login(s, u, NULL, 0);
        return;
    }
    int rc = pool_acquire(pool, &s->pc, use);
    if (rc == 1) {
        s->pending_user = u; /* on_pool_acquired completes it, before any command is read */
        transport_pause(&s->client);
        return;
    }
    if (rc < 0) {
        s->failure = POOL_FAIL_STOPPED;
        login_unavailable(s);
        return;
    }
    if (use != POOL_USE_SHARE)
        s->up_cred = pool;
    apply_login(s, u, NULL, 0);
}

/* ---------------------------------------------------------------------------------------- */
/* ACL                                                                                       */
/* ---------------------------------------------------------------------------------------- */

/* The session's user, as the policy (counts, audit, anomaly detector, rate limit) sees it:
 * built once, its snapshot and user brought up to date on every use (a login or a reload
 * changes them). */
static const struct policy_actor *actor_of(struct session *s)
{
    s->actor.snap = s->snap;
    s->actor.user = s->user;
    return &s->actor;
}

/* Every command of a logged-in user is counted once, under its category and verdict. */
static void count_command(struct session *s, const struct cmdtab_cmd *cmd, enum metrics_verdict v)
{
    policy_count(actor_of(s), cmd, v);
}

/* AUTH, HELLO, QUIT, RESET: answered by respguard, counted before they may change the user. */
static void count_connection_command(struct session *s, enum metrics_verdict v)
{
    metrics_count_command(s->w->metrics, user_slot(s), MCAT_CONNECTION, v);
}

static void count_refusal(struct session *s, const struct cmdtab_cmd *cmd, enum metrics_counter reason)
{
    policy_count_refusal(actor_of(s), cmd, reason);
}

/* The verdict for the session's user, with no effect (the plan needs it before anything may
 * happen). 0: it may run. */
static int judge(struct session *s, const struct resp_request *req, const struct command *c, struct acl_verdict *v)
{
    const struct cmdtab_cmd *sub = c->top && c->top->subcommands ? c->cmd : NULL;
    return acl_check_scratch(s->user, c->top, sub, req->argc, req->argv, v, &s->scratch);
}

/* The verdict's effects. True: the command may run (v says whether respguard must append
 * MATCH). False: the error has been answered in the command's place in the reply order and,
 * for a refusal, written to the audit log. */
static bool acl_allows(struct session *s, const struct resp_request *req, int rc, const struct acl_verdict *v)
{
    const struct policy_actor *a = actor_of(s);
    char line[ACL_ERROR_MAX + 3];
    size_t n = policy_verdict(a, req->argc, req->argv, rc, v, line, sizeof line);
    if (n == 0)
        return true; /* counted by the caller, which may still refuse it */
    if (s->in_multi && v->cmd && v->cmd->role == CMDTAB_ROLE_EXEC) {
        /* A refused EXEC ends the transaction (Redis: EXECABORT ... because of: <error>): the
         * upstream discards it and its reply is replaced by the error. */
        static const char discard[] = "*1\r\n$7\r\nDISCARD\r\n";
        send_upstream(s, discard, sizeof discard - 1, 1, 1);
        expect_upstream(s, REPLYQ_REPLACE, 0, 1, TAG_TX_END, line, n);
        s->in_multi = s->multi_dirty = false;
        return false;
    }
    /* As in Redis, an error at queue time (unknown command, arity, permissions) dooms the
     * transaction: its EXEC will be answered EXECABORT. */
    if (s->in_multi)
        s->multi_dirty = true;
    reply_local(s, line, n, 0);
    return false;
}

/* Forward a SCAN (or any command) with "MATCH <pattern>" appended, re-encoded. */
static void forward_with_match(struct session *s, const struct resp_request *req, const struct acl_verdict *v)
{
    size_t argc = req->argc + 2;
    const struct resp_arg *argv = acl_append_match(&s->scratch, req->argc, req->argv, v);
    buf_reset(&s->enc);
    if (!argv || buf_reserve(&s->enc, resp_encoded_size(argc, argv)) != 0) {
        session_close(s, "out of memory");
        return;
    }
    size_t n = resp_encode_command(buf_tail(&s->enc), argc, argv);
    send_upstream(s, buf_head(&s->enc), n, 1, 1);
}

/* ---------------------------------------------------------------------------------------- */
/* Rate limit                                                                                */
/* ---------------------------------------------------------------------------------------- */

/* The error of a command refused because its transaction's MULTI was rate limited (no token is
 * taken: the transaction as a whole was refused). */
static void reply_rate_limited(struct session *s, const struct cmdtab_cmd *cmd)
{
    count_command(s, cmd, MV_RATE_LIMITED);
    metrics_inc(s->w->metrics, MC_REFUSED_RATE_LIMIT);
    char line[ACL_ERROR_MAX];
    reply_local(s, line, policy_rate_limit_error(s->user, line, sizeof line), 0);
}

/* The user's command rate limit (policy_rate_limited). True: the command was refused and
 * answered in its place. Every command takes a token except QUIT, and EXEC or DISCARD ending a
 * transaction (its MULTI took one). A refusal inside MULTI dooms the transaction, like any error
 * at queue time; a refused MULTI starts a transaction that was never opened (see
 * refused_transaction), so that the commands meant to run atomically do not run one by one. */
static bool rate_limited(struct session *s, const struct command *c)
{
    if (s->in_multi && (c->role == CMDTAB_ROLE_EXEC || c->role == CMDTAB_ROLE_DISCARD))
        return false;
    const struct policy_actor *a = actor_of(s);
    char line[ACL_ERROR_MAX];
    size_t n;
    if (!policy_rate_limited(a, counted_cmd(c), line, sizeof line, &n))
        return false;
    if (s->in_multi)
        s->multi_dirty = true;
    else if (c->role == CMDTAB_ROLE_MULTI)
        s->tx_refused = TX_RATE_LIMIT;
    reply_local(s, line, n, 0);
    return true;
}

/* After a MULTI respguard refused (the rate limit, or no connection for it), until EXEC or
 * DISCARD: nothing runs (the commands were meant to run together), each command gets the
 * refusal's error and EXEC gets EXECABORT, as if the transaction had been opened and doomed;
 * DISCARD ends it with +OK. QUIT and RESET work as always (RESET ends it too). */
static void refused_transaction(struct session *s, const struct command *c)
{
    const struct cmdtab_cmd *cmd = counted_cmd(c);
    switch (c->role) {
    case CMDTAB_ROLE_EXEC:
        count_command(s, cmd, s->tx_refused == TX_RATE_LIMIT ? MV_RATE_LIMITED : MV_ERROR);
        s->tx_refused = TX_NONE;
        REPLY_LITERAL(s, "-EXECABORT Transaction discarded because of previous errors.\r\n");
        return;
    case CMDTAB_ROLE_DISCARD:
        s->tx_refused = TX_NONE;
        count_command(s, cmd, MV_ALLOWED);
        REPLY_LITERAL(s, "+OK\r\n");
        return;
    case CMDTAB_ROLE_MULTI:
        count_command(s, cmd, MV_ERROR);
        REPLY_LITERAL(s, "-ERR MULTI calls can not be nested\r\n");
        return;
    default:
        break;
    }
    if (s->tx_refused == TX_RATE_LIMIT) {
        reply_rate_limited(s, cmd);
        return;
    }
    count_command(s, cmd, MV_ERROR);
    reply_local(s, err_no_conn, sizeof err_no_conn - 1, 0);
}

/* ---------------------------------------------------------------------------------------- */
/* The plan: which connection a command needs                                               */
/* ---------------------------------------------------------------------------------------- */

/* Can the command block (outside MULTI)? */
static bool blocks(const struct resp_request *req, const struct cmdtab_cmd *cmd)
{
    return cmdtab_may_block(cmd, req->argc, req->argv);
}

/* Multiplex mode: the commands that need a connection of their own (connection state, or a
 * reply that does not come at once), those respguard answers itself, and the rest. */
static bool mux_needs(const struct resp_request *req, const struct cmdtab_cmd *cmd,
                      enum pool_use *use)
{
    *use = POOL_USE_SHARE;
    switch ((enum cmdtab_role)cmd->role) {
    case CMDTAB_ROLE_CLIENT_ID:
    case CMDTAB_ROLE_CLIENT_INFO:
    case CMDTAB_ROLE_CLIENT_GETNAME:
    case CMDTAB_ROLE_CLIENT_SETNAME:
    case CMDTAB_ROLE_CLIENT_REPLY:
        return false; /* answered by respguard */
    case CMDTAB_ROLE_MONITOR:
    case CMDTAB_ROLE_MULTI:
    case CMDTAB_ROLE_WATCH:
    case CMDTAB_ROLE_SUBSCRIBE:
    case CMDTAB_ROLE_UNSUBSCRIBE:
    case CMDTAB_ROLE_CONN_STATE:
    case CMDTAB_ROLE_STICKY_STATE:
    case CMDTAB_ROLE_BLOCKING:
        *use = POOL_USE_PIN;
        return true;
    case CMDTAB_ROLE_SELECT:
        if (!(req->argv[1].len == 1 && req->argv[1].ptr[0] == '0'))
            *use = POOL_USE_PIN;
        return true;
    case CMDTAB_ROLE_BLOCK_OPTION:
        if (blocks(req, cmd))
            *use = POOL_USE_PIN;
        return true;
    default:
        if (cmd->flags & CMDTAB_BLOCKING)
            *use = POOL_USE_PIN;
        return true;
    }
}

/* Decide, changing nothing, what connection the command needs. False: none. For commands the
 * ACL judges, the verdict is computed here (*vrc, *v) and used by the effects. */
static bool plan(struct session *s, const struct resp_request *req, const struct command *c, int *vrc,
                 struct acl_verdict *v, bool *judged, struct pool **pool, enum pool_use *use)
{
    *judged = false;
    *pool = s->pool;
    *use = multiplex(s) ? POOL_USE_SHARE : POOL_USE_HOLD;
    if (c->role == CMDTAB_ROLE_AUTH && req->argc >= 2 && req->argc <= 3) {
        static const struct resp_arg def = {"default", 7};
        const struct resp_arg *user = req->argc == 3 ? &req->argv[1] : &def;
        const struct acl_user *u = login_would_succeed(s, user, &req->argv[req->argc - 1]);
        return u && !(s->in_multi && authenticated(s)) && login_needs(s, u, false, pool, use);
    }
    if (c->role == CMDTAB_ROLE_HELLO) {
        struct hello h;
        parse_hello(req, &h);
        if (h.error || (authenticated(s) && s->in_multi))
            return false;
        const struct acl_user *u = h.user ? login_would_succeed(s, h.user, h.pass) : s->user;
        if (!u)
            return false;
        bool resp3 = h.ver == 3 || (h.ver == 0 && s->req_proto == 3);
        if (!login_needs(s, u, resp3, pool, use)) {
            /* a multiplex re-login or a RESP2 HELLO: the HELLO itself goes to a shared one */
            *use = POOL_USE_SHARE;
        }
        return true;
    }
    if (!authenticated(s) || s->tx_refused || c->role == CMDTAB_ROLE_QUIT)
        return false;
    if (c->role == CMDTAB_ROLE_RESET)
        return owns_conn(s); /* forwarded on a held or pinned connection, else answered here */
    *vrc = judge(s, req, c, v);
    *judged = true;
    if (*vrc != 0 || (v->result == ACL_OK_SCOPED && v->scope == ACL_SCOPE_WHOAMI))
        return false;
    if (!multiplex(s) || owns_conn(s))
        return true; /* the held or pinned connection serves everything */
    return mux_needs(req, v->cmd, use);
}

/* ---------------------------------------------------------------------------------------- */
/* Commands                                                                                  */
/* ---------------------------------------------------------------------------------------- */

static void cmd_quit(struct session *s)
{
    stop_reading(s);
    reply_local(s, "+OK\r\n", 5, REPLYQ_CLOSE_AFTER);
}

static void cmd_reset(struct session *s, const struct resp_request *req, const char *frame)
{
    uv_timer_stop(&s->timer); /* the previous user's expiry no longer applies */
    /* As Redis: RESET ends CLIENT REPLY OFF and a pending SKIP before it answers (a SKIP that
     * applies to RESET itself still holds). */
    s->reply_off = s->reply_skip_next = false;
    s->silent = s->reply_skip;
    const struct acl_user *d = snapshot_find_user(s->snap, "default", 7);
    bool nopass_default = d && d->enabled && d->nopass;
    if (owns_conn(s)) {
        /* Redis resets the upstream connection too (and logs it out): send RESET, then log it
         * back in as respguard and swallow that reply. Session mode: with the credential of
         * whoever the client now is; multiplex: with the connection's own, as it must be to
         * rejoin the shared ones. */
        forward_command(s, frame, req);
        expect_upstream(s, REPLYQ_FORWARD, REPLYQ_RESET, 1, TAG_RESET, NULL, 0);
        struct pool *cred = s->pc.conn->pool;
        if (!multiplex(s) && nopass_default)
            cred = pool_of(s, d);
        upstream_login(s, cred, NULL, 0);
    } else {
        REPLY_LITERAL(s, "+RESET\r\n");
    }
    s->in_multi = s->multi_dirty = false;
    s->tx_refused = TX_NONE;
    s->req_proto = 2;
    free(s->name);
    s->name = NULL;
    /* After RESET the client is the default user again: logged in only if that needs no
     * password, as in Redis. */
    if (nopass_default) {
        s->user = d;
        s->pool = pool_of(s, d);
    } else {
        s->user = NULL;
        set_state(s, SESSION_LOGIN);
        uv_timer_start(&s->timer, on_login_timeout, s->snap->cfg->limits.login_timeout_ms, 0);
    }
}

/* Multiplex mode: what a client asks about its own connection is answered from respguard's
 * view of it (its session id, address, name, user), in Redis's formats: a shared upstream
 * connection is not the client's. */
static void cmd_client_identity(struct session *s, const struct command *c, const struct resp_request *req)
{
    char line[1024];
    int n = 0;
    switch (c->role) {
    case CMDTAB_ROLE_CLIENT_ID:
        n = snprintf(line, sizeof line, ":%llu\r\n", (unsigned long long)s->id);
        break;
    case CMDTAB_ROLE_CLIENT_GETNAME:
        if (!s->name)
            n = snprintf(line, sizeof line, "%s", s->req_proto == 3 ? "_\r\n" : "$-1\r\n");
        else
            n = snprintf(line, sizeof line, "$%zu\r\n%s\r\n", strlen(s->name), s->name);
        break;
    case CMDTAB_ROLE_CLIENT_SETNAME:
        if (!valid_client_name(&req->argv[2])) {
            REPLY_LITERAL(s, "-ERR Client names cannot contain spaces, newlines or special characters.\r\n");
            return;
        }
        if (!set_name(s, &req->argv[2]))
            return;
        n = snprintf(line, sizeof line, "+OK\r\n");
        break;
    case CMDTAB_ROLE_CLIENT_INFO: {
        char info[768];
        uint64_t now = uv_now(s->w->loop);
        int fd = -1;
        uv_fileno((const uv_handle_t *)&s->client.tcp, &fd);
        const char *flags = replyq_subscribed(&s->q) ? "P" : "N";
        int m = snprintf(info, sizeof info,
                         "id=%llu addr=%s laddr=%s fd=%d name=%s age=%llu idle=0 flags=%s db=%u sub=%lld psub=%lld "
                         "ssub=%lld multi=-1 qbuf=0 qbuf-free=0 argv-mem=0 multi-mem=0 rbs=0 rbp=0 obl=0 oll=0 "
                         "omem=0 tot-mem=0 events=r cmd=client|info user=%s redir=-1 resp=%d\n",
                         (unsigned long long)s->id, s->peer, s->listener->bound, fd, s->name ? s->name : "",
                         (unsigned long long)((now - s->created_ms) / 1000), flags, (unsigned)s->db,
                         s->q.subs - s->q.psubs, s->q.psubs, s->q.ssubs, s->user->name, s->req_proto);
        if (m < 0 || (size_t)m >= sizeof info)
            m = (int)sizeof info - 1;
        if (s->req_proto == 3)
            n = snprintf(line, sizeof line, "=%d\r\ntxt:%.*s\r\n", m + 4, m, info);
        else
            n = snprintf(line, sizeof line, "$%d\r\n%.*s\r\n", m, m, info);
        break;
    }
    default:
        return;
    }
    if (n < 0 || (size_t)n >= sizeof line)
        return;
    reply_local(s, line, (size_t)n, 0);
}

/* CLIENT REPLY ON|OFF|SKIP, as Redis 7.0's clientCommand: respguard keeps the mode and drops the
 * replies it switches off (process_input moves SKIP on after each command). */
static void cmd_client_reply(struct session *s, const struct resp_request *req, const struct cmdtab_cmd *cmd)
{
    const struct resp_arg *mode = &req->argv[2];
    if (arg_is(mode, "on")) {
        count_command(s, cmd, MV_ALLOWED);
        s->reply_off = s->reply_skip = false;
        s->silent = false; /* its own +OK goes out */
        REPLY_LITERAL(s, "+OK\r\n");
    } else if (arg_is(mode, "off")) {
        count_command(s, cmd, MV_ALLOWED);
        s->reply_off = true;
    } else if (arg_is(mode, "skip")) {
        count_command(s, cmd, MV_ALLOWED);
        if (!s->reply_off)
            s->reply_skip_next = true;
    } else {
        count_command(s, cmd, MV_ERROR);
        REPLY_LITERAL(s, "-ERR syntax error\r\n");
    }
}

/* respguard's scoped form of a server-wide command (the verdict chose it). */
static void cmd_scoped(struct session *s, const struct resp_request *req, const struct cmdtab_cmd *cmd,
                       const struct acl_verdict *v)
{
    count_command(s, cmd, MV_ALLOWED);
    if (v->scope == ACL_SCOPE_WHOAMI) {
        char line[160];
        int n = snprintf(line, sizeof line, "$%zu\r\n%s\r\n", strlen(s->user->name), s->user->name);
        if (n > 0 && (size_t)n < sizeof line)
            reply_local(s, line, (size_t)n, 0);
        else
            REPLY_LITERAL(s, "-ERR respguard: user name too long\r\n");
        return;
    }
    /* INFO: the upstream is asked for the sections anything is kept from, whatever the client
     * named, and the reply is cut down to what the client asked for and may see. */
    send_upstream(s, scoped_info_command, scoped_info_command_len, 1, 1);
    expect_upstream(s, REPLYQ_TRANSFORM, 0, 1, TAG_NONE, NULL, 0);
    struct replyq_entry *e = replyq_back(&s->q);
    if (e)
        e->seq = scoped_info_sections(req->argc, req->argv);
}

/* The client's RESET on a monitoring connection: the stream cannot be told apart from RESET's
 * answer, so the connection goes and RESET is answered here. */
static void end_monitor(struct session *s)
{
    bool midframe = replyq_fail(&s->q, err_lost, sizeof err_lost - 1);
    s->monitor = MON_NONE;
    s->cs &= (uint8_t)~CS_STICKY;
    s->upstream_paused = false;
    pool_release(&s->pc, POOL_RETURN_BROKEN);
    if (midframe) {
        /* a monitor line was half way out: the client only gets the close */
        stop_reading(s);
        close_after_reply(s);
    }
}

/* The connection state a forwarded command leaves behind, and what its entry must tell. */
static void note_conn_state(struct session *s, const struct resp_request *req, const struct cmdtab_cmd *cmd)
{
    switch ((enum cmdtab_role)cmd->role) {
    case CMDTAB_ROLE_WATCH: s->cs |= CS_WATCH; break;
    case CMDTAB_ROLE_CLIENT_SETNAME: s->cs |= CS_NAME; break;
    case CMDTAB_ROLE_CLIENT_ID:
    case CMDTAB_ROLE_CLIENT_INFO: s->cs |= CS_IDENTITY; break;
    case CMDTAB_ROLE_SELECT:
        if (!(req->argv[1].len == 1 && req->argv[1].ptr[0] == '0'))
            s->cs |= CS_DB;
        break;
    case CMDTAB_ROLE_CONN_STATE: s->cs |= CS_SETTING; break; /* (CLIENT REPLY ON, the only one
                                                                 forwarded, changes nothing) */
    case CMDTAB_ROLE_STICKY_STATE: s->cs |= CS_STICKY; break;
    default: break;
    }
}

/* A command of a logged-in user that the ACL judges (the plan has made sure of the connection). */
static void run_command(struct session *s, const struct resp_request *req, const char *frame,
                        const struct command *c, int vrc, const struct acl_verdict *v)
{
    if (!acl_allows(s, req, vrc, v))
        return;
    const struct cmdtab_cmd *cmd = v->cmd;
    enum cmdtab_role role = (enum cmdtab_role)cmd->role;
    bool answered_here = role == CMDTAB_ROLE_CLIENT_REPLY || role == CMDTAB_ROLE_MONITOR ||
                         v->result == ACL_OK_SCOPED;
    if (answered_here && s->in_multi) {
        /* Redis would queue it and answer inside EXEC's array, where respguard cannot place its
         * own answer (or follow the state it starts): refuse, and the transaction with it. */
        count_refusal(s, cmd, MC_REFUSED_UNSUPPORTED);
        s->multi_dirty = true;
        char line[ACL_ERROR_MAX], name[64];
        size_t i = 0;
        for (; cmd->name[i] && i + 1 < sizeof name; i++)
            name[i] = cmd->name[i] == '|' ? ' ' : (char)toupper((unsigned char)cmd->name[i]);
        name[i] = '\0';
        snprintf(line, sizeof line, "ERR %s inside MULTI is not supported through respguard", name);
        reply_error(s, line);
        return;
    }
    if (role == CMDTAB_ROLE_CLIENT_REPLY) {
        cmd_client_reply(s, req, cmd);
        return;
    }
    if (v->result == ACL_OK_SCOPED) {
        cmd_scoped(s, req, cmd, v);
        return;
    }
    bool sub_cmd = role == CMDTAB_ROLE_SUBSCRIBE, unsub_cmd = role == CMDTAB_ROLE_UNSUBSCRIBE;
    if ((sub_cmd || unsub_cmd) && s->in_multi) {
        /* Inside MULTI the confirmations would come back inside EXEC's array, where respguard
         * cannot follow the subscription state: refuse, and the transaction with it. */
        count_refusal(s, cmd, MC_REFUSED_UNSUPPORTED);
        s->multi_dirty = true;
        REPLY_LITERAL(s, "-ERR (P|S)SUBSCRIBE and (P|S)UNSUBSCRIBE inside MULTI are not supported through respguard\r\n");
        return;
    }
    bool identity = own_identity(s) && (role == CMDTAB_ROLE_CLIENT_ID || role == CMDTAB_ROLE_CLIENT_INFO ||
                                        role == CMDTAB_ROLE_CLIENT_GETNAME || role == CMDTAB_ROLE_CLIENT_SETNAME);
    if ((role == CMDTAB_ROLE_MULTI || identity) && !s->in_multi && s->req_proto == 2 && replyq_subscribed(&s->q)) {
        /* A RESP2 connection in subscribed mode: Redis refuses these, and so do we (MULTI before
         * a transaction state we would then have to undo; the identity commands respguard would
         * otherwise answer itself). */
        count_command(s, cmd, MV_ERROR);
        char line[ACL_ERROR_MAX];
        snprintf(line, sizeof line,
                 "ERR Can't execute '%s': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed "
                 "in this context",
                 cmd->name);
        reply_error(s, line);
        return;
    }
    if (identity && s->in_multi) {
        /* Redis would queue it and answer inside EXEC's array, where respguard cannot place its
         * own answer: refuse, and the transaction with it. */
        count_refusal(s, cmd, MC_REFUSED_UNSUPPORTED);
        s->multi_dirty = true;
        REPLY_LITERAL(s, "-ERR CLIENT ID, INFO, GETNAME and SETNAME inside MULTI are not supported through respguard "
                         "where respguard answers them\r\n");
        return;
    }
    if (identity) {
        count_command(s, cmd, MV_ALLOWED);
        cmd_client_identity(s, c, req);
        return;
    }

    uint8_t flags = 0, tag = TAG_NONE;
    uint32_t expected = 1;
    bool marker = false;
    long long select_db = 0;
    if (!s->in_multi && (sub_cmd || unsub_cmd)) {
        flags |= REPLYQ_PUBSUB;
        if (sub_cmd)
            flags |= REPLYQ_SUBSCRIBE;
        expected = req->argc > 1 ? (uint32_t)(req->argc - 1) : 1;
        if (unsub_cmd && req->argc == 1) {
            /* As many confirmations as subscriptions: count them until the reply to a PING we
             * send right after. */
            flags |= REPLYQ_UNBOUNDED;
            marker = true;
        }
    }
    switch (role) {
    case CMDTAB_ROLE_MULTI:
        if (!s->in_multi) {
            tag = TAG_MULTI;
            s->multi_seq++;
            s->multi_queued = 0;
        }
        s->in_multi = true;
        break;
    case CMDTAB_ROLE_EXEC:
        if (s->in_multi) {
            bool dirty = s->multi_dirty;
            s->in_multi = s->multi_dirty = false;
            tag = TAG_TX_END;
            if (dirty) {
                count_command(s, cmd, MV_ALLOWED); /* it runs: as DISCARD, answered EXECABORT */
                static const char discard[] = "*1\r\n$7\r\nDISCARD\r\n";
                static const char abort[] = "-EXECABORT Transaction discarded because of previous errors.\r\n";
                send_upstream(s, discard, sizeof discard - 1, 1, 1);
                expect_upstream(s, REPLYQ_REPLACE, 0, 1, TAG_TX_END, abort, sizeof abort - 1);
                return;
            }
        }
        break;
    case CMDTAB_ROLE_DISCARD:
        s->in_multi = s->multi_dirty = false;
        tag = TAG_TX_END;
        break;
    case CMDTAB_ROLE_UNWATCH:
        tag = TAG_TX_END;
        break;
    case CMDTAB_ROLE_SELECT:
        if (!s->in_multi && resp_string2ll(req->argv[1].ptr, req->argv[1].len, &select_db) && select_db >= 0 &&
            select_db <= UINT32_MAX)
            tag = TAG_SELECT;
        break;
    case CMDTAB_ROLE_MONITOR:
        /* The connection becomes the monitor stream: what the client sends next waits for the
         * answer, and the connection is closed when the client is done with it (RESET on a
         * connection that streams cannot be told apart from the stream). */
        tag = TAG_MONITOR;
        s->monitor = MON_PENDING;
        s->cs |= CS_STICKY;
        break;
    default:
        if (s->in_multi)
            s->multi_queued++;
        else if (blocks(req, cmd))
            tag = TAG_BLOCKING;
        break;
    }
    if (tag == TAG_BLOCKING)
        s->blocking_due++;
    note_conn_state(s, req, cmd);

    count_command(s, cmd, MV_ALLOWED);
    if (v->result == ACL_OK_APPEND_MATCH)
        forward_with_match(s, req, v);
    else
        forward_command(s, frame, req);
    expect_upstream(s, REPLYQ_FORWARD, flags, expected, tag, NULL, 0);
    struct replyq_entry *e = replyq_back(&s->q);
    if (e && (flags & REPLYQ_PUBSUB))
        e->confirm = cmd->name; /* the confirmations are named after it */
    if (e && tag == TAG_SELECT)
        e->seq = (uint32_t)select_db;
    if (marker) {
        static const char ping[] = "*1\r\n$4\r\nPING\r\n";
        send_upstream(s, ping, sizeof ping - 1, 1, 0);
        expect_upstream(s, REPLYQ_SWALLOW, 0, 1, TAG_NONE, NULL, 0);
    }
}

/* The pool could not give the command its connection. */
static void answer_failure(struct session *s, const struct command *c)
{
    size_t len;
    const char *err = failure_error(s, &len);
    if (!authenticated(s) || ((c->role == CMDTAB_ROLE_AUTH || c->role == CMDTAB_ROLE_HELLO) && !multiplex(s))) {
        /* A login that cannot get its connection: as when the upstream cannot be reached. */
        login_unavailable(s);
        return;
    }
    count_command(s, counted_cmd(c), MV_ERROR);
    if (c->role == CMDTAB_ROLE_MULTI && !s->in_multi)
        s->tx_refused = TX_NO_CONN; /* what was meant to run together must not run alone */
    else if (s->in_multi)
        s->multi_dirty = true;
    reply_local(s, err, len, 0);
}

/* One command. False: it waits for the pool (nothing was done; it is read again later). */
static bool handle_command(struct session *s, const struct resp_request *req, const char *frame)
{
    struct command c = resolve(s, req);
    if (s->monitor == MON_PENDING) {
        s->stalled = true; /* entry_done reads it again once MONITOR is answered */
        return false;
    }
    /* a monitoring connection has nothing of the client's in flight upstream */
    RG_INVARIANT(s->monitor != MON_ON || s->q.upstream_due == 0);
    if (s->monitor == MON_ON && c.role != CMDTAB_ROLE_QUIT && c.role != CMDTAB_ROLE_RESET) {
        s->last_ms = uv_now(s->w->loop);
        count_command(s, counted_cmd(&c), MV_ERROR);
        REPLY_LITERAL(s, "-ERR respguard: only QUIT and RESET are served on a MONITOR connection\r\n");
        return true;
    }
    int vrc = 0;
    struct acl_verdict v;
    bool judged;
    struct pool *pool;
    enum pool_use use;
    if (plan(s, req, &c, &vrc, &v, &judged, &pool, &use)) {
        switch (ensure_conn(s, pool, use)) {
        case WAIT:
            s->stalled = true;
            return false;
        case FAIL:
            answer_failure(s, &c);
            return true;
        case GO:
            break;
        }
    } else {
        s->have_failure = false; /* a failure of a wait this command no longer needs */
    }
    s->last_ms = uv_now(s->w->loop);
    s->trimmed = false;

    /* The connection commands, answered by respguard, each in one place. Before login they are
     * the only commands served; afterwards they are counted as the user's (before they may
     * change the user) and, but QUIT, rate limited. */
    bool auth = authenticated(s);
    if (auth && s->tx_refused && c.role != CMDTAB_ROLE_QUIT && c.role != CMDTAB_ROLE_RESET) {
        refused_transaction(s, &c);
        return true;
    }
    switch (c.role) {
    case CMDTAB_ROLE_QUIT:
        if (auth)
            count_connection_command(s, MV_ALLOWED); /* free of the rate limit: a client can always leave */
        cmd_quit(s);
        return true;
    case CMDTAB_ROLE_AUTH:
    case CMDTAB_ROLE_HELLO:
        if (auth && s->in_multi) {
            /* Redis queues these and runs them at EXEC; respguard answers them itself and cannot
             * place its answer inside EXEC's array: refuse, and the transaction with it. */
            count_connection_command(s, MV_DENIED);
            metrics_inc(s->w->metrics, MC_REFUSED_UNSUPPORTED);
            s->multi_dirty = true;
            REPLY_LITERAL(s, "-ERR AUTH and HELLO inside MULTI are not supported through respguard\r\n");
            return true;
        }
        if (auth && rate_limited(s, &c))
            return true;
        if (auth)
            count_connection_command(s, MV_ALLOWED);
        if (c.role == CMDTAB_ROLE_AUTH)
            cmd_auth(s, req);
        else
            cmd_hello(s, req);
        return true;
    case CMDTAB_ROLE_RESET:
        if (auth && rate_limited(s, &c))
            return true;
        if (auth)
            count_connection_command(s, req->argc == 1 ? MV_ALLOWED : MV_ERROR);
        if (req->argc != 1) {
            if (s->in_multi)
                s->multi_dirty = true;
            REPLY_LITERAL(s, "-ERR wrong number of arguments for 'reset' command\r\n");
        } else if (auth) {
            if (s->monitor == MON_ON)
                end_monitor(s);
            if (s->state != SESSION_CLOSING && s->state != SESSION_DRAINING)
                cmd_reset(s, req, frame);
        } else {
            REPLY_LITERAL(s, "+RESET\r\n"); /* nothing to reset: no user, no connection state */
        }
        return true;
    default:
        break;
    }
    if (!auth) {
        REPLY_LITERAL(s, "-NOAUTH Authentication required.\r\n");
        return true;
    }
    if (rate_limited(s, &c))
        return true;
    if (!judged)
        vrc = judge(s, req, &c, &v);
    if (vrc == -ENOMEM) {
        session_close(s, "out of memory");
        return true;
    }
    run_command(s, req, frame, &c, vrc, &v);
    return true;
}

/* ---------------------------------------------------------------------------------------- */
/* Client input                                                                              */
/* ---------------------------------------------------------------------------------------- */

/* Reading from the client stops while either side is backlogged (replies respguard makes
 * itself count too: a client that never reads must not make us buffer without end). */
static bool backlogged(struct session *s, size_t divisor)
{
    const struct config_limits *lim = &s->snap->cfg->limits;
    return s->q.len >= MAX_PENDING / divisor || pool_pending(&s->pc) > lim->upstream_output_bytes / divisor ||
           transport_pending(&s->client) + buf_len(&s->q.local) > lim->client_output_bytes / divisor;
}

static bool reading(const struct session *s)
{
    return s->state == SESSION_LOGIN || s->state == SESSION_ACTIVE;
}

/* Reading stopped for a backlog: resume below half of it. What was read meanwhile is processed
 * at the end of the turn (this may run inside a pool callback). */
static void maybe_resume_client(struct session *s)
{
    if (!s->client_paused || !reading(s) || backlogged(s, 2))
        return;
    s->client_paused = false;
    if (!s->peer_closed)
        transport_resume(&s->client);
    input_later(s);
}

/* The batch's commands were handed to their upstream connection just now: stamp them for the
 * latency histograms. One clock read per batch. */
static void stamp_sent(struct session *s)
{
    size_t n = s->batch_pushed < s->q.len ? s->batch_pushed : s->q.len;
    if (n == 0)
        return;
    uint64_t now = uv_hrtime();
    for (size_t i = s->q.len - n; i < s->q.len; i++)
        replyq_at(&s->q, i)->t_sent = now;
}

/* Whatever is still to be written gets shutdown_timeout to leave; a client that never reads
 * (or a blocked command that never returns after a half-close) cannot keep the session. */
static void start_close_deadline(struct session *s)
{
    uv_timer_stop(&s->timer);
    uv_timer_start(&s->timer, on_close_deadline, s->snap->cfg->limits.shutdown_timeout_ms, 0);
}

/* Once nothing more is read: close when every reply is out. A client that half-closed with
 * only blocked commands left is closed at once, as Redis frees such a client: their replies may
 * never come, and the upstream connection they block goes with it. */
static void maybe_finish(struct session *s)
{
    if (s->state != SESSION_DRAINING || s->client.closing)
        return;
    if (s->q.len == 0) {
        close_after_reply(s);
    } else if (s->peer_closed && s->q.len == s->blocking_due && !s->q.frame_open) {
        close_after_reply(s); /* still blocked upstream: the connection is closed, not reset */
    }
}

static void process_input(struct session *s)
{
    struct buf *in = &s->client.in;
    const struct config_limits *lim = &s->snap->cfg->limits;
    s->batch_t = uv_hrtime();
    s->batch_pushed = 0;
    while (buf_len(in) > 0 && reading(s) && !s->stalled && !s->pending_user) {
        if (backlogged(s, 1)) {
            s->client_paused = true;
            transport_pause(&s->client);
            break;
        }
        struct resp_limits rl;
        if (authenticated(s)) {
            rl = (struct resp_limits){.max_args = lim->max_args, .max_bulk = lim->max_request_bytes,
                                      .max_request = lim->max_request_bytes, .max_inline = RESP_MAX_INLINE,
                                      .unauthenticated = false};
        } else {
            rl = (struct resp_limits){.max_args = RESP_UNAUTH_MAX_ARGS, .max_bulk = RESP_UNAUTH_MAX_BULK,
                                      .max_request = RESP_UNAUTH_MAX_ARGS * (RESP_UNAUTH_MAX_BULK + 32) + 32,
                                      .max_inline = RESP_MAX_INLINE, .unauthenticated = true};
        }
        struct resp_request req;
        const char *err = NULL;
        enum resp_req_status st = resp_request_next(&s->parser, buf_head(in), buf_len(in), &rl, &req, &err);
        if (st == RESP_REQ_NEED_MORE)
            break;
        if (st == RESP_REQ_ERROR) {
            log_event(LOG_INFO, "protocol_error", LOG_INT("session", s->id), LOG_STR("peer", s->peer),
                      LOG_STR("error", err), LOG_END);
            char line[256];
            int n = snprintf(line, sizeof line, "-%s\r\n", err);
            /* Read nothing more; answer in order, after what is already due, then close. */
            stop_reading(s);
            reply_local(s, line, (size_t)n, REPLYQ_CLOSE_AFTER);
            break;
        }
        if (st == RESP_REQ_COMMAND) {
            RG_INVARIANT(!s->silent);
            s->silent = s->reply_off || s->reply_skip;
            bool done = handle_command(s, &req, buf_head(in));
            s->silent = false;
            if (!done)
                break; /* it waits for the pool: it stays in the buffer */
            /* CLIENT REPLY SKIP silences the command after it (Redis's resetClient) */
            s->reply_skip = s->reply_skip_next;
            s->reply_skip_next = false;
        }
        buf_consume(in, req.frame_len);
    }
    if (s->state == SESSION_CLOSING)
        return;
    stamp_sent(s);
    if (s->entries_done >= s->hold_until)
        s->hold_until = s->entries_done + s->q.len; /* see hold_replies */
    transport_shrink_input(&s->client);
    /* While a command waits for the pool nothing more is read: a client cannot make respguard
     * buffer without end behind it. */
    if (s->stalled || s->pending_user)
        transport_pause(&s->client);
    else if (reading(s) && !s->client_paused && !s->peer_closed)
        transport_resume(&s->client);
    /* A shared connection it has nothing due on is not its any more. */
    if (s->pc.conn && s->pc.use == POOL_USE_SHARE && s->pc.due == 0)
        pool_release(&s->pc, POOL_RETURN_CLEAN);
    maybe_unpin(s);
    if (s->peer_closed && reading(s) && !s->stalled && !s->pending_user && !s->client_paused)
        set_state(s, SESSION_DRAINING); /* it half-closed and all it sent is read: answer, close */
    maybe_finish(s);
}

/* After a reply frame was delivered: the session may move on. */
static void after_reply(struct session *s)
{
    if (s->state == SESSION_CLOSING)
        return;
    if (s->stalled && !s->pc.waiting && (!s->pc.conn || s->pc.use != POOL_USE_SHARE || s->pc.due == 0))
        input_later(s); /* it waited for the replies due on its old connection */
    maybe_unpin(s);
    maybe_finish(s);
    if (s->client.closing || s->state == SESSION_CLOSING)
        return; /* only its last replies are leaving */
    size_t pending = transport_pending(&s->client);
    uint64_t limit = s->snap->cfg->limits.client_output_bytes;
    if (owns_conn(s)) {
        if (!s->upstream_paused && pending > limit) {
            s->upstream_paused = true;
            pool_pause(&s->pc);
        }
    } else if (multiplex(s) && pending > 2 * limit) {
        /* A client that does not read its replies cannot stop a shared connection: past twice
         * the limit it is closed, as Redis closes clients over their output limit. */
        log_event(LOG_WARN, "client_output_limit", LOG_INT("session", s->id), LOG_STR("peer", s->peer),
                  LOG_INT("bytes", (long long)pending), LOG_END);
        session_close(s, "client output limit");
        return;
    }
    maybe_resume_client(s);
}

/* ---------------------------------------------------------------------------------------- */
/* Lifetime                                                                                  */
/* ---------------------------------------------------------------------------------------- */

static void close_after_reply(struct session *s)
{
    if (s->state == SESSION_CLOSING)
        return;
    if (!s->client.closing)
        start_close_deadline(s);
    stop_reading(s);
    replyq_stop(&s->q);
    pool_cancel(&s->pc);
    pool_release(&s->pc, connection_return(s));
    transport_close_when_flushed(&s->client);
}

void worker_add_session(struct worker *w, struct session *s)
{
    s->prev = NULL;
    s->next = w->sessions;
    if (w->sessions)
        w->sessions->prev = s;
    w->sessions = s;
    w->session_count++;
}

void worker_check_drained(struct worker *w)
{
    if (w->shutting_down && w->session_count == 0 && w->rest_running == 0 && w->on_drained)
        w->on_drained(w);
}

void worker_remove_session(struct worker *w, struct session *s)
{
    if (s->prev)
        s->prev->next = s->next;
    else
        w->sessions = s->next;
    if (s->next)
        s->next->prev = s->prev;
    w->session_count--;
    worker_check_drained(w);
}

void session_trim_idle(struct worker *w, uint64_t now_ms)
{
    size_t trimmed = 0;
    for (struct session *s = w->sessions; s; s = s->next) {
        if (!reading(s) || s->stalled || s->q.len || now_ms - s->last_ms < 1000 || s->trimmed)
            continue;
        transport_trim(&s->client);
        pool_trim(&s->pc);
        replyq_trim(&s->q);
        s->trimmed = true; /* until its next command */
        trimmed++;
    }
#ifdef __GLIBC__
    /* Freed buffers lie between live allocations; glibc keeps their pages resident until asked.
     * Only after a sweep that freed something (a wave of clients going idle), not every second. */
    if (trimmed)
        malloc_trim(0);
#endif
}

void worker_drain_sessions(struct worker *w)
{
    struct session *s = w->sessions;
    while (s) {
        struct session *next = s->next;
        session_drain(s);
        s = next;
    }
}

void worker_close_sessions(struct worker *w)
{
    struct session *s = w->sessions;
    while (s) {
        struct session *next = s->next;
        session_close(s, "shutdown timeout");
        s = next;
    }
}

static void session_free(struct session *s)
{
    if (s->counted)
        metrics_inc(s->w->metrics, MC_CONN_CLOSED);
    unqueue(s);
    worker_remove_session(s->w, s);
    resp_parser_deinit(&s->parser);
    replyq_deinit(&s->q);
    buf_free(&s->enc);
    acl_scratch_free(&s->scratch);
    free(s->name);
    snapshot_unref(s->snap);
    free(s);
}

static void unref(struct session *s)
{
    if (--s->refs == 0)
        session_free(s);
}

static void on_timer_closed(uv_handle_t *h) { unref(h->data); }

void session_close(struct session *s, const char *reason)
{
    if (s->state == SESSION_CLOSING)
        return;
    s->refs++;
    set_state(s, SESSION_CLOSING);
    log_event(LOG_DEBUG, "session_close", LOG_INT("session", s->id), LOG_STR("peer", s->peer),
              LOG_STR("reason", reason), LOG_END);
    replyq_stop(&s->q);
    pool_cancel(&s->pc);
    pool_release(&s->pc, connection_return(s));
    unqueue(s);
    uv_timer_stop(&s->timer);
    if (!uv_is_closing((uv_handle_t *)&s->timer))
        uv_close((uv_handle_t *)&s->timer, on_timer_closed);
    transport_close(&s->client);
    unref(s);
}

/* Why a session of user u of next (NULL: gone from the configuration) may not go on, or NULL.
 * cur is the user it runs as now (in s->snap). */
static const char *no_longer_allowed(struct session *s, const struct snapshot *next, const struct acl_user *cur,
                                     const struct acl_user *u)
{
    if (!u)
        return "user removed";
    if (!u->enabled)
        return "user disabled";
    const struct config_user *uc = worker_user_config(next, u);
    if (uc->allow_from.count && !config_cidr_match(&uc->allow_from, (struct sockaddr *)&s->peer_addr))
        return "source no longer allowed";
    if (cur == s->user && owns_conn(s) &&
        (s->up_cred != pool_of(s, u) || s->up_cred->retired || s->pc.conn->pool->retired))
        /* Its own connection speaks a credential the user no longer maps to: going on would keep
         * upstream rights the operator took away. */
        return "upstream credential changed";
    if (cur == s->user && !acl_user_same_rules(cur, u) && (replyq_subscribed(&s->q) || s->monitor != MON_NONE))
        /* As Redis disconnects the subscribers of a user whose channel rules change: what a
         * subscription or MONITOR streams was allowed under the old rules. */
        return "rules changed under a subscription";
    return NULL;
}

/* Reload, first step: s takes the worker's snapshot, as Redis applies ACL changes to its
 * clients: the user's new rules from its next command, its password irrelevant (the session is
 * logged in). A session that may not go on keeps its snapshot and gets why; it is closed in the
 * second step, once every session has moved (a close can hand a connection to a waiting session,
 * which must already run under the new snapshot). */
static const char *follow_snapshot(struct session *s)
{
    struct snapshot *next = s->w->snap;
    if (s->snap == next || s->state == SESSION_CLOSING)
        return NULL; /* a closing session keeps what it runs under until it is freed */
    const struct acl_user *u = s->user ? snapshot_find_user(next, s->user->name, strlen(s->user->name)) : NULL;
    const struct acl_user *pu =
        s->pending_user ? snapshot_find_user(next, s->pending_user->name, strlen(s->pending_user->name)) : NULL;
    const char *why = s->user ? no_longer_allowed(s, next, s->user, u) : NULL;
    if (!why && s->pending_user)
        why = no_longer_allowed(s, next, s->pending_user, pu);
    if (!why && owns_conn(s) &&
        (!worker_pool_current(s->w, s->up_cred) || !worker_pool_current(s->w, s->pc.conn->pool)))
        /* Logged in or not (a RESET, a failed AUTH), it holds a connection of a credential the
         * configuration no longer has: its login cannot be sent again (RESET), nor may it go on. */
        why = "upstream credential removed";
    if (why) {
        pool_cancel(&s->pc); /* nothing may be handed to it before it is closed */
        return why;
    }
    if (s->user && s->in_multi && !acl_user_same_rules(s->user, u))
        s->multi_dirty = true; /* queued under the old rules: EXEC aborts (Redis re-checks them) */
    snapshot_unref(s->snap);
    s->snap = snapshot_ref(next);
    s->pending_user = pu;
    s->user = u;
    if (u) {
        s->pool = pool_of(s, u);
        if (s->state == SESSION_ACTIVE && !s->peer_closed)
            start_expiry(s); /* the expiry may have changed (the timer is not a close deadline) */
    }
    return NULL;
}

/* Reload, second step for a session that goes on: one waiting for a connection of a pool its
 * user no longer maps to waits in the right one instead. A login at connect asks again at once;
 * a command that waited is planned again (input_later). */
static void follow_pool(struct session *s)
{
    const struct acl_user *u = s->pending_user ? s->pending_user : s->user;
    if (!s->pc.waiting || !u || s->pc.pool == pool_of(s, u))
        return;
    enum pool_use use = s->pc.use;
    pool_cancel(&s->pc);
    if (!s->pending_user) {
        input_later(s);
        return;
    }
    s->refs++;
    int rc = pool_acquire(pool_of(s, u), &s->pc, use);
    if (rc == 0)
        on_pool_acquired(&s->pc);
    else if (rc < 0)
        on_pool_failed(&s->pc, POOL_FAIL_STOPPED);
    unref(s);
}

void worker_reload_sessions(struct worker *w)
{
    for (struct session *s = w->sessions; s; s = s->next)
        s->reload_close = follow_snapshot(s);
    for (struct session *s = w->sessions; s; s = s->next)
        if (!s->reload_close && s->state != SESSION_CLOSING)
            follow_pool(s);
}

size_t worker_close_reloaded_sessions(struct worker *w)
{
    size_t closed = 0;
    struct session *s = w->sessions;
    while (s) {
        struct session *next = s->next; /* a closed session stays listed until it is freed */
        const char *why = s->reload_close;
        s->reload_close = NULL;
        if (why) {
            log_event(LOG_INFO, "session_closed", LOG_INT("session", s->id), LOG_STR("peer", s->peer),
                      LOG_STR("user", s->user ? s->user->name : s->pending_user ? s->pending_user->name : NULL),
                      LOG_STR("reason", why),
                      LOG_STR("by", "reload"), LOG_END);
            session_close(s, why);
            closed++;
        }
        s = next;
    }
    return closed;
}

static void on_user_expired(uv_timer_t *t)
{
    struct session *s = t->data;
    if (!authenticated(s))
        return;
    log_event(LOG_WARN, "refused", LOG_STR("user", s->user->name), LOG_STR("peer", s->peer),
              LOG_STR("reason", "expired"), LOG_STR("action", "session closed"), LOG_INT("session", s->id), LOG_END);
    session_close(s, "user expired");
}

static void on_close_deadline(uv_timer_t *t)
{
    struct session *s = t->data;
    log_event(LOG_INFO, "session_close_timeout", LOG_INT("session", s->id), LOG_STR("peer", s->peer), LOG_END);
    session_close(s, "replies not delivered within shutdown_timeout");
}

static void on_login_timeout(uv_timer_t *t)
{
    struct session *s = t->data;
    if (authenticated(s))
        return;
    log_event(LOG_INFO, "login_timeout", LOG_INT("session", s->id), LOG_STR("peer", s->peer), LOG_END);
    metrics_inc(s->w->metrics, MC_CONN_REFUSED_LOGIN_TIMEOUT);
    session_close(s, "login timeout");
}

/* A login at connect: a verified client certificate naming the user, or the nopass default. */
static void connect_login(struct session *s)
{
    const struct acl_user *u = NULL;
    if (s->cert_login)
        u = certificate_user(s);
    if (!u)
        u = default_user(s);
    if (u)
        login_at_connect(s, u);
}

static void on_client(struct transport *t, enum transport_event ev, const char *reason)
{
    struct session *s = t->owner;
    s->refs++;
    switch (ev) {
    case TRANSPORT_CONNECTED:
        if (!authenticated(s) && s->state == SESSION_LOGIN)
            connect_login(s);
        break;
    case TRANSPORT_DATA:
        if (reading(s))
            process_input(s);
        break;
    case TRANSPORT_DRAINED:
        if (s->upstream_paused && owns_conn(s) &&
            transport_pending(&s->client) < s->snap->cfg->limits.client_output_bytes / 2) {
            s->upstream_paused = false;
            pool_resume(&s->pc);
        }
        maybe_resume_client(s);
        break;
    case TRANSPORT_EOF:
        /* A half-close (shutdown(SHUT_WR), nc -N) still gets every reply due, as from Redis. */
        if (s->state == SESSION_CLOSING)
            break;
        s->peer_closed = true;
        transport_pause(&s->client);
        if (reading(s)) {
            process_input(s); /* what it sent before closing is answered, as by Redis */
            if (s->state == SESSION_CLOSING || s->client.closing)
                break;
        }
        if (s->state == SESSION_DRAINING && s->q.len == 0)
            session_close(s, "client closed the connection");
        else if (s->state == SESSION_DRAINING && s->q.len == s->blocking_due && !s->q.frame_open)
            maybe_finish(s); /* only blocked commands are left */
        else
            start_close_deadline(s);
        break;
    case TRANSPORT_ERROR:
        if (!s->client.handshake_done) {
            log_event(LOG_INFO, "client_tls_error", LOG_INT("session", s->id), LOG_STR("peer", s->peer),
                      LOG_STR("reason", reason), LOG_END);
            metrics_inc(s->w->metrics, MC_CONN_REFUSED_TLS);
        }
        session_close(s, reason);
        break;
    case TRANSPORT_CLOSED:
        session_close(s, "client connection closed"); /* closes what else is open */
        s->refs--; /* the client handle's reference */
        break;
    }
    unref(s);
}

int session_accept(struct worker *w, const struct listener *l, uv_stream_t *server)
{
    struct session *s = calloc(1, sizeof *s);
    if (!s)
        return UV_ENOMEM;
    struct listener_settings ls = listener_settings(l);
    s->w = w;
    s->listener = l;
    s->snap = snapshot_ref(w->snap);
    s->cert_login = ls.cfg->tls.user_from_cert_cn;
    s->id = ++w->next_session_id;
    s->req_proto = 2;
    s->pc.ops = &pool_client_ops;
    s->created_ms = s->last_ms = uv_now(w->loop);
    replyq_init(&s->q, &replyq_ops, s);
    if (resp_parser_init(&s->parser) != 0) {
        snapshot_unref(s->snap);
        free(s);
        return UV_ENOMEM;
    }
    int rc = transport_init(&s->client, w->loop, on_client, s);
    if (rc < 0) {
        resp_parser_deinit(&s->parser);
        snapshot_unref(s->snap);
        free(s);
        return rc;
    }
    s->refs = 1; /* the client handle */
    worker_add_session(w, s);
    uv_timer_init(w->loop, &s->timer);
    s->timer.data = s;
    s->refs++;

    rc = transport_accept(&s->client, server, ls.tls_ctx);
    int addrlen = sizeof s->peer_addr;
    if (uv_tcp_getpeername(&s->client.tcp, (struct sockaddr *)&s->peer_addr, &addrlen) != 0)
        s->peer_addr.ss_family = AF_UNSPEC;
    source_format_addr((const struct sockaddr *)&s->peer_addr, s->peer, sizeof s->peer);
    s->actor = (struct policy_actor){.w = w, .peer = s->peer, .addr = (const struct sockaddr *)&s->peer_addr,
                                     .id = s->id, .protocol = "resp"};
    if (rc < 0) {
        session_close(s, uv_strerror(rc));
        return rc;
    }
    log_event(LOG_DEBUG, "accept", LOG_INT("session", s->id), LOG_STR("peer", s->peer), LOG_END);
    s->counted = true;
    metrics_inc(w->metrics, MC_CONN_ACCEPTED);
    s->client.bytes_in_counter = &w->metrics->c[MC_CLIENT_BYTES_IN];
    s->client.bytes_out_counter = &w->metrics->c[MC_CLIENT_BYTES_OUT];

    if (ls.cfg->allow_from.count) {
        if (!config_cidr_match(&ls.cfg->allow_from, (struct sockaddr *)&s->peer_addr)) {
            log_event(LOG_WARN, "refused_source", LOG_STR("peer", s->peer), LOG_STR("bind", l->bound), LOG_END);
            metrics_inc(w->metrics, MC_CONN_REFUSED_SOURCE);
            session_close(s, "source not allowed");
            return 0;
        }
    }
    if (w->session_count > s->snap->cfg->limits.max_clients) {
        /* Redis's words, then close: the client's retry logic takes over. */
        log_event(LOG_WARN, "refused_max_clients", LOG_STR("peer", s->peer), LOG_END);
        metrics_inc(w->metrics, MC_CONN_REFUSED_MAX_CLIENTS);
        REPLY_LITERAL(s, "-ERR max number of clients reached\r\n");
        close_after_reply(s);
        return 0;
    }

    /* On TLS listeners nothing is decided before the handshake has verified the client (its
     * certificate may name the user); until then the login timeout runs. */
    uv_timer_start(&s->timer, on_login_timeout, s->snap->cfg->limits.login_timeout_ms, 0);
    if (!ls.tls_ctx)
        connect_login(s);
    return 0;
}

void session_drain(struct session *s)
{
    if (s->state == SESSION_CLOSING)
        return;
    if (!authenticated(s) || s->q.len == 0) {
        session_close(s, "shutdown");
        return;
    }
    stop_reading(s);
    pool_cancel(&s->pc);
    s->pending_user = NULL;
}
