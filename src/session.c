/*
 * session: a client connection, its login state, its upstream connection and the ordered reply
 * queue that ties them together.
 *
 * Every command the client sends becomes one entry in the queue, in order: forwarded commands
 * wait for their reply (or replies: SUBSCRIBE a b answers twice) from the upstream, local
 * replies (refusals, AUTH) wait for the entries before them, and commands respguard injects
 * itself (the upstream login, markers) have their replies swallowed. Reply bytes are streamed to
 * the client as they arrive, except while the frame at hand may belong to a swallowed entry.
 *
 * What this file must not do: forward a byte it did not parse and check, let a refused command
 * reach the upstream, log a secret, or free itself while a libuv callback is due.
 */
#include "respguard/session.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "respguard/acl.h"
#include "respguard/anomaly.h"
#include "respguard/buf.h"
#include "respguard/config.h"
#include "respguard/listener.h"
#include "respguard/log.h"
#include "respguard/metrics.h"
#include "respguard/ratelimit.h"
#include "respguard/resp.h"
#include "respguard/tlsconn.h"
#include "respguard/transport.h"
#include "respguard/upstream.h"
#include "respguard/worker.h"

/* A pipeline deeper than this waits for replies before more of it is read. */
#define MAX_PENDING (1u << 20)
/* Frames held back in case they answer a swallowed command are streamed past this size. */
#define HOLD_MAX (64u * 1024)

enum session_state {
    SESSION_LOGIN,   /* connected, no user yet: only AUTH, HELLO, QUIT, RESET are served */
    SESSION_ACTIVE,  /* a user is logged in; the upstream is connecting or connected */
    SESSION_CLOSING, /* closing its handles; freed when the last one is closed */
};

enum pending_kind {
    PENDING_FORWARD, /* upstream replies go to the client */
    PENDING_LOCAL,   /* respguard's reply, in s->local, sent when it reaches the head */
    PENDING_SWALLOW, /* a command respguard injected; its reply is dropped */
    PENDING_LOGIN,   /* the upstream AUTH; an error ends the session, success sends local bytes */
    PENDING_REPLACE, /* the upstream reply is dropped and the local bytes are sent instead */
};

enum pending_flag {
    PENDING_PUBSUB = 1,     /* replies are subscribe confirmations (RESP3: pushes) */
    PENDING_UNBOUNDED = 2,  /* argument-less UNSUBSCRIBE: confirmations until the next reply */
    PENDING_CLOSE_AFTER = 4,/* close the client once this reply is sent (QUIT, protocol error) */
    PENDING_SET_RESP2 = 8,  /* on success the connection speaks RESP2 (HELLO 2, RESET) */
    PENDING_SET_RESP3 = 16, /* on success the connection speaks RESP3 (HELLO 3) */
    PENDING_RESET = 32,     /* RESET: on success subscriptions end and RESP2 is back */
    PENDING_MULTI = 64,     /* MULTI: an error reply means no transaction was opened */
    PENDING_SUBSCRIBE = 128,/* a (P|S)SUBSCRIBE: counted in pending_subscribes until answered */
};

struct pending {
    uint8_t kind;
    uint8_t flags;
    uint32_t expected;  /* replies still due from the upstream */
    uint32_t local_len; /* bytes of s->local owned by this entry */
    uint32_t multi_seq; /* PENDING_MULTI: which MULTI this is (a later one may have replaced it) */
    /* Latency (uv_hrtime ns): when the read that delivered the command began, and when the
     * command was handed to the upstream connection (0: not measured, e.g. sent before the
     * upstream was up, when connecting would count as round trip). */
    uint64_t t_in, t_sent;
};

struct session {
    struct worker *w;
    struct session *prev, *next; /* worker's list */
    const struct listener *listener;
    uint64_t id;
    char peer[64];
    struct sockaddr_storage peer_addr; /* for allow_from and per-source anomaly counts */
    enum session_state state;
    int refs;                    /* open handles + one while a function of ours runs */

    struct transport client;
    struct upstream up;
    bool upstream_started;
    size_t up_login;             /* which of the worker's upstream logins the upstream uses */
    uv_timer_t login_timer;

    const struct acl_user *user; /* NULL before login */

    struct resp_parser parser;
    struct resp_framer framer;
    struct buf enc;              /* scratch for re-encoded commands */
    /* ACL scratch for commands with more keys than acl_check holds on its stack, and argv
     * with an appended MATCH: grown to the largest seen, never per command. */
    struct cmdtab_key *scratch_keys;
    struct cmdtab_channel *scratch_channels;
    size_t scratch_cap;
    struct resp_arg *scratch_args;
    size_t scratch_args_cap;

    struct pending *q;           /* ring of pending replies */
    size_t q_head, q_len, q_cap;
    struct buf local;            /* local reply bytes, in queue order */
    struct buf hold;             /* upstream frame bytes held until the frame ends */
    bool frame_open;
    bool frame_held;
    bool frame_unsolicited;      /* the frame began with nothing pending: it answers no command */

    /* request side */
    bool in_multi;               /* MULTI sent, no EXEC/DISCARD yet */
    uint32_t multi_seq;          /* counts MULTIs that opened a transaction here */
    bool multi_dirty;            /* a command was refused inside it: EXEC becomes EXECABORT */
    bool multi_refused;          /* MULTI was refused by the rate limit: a transaction that was
                                    never opened, whose commands must not run on their own */
    bool quitting;               /* QUIT or a protocol error: read nothing more */
    bool draining;               /* shutdown: close once the queue is empty */
    bool peer_closed;            /* the client half-closed: answer what it sent, then close */
    /* reply side */
    int reply_proto;             /* 2 or 3, as the upstream speaks at the current reply */
    long long subs, ssubs;       /* subscription counts from the last confirmations */
    bool client_paused, upstream_paused;
    int req_proto;               /* 2 or 3, as the client asked by the commands read so far */
    uint32_t pending_subscribes; /* subscribe commands not yet answered */
    /* metrics */
    bool counted;                /* counted as an accepted connection: count its close too */
    bool up_opened;              /* counted as an open upstream connection */
    uint64_t batch_t;            /* uv_hrtime at the start of the current client read batch */
    size_t batch_pushed;         /* queue entries added in the current batch */
    uint64_t reply_t;            /* uv_hrtime at the start of the current upstream read batch */
};

static void process_input(struct session *s);
static void maybe_resume_client(struct session *s);
static void unref(struct session *s);
static void on_user_expired(uv_timer_t *t);
static void on_close_deadline(uv_timer_t *t);
static void on_login_timeout(uv_timer_t *t);

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

/* Lower-case copy of a (short) argument; "" when it does not fit. */
static void arg_lower(const struct resp_arg *a, char *out, size_t cap)
{
    if (a->len >= cap) {
        out[0] = '\0';
        return;
    }
    for (size_t i = 0; i < a->len; i++)
        out[i] = (char)tolower((unsigned char)a->ptr[i]);
    out[a->len] = '\0';
}

static bool authenticated(const struct session *s) { return s->user != NULL; }

static struct pending *q_at(struct session *s, size_t i)
{
    return &s->q[(s->q_head + i) & (s->q_cap - 1)];
}

static struct pending *q_front(struct session *s) { return s->q_len ? q_at(s, 0) : NULL; }

static int q_push(struct session *s, struct pending e)
{
    if (s->q_len == s->q_cap) {
        size_t cap = s->q_cap ? s->q_cap * 2 : 64;
        struct pending *n = malloc(cap * sizeof *n);
        if (!n)
            return -1;
        for (size_t i = 0; i < s->q_len; i++)
            n[i] = *q_at(s, i);
        free(s->q);
        s->q = n;
        s->q_cap = cap;
        s->q_head = 0;
    }
    e.t_in = s->batch_t;
    *q_at(s, s->q_len) = e;
    s->q_len++;
    s->batch_pushed++;
    return 0;
}

/* ---------------------------------------------------------------------------------------- */
/* Reply queue                                                                              */
/* ---------------------------------------------------------------------------------------- */

/* Whatever is still to be written gets shutdown_timeout to leave; a client that never reads
 * (or a blocked command that never returns after a half-close) cannot keep the session. */
static void start_close_deadline(struct session *s)
{
    uv_timer_stop(&s->login_timer);
    uv_timer_start(&s->login_timer, on_close_deadline, s->w->cfg->limits.shutdown_timeout_ms, 0);
}

static void close_after_reply(struct session *s)
{
    if (!s->client.closing)
        start_close_deadline(s);
    s->quitting = true;
    if (s->upstream_started)
        upstream_close(&s->up);
    transport_close_when_flushed(&s->client);
}

/* Send the local bytes of the front entry and remove it. */
static void q_pop(struct session *s)
{
    struct pending *e = q_front(s);
    if (e->local_len) {
        transport_write(&s->client, buf_head(&s->local), e->local_len);
        buf_consume(&s->local, e->local_len);
    }
    uint8_t flags = e->flags;
    s->q_head = (s->q_head + 1) & (s->q_cap - 1);
    s->q_len--;
    if (flags & PENDING_CLOSE_AFTER)
        close_after_reply(s);
}

/* Local replies at the front have nothing to wait for. */
static void q_drain_local(struct session *s)
{
    struct pending *e;
    while ((e = q_front(s)) && e->kind == PENDING_LOCAL && s->state != SESSION_CLOSING && !s->client.closing)
        q_pop(s);
    if (s->q_len == 0 && (s->draining || (s->peer_closed && (s->quitting || buf_len(&s->client.in) == 0))))
        close_after_reply(s); /* the last replies are queued, not yet written */
}

static void reply_local(struct session *s, const char *bytes, size_t len, uint8_t flags)
{
    /* Straight out only when nothing is due and no out-of-band frame (a pub/sub message, a
     * push) is half way through to the client; otherwise it waits its turn in the queue. */
    if (s->q_len == 0 && !s->frame_open) {
        transport_write(&s->client, bytes, len);
        if (flags & PENDING_CLOSE_AFTER)
            close_after_reply(s);
        return;
    }
    if (buf_append(&s->local, bytes, len) != 0 ||
        q_push(s, (struct pending){.kind = PENDING_LOCAL, .flags = flags, .local_len = (uint32_t)len}) != 0)
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
static void expect_upstream(struct session *s, enum pending_kind kind, uint8_t flags, uint32_t expected,
                            const char *local, size_t local_len)
{
    if ((local_len && buf_append(&s->local, local, local_len) != 0) ||
        q_push(s, (struct pending){.kind = (uint8_t)kind, .flags = flags, .expected = expected,
                                   .local_len = (uint32_t)local_len}) != 0)
        session_close(s, "out of memory");
}

/* ---------------------------------------------------------------------------------------- */
/* Upstream                                                                                  */
/* ---------------------------------------------------------------------------------------- */

static void send_upstream(struct session *s, const char *bytes, size_t len)
{
    transport_write(&s->up.t, bytes, len);
}

static void forward_command(struct session *s, const char *frame, const struct resp_request *req)
{
    if (req->canonical) {
        send_upstream(s, frame, req->frame_len);
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
    send_upstream(s, buf_head(&s->enc), n);
    if (s->enc.cap > 256 * 1024)
        buf_free(&s->enc); /* a one-off big inline or odd command: do not keep its size */
}

/* The upstream is gone or never came: every reply still due becomes an error, then close. */
static void fail_upstream(struct session *s, const char *stage, const char *reason)
{
    log_event(LOG_WARN, "upstream_error", LOG_INT("session", s->id), LOG_STR("peer", s->peer),
              LOG_STR("user", s->user ? s->user->name : NULL), LOG_STR("stage", stage),
              LOG_STR("reason", reason), LOG_END);
    metrics_inc(s->w->metrics, metrics_upstream_failure(stage, reason));
    static const char lost[] = "-ERR respguard: upstream connection lost\r\n";
    static const char failed[] = "-ERR respguard: upstream connection failed\r\n";
    const char *err = strcmp(stage, "lost") == 0 ? lost : failed;
    size_t errlen = strlen(err);
    /* A reply that was half streamed cannot be completed: the client only gets the close. */
    bool midframe = s->frame_open && !s->frame_held;
    buf_reset(&s->hold);
    s->frame_open = false;
    while (s->q_len && !midframe) {
        struct pending *e = q_front(s);
        if (e->kind == PENDING_LOCAL) {
            q_pop(s);
            continue;
        }
        /* Only entries the client is waiting on get the error: not what respguard injected. */
        if (e->kind == PENDING_FORWARD || e->kind == PENDING_REPLACE || (e->kind == PENDING_LOGIN && e->local_len))
            transport_write(&s->client, err, errlen);
        buf_consume(&s->local, e->local_len);
        s->q_head = (s->q_head + 1) & (s->q_cap - 1);
        s->q_len--;
    }
    s->q_len = 0;
    buf_reset(&s->local);
    close_after_reply(s);
}

static void on_up_ready(struct upstream *u)
{
    struct session *s = u->owner;
    log_event(LOG_DEBUG, "upstream_connected", LOG_INT("session", s->id), LOG_END);
    metrics_inc(s->w->metrics, MC_UPSTREAM_OPENED);
    s->up_opened = true;
    /* The login command and any commands already queued were held by the transport until the
     * handshake completed; they leave now. */
    transport_flush(&u->t);
}

static void on_up_failed(struct upstream *u, const char *stage, const char *reason)
{
    struct session *s = u->owner;
    s->refs++;
    fail_upstream(s, stage, reason);
    unref(s);
}

static void on_up_closed(struct upstream *u)
{
    struct session *s = u->owner;
    if (s->up_opened) {
        s->up_opened = false;
        metrics_inc(s->w->metrics, MC_UPSTREAM_CLOSED);
    }
    unref(s);
}

/* ---------------------------------------------------------------------------------------- */
/* Reply framing                                                                            */
/* ---------------------------------------------------------------------------------------- */

static bool head_is(const struct resp_frame_info *f, const char *s)
{
    size_t n = strlen(s);
    if (!f->has_head || f->head_len != n)
        return false;
    for (size_t i = 0; i < n; i++)
        if (tolower((unsigned char)f->head[i]) != s[i])
            return false;
    return true;
}

static bool is_confirmation(const struct resp_frame_info *f, bool *shard)
{
    *shard = head_is(f, "ssubscribe") || head_is(f, "sunsubscribe");
    return *shard || head_is(f, "subscribe") || head_is(f, "unsubscribe") || head_is(f, "psubscribe") ||
           head_is(f, "punsubscribe");
}

static bool is_message(const struct resp_frame_info *f)
{
    return head_is(f, "message") || head_is(f, "pmessage") || head_is(f, "smessage");
}

/* Frames that may be dropped are held until they end; everything else streams through. */
static bool must_hold(struct session *s)
{
    struct pending *e = q_front(s);
    if (!e)
        return false;
    return e->kind != PENDING_FORWARD || (e->flags & PENDING_UNBOUNDED);
}

static void forward_held(struct session *s)
{
    if (buf_len(&s->hold))
        transport_write(&s->client, buf_head(&s->hold), buf_len(&s->hold));
    buf_reset(&s->hold);
}

/* A forwarded command's reply is complete and handed to the client connection. */
static void observe_latency(struct session *s, const struct pending *e)
{
    if (e->kind != PENDING_FORWARD || !e->t_sent || s->reply_t < e->t_sent)
        return;
    uint64_t now = uv_hrtime();
    metrics_observe(s->w->metrics, MH_UPSTREAM_RTT, s->reply_t - e->t_sent);
    metrics_observe(s->w->metrics, MH_ADDED_LATENCY, (e->t_sent - e->t_in) + (now - s->reply_t));
}

static void complete_entry(struct session *s, struct pending *e, bool error)
{
    observe_latency(s, e);
    if (!error) {
        if (e->flags & (PENDING_SET_RESP2 | PENDING_RESET))
            s->reply_proto = 2;
        if (e->flags & PENDING_SET_RESP3)
            s->reply_proto = 3;
        if (e->flags & PENDING_RESET)
            s->subs = s->ssubs = 0;
    } else if ((e->flags & PENDING_MULTI) && e->multi_seq == s->multi_seq) {
        s->in_multi = s->multi_dirty = false; /* Redis refused the MULTI: no transaction */
    }
    if (e->flags & PENDING_SUBSCRIBE)
        s->pending_subscribes--;
    q_pop(s);
    q_drain_local(s);
}

/* One complete top-level frame arrived from the upstream. */
static void on_frame(struct session *s, const struct resp_frame_info *f)
{
    bool held = s->frame_held;
    struct pending *e = q_front(s);
    bool shard = false;
    bool confirm = false, oob = false;

    if (f->kind == RESP_FRAME_ATTRIBUTE) {
        /* An attribute belongs to the frame after it: keep holding, or it already streamed. */
        return;
    }
    bool subscribed2 = s->reply_proto == 2 && (s->subs > 0 || s->ssubs > 0);
    bool expecting = e && (e->flags & PENDING_PUBSUB);
    if ((f->kind == RESP_FRAME_PUSH || (f->type == '*' && (expecting || subscribed2))) &&
        is_confirmation(f, &shard)) {
        /* A real confirmation: a push, or a RESP2 array where one can stand. Its count says
         * whether the connection is still in subscribed mode. */
        if (f->has_last_int) {
            if (shard)
                s->ssubs = f->last_int;
            else
                s->subs = f->last_int;
        }
        confirm = expecting;
        oob = !confirm;
    } else if (f->kind == RESP_FRAME_PUSH) {
        oob = true;
    } else if (subscribed2 && f->type == '*' && is_message(f)) {
        oob = true;
    }

    if (s->frame_unsolicited)
        oob = true; /* e.g. MONITOR output or a push arriving while nothing was pending */
    if (oob || !e) {
        if (!e && !oob)
            log_event(LOG_WARN, "unexpected_reply", LOG_INT("session", s->id), LOG_END);
        if (held)
            forward_held(s);
        q_drain_local(s); /* local replies that waited for this frame to end */
        return;
    }

    if (e->flags & PENDING_UNBOUNDED) {
        if (confirm) {
            forward_held(s);
            return;
        }
        if (f->is_error) {
            /* The argument-less UNSUBSCRIBE itself failed: the error is its reply. */
            forward_held(s);
            complete_entry(s, e, true);
            return;
        }
        /* The first reply that is not a confirmation answers the marker after it. */
        complete_entry(s, e, false);
        e = q_front(s);
        if (!e) {
            forward_held(s);
            return;
        }
    }

    switch ((enum pending_kind)e->kind) {
    case PENDING_FORWARD:
        if (held)
            forward_held(s);
        break;
    case PENDING_LOGIN:
        if (f->is_error) {
            /* Only the error's code goes to the log: its text may echo respguard's AUTH
             * arguments (an upstream without AUTH answers "unknown command ... with args"). */
            char code[32], reason[96];
            resp_error_code(buf_head(&s->hold), buf_len(&s->hold), code, sizeof code);
            snprintf(reason, sizeof reason, "the upstream refused respguard's login (%s)", code[0] ? code : "error");
            buf_reset(&s->hold);
            fail_upstream(s, "auth", reason);
            return;
        }
        upstream_logged_in(&s->up);
        buf_reset(&s->hold);
        break;
    case PENDING_SWALLOW:
    case PENDING_REPLACE:
        buf_reset(&s->hold);
        break;
    case PENDING_LOCAL:
        /* Only when a frame nobody asked for ends behind it: the frame goes out, then the
         * local replies that waited for it. */
        forward_held(s);
        q_drain_local(s);
        return;
    }
    if (f->is_error || e->expected <= 1)
        complete_entry(s, e, f->is_error);
    else
        e->expected--;
}

static void process_replies(struct session *s)
{
    struct buf *in = &s->up.t.in;
    s->reply_t = uv_hrtime();
    while (buf_len(in) > 0 && s->state != SESSION_CLOSING && !s->client.closing) {
        if (!s->frame_open) {
            s->frame_open = true;
            s->frame_held = must_hold(s);
            s->frame_unsolicited = s->q_len == 0;
        }
        size_t used = 0;
        struct resp_frame_info info;
        const char *err = NULL;
        enum resp_frame_status st = resp_framer_feed(&s->framer, buf_head(in), buf_len(in), &used, &info, &err);
        if (st == RESP_FRAME_ERROR) {
            fail_upstream(s, "lost", err ? err : "protocol error in reply");
            return;
        }
        if (s->frame_held) {
            if (buf_append(&s->hold, buf_head(in), used) != 0) {
                session_close(s, "out of memory");
                return;
            }
            /* Swallowed replies (+OK, +PONG, a short error) are small; a frame this big is an
             * out-of-band message or a confirmation's neighbour: stream the rest. */
            if (buf_len(&s->hold) > HOLD_MAX && st != RESP_FRAME_DONE) {
                forward_held(s);
                s->frame_held = false;
            }
        } else {
            transport_write(&s->client, buf_head(in), used);
        }
        buf_consume(in, used);
        if (st == RESP_FRAME_DONE) {
            s->frame_open = false;
            on_frame(s, &info);
        }
    }
    transport_flush(&s->client);
    maybe_resume_client(s);
    if (!s->upstream_paused && transport_pending(&s->client) > s->w->cfg->limits.client_output_bytes) {
        s->upstream_paused = true;
        transport_pause(&s->up.t);
    }
}

static void on_up_data(struct upstream *u)
{
    struct session *s = u->owner;
    s->refs++;
    if (!s->upstream_paused)
        process_replies(s);
    unref(s);
}

static void on_up_drained(struct upstream *u)
{
    struct session *s = u->owner;
    s->refs++;
    maybe_resume_client(s);
    unref(s);
}

static const struct upstream_ops upstream_ops = {
    .on_ready = on_up_ready,
    .on_data = on_up_data,
    .on_drained = on_up_drained,
    .on_failed = on_up_failed,
    .on_closed = on_up_closed,
};

/* ---------------------------------------------------------------------------------------- */
/* Login                                                                                     */
/* ---------------------------------------------------------------------------------------- */

/* Send upstream credential idx (AUTH); reply (if any) goes to the client once it succeeded. */
static void upstream_login(struct session *s, size_t idx, const char *reply, size_t reply_len)
{
    const struct worker_login *l = &s->w->upstream_logins[idx];
    s->up_login = idx;
    send_upstream(s, l->cmd, l->len);
    expect_upstream(s, PENDING_LOGIN, 0, 1, reply, reply_len);
}

/* Log in as u. The reply (local bytes, e.g. "+OK") is sent once the upstream has accepted
 * respguard's own login, so a client never hears OK from a session that cannot work. */
static void login(struct session *s, const struct acl_user *u, const char *reply, size_t reply_len)
{
    s->user = u;
    s->state = SESSION_ACTIVE;
    uv_timer_stop(&s->login_timer);
    /* A user with an expiry: the session ends when the user does (the login timer is free now). */
    const struct config_user *uc = worker_user_config(s->w, u);
    if (uc->has_expires) {
        time_t now = time(NULL);
        uint64_t ms = uc->expires > now ? (uint64_t)(uc->expires - now) * 1000 : 0;
        uv_timer_start(&s->login_timer, on_user_expired, ms, 0);
    }
    log_event(LOG_INFO, "login", LOG_STR("result", "ok"), LOG_STR("user", u->name), LOG_STR("peer", s->peer),
              LOG_INT("session", s->id), LOG_END);
    metrics_inc(s->w->metrics, MC_LOGIN_OK);
    if (s->w->anomaly)
        anomaly_record_connection(s->w->anomaly, (int)(u - s->w->users), (struct sockaddr *)&s->peer_addr,
                                  uv_now(s->w->loop));
    size_t want = s->w->user_login[u - s->w->users];
    if (s->upstream_started) {
        if (want != s->up_login)
            upstream_login(s, want, reply, reply_len); /* this user maps to another credential */
        else if (reply_len)
            reply_local(s, reply, reply_len, 0);
        return;
    }
    s->upstream_started = true;
    s->refs++; /* released by on_up_closed */
    if (upstream_start(&s->up, s->w, &upstream_ops, s) < 0) {
        fail_upstream(s, "connect", "cannot start the connection");
        return;
    }
    s->up.t.bytes_in_counter = &s->w->metrics->c[MC_UPSTREAM_BYTES_IN];
    s->up.t.bytes_out_counter = &s->w->metrics->c[MC_UPSTREAM_BYTES_OUT];
    upstream_login(s, want, reply, reply_len);
}

enum login_result { LOGIN_OK, LOGIN_UNKNOWN_USER, LOGIN_BAD_PASSWORD, LOGIN_EXPIRED, LOGIN_SOURCE };

static const char *login_result_name(enum login_result r)
{
    switch (r) {
    case LOGIN_OK: return "ok";
    case LOGIN_UNKNOWN_USER: return "unknown user";
    case LOGIN_BAD_PASSWORD: return "wrong password or disabled";
    case LOGIN_EXPIRED: return "expired";
    case LOGIN_SOURCE: return "source not allowed";
    }
    return "?";
}

static enum metrics_counter login_result_counter(enum login_result r)
{
    switch (r) {
    case LOGIN_OK: return MC_LOGIN_OK;
    case LOGIN_UNKNOWN_USER: return MC_LOGIN_UNKNOWN_USER;
    case LOGIN_BAD_PASSWORD: return MC_LOGIN_WRONG_PASSWORD;
    case LOGIN_EXPIRED: return MC_LOGIN_EXPIRED;
    case LOGIN_SOURCE: return MC_LOGIN_SOURCE;
    }
    return MC_LOGIN_WRONG_PASSWORD;
}

static enum login_result check_user_allowed(struct session *s, const struct acl_user *u);

static enum login_result check_login(struct session *s, const struct resp_arg *user, const struct resp_arg *pass,
                                     const struct acl_user **out)
{
    const struct acl_user *u = worker_find_user(s->w, user->ptr, user->len);
    *out = u;
    if (!u) {
        /* Same work as for a real user, so timing does not tell which names exist. */
        uint8_t h[CRYPTO_SHA256_LEN];
        crypto_sha256(pass->ptr, pass->len, h);
        return LOGIN_UNKNOWN_USER;
    }
    if (!acl_user_check_password(u, pass->ptr, pass->len))
        return LOGIN_BAD_PASSWORD;
    return check_user_allowed(s, u);
}

/* What a login needs besides the password: not expired, from an allowed network. */
static enum login_result check_user_allowed(struct session *s, const struct acl_user *u)
{
    if (!u->enabled)
        return LOGIN_BAD_PASSWORD;
    const struct config_user *uc = worker_user_config(s->w, u);
    if (uc->has_expires && time(NULL) >= uc->expires)
        return LOGIN_EXPIRED;
    if (uc->allow_from.count && !config_cidr_match(&uc->allow_from, (struct sockaddr *)&s->peer_addr))
        return LOGIN_SOURCE;
    return LOGIN_OK;
}

static const char wrongpass[] = "-WRONGPASS invalid username-password pair or user is disabled.\r\n";

static void login_failed(struct session *s, const struct resp_arg *user, enum login_result r)
{
    uint64_t now = uv_now(s->w->loop);
    if (s->w->anomaly)
        anomaly_record_auth_failure(s->w->anomaly, (struct sockaddr *)&s->peer_addr, now);
    log_event(LOG_WARN, "login", LOG_STR("result", "fail"), LOG_BYTES("user", user->ptr, user->len),
              LOG_STR("peer", s->peer), LOG_STR("reason", login_result_name(r)), LOG_INT("session", s->id),
              LOG_END);
    metrics_inc(s->w->metrics, login_result_counter(r));
    if (s->w->lockout &&
        lockout_record_failure(s->w->lockout, (struct sockaddr *)&s->peer_addr, user->ptr, user->len, now)) {
        const struct config_login_lockout *lo = &s->w->cfg->limits.login_lockout;
        log_event(LOG_WARN, "login_lockout", LOG_STR("peer", s->peer), LOG_BYTES("user", user->ptr, user->len),
                  LOG_INT("failures", lo->failures),
                  LOG_INT("window_ms", (long long)lo->window_ms), LOG_INT("duration_ms", (long long)lo->duration_ms),
                  LOG_END);
        metrics_inc(s->w->metrics, MC_LOCKOUTS);
    }
    REPLY_LITERAL(s, wrongpass);
}

/* login_lockout: a user name with too many recent failures from this source is refused before
 * its password is looked at (each attempt still counts as a failed login for the anomaly
 * detector, not in the log: the lockout's start was logged once). */
static bool login_locked_out(struct session *s, const struct resp_arg *user)
{
    uint64_t retry_ms = 0, now = uv_now(s->w->loop);
    if (!s->w->lockout ||
        !lockout_locked(s->w->lockout, (struct sockaddr *)&s->peer_addr, user->ptr, user->len, now, &retry_ms))
        return false;
    if (s->w->anomaly)
        anomaly_record_auth_failure(s->w->anomaly, (struct sockaddr *)&s->peer_addr, now);
    metrics_inc(s->w->metrics, MC_LOGIN_LOCKED_OUT);
    char line[160];
    snprintf(line, sizeof line,
             "WRONGPASS too many failed logins for this user from this address, try again in %llu seconds",
             (unsigned long long)((retry_ms + 999) / 1000));
    reply_error(s, line);
    return true;
}

/* user_from_cert: cn. The verified client certificate's CN names the user; no password. A CN
 * that names no usable user leaves the session unauthenticated (AUTH still works). */
static void login_from_certificate(struct session *s)
{
    char cn[256];
    if (tlsconn_peer_cn(s->client.tls, cn, sizeof cn) != 0)
        return;
    struct resp_arg name = {cn, strlen(cn)};
    const struct acl_user *u = worker_find_user(s->w, name.ptr, name.len);
    enum login_result r = u ? check_user_allowed(s, u) : LOGIN_UNKNOWN_USER;
    if (r != LOGIN_OK) {
        log_event(LOG_WARN, "login", LOG_STR("result", "fail"), LOG_BYTES("user", name.ptr, name.len),
                  LOG_STR("peer", s->peer), LOG_STR("reason", login_result_name(r)), LOG_STR("method", "certificate"),
                  LOG_INT("session", s->id), LOG_END);
        metrics_inc(s->w->metrics, login_result_counter(r));
        return;
    }
    login(s, u, NULL, 0);
}

/* As in Redis, a default user without a password logs everyone in at connect. */
static void login_at_connect(struct session *s)
{
    const struct acl_user *d = worker_find_user(s->w, "default", 7);
    if (d && d->enabled && d->nopass && check_user_allowed(s, d) == LOGIN_OK)
        login(s, d, NULL, 0);
}

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
    const struct acl_user *u = NULL;
    if (login_locked_out(s, user))
        return;
    enum login_result r = check_login(s, user, pass, &u);
    if (r != LOGIN_OK) {
        login_failed(s, user, r);
        return;
    }
    login(s, u, "+OK\r\n", 5);
}

static bool valid_client_name(const struct resp_arg *a)
{
    for (size_t i = 0; i < a->len; i++)
        if (a->ptr[i] < '!' || a->ptr[i] > '~')
            return false;
    return true;
}

static void cmd_hello(struct session *s, const struct resp_request *req)
{
    long long ver = 0;
    if (req->argc >= 2) {
        if (!resp_string2ll(req->argv[1].ptr, req->argv[1].len, &ver)) {
            REPLY_LITERAL(s, "-ERR Protocol version is not an integer or out of range\r\n");
            return;
        }
        if (ver < 2 || ver > 3) {
            REPLY_LITERAL(s, "-NOPROTO unsupported protocol version\r\n");
            return;
        }
    }
    const struct resp_arg *user = NULL, *pass = NULL, *name = NULL;
    for (size_t j = 2; j < req->argc; j++) {
        size_t more = req->argc - 1 - j;
        if (arg_is(&req->argv[j], "auth") && more >= 2) {
            user = &req->argv[j + 1];
            pass = &req->argv[j + 2];
            j += 2;
        } else if (arg_is(&req->argv[j], "setname") && more >= 1) {
            name = &req->argv[j + 1];
            if (!valid_client_name(name)) {
                REPLY_LITERAL(s, "-ERR Client names cannot contain spaces, newlines or special characters.\r\n");
                return;
            }
            j++;
        } else {
            char msg[160];
            const struct resp_arg *o = &req->argv[j];
            snprintf(msg, sizeof msg, "ERR Syntax error in HELLO option '%.*s'", (int)(o->len > 64 ? 64 : o->len), o->ptr);
            reply_error(s, msg);
            return;
        }
    }
    if (user) {
        const struct acl_user *u = NULL;
        if (login_locked_out(s, user))
            return;
        enum login_result r = check_login(s, user, pass, &u);
        if (r != LOGIN_OK) {
            login_failed(s, user, r);
            return;
        }
        login(s, u, NULL, 0);
        if (s->state == SESSION_CLOSING)
            return;
    }
    if (!authenticated(s)) {
        REPLY_LITERAL(s, "-NOAUTH HELLO must be called with the client already authenticated, otherwise the "
                         "HELLO AUTH <user> <pass> option can be used to authenticate the client and select "
                         "the RESP protocol version at the same time\r\n");
        return;
    }
    /* The upstream answers HELLO itself (server, version, id, ...), without the AUTH part: it is
     * already logged in as respguard. */
    struct resp_arg argv[4];
    size_t argc = 0;
    argv[argc++] = req->argv[0];
    if (req->argc >= 2)
        argv[argc++] = req->argv[1];
    if (name) {
        argv[argc++] = (struct resp_arg){"SETNAME", 7};
        argv[argc++] = *name;
    }
    buf_reset(&s->enc);
    if (buf_reserve(&s->enc, resp_encoded_size(argc, argv)) != 0) {
        session_close(s, "out of memory");
        return;
    }
    size_t n = resp_encode_command(buf_tail(&s->enc), argc, argv);
    send_upstream(s, buf_head(&s->enc), n);
    uint8_t flags = ver == 3 ? PENDING_SET_RESP3 : ver == 2 ? PENDING_SET_RESP2 : 0;
    if (ver)
        s->req_proto = (int)ver;
    expect_upstream(s, PENDING_FORWARD, flags, 1, NULL, 0);
}

/* ---------------------------------------------------------------------------------------- */
/* ACL                                                                                       */
/* ---------------------------------------------------------------------------------------- */

static size_t user_index(const struct session *s) { return (size_t)(s->user - s->w->users); }

/* Every command of a logged-in user is counted once, under its category and verdict. */
static void count_command(struct session *s, const struct cmdtab_cmd *cmd, enum metrics_verdict v)
{
    metrics_count_command(s->w->metrics, user_index(s), cmd ? metrics_category_of(cmd->categories) : MCAT_UNKNOWN,
                          v);
}

/* AUTH, HELLO, QUIT, RESET: answered by respguard, counted before they may change the user. */
static void count_connection_command(struct session *s, enum metrics_verdict v)
{
    metrics_count_command(s->w->metrics, user_index(s), MCAT_CONNECTION, v);
}

static void count_refusal(struct session *s, const struct cmdtab_cmd *cmd, enum metrics_counter reason)
{
    count_command(s, cmd, MV_DENIED);
    metrics_inc(s->w->metrics, reason);
}

static enum metrics_counter refusal_counter(enum acl_result r)
{
    switch (r) {
    case ACL_DENIED_KEY: return MC_REFUSED_KEY;
    case ACL_DENIED_CHANNEL: return MC_REFUSED_CHANNEL;
    case ACL_DENIED_SORT_BY:
    case ACL_DENIED_SORT_GET: return MC_REFUSED_SORT;
    default: return MC_REFUSED_COMMAND;
    }
}

static const char *refusal_kind(enum acl_result r)
{
    switch (r) {
    case ACL_DENIED_KEY: return "key";
    case ACL_DENIED_CHANNEL: return "channel";
    case ACL_DENIED_SORT_BY:
    case ACL_DENIED_SORT_GET: return "key";
    default: return "command";
    }
}

/* Judge the command for the session's user. True: it may run (v says whether respguard must
 * append MATCH). False: the error has been answered in the command's place in the reply order
 * and, for a refusal, written to the audit log. */
static bool acl_allows(struct session *s, const struct resp_request *req, struct acl_verdict *v)
{
    int rc;
    if (req->argc <= ACL_CHECK_STACK_ITEMS) {
        rc = acl_check(s->user, req->argc, req->argv, v);
    } else {
        /* Big multi-key commands: scratch that grows to the largest seen, never per command. */
        if (s->scratch_cap < req->argc) {
            void *k = realloc(s->scratch_keys, req->argc * sizeof *s->scratch_keys);
            if (k)
                s->scratch_keys = k;
            void *c = realloc(s->scratch_channels, req->argc * sizeof *s->scratch_channels);
            if (c)
                s->scratch_channels = c;
            if (!k || !c) {
                session_close(s, "out of memory");
                return false;
            }
            s->scratch_cap = req->argc;
        }
        rc = acl_check_ex(s->user, req->argc, req->argv, v, s->scratch_keys, s->scratch_channels, s->scratch_cap);
    }
    /* What the user does, allowed or not, feeds its baselines: a read-only client trying DEL
     * is the change in behaviour even when it is refused. */
    if (s->w->anomaly && v->cmd) {
        int idx = (int)(s->user - s->w->users);
        uint64_t now = uv_now(s->w->loop);
        anomaly_record_command(s->w->anomaly, idx, v->cmd->categories, now);
        if (rc != 0 && v->result >= ACL_DENIED_COMMAND)
            anomaly_record_denial(s->w->anomaly, idx, (struct sockaddr *)&s->peer_addr, now);
    }
    if (rc == 0)
        return true; /* counted by the caller, which may still refuse it */
    if (v->result >= ACL_DENIED_COMMAND)
        count_refusal(s, v->cmd, refusal_counter(v->result));
    else
        count_command(s, v->cmd, MV_ERROR);

    char line[ACL_ERROR_MAX + 3];
    line[0] = '-';
    size_t n = acl_verdict_error(v, req->argc, req->argv, line + 1, ACL_ERROR_MAX);
    if (n > ACL_ERROR_MAX - 1)
        n = ACL_ERROR_MAX - 1;
    memcpy(line + 1 + n, "\r\n", 2);
    if (v->result >= ACL_DENIED_COMMAND) {
        /* The audit line: who, what, why, and where (argument position; 0: the command). Key
         * names only with log.keys: they may be personal data. */
        const char *cmd = v->cmd ? v->cmd->name : "?";
        bool with_key = s->w->cfg->log_keys && v->pos > 0 && v->pos < req->argc;
        const struct resp_arg *arg = with_key ? &req->argv[v->pos] : NULL;
        log_event(LOG_WARN, "refused", LOG_STR("user", s->user->name), LOG_STR("peer", s->peer),
                  LOG_STR("command", cmd), LOG_STR("reason", refusal_kind(v->result)),
                  LOG_STR("rule", acl_reason_name(v->reason)), LOG_INT("position", (long long)v->pos),
                  LOG_INT("session", s->id), with_key ? LOG_T_BYTES : LOG_T_END, "argument",
                  arg ? arg->ptr : NULL, arg ? arg->len : (size_t)0, LOG_END);
    }
    if (s->in_multi && v->cmd && strcmp(v->cmd->name, "exec") == 0) {
        /* A refused EXEC ends the transaction (Redis: EXECABORT ... because of: <error>): the
         * upstream discards it and its reply is replaced by the error. */
        static const char discard[] = "*1\r\n$7\r\nDISCARD\r\n";
        send_upstream(s, discard, sizeof discard - 1);
        expect_upstream(s, PENDING_REPLACE, 0, 1, line, n + 3);
        s->in_multi = s->multi_dirty = false;
        return false;
    }
    /* As in Redis, an error at queue time (unknown command, arity, permissions) dooms the
     * transaction: its EXEC will be answered EXECABORT. */
    if (s->in_multi)
        s->multi_dirty = true;
    reply_local(s, line, n + 3, 0);
    return false;
}

/* Forward a SCAN (or any command) with "MATCH <pattern>" appended, re-encoded. */
static void forward_with_match(struct session *s, const struct resp_request *req, const struct acl_verdict *v)
{
    size_t argc = req->argc + 2;
    if (s->scratch_args_cap < argc) {
        void *a = realloc(s->scratch_args, argc * sizeof *s->scratch_args);
        if (!a) {
            session_close(s, "out of memory");
            return;
        }
        s->scratch_args = a;
        s->scratch_args_cap = argc;
    }
    memcpy(s->scratch_args, req->argv, req->argc * sizeof *req->argv);
    s->scratch_args[req->argc] = (struct resp_arg){"MATCH", 5};
    s->scratch_args[req->argc + 1] = (struct resp_arg){v->match, v->match_len};
    buf_reset(&s->enc);
    if (buf_reserve(&s->enc, resp_encoded_size(argc, s->scratch_args)) != 0) {
        session_close(s, "out of memory");
        return;
    }
    size_t n = resp_encode_command(buf_tail(&s->enc), argc, s->scratch_args);
    send_upstream(s, buf_head(&s->enc), n);
}

/* ---------------------------------------------------------------------------------------- */
/* Commands                                                                                  */
/* ---------------------------------------------------------------------------------------- */

static void cmd_reset(struct session *s, const struct resp_request *req, const char *frame)
{
    uv_timer_stop(&s->login_timer); /* the previous user's expiry no longer applies */
    /* Redis resets the upstream connection too (and logs it out): send RESET, then log the
     * upstream back in as respguard and swallow that reply. */
    forward_command(s, frame, req);
    expect_upstream(s, PENDING_FORWARD, PENDING_RESET, 1, NULL, 0);
    s->in_multi = s->multi_dirty = s->multi_refused = false;
    /* After RESET the client is the default user again: logged in only if that needs no
     * password, as in Redis. The upstream connection is logged back in with the credential of
     * whoever the client now is. */
    const struct acl_user *d = worker_find_user(s->w, "default", 7);
    upstream_login(s, d && d->enabled && d->nopass ? s->w->user_login[d - s->w->users] : 0, NULL, 0);
    s->req_proto = 2;
    if (d && d->enabled && d->nopass) {
        s->user = d;
    } else {
        s->user = NULL;
        s->state = SESSION_LOGIN;
        uv_timer_start(&s->login_timer, on_login_timeout, s->w->cfg->limits.login_timeout_ms, 0);
    }
}

/* The command a request names, subcommand included where the table has one (CONFIG SET is
 * admin, CONFIG alone only slow): for counting a command the ACL never looked at. */
static const struct cmdtab_cmd *lookup_command(const struct resp_request *req)
{
    const struct cmdtab_cmd *cmd = cmdtab_lookup(req->argv[0].ptr, req->argv[0].len);
    const struct cmdtab_cmd *sub = cmd && req->argc > 1 ? cmdtab_lookup_sub(cmd, req->argv[1].ptr, req->argv[1].len)
                                                        : NULL;
    return sub ? sub : cmd;
}

/* The user's rate limit, or NULL when it has none. */
static const struct config_rate_limit *rate_limit_of(struct session *s)
{
    const struct config_rate_limit *rl = &worker_user_config(s->w, s->user)->rate_limit;
    return rl->enabled ? rl : NULL;
}

static void reply_rate_limited(struct session *s, const struct cmdtab_cmd *cmd)
{
    count_command(s, cmd, MV_RATE_LIMITED);
    metrics_inc(s->w->metrics, MC_REFUSED_RATE_LIMIT);
    char line[ACL_ERROR_MAX];
    snprintf(line, sizeof line, "ERR rate limit exceeded for user '%s'", s->user->name);
    reply_error(s, line);
}

/* The user's command rate limit (token bucket, shared by all its sessions in this worker). True:
 * the command was refused and answered in its place. Every command takes a token except QUIT,
 * and EXEC or DISCARD ending a transaction (its MULTI took one). A refusal inside MULTI dooms the
 * transaction, like any error at queue time; a refused MULTI starts a transaction that was
 * never opened (see refused_transaction), so that the commands meant to run atomically do not
 * run one by one. The log gets one line when a user starts being limited;
 * worker_rate_limit_tick logs the end once a second has passed without a refusal. */
static bool rate_limited(struct session *s, const struct resp_request *req, const char *name)
{
    const struct config_rate_limit *rl = rate_limit_of(s);
    if (!rl || (s->in_multi && (strcmp(name, "exec") == 0 || strcmp(name, "discard") == 0)))
        return false;
    struct worker_user_rate *r = &s->w->rates[user_index(s)];
    uint64_t now = uv_now(s->w->loop);
    if (token_bucket_take(&r->bucket, rl->rate, rl->burst, now))
        return false;
    if (!r->limiting) {
        log_event(LOG_WARN, "rate_limit", LOG_STR("phase", "begin"), LOG_STR("user", s->user->name),
                  LOG_STR("peer", s->peer), LOG_NUM("commands_per_second", rl->rate), LOG_NUM("burst", rl->burst),
                  LOG_END);
        r->limiting = true;
        r->refused = 0;
    }
    r->refused++;
    r->last_refused_ms = now;
    const struct cmdtab_cmd *cmd = lookup_command(req);
    /* What the user tries is still its behaviour: the detector sees the attempted rate. */
    if (s->w->anomaly && cmd)
        anomaly_record_command(s->w->anomaly, (int)user_index(s), cmd->categories, now);
    if (s->in_multi)
        s->multi_dirty = true;
    else if (strcmp(name, "multi") == 0)
        s->multi_refused = true;
    reply_rate_limited(s, cmd);
    return true;
}

/* After a MULTI the rate limit refused, until EXEC or DISCARD: nothing runs (the commands were
 * meant to run together), each command gets the rate-limit error and EXEC gets EXECABORT, as if
 * the transaction had been opened and doomed; DISCARD ends it with +OK. QUIT and RESET work as
 * always (RESET ends it too). True: the command was answered here. */
static bool refused_transaction(struct session *s, const struct resp_request *req, const char *name)
{
    if (!s->multi_refused || strcmp(name, "quit") == 0 || strcmp(name, "reset") == 0)
        return false;
    const struct cmdtab_cmd *cmd = lookup_command(req);
    if (strcmp(name, "exec") == 0) {
        s->multi_refused = false;
        count_command(s, cmd, MV_RATE_LIMITED);
        REPLY_LITERAL(s, "-EXECABORT Transaction discarded because of previous errors.\r\n");
    } else if (strcmp(name, "discard") == 0) {
        s->multi_refused = false;
        count_command(s, cmd, MV_ALLOWED);
        REPLY_LITERAL(s, "+OK\r\n");
    } else if (strcmp(name, "multi") == 0) {
        count_command(s, cmd, MV_ERROR);
        REPLY_LITERAL(s, "-ERR MULTI calls can not be nested\r\n");
    } else {
        reply_rate_limited(s, cmd);
    }
    return true;
}

static void handle_command(struct session *s, const struct resp_request *req, const char *frame)
{
    char name[32];
    arg_lower(&req->argv[0], name, sizeof name);

    if (!authenticated(s)) {
        if (strcmp(name, "auth") == 0)
            cmd_auth(s, req);
        else if (strcmp(name, "hello") == 0)
            cmd_hello(s, req);
        else if (strcmp(name, "quit") == 0) {
            s->quitting = true;
            transport_pause(&s->client);
            reply_local(s, "+OK\r\n", 5, PENDING_CLOSE_AFTER);
        } else if (strcmp(name, "reset") == 0) {
            if (req->argc != 1)
                REPLY_LITERAL(s, "-ERR wrong number of arguments for 'reset' command\r\n");
            else
                REPLY_LITERAL(s, "+RESET\r\n");
        }
        else
            REPLY_LITERAL(s, "-NOAUTH Authentication required.\r\n");
        return;
    }

    if (refused_transaction(s, req, name))
        return;
    /* The connection commands respguard answers itself are counted here. */
    bool is_auth = strcmp(name, "auth") == 0, is_hello = !is_auth && strcmp(name, "hello") == 0;
    if (s->in_multi && (is_auth || is_hello)) {
        /* Redis queues these and runs them at EXEC; respguard answers them itself and cannot
         * place its answer inside EXEC's array: refuse, and the transaction with it. */
        count_connection_command(s, MV_DENIED);
        metrics_inc(s->w->metrics, MC_REFUSED_UNSUPPORTED);
        s->multi_dirty = true;
        REPLY_LITERAL(s, "-ERR AUTH and HELLO inside MULTI are not supported through respguard\r\n");
        return;
    }
    if (strcmp(name, "quit") == 0) {
        count_connection_command(s, MV_ALLOWED); /* free of the rate limit: a client can always leave */
        s->quitting = true; /* later pipelined commands are not run, as in Redis */
        transport_pause(&s->client);
        reply_local(s, "+OK\r\n", 5, PENDING_CLOSE_AFTER);
        return;
    }
    if (rate_limited(s, req, name))
        return;
    if (is_auth) {
        count_connection_command(s, MV_ALLOWED);
        cmd_auth(s, req);
        return;
    }
    if (is_hello) {
        count_connection_command(s, MV_ALLOWED);
        cmd_hello(s, req);
        return;
    }
    if (strcmp(name, "reset") == 0) {
        count_connection_command(s, req->argc == 1 ? MV_ALLOWED : MV_ERROR);
        if (req->argc != 1) {
            if (s->in_multi)
                s->multi_dirty = true;
            REPLY_LITERAL(s, "-ERR wrong number of arguments for 'reset' command\r\n");
            return;
        }
        cmd_reset(s, req, frame);
        return;
    }

    struct acl_verdict v;
    if (!acl_allows(s, req, &v))
        return;
    if (v.cmd && strcmp(v.cmd->name, "client|reply") == 0 && !(req->argc == 3 && arg_is(&req->argv[2], "on"))) {
        /* Replies that never come would shift every later reply: refuse rather than guess. */
        count_refusal(s, v.cmd, MC_REFUSED_UNSUPPORTED);
        REPLY_LITERAL(s, "-ERR CLIENT REPLY OFF|SKIP is not supported through respguard\r\n");
        return;
    }
    if (v.cmd && strcmp(v.cmd->name, "monitor") == 0) {
        /* MONITOR turns the connection into a stream that answers no command; even a user
         * granted +monitor cannot use it through a proxy that matches replies to commands. */
        count_refusal(s, v.cmd, MC_REFUSED_UNSUPPORTED);
        REPLY_LITERAL(s, "-ERR MONITOR is not supported through respguard\r\n");
        return;
    }

    uint8_t flags = 0;
    uint32_t expected = 1;
    bool marker = false;
    bool sub_cmd = strcmp(name, "subscribe") == 0 || strcmp(name, "psubscribe") == 0 ||
                   strcmp(name, "ssubscribe") == 0;
    bool unsub_cmd = strcmp(name, "unsubscribe") == 0 || strcmp(name, "punsubscribe") == 0 ||
                     strcmp(name, "sunsubscribe") == 0;
    if ((sub_cmd || unsub_cmd) && s->in_multi) {
        /* Inside MULTI the confirmations would come back inside EXEC's array, where respguard
         * cannot follow the subscription state: refuse, and the transaction with it. */
        count_refusal(s, v.cmd, MC_REFUSED_UNSUPPORTED);
        s->multi_dirty = true;
        REPLY_LITERAL(s, "-ERR (P|S)SUBSCRIBE and (P|S)UNSUBSCRIBE inside MULTI are not supported through respguard\r\n");
        return;
    }
    if (strcmp(name, "multi") == 0 && !s->in_multi && s->req_proto == 2 &&
        (s->subs > 0 || s->ssubs > 0 || s->pending_subscribes > 0)) {
        /* A RESP2 connection in subscribed mode: Redis refuses MULTI, and so do we, before a
         * transaction state we would then have to undo. */
        count_command(s, v.cmd, MV_ERROR);
        REPLY_LITERAL(s, "-ERR Can't execute 'multi': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / "
                         "RESET are allowed in this context\r\n");
        return;
    }
    if (!s->in_multi) {
        if (sub_cmd || unsub_cmd) {
            flags |= PENDING_PUBSUB;
            if (sub_cmd) {
                flags |= PENDING_SUBSCRIBE;
                s->pending_subscribes++;
            }
            expected = req->argc > 1 ? (uint32_t)(req->argc - 1) : 1;
            if (unsub_cmd && req->argc == 1) {
                /* As many confirmations as subscriptions: count them until the reply to a
                 * PING we send right after. */
                flags |= PENDING_UNBOUNDED;
                marker = true;
            }
        }
    }
    if (strcmp(name, "multi") == 0) {
        if (!s->in_multi) {
            flags |= PENDING_MULTI;
            s->multi_seq++;
        }
        s->in_multi = true;
    } else if (strcmp(name, "exec") == 0 && s->in_multi) {
        bool dirty = s->multi_dirty;
        s->in_multi = s->multi_dirty = false;
        if (dirty) {
            count_command(s, v.cmd, MV_ALLOWED); /* it runs: as DISCARD, answered EXECABORT */
            static const char discard[] = "*1\r\n$7\r\nDISCARD\r\n";
            static const char abort[] = "-EXECABORT Transaction discarded because of previous errors.\r\n";
            send_upstream(s, discard, sizeof discard - 1);
            expect_upstream(s, PENDING_REPLACE, 0, 1, abort, sizeof abort - 1);
            return;
        }
    } else if (strcmp(name, "discard") == 0) {
        s->in_multi = s->multi_dirty = false;
    }

    count_command(s, v.cmd, MV_ALLOWED);
    if (v.result == ACL_OK_APPEND_MATCH)
        forward_with_match(s, req, &v);
    else
        forward_command(s, frame, req);
    expect_upstream(s, PENDING_FORWARD, flags, expected, NULL, 0);
    if ((flags & PENDING_MULTI) && s->q_len)
        q_at(s, s->q_len - 1)->multi_seq = s->multi_seq;
    if (marker) {
        static const char ping[] = "*1\r\n$4\r\nPING\r\n";
        send_upstream(s, ping, sizeof ping - 1);
        expect_upstream(s, PENDING_SWALLOW, 0, 1, NULL, 0);
    }
}

/* ---------------------------------------------------------------------------------------- */
/* Client input                                                                              */
/* ---------------------------------------------------------------------------------------- */

/* Reading from the client stops while either side is backlogged (replies respguard makes
 * itself count too: a client that never reads must not make us buffer without end). */
static bool backlogged(struct session *s, size_t divisor)
{
    const struct config_limits *lim = &s->w->cfg->limits;
    return s->q_len >= MAX_PENDING / divisor ||
           (s->upstream_started && transport_pending(&s->up.t) > lim->upstream_output_bytes / divisor) ||
           transport_pending(&s->client) + buf_len(&s->local) > lim->client_output_bytes / divisor;
}

static void maybe_resume_client(struct session *s)
{
    if (!s->client_paused || s->quitting || s->draining || s->state == SESSION_CLOSING || backlogged(s, 2))
        return;
    s->client_paused = false;
    if (!s->peer_closed)
        transport_resume(&s->client);
    process_input(s);
    transport_shrink_input(&s->client);
}

/* The batch's commands were handed to the upstream connection just now: stamp them for the
 * latency histograms. Only over an established upstream (before, the round trip would include
 * connecting); one clock read per batch. */
static void stamp_sent(struct session *s)
{
    size_t n = s->batch_pushed < s->q_len ? s->batch_pushed : s->q_len;
    if (n == 0 || s->up.state != UPSTREAM_READY)
        return;
    uint64_t now = uv_hrtime();
    for (size_t i = s->q_len - n; i < s->q_len; i++)
        q_at(s, i)->t_sent = now;
}

static void process_input(struct session *s)
{
    struct buf *in = &s->client.in;
    const struct config_limits *lim = &s->w->cfg->limits;
    s->batch_t = uv_hrtime();
    s->batch_pushed = 0;
    while (buf_len(in) > 0 && s->state != SESSION_CLOSING && !s->quitting && !s->draining) {
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
            s->quitting = true;
            transport_pause(&s->client);
            reply_local(s, line, (size_t)n, PENDING_CLOSE_AFTER);
            break;
        }
        if (st == RESP_REQ_COMMAND)
            handle_command(s, &req, buf_head(in));
        buf_consume(in, req.frame_len);
    }
    if (s->upstream_started) {
        transport_flush(&s->up.t);
        stamp_sent(s);
    }
    transport_flush(&s->client);
}

/* ---------------------------------------------------------------------------------------- */
/* Lifetime                                                                                  */
/* ---------------------------------------------------------------------------------------- */

void worker_add_session(struct worker *w, struct session *s)
{
    s->prev = NULL;
    s->next = w->sessions;
    if (w->sessions)
        w->sessions->prev = s;
    w->sessions = s;
    w->session_count++;
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
    if (w->shutting_down && w->session_count == 0 && w->on_drained)
        w->on_drained(w);
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
    worker_remove_session(s->w, s);
    resp_parser_deinit(&s->parser);
    buf_free(&s->enc);
    free(s->scratch_keys);
    free(s->scratch_channels);
    free(s->scratch_args);
    buf_free(&s->local);
    buf_free(&s->hold);
    free(s->q);
    free(s);
}

static void unref(struct session *s)
{
    if (--s->refs == 0)
        session_free(s);
}

static void on_login_timer_closed(uv_handle_t *h) { unref(h->data); }

void session_close(struct session *s, const char *reason)
{
    if (s->state == SESSION_CLOSING)
        return;
    s->refs++;
    s->state = SESSION_CLOSING;
    log_event(LOG_DEBUG, "session_close", LOG_INT("session", s->id), LOG_STR("peer", s->peer),
              LOG_STR("reason", reason), LOG_END);
    uv_timer_stop(&s->login_timer);
    if (!uv_is_closing((uv_handle_t *)&s->login_timer))
        uv_close((uv_handle_t *)&s->login_timer, on_login_timer_closed);
    transport_close(&s->client);
    if (s->upstream_started)
        upstream_close(&s->up);
    unref(s);
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

static void on_client(struct transport *t, enum transport_event ev, const char *reason)
{
    struct session *s = t->owner;
    s->refs++;
    switch (ev) {
    case TRANSPORT_CONNECTED:
        if (s->listener->cfg->tls.user_from_cert_cn && !authenticated(s))
            login_from_certificate(s);
        if (!authenticated(s) && s->state != SESSION_CLOSING)
            login_at_connect(s);
        break;
    case TRANSPORT_DATA:
        process_input(s);
        break;
    case TRANSPORT_DRAINED:
        if (s->upstream_paused && s->upstream_started &&
            transport_pending(&s->client) < s->w->cfg->limits.client_output_bytes / 2) {
            s->upstream_paused = false;
            transport_resume(&s->up.t);
            process_replies(s);
        }
        maybe_resume_client(s);
        break;
    case TRANSPORT_EOF:
        /* A half-close (shutdown(SHUT_WR), nc -N) still gets every reply due, as from Redis. */
        if (s->state == SESSION_CLOSING)
            break;
        s->peer_closed = true;
        transport_pause(&s->client);
        process_input(s); /* what it sent before closing is answered, as by Redis */
        if (s->state == SESSION_CLOSING || s->client.closing)
            break;
        if (s->q_len == 0 && (s->quitting || buf_len(&s->client.in) == 0))
            session_close(s, "client closed the connection");
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
    s->w = w;
    s->listener = l;
    s->id = ++w->next_session_id;
    s->reply_proto = s->req_proto = 2;
    resp_framer_init(&s->framer);
    if (resp_parser_init(&s->parser) != 0) {
        free(s);
        return UV_ENOMEM;
    }
    int rc = transport_init(&s->client, w->loop, on_client, s);
    if (rc < 0) {
        resp_parser_deinit(&s->parser);
        free(s);
        return rc;
    }
    s->refs = 1; /* the client handle */
    worker_add_session(w, s);
    uv_timer_init(w->loop, &s->login_timer);
    s->login_timer.data = s;
    s->refs++;

    rc = transport_accept(&s->client, server, l->tls_ctx);
    transport_peer_name(&s->client, s->peer, sizeof s->peer);
    int addrlen = sizeof s->peer_addr;
    if (uv_tcp_getpeername(&s->client.tcp, (struct sockaddr *)&s->peer_addr, &addrlen) != 0)
        s->peer_addr.ss_family = AF_UNSPEC;
    if (rc < 0) {
        session_close(s, uv_strerror(rc));
        return rc;
    }
    log_event(LOG_DEBUG, "accept", LOG_INT("session", s->id), LOG_STR("peer", s->peer), LOG_END);
    s->counted = true;
    metrics_inc(w->metrics, MC_CONN_ACCEPTED);
    s->client.bytes_in_counter = &w->metrics->c[MC_CLIENT_BYTES_IN];
    s->client.bytes_out_counter = &w->metrics->c[MC_CLIENT_BYTES_OUT];

    if (l->cfg->allow_from.count) {
        if (!config_cidr_match(&l->cfg->allow_from, (struct sockaddr *)&s->peer_addr)) {
            log_event(LOG_WARN, "refused_source", LOG_STR("peer", s->peer), LOG_STR("bind", l->bound), LOG_END);
            metrics_inc(w->metrics, MC_CONN_REFUSED_SOURCE);
            session_close(s, "source not allowed");
            return 0;
        }
    }
    if (w->session_count > w->cfg->limits.max_clients) {
        /* Redis's words, then close: the client's retry logic takes over. */
        log_event(LOG_WARN, "refused_max_clients", LOG_STR("peer", s->peer), LOG_END);
        metrics_inc(w->metrics, MC_CONN_REFUSED_MAX_CLIENTS);
        REPLY_LITERAL(s, "-ERR max number of clients reached\r\n");
        close_after_reply(s);
        return 0;
    }

    /* On TLS listeners nothing is decided before the handshake has verified the client (its
     * certificate may name the user); until then the login timeout runs. */
    uv_timer_start(&s->login_timer, on_login_timeout, w->cfg->limits.login_timeout_ms, 0);
    if (!l->tls_ctx)
        login_at_connect(s);
    return 0;
}

void session_drain(struct session *s)
{
    if (s->state == SESSION_CLOSING)
        return;
    if (!authenticated(s) || s->q_len == 0) {
        session_close(s, "shutdown");
        return;
    }
    s->draining = true;
    transport_pause(&s->client);
}
