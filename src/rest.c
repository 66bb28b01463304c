/*
 * rest: Upstash's REST API on libmicrohttpd, driven by the worker's loop (the contract is in
 * rest.h).
 *
 * One struct rest_conn per HTTP connection, made when MHD accepts it and freed when MHD closes
 * it; it carries one request at a time (HTTP/1.1 answers in order), and its buffers are reused
 * from one request to the next. A request goes through these phases:
 *   HEAD  the request line has arrived (request_timeout counts from here); headers and body
 *         are read, the body into rc->body (never more than max_request_bytes);
 *   WAIT  judged, commands sent upstream on a shared pooled connection; the HTTP connection is
 *         suspended until the last reply frame is in (or the connection is lost);
 *   DONE  the answer is built; MHD calls the access handler once more and it is queued.
 * Every command's answer is a RESP2 frame in rc->replies, whether respguard wrote it (a
 * refusal) or the upstream did, and the JSON encoder (restcodec.c) turns the frames into the
 * body, so refusals and upstream errors look alike to the client, as on a RESP connection.
 */
#include "respguard/rest.h"

#include <ctype.h>
#include <errno.h>
#include <microhttpd.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>
#include <uv.h>

#include "respguard/acl.h"
#include "respguard/buf.h"
#include "respguard/cmdtab.h"
#include "respguard/config.h"
#include "respguard/crypto.h"
#include "respguard/invariant.h"
#include "respguard/log.h"
#include "respguard/login.h"
#include "respguard/metrics.h"
#include "respguard/policy.h"
#include "respguard/pool.h"
#include "respguard/restcodec.h"
#include "respguard/scoped.h"
#include "respguard/snapshot.h"
#include "respguard/source.h"
#include "respguard/worker.h"

/* The longest token looked at (a longer one cannot be a password anyone types). */
#define TOKEN_MAX 1024
/* The longest upstash-sync-token echoed back. */
#define SYNC_TOKEN_MAX 256
/* GnuTLS (libmicrohttpd's TLS): TLS 1.2 and 1.3 with AEAD ciphers and forward secrecy only, as
 * respguard's RESP listeners (TLS 1.2 at least). */
#define TLS_PRIORITIES                                                                             \
    "SECURE128:-VERS-ALL:+VERS-TLS1.3:+VERS-TLS1.2:-CIPHER-ALL:+AES-128-GCM:+AES-256-GCM:"        \
    "+CHACHA20-POLY1305:-MAC-ALL:+AEAD:-KX-ALL:+ECDHE-RSA:+ECDHE-ECDSA"
/* libmicrohttpd's memory per connection: the request's headers and its read and write buffers
 * (bodies are handed over in pieces). It clears all of it between keep-alive requests, so it is
 * kept small: a request's headers may take about half of it. */
#define CONN_MEMORY (16u * 1024)
/* How often connections are checked against request_timeout. */
#define SWEEP_MS 100

enum route { ROUTE_COMMAND, ROUTE_PIPELINE, ROUTE_MULTI, ROUTE_PATH };
enum phase { PHASE_IDLE, PHASE_HEAD, PHASE_WAIT, PHASE_DONE };

/* One command's answer: a RESP2 frame in rc->replies. */
enum slot_kind {
    SLOT_LOCAL,    /* respguard's own (a refusal): written when judged */
    SLOT_UPSTREAM, /* the upstream's reply, as it came */
    SLOT_INFO,     /* the upstream's reply to a scoped INFO, filtered when encoded */
};

struct slot {
    uint8_t kind;
    bool rate_limited; /* SLOT_LOCAL: the rate limit refused it */
    unsigned sections; /* SLOT_INFO: what the client asked for */
    size_t off, len;   /* its frame in rc->replies (upstream ones once complete) */
};

struct rest_server;

struct rest_conn {
    struct rest_server *srv;
    struct rest_daemon *dm;       /* the daemon that accepted it */
    struct rest_conn *prev, *next;
    struct MHD_Connection *mc;
    int fd;
    uint64_t id;
    char peer[64];
    struct sockaddr_storage addr;

    /* The request being served. */
    enum phase phase;
    uint64_t started_ms;      /* loop time its request line arrived */
    bool head_seen;           /* the access handler has seen its headers */
    bool post;                /* the method is POST */
    bool serving;             /* serve() is sending its commands (not suspended yet) */
    bool shut;                /* its socket was shut down (request_timeout, drain) */
    bool too_large;           /* its body went over max_request_bytes: read and dropped */
    enum route route;
    struct buf target;        /* the request target as it came: path, '?', query */
    size_t path_len;          /* the path's length within target */
    struct buf body;
    bool has_body;
    bool base64;              /* Upstash-Encoding: base64 */
    bool resp2;               /* Upstash-Response-Format: resp2 */
    const char *origin_ok;    /* the Origin header when cors allows it (points into MHD's copy) */
    char sync_token[SYNC_TOKEN_MAX + 1];
    bool has_sync_token;
    struct snapshot *snap;    /* what the request runs under (a reference while it runs) */
    const struct acl_user *user;

    /* Who this connection has logged in as (the token's user, under which snapshot), so a
     * keep-alive connection logs one login and hashes nothing twice. */
    char token[TOKEN_MAX];        /* a secret: wiped when replaced and when the connection goes */
    size_t token_len;
    const struct acl_user *token_user;
    struct snapshot *token_snap;  /* a reference: token_user points into it */

    /* Judging and forwarding. */
    struct restcodec_decoder dec;
    struct slot *slots;
    size_t nslots, slots_cap;
    struct buf replies;       /* every answer's frame */
    struct buf enc;           /* the commands for the upstream, in order */
    uint32_t frames;          /* reply frames the upstream owes */
    uint32_t commands;        /* client commands in enc (metrics) */
    size_t next_slot;         /* the next slot an upstream frame answers */
    size_t frame_start;       /* where the frame being read began in replies */
    bool overflow;            /* the replies went over the limit: the answer is a 500 */
    struct pool_client pc;
    struct acl_scratch scratch;

    /* The answer. */
    struct restcodec_buf out;
    unsigned status;
    bool binary;              /* out holds RESP2 bytes (Upstash-Response-Format: resp2) */
    const char *allow;        /* 405: the Allow header */
};

/* One libmicrohttpd daemon of a listener. A listener has one that accepts; a reload that
 * rotates its TLS certificate starts another on the same socket and the old one retires: it
 * accepts nothing more, serves its connections to their end, then stops. */
struct rest_daemon {
    struct rest_server *srv;
    struct rest_daemon *next;  /* the listener's retiring daemons */
    struct MHD_Daemon *d;
    uv_poll_t poll;            /* MHD's epoll descriptor */
    uv_timer_t timer;          /* MHD's own timeouts */
    int handles;               /* open handles; freed in the last close callback */
    size_t conns;              /* its HTTP connections open */
    bool closed;               /* one of them closed during the current MHD_run */
    uint8_t pem_hash[CRYPTO_SHA256_LEN]; /* the certificate and key it serves */
};

struct rest_server {
    struct worker *w;
    /* Its settings: rest[index] of snap (a reference). A reload moves it to the new snapshot
     * when that has an entry with the same bind and TLS (rest_reload); otherwise it keeps these
     * until a restart. Users and rules always come from the worker's current snapshot. */
    struct snapshot *snap;
    size_t index;
    struct rest_daemon *cur;      /* the daemon that accepts */
    struct rest_daemon *retiring; /* daemons of rotated certificates, serving their last */
    uv_timer_t sweep;             /* request_timeout, retiring daemons, the drain */
    bool sweep_open;
    bool draining;
    bool stopped;
    bool started;                 /* counted in the worker's rest_running */
    /* What a restart changes (the daemon takes them at start): rotations keep these. */
    uint64_t max_connections;
    uint64_t idle_timeout_ms;
    size_t nconns;                /* connections of all its daemons (max_connections counts them all) */
    struct rest_conn *conns;
    size_t waiting;               /* connections in PHASE_WAIT */
    char bound[64];
};

static const char err_lost[] = "-ERR respguard: upstream connection lost\r\n";
static const char err_failed[] = "-ERR respguard: upstream connection failed\r\n";
static const char err_no_conn[] = "-ERR respguard: no upstream connection available\r\n";
static const char body_unauthorized[] = "{\"error\":\"Unauthorized\"}";

static void run_daemon(struct rest_daemon *dm);
static void on_daemon_timer(uv_timer_t *t);

/* ---------------------------------------------------------------------------------------- */
/* Small helpers                                                                            */
/* ---------------------------------------------------------------------------------------- */

static const struct config_rest *cfg_of(const struct rest_server *srv)
{
    return &srv->snap->cfg->rest[srv->index];
}

static uint64_t now_ms(const struct rest_server *srv) { return uv_now(srv->w->loop); }

static bool ieq(const char *a, const char *b) { return a && strcasecmp(a, b) == 0; }

static struct policy_actor actor_of(const struct rest_conn *rc)
{
    return (struct policy_actor){.w = rc->srv->w, .snap = rc->snap, .user = rc->user, .peer = rc->peer,
                                 .addr = (const struct sockaddr *)&rc->addr, .id = rc->id, .protocol = "rest"};
}

static struct login_source source_of(const struct rest_conn *rc)
{
    return (struct login_source){.w = rc->srv->w, .addr = (const struct sockaddr *)&rc->addr, .peer = rc->peer,
                                 .session = rc->id, .protocol = "rest"};
}

static enum metrics_counter status_counter(unsigned status)
{
    switch (status) {
    case 200: return MC_REST_STATUS_200;
    case 204: return MC_REST_STATUS_204;
    case 400: return MC_REST_STATUS_400;
    case 401: return MC_REST_STATUS_401;
    case 403: return MC_REST_STATUS_403;
    case 405: return MC_REST_STATUS_405;
    case 413: return MC_REST_STATUS_413;
    case 429: return MC_REST_STATUS_429;
    case 500: return MC_REST_STATUS_500;
    case 503: return MC_REST_STATUS_503;
    default: return MC_REST_STATUS_OTHER;
    }
}

/* ---------------------------------------------------------------------------------------- */
/* Answers                                                                                  */
/* ---------------------------------------------------------------------------------------- */

/* Set the answer to {"error": msg} with status. */
static void answer_error(struct rest_conn *rc, unsigned status, const char *msg)
{
    rc->out.len = 0;
    rc->binary = false;
    rc->status = status;
    if (restcodec_encode_error(&rc->out, msg, strlen(msg)) != 0) {
        rc->status = 500;
        rc->out.len = 0;
    }
}

static void answer_literal(struct rest_conn *rc, unsigned status, const char *json)
{
    rc->out.len = 0;
    rc->binary = false;
    rc->status = status;
    if (restcodec_buf_append_raw(&rc->out, json, strlen(json)) != 0)
        rc->status = 500;
}

/* Queue the answer in rc->out (from inside the access handler). */
static enum MHD_Result queue_answer(struct rest_conn *rc)
{
    struct MHD_Response *r =
        MHD_create_response_from_buffer(rc->out.len, rc->out.len ? rc->out.data : (void *)"", MHD_RESPMEM_PERSISTENT);
    if (!r)
        return MHD_NO;
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, rc->binary ? "application/octet-stream" : "application/json");
    MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
    if (rc->origin_ok) {
        MHD_add_response_header(r, MHD_HTTP_HEADER_ACCESS_CONTROL_ALLOW_ORIGIN, rc->origin_ok);
        MHD_add_response_header(r, "Access-Control-Expose-Headers", "upstash-sync-token");
        MHD_add_response_header(r, MHD_HTTP_HEADER_VARY, "Origin");
    }
    if (rc->has_sync_token)
        MHD_add_response_header(r, "upstash-sync-token", rc->sync_token);
    if (rc->allow)
        MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW, rc->allow);
    if (rc->srv->draining)
        MHD_add_response_header(r, MHD_HTTP_HEADER_CONNECTION, "close");
    metrics_inc(rc->srv->w->metrics, status_counter(rc->status));
    enum MHD_Result ok = MHD_queue_response(rc->mc, rc->status, r);
    MHD_destroy_response(r);
    rc->phase = PHASE_DONE;
    return ok;
}

/* ---------------------------------------------------------------------------------------- */
/* Slots: one answer per command                                                            */
/* ---------------------------------------------------------------------------------------- */

static struct slot *add_slot(struct rest_conn *rc, enum slot_kind kind)
{
    if (rc->nslots == rc->slots_cap) {
        size_t cap = rc->slots_cap ? rc->slots_cap * 2 : 16;
        struct slot *s = realloc(rc->slots, cap * sizeof *s);
        if (!s)
            return NULL;
        rc->slots = s;
        rc->slots_cap = cap;
    }
    struct slot *s = &rc->slots[rc->nslots++];
    *s = (struct slot){.kind = (uint8_t)kind};
    return s;
}

/* A command answered by respguard: its frame (with '-' and CRLF). */
static int local_slot(struct rest_conn *rc, const char *frame, size_t len, bool rate_limited)
{
    struct slot *s = add_slot(rc, SLOT_LOCAL);
    if (!s)
        return -ENOMEM;
    s->rate_limited = rate_limited;
    s->off = buf_len(&rc->replies);
    s->len = len;
    return buf_append(&rc->replies, frame, len);
}

static int local_error(struct rest_conn *rc, const char *text)
{
    char line[ACL_ERROR_MAX + 3];
    int n = snprintf(line, sizeof line, "-%s\r\n", text);
    if (n < 0 || (size_t)n >= sizeof line)
        return -EINVAL;
    return local_slot(rc, line, (size_t)n, false);
}

/* A command for the upstream: its bytes, and the slot its reply fills. */
static int upstream_slot(struct rest_conn *rc, enum slot_kind kind, size_t argc, const struct resp_arg *argv)
{
    if (!add_slot(rc, kind))
        return -ENOMEM;
    size_t need = resp_encoded_size(argc, argv);
    if (buf_reserve(&rc->enc, need) != 0)
        return -ENOMEM;
    size_t n = resp_encode_command(buf_tail(&rc->enc), argc, argv);
    rc->enc.end += n;
    rc->frames++;
    rc->commands++;
    return 0;
}

/* ---------------------------------------------------------------------------------------- */
/* Judging                                                                                  */
/* ---------------------------------------------------------------------------------------- */

/* The verdict for the request's user (acl.c). */
static int judge(struct rest_conn *rc, const struct cmdtab_cmd *top, const struct cmdtab_cmd *sub,
                 const struct restcodec_cmd *cmd, struct acl_verdict *v)
{
    return acl_check_scratch(rc->user, top, sub, cmd->argc, cmd->argv, v, &rc->scratch);
}

/* Commands a REST request cannot run: they need a connection of their own (its state, a reply
 * that does not come at once, a stream), or are the login REST does by token. NULL: it can. */
static bool unsupported(const struct cmdtab_cmd *cmd, const struct restcodec_cmd *c)
{
    switch ((enum cmdtab_role)cmd->role) {
    case CMDTAB_ROLE_AUTH:
    case CMDTAB_ROLE_HELLO:
    case CMDTAB_ROLE_QUIT:
    case CMDTAB_ROLE_RESET:
    case CMDTAB_ROLE_WATCH:
    case CMDTAB_ROLE_UNWATCH:
    case CMDTAB_ROLE_SUBSCRIBE:
    case CMDTAB_ROLE_UNSUBSCRIBE:
    case CMDTAB_ROLE_MONITOR:
    case CMDTAB_ROLE_CLIENT_ID:
    case CMDTAB_ROLE_CLIENT_INFO:
    case CMDTAB_ROLE_CLIENT_GETNAME:
    case CMDTAB_ROLE_CLIENT_SETNAME:
    case CMDTAB_ROLE_CLIENT_REPLY:
    case CMDTAB_ROLE_CONN_STATE:
    case CMDTAB_ROLE_STICKY_STATE:
        return true;
    case CMDTAB_ROLE_SELECT:
        return !(c->argv[1].len == 1 && c->argv[1].ptr[0] == '0');
    default:
        return cmdtab_may_block(cmd, c->argc, c->argv);
    }
}

/* "ERR <NAME> is not supported over the REST API", NAME as Redis names it in upper case. */
static int refuse_unsupported(struct rest_conn *rc, const struct policy_actor *a, const struct cmdtab_cmd *cmd,
                              bool transaction)
{
    policy_count_refusal(a, cmd, MC_REFUSED_UNSUPPORTED);
    char name[64], text[160];
    size_t i = 0;
    for (; cmd->name[i] && i + 1 < sizeof name; i++)
        name[i] = cmd->name[i] == '|' ? ' ' : (char)toupper((unsigned char)cmd->name[i]);
    name[i] = '\0';
    if (transaction)
        snprintf(text, sizeof text, "ERR %s is not supported over the REST API: send the transaction to /multi-exec",
                 name);
    else
        snprintf(text, sizeof text, "ERR %s is not supported over the REST API", name);
    return local_error(rc, text);
}

/* One command: its verdict and effects, then either an answer of respguard's (a slot with a
 * frame) or the bytes for the upstream (a slot its reply fills). in_tx: inside /multi-exec,
 * where respguard cannot place its own answer among EXEC's. 0, or -ENOMEM. */
static int run_command(struct rest_conn *rc, const struct restcodec_cmd *c, bool in_tx)
{
    struct worker *w = rc->srv->w;
    metrics_inc(w->metrics, MC_REST_COMMANDS);
    struct policy_actor a = actor_of(rc);
    const struct cmdtab_cmd *top = cmdtab_lookup(c->argv[0].ptr, c->argv[0].len), *sub = NULL;
    if (top && top->subcommands && c->argc > 1)
        sub = cmdtab_lookup_sub(top, c->argv[1].ptr, c->argv[1].len);
    const struct cmdtab_cmd *counted = top && top->subcommands ? (sub ? sub : top) : top;

    char line[ACL_ERROR_MAX + 3];
    size_t n;
    if (policy_rate_limited(&a, counted, line, sizeof line, &n))
        return local_slot(rc, line, n, true);

    struct acl_verdict v;
    int vrc = judge(rc, top, sub, c, &v);
    if (vrc == -ENOMEM)
        return -ENOMEM;
    n = policy_verdict(&a, c->argc, c->argv, vrc, &v, line, sizeof line);
    if (n)
        return local_slot(rc, line, n, false);

    const struct cmdtab_cmd *cmd = v.cmd;
    enum cmdtab_role role = (enum cmdtab_role)cmd->role;
    if (role == CMDTAB_ROLE_MULTI || role == CMDTAB_ROLE_EXEC || role == CMDTAB_ROLE_DISCARD)
        return refuse_unsupported(rc, &a, cmd, true);
    if (unsupported(cmd, c))
        return refuse_unsupported(rc, &a, cmd, false);
    if (v.result == ACL_OK_SCOPED && in_tx) {
        policy_count_refusal(&a, cmd, MC_REFUSED_UNSUPPORTED);
        return local_error(rc, v.scope == ACL_SCOPE_INFO
                                   ? "ERR INFO inside a transaction is not supported through respguard"
                                   : "ERR ACL WHOAMI inside a transaction is not supported through respguard");
    }
    policy_count(&a, cmd, MV_ALLOWED);
    if (v.result == ACL_OK_SCOPED && v.scope == ACL_SCOPE_WHOAMI) {
        int m = snprintf(line, sizeof line, "$%zu\r\n%s\r\n", strlen(rc->user->name), rc->user->name);
        if (m < 0 || (size_t)m >= sizeof line)
            return local_error(rc, "ERR respguard: user name too long");
        return local_slot(rc, line, (size_t)m, false);
    }
    if (v.result == ACL_OK_SCOPED) {
        /* INFO: the upstream is asked for the kept sections; the reply is cut down when encoded. */
        if (!add_slot(rc, SLOT_INFO) || buf_append(&rc->enc, scoped_info_command, scoped_info_command_len) != 0)
            return -ENOMEM;
        rc->slots[rc->nslots - 1].sections = scoped_info_sections(c->argc, c->argv);
        rc->frames++;
        rc->commands++;
        return 0;
    }
    if (v.result == ACL_OK_APPEND_MATCH) {
        const struct resp_arg *argv = acl_append_match(&rc->scratch, c->argc, c->argv, &v);
        return argv ? upstream_slot(rc, SLOT_UPSTREAM, c->argc + 2, argv) : -ENOMEM;
    }
    return upstream_slot(rc, SLOT_UPSTREAM, c->argc, c->argv);
}

/* The MULTI or EXEC around a /multi-exec body: judged as on a RESP connection (the ACL, the
 * guard, counted, audited; MULTI takes a rate-limit token, EXEC does not, as in RESP). A
 * refusal becomes a local slot, which discards the transaction; allowed, it adds nothing (serve
 * wraps the commands in them). 0 or -ENOMEM. */
static int judge_transaction(struct rest_conn *rc, const char *name)
{
    struct resp_arg arg = {name, strlen(name)};
    struct restcodec_cmd c = {.argc = 1, .argv = &arg};
    struct policy_actor a = actor_of(rc);
    const struct cmdtab_cmd *top = cmdtab_lookup(arg.ptr, arg.len);
    char line[ACL_ERROR_MAX + 3];
    size_t n;
    bool exec = top && top->role == CMDTAB_ROLE_EXEC;
    if (!exec && policy_rate_limited(&a, top, line, sizeof line, &n))
        return local_slot(rc, line, n, true);
    struct acl_verdict v;
    int vrc = judge(rc, top, NULL, &c, &v);
    if (vrc == -ENOMEM)
        return -ENOMEM;
    n = policy_verdict(&a, 1, &arg, vrc, &v, line, sizeof line);
    if (n)
        return local_slot(rc, line, n, false);
    policy_count(&a, v.cmd, MV_ALLOWED);
    return 0;
}

/* ---------------------------------------------------------------------------------------- */
/* Building the answer                                                                      */
/* ---------------------------------------------------------------------------------------- */

static const char *frame_of(const struct rest_conn *rc, const struct slot *s, size_t *len)
{
    *len = s->len;
    return buf_head(&rc->replies) + s->off;
}

/* A scoped INFO's frame, filtered into tmp. */
static const char *info_frame(const struct slot *s, const char *f, size_t *len, struct buf *tmp)
{
    buf_reset(tmp);
    if (scoped_info_filter(f, *len, s->sections, tmp) != 0)
        return NULL;
    *len = buf_len(tmp);
    return buf_head(tmp);
}

static void build_answer(struct rest_conn *rc)
{
    rc->out.len = 0;
    rc->binary = false;
    if (rc->overflow) {
        answer_error(rc, 500, "ERR respguard: the reply is too large for the REST API");
        return;
    }
    unsigned flags = rc->base64 ? RESTCODEC_BASE64 : 0;
    struct buf tmp = {0};
    int rc_enc = 0;
    if (rc->route == ROUTE_MULTI) {
        size_t len;
        const char *f = frame_of(rc, &rc->slots[rc->nslots - 1], &len);
        if (rc->resp2) {
            rc->binary = true;
            rc->status = len && f[0] == '-' ? 400 : 200;
            rc_enc = restcodec_buf_append_raw(&rc->out, f, len);
        } else {
            int st = 200;
            rc_enc = restcodec_encode_exec(&rc->out, f, len, flags, &st);
            rc->status = (unsigned)st;
        }
    } else if (rc->route == ROUTE_PIPELINE) {
        rc->status = 200;
        if (rc->resp2) {
            rc->binary = true;
        } else {
            rc_enc = restcodec_buf_append_raw(&rc->out, "[", 1);
        }
        for (size_t i = 0; rc_enc == 0 && i < rc->nslots; i++) {
            size_t len;
            const char *f = frame_of(rc, &rc->slots[i], &len);
            if (rc->slots[i].kind == SLOT_INFO && !(f = info_frame(&rc->slots[i], f, &len, &tmp)))
                rc_enc = -1;
            else if (rc->resp2)
                rc_enc = restcodec_buf_append_raw(&rc->out, f, len);
            else if ((i && restcodec_buf_append_raw(&rc->out, ",", 1) != 0) ||
                     restcodec_encode_entry(&rc->out, f, len, flags) < 0)
                rc_enc = -1;
        }
        if (rc_enc == 0 && !rc->resp2)
            rc_enc = restcodec_buf_append_raw(&rc->out, "]", 1);
    } else {
        size_t len;
        const struct slot *s = &rc->slots[0];
        const char *f = frame_of(rc, s, &len);
        if (s->kind == SLOT_INFO && !(f = info_frame(s, f, &len, &tmp))) {
            rc_enc = -1;
        } else if (rc->resp2) {
            rc->binary = true;
            rc->status = len && f[0] == '-' ? 400 : 200;
            rc_enc = restcodec_buf_append_raw(&rc->out, f, len);
        } else {
            int st = 200;
            rc_enc = restcodec_encode_single(&rc->out, f, len, flags, &st);
            rc->status = (unsigned)st;
        }
        if (rc_enc == 0 && s->kind == SLOT_LOCAL && s->rate_limited)
            rc->status = 429;
    }
    buf_free(&tmp);
    if (rc_enc != 0)
        answer_error(rc, 500, "ERR respguard: could not encode the reply");
}

/* /multi-exec with a command respguard refused: the transaction is discarded before anything
 * is sent, with Redis's EXECABORT wording around the first refusal's text. */
static void answer_discarded(struct rest_conn *rc, const struct slot *s)
{
    size_t len;
    const char *f = frame_of(rc, s, &len);
    /* the frame is "-<text>\r\n"; Redis drops a leading "ERR " inside EXECABORT's text */
    const char *text = f + 1;
    size_t tlen = len >= 3 ? len - 3 : 0;
    if (tlen >= 4 && memcmp(text, "ERR ", 4) == 0) {
        text += 4;
        tlen -= 4;
    }
    char msg[ACL_ERROR_MAX + 64];
    snprintf(msg, sizeof msg, "EXECABORT Transaction discarded because of: %.*s", (int)tlen, text);
    answer_error(rc, s->rate_limited ? 429 : 400, msg);
}

/* ---------------------------------------------------------------------------------------- */
/* The upstream                                                                              */
/* ---------------------------------------------------------------------------------------- */

static struct rest_conn *of_client(struct pool_client *pc)
{
    return (struct rest_conn *)((char *)pc - offsetof(struct rest_conn, pc));
}

/* Every reply is in (or will never come): build the answer and let MHD call us again. */
static void finish_wait(struct rest_conn *rc)
{
    struct rest_server *srv = rc->srv;
    build_answer(rc);
    rc->phase = PHASE_DONE;
    srv->waiting--;
    if (rc->serving)
        return; /* inside serve(), not suspended yet: it queues the answer itself */
    MHD_resume_connection(rc->mc);
    /* MHD runs once at the end of this loop turn, for every answer the turn's upstream reads
     * completed (one read carries the replies of many requests), not once per answer. */
    if (rc->dm->d)
        uv_timer_start(&rc->dm->timer, on_daemon_timer, 0, 0);
}

/* The upstream slots still unanswered get err. */
static void fail_remaining(struct rest_conn *rc, const char *err, size_t len)
{
    rc->replies.end = rc->replies.start + rc->frame_start; /* a frame cut short is dropped */
    if (rc->route == ROUTE_MULTI) {
        struct slot *s = &rc->slots[rc->nslots - 1];
        s->off = buf_len(&rc->replies);
        s->len = len;
        if (buf_append(&rc->replies, err, len) != 0)
            rc->overflow = true;
    } else {
        for (size_t i = rc->next_slot; i < rc->nslots; i++) {
            struct slot *s = &rc->slots[i];
            if (s->kind == SLOT_LOCAL)
                continue;
            s->off = buf_len(&rc->replies);
            s->len = len;
            if (buf_append(&rc->replies, err, len) != 0)
                rc->overflow = true;
        }
    }
    rc->frames = 0;
    finish_wait(rc);
}

static void send_commands(struct rest_conn *rc)
{
    pool_send(&rc->pc, buf_head(&rc->enc), buf_len(&rc->enc), rc->frames, rc->commands);
}

static void on_acquired(struct pool_client *pc)
{
    send_commands(of_client(pc));
}

static void on_failed(struct pool_client *pc, enum pool_failure why)
{
    struct rest_conn *rc = of_client(pc);
    if (why == POOL_FAIL_TIMEOUT)
        fail_remaining(rc, err_no_conn, sizeof err_no_conn - 1);
    else
        fail_remaining(rc, err_failed, sizeof err_failed - 1);
}

static void on_reply(struct pool_client *pc, const char *p, size_t n, const struct resp_frame_info *end)
{
    struct rest_conn *rc = of_client(pc);
    size_t cap = rc->snap->cfg->limits.client_output_bytes;
    if (!rc->overflow && (buf_len(&rc->replies) + n > cap || buf_append(&rc->replies, p, n) != 0))
        rc->overflow = true;
    if (!end)
        return;
    RG_INVARIANT(rc->frames > 0);
    rc->frames--;
    size_t frame_len = buf_len(&rc->replies) - rc->frame_start;
    if (rc->route == ROUTE_MULTI) {
        /* MULTI's +OK and the +QUEUED are not kept: EXEC's reply says everything */
        if (rc->frames == 0) {
            struct slot *s = &rc->slots[rc->nslots - 1];
            s->off = rc->frame_start;
            s->len = frame_len;
        } else {
            rc->replies.end = rc->replies.start + rc->frame_start;
        }
    } else {
        while (rc->next_slot < rc->nslots && rc->slots[rc->next_slot].kind == SLOT_LOCAL)
            rc->next_slot++;
        RG_INVARIANT(rc->next_slot < rc->nslots);
        struct slot *s = &rc->slots[rc->next_slot++];
        s->off = rc->frame_start;
        s->len = frame_len;
    }
    rc->frame_start = buf_len(&rc->replies);
    if (rc->frames == 0)
        finish_wait(rc); /* the pool has detached us: it was our last frame */
}

static void on_lost(struct pool_client *pc, const char *stage, const char *reason)
{
    (void)stage;
    (void)reason;
    fail_remaining(of_client(pc), err_lost, sizeof err_lost - 1);
}

static void on_drained(struct pool_client *pc) { (void)pc; }

static const struct pool_client_ops pool_ops = {
    .acquired = on_acquired, .failed = on_failed, .reply = on_reply, .lost = on_lost, .drained = on_drained};

/* ---------------------------------------------------------------------------------------- */
/* Requests                                                                                 */
/* ---------------------------------------------------------------------------------------- */

/* The token of the request: "Authorization: Bearer <token>", else ?_token=. Length, or -1. */
static long request_token(struct rest_conn *rc, char *dst, size_t cap)
{
    const char *auth = MHD_lookup_connection_value(rc->mc, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
    if (auth) {
        if (strncasecmp(auth, "Bearer ", 7) != 0)
            return -1;
        const char *t = auth + 7;
        while (*t == ' ')
            t++;
        size_t n = strlen(t);
        while (n && t[n - 1] == ' ')
            n--;
        if (n == 0 || n > cap)
            return -1;
        memcpy(dst, t, n);
        return (long)n;
    }
    size_t tlen = buf_len(&rc->target);
    if (rc->path_len >= tlen)
        return -1;
    const char *q = buf_head(&rc->target) + rc->path_len + 1;
    long n = restcodec_query_param(q, tlen - rc->path_len - 1, "_token", dst, cap);
    return n > 0 ? n : -1;
}

/* A keyed hash of a token tried (HMAC-SHA-256 under a key made at start, never stored): a
 * stable name for the lockout and the log within this process, which says nothing about the
 * token to whoever reads the log. */
static void token_tag_hash(const char *token, size_t len, uint8_t out[CRYPTO_SHA256_LEN])
{
    static uint8_t key[CRYPTO_SHA256_LEN];
    static bool keyed;
    if (!keyed)
        keyed = crypto_random(key, sizeof key) == 0;
    crypto_hmac_sha256(key, sizeof key, token, len, out);
}

/* Who the request is from (its token, looked up in the worker's snapshot, which rc->snap then
 * holds). NULL: answer 401; a wrong token is recorded as a failed login. The lockout is keyed by
 * a short hash of the token tried (a name, for login.c): a client that repeats a wrong token is
 * locked out of that token, and one that guesses many is locked out by its address (the
 * per-address threshold), while correct tokens from the same address keep working until then.
 * No token at all (a health check, a misconfigured client) is not a guess and is not recorded. */
static const struct acl_user *authenticate(struct rest_conn *rc)
{
    struct worker *w = rc->srv->w;
    snapshot_unref(rc->snap);
    rc->snap = snapshot_ref(w->snap);
    struct login_source src = source_of(rc);
    char token[TOKEN_MAX];
    long n = request_token(rc, token, sizeof token);
    if (n < 0)
        return NULL;
    /* A keep-alive connection repeats its token: the same one under the same snapshot is the
     * same user (its state is checked again below: expiry, on/off, allow_from), without a hash. */
    const struct acl_user *u = NULL;
    enum login_result r;
    bool known = rc->token_user && rc->token_snap == w->snap && (size_t)n == rc->token_len &&
                 crypto_equal(token, rc->token, (size_t)n);
    if (known) {
        crypto_wipe(token, sizeof token);
        u = rc->token_user;
        r = u->enabled ? login_check_user(&src, u) : LOGIN_BAD_PASSWORD;
        if (r == LOGIN_OK)
            return u;
        const struct resp_arg name = {u->name, strlen(u->name)};
        login_record_failure(&src, &name, r, NULL);
        return NULL;
    }
    uint8_t h[CRYPTO_SHA256_LEN];
    token_tag_hash(token, (size_t)n, h);
    char tag[32];
    snprintf(tag, sizeof tag, "(rest token %02x%02x%02x%02x)", h[0], h[1], h[2], h[3]);
    crypto_wipe(h, sizeof h);
    const struct resp_arg who = {tag, strlen(tag)};
    char reply[256];
    if (login_locked_out(&src, &who, reply, sizeof reply)) {
        crypto_wipe(token, sizeof token);
        return NULL;
    }
    r = login_check_token(&src, token, (size_t)n, &u);
    if (r != LOGIN_OK) {
        crypto_wipe(token, sizeof token);
        const struct resp_arg name = u ? (struct resp_arg){u->name, strlen(u->name)} : who;
        login_record_failure(&src, &name, r, NULL);
        return NULL;
    }
    /* A new login on this connection (or the same token after a reload): logged once. */
    if (!rc->token_user || strcmp(rc->token_user->name, u->name) != 0)
        login_record_success(&src, u);
    crypto_wipe(rc->token, sizeof rc->token);
    memcpy(rc->token, token, (size_t)n);
    rc->token_len = (size_t)n;
    crypto_wipe(token, sizeof token);
    rc->token_user = u;
    snapshot_unref(rc->token_snap);
    rc->token_snap = snapshot_ref(w->snap);
    return u;
}

static struct restcodec_limits limits_of(const struct rest_conn *rc)
{
    const struct config *cfg = rc->snap->cfg;
    return (struct restcodec_limits){.max_depth = RESTCODEC_DEFAULT_DEPTH,
                                     .max_args = cfg->limits.max_args,
                                     .max_commands = 10000,
                                     .max_bytes = cfg_of(rc->srv)->max_request_bytes,
                                     .bools_as_text = true};
}

static void reset_request(struct rest_conn *rc)
{
    rc->nslots = 0;
    buf_reset(&rc->replies);
    buf_reset(&rc->enc);
    rc->frames = rc->commands = 0;
    rc->next_slot = rc->frame_start = 0;
    rc->overflow = false;
}

/* The whole request has arrived: answer it now, or send its commands and wait (true). */
static bool serve(struct rest_conn *rc)
{
    struct rest_server *srv = rc->srv;
    struct worker *w = srv->w;
    if (srv->draining) {
        answer_error(rc, 503, "ERR respguard is shutting down");
        return false;
    }
    /* The token was checked with the headers; a reload since then: check it again, under the
     * snapshot the commands will run under. */
    if (rc->snap != w->snap && !(rc->user = authenticate(rc))) {
        answer_literal(rc, 401, body_unauthorized);
        return false;
    }
    reset_request(rc);
    struct restcodec_limits lim = limits_of(rc);
    const char *err = NULL;
    enum restcodec_status st;
    const char *body = rc->has_body ? buf_head(&rc->body) : NULL;
    size_t body_len = rc->has_body ? buf_len(&rc->body) : 0;
    switch (rc->route) {
    case ROUTE_COMMAND:
        st = restcodec_decode_command(&rc->dec, body ? body : "", body_len, &lim, &err);
        break;
    case ROUTE_PIPELINE:
    case ROUTE_MULTI:
        st = restcodec_decode_commands(&rc->dec, body ? body : "", body_len, &lim, &err);
        break;
    default: {
        size_t tlen = buf_len(&rc->target);
        const char *q = rc->path_len < tlen ? buf_head(&rc->target) + rc->path_len + 1 : NULL;
        st = restcodec_decode_path(&rc->dec, buf_head(&rc->target), rc->path_len, q,
                                   q ? tlen - rc->path_len - 1 : 0, body, body_len, &lim, &err);
        break;
    }
    }
    if (st != RESTCODEC_OK) {
        answer_error(rc, st == RESTCODEC_NOMEM ? 500 : 400, err ? err : "ERR bad request");
        return false;
    }
    /* /multi-exec: MULTI, the commands, EXEC in one piece of the stream, so that no other
     * client's command can come between them on the shared connection. */
    static const char multi[] = "*1\r\n$5\r\nMULTI\r\n", exec[] = "*1\r\n$4\r\nEXEC\r\n";
    bool tx = rc->route == ROUTE_MULTI;
    if (tx && (judge_transaction(rc, "MULTI") != 0 || buf_append(&rc->enc, multi, sizeof multi - 1) != 0)) {
        answer_error(rc, 500, "ERR respguard: out of memory");
        return false;
    }
    for (size_t i = 0; i < rc->dec.ncmds; i++) {
        if (run_command(rc, &rc->dec.cmds[i], tx) != 0) {
            answer_error(rc, 500, "ERR respguard: out of memory");
            return false;
        }
    }
    if (tx && judge_transaction(rc, "EXEC") != 0) {
        answer_error(rc, 500, "ERR respguard: out of memory");
        return false;
    }
    if (tx) {
        for (size_t i = 0; i < rc->nslots; i++) {
            if (rc->slots[i].kind == SLOT_LOCAL) {
                answer_discarded(rc, &rc->slots[i]);
                return false;
            }
        }
        if (buf_append(&rc->enc, exec, sizeof exec - 1) != 0) {
            answer_error(rc, 500, "ERR respguard: out of memory");
            return false;
        }
        rc->frames += 2;
        if (!add_slot(rc, SLOT_UPSTREAM)) { /* EXEC's answer */
            answer_error(rc, 500, "ERR respguard: out of memory");
            return false;
        }
    }
    if (rc->frames == 0) {
        build_answer(rc);
        return false;
    }
    struct pool *p = worker_user_pool(w, rc->user);
    rc->frame_start = buf_len(&rc->replies); /* upstream frames go after respguard's own */
    rc->pc = (struct pool_client){.ops = &pool_ops};
    /* The pool may answer from inside these calls (a connection that fails at once): then
     * finish_wait only builds the answer, and it is queued below, without a suspend. */
    rc->phase = PHASE_WAIT;
    srv->waiting++;
    rc->serving = true;
    int r = pool_acquire(p, &rc->pc, POOL_USE_SHARE);
    if (r < 0) /* the pool is stopping: nothing was sent */
        fail_remaining(rc, err_failed, sizeof err_failed - 1);
    else if (r == 0)
        send_commands(rc);
    rc->serving = false;
    if (rc->phase == PHASE_DONE)
        return false;
    MHD_suspend_connection(rc->mc);
    return true;
}

/* The route and whether the method may use it. False: answered (405). */
static bool route_of(struct rest_conn *rc, const char *method)
{
    const char *path = buf_head(&rc->target);
    size_t n = rc->path_len;
    bool get = strcmp(method, MHD_HTTP_METHOD_GET) == 0, post = strcmp(method, MHD_HTTP_METHOD_POST) == 0;
    if (n == 1 && path[0] == '/')
        rc->route = ROUTE_COMMAND;
    else if (n == 9 && memcmp(path, "/pipeline", 9) == 0)
        rc->route = ROUTE_PIPELINE;
    else if (n == 11 && memcmp(path, "/multi-exec", 11) == 0)
        rc->route = ROUTE_MULTI;
    else
        rc->route = ROUTE_PATH;
    if (post || (get && rc->route == ROUTE_PATH))
        return true;
    rc->allow = rc->route == ROUTE_PATH ? "GET, POST, OPTIONS" : "POST, OPTIONS";
    answer_error(rc, 405, "ERR method not allowed");
    return false;
}

/* Is origin one the listener's cors allows? */
static bool origin_allowed(const struct config_rest *cr, const char *origin)
{
    for (size_t i = 0; origin && i < cr->cors_count; i++)
        if (strcmp(cr->cors_origins[i], "*") == 0 || strcasecmp(cr->cors_origins[i], origin) == 0)
            return true;
    return false;
}

/* OPTIONS: a CORS preflight, answered for the configured origins only. */
static enum MHD_Result preflight(struct rest_conn *rc)
{
    if (!rc->origin_ok) {
        answer_error(rc, 403, "ERR origin not allowed");
        return queue_answer(rc);
    }
    struct MHD_Response *r = MHD_create_response_from_buffer(0, (void *)"", MHD_RESPMEM_PERSISTENT);
    if (!r)
        return MHD_NO;
    MHD_add_response_header(r, MHD_HTTP_HEADER_ACCESS_CONTROL_ALLOW_ORIGIN, rc->origin_ok);
    MHD_add_response_header(r, MHD_HTTP_HEADER_VARY, "Origin");
    MHD_add_response_header(r, "Access-Control-Allow-Methods", "GET, POST, OPTIONS");
    MHD_add_response_header(r, "Access-Control-Allow-Headers",
                            "Authorization, Content-Type, Upstash-Encoding, Upstash-Response-Format, "
                            "upstash-sync-token, Upstash-Telemetry-Sdk, Upstash-Telemetry-Platform, "
                            "Upstash-Telemetry-Runtime");
    MHD_add_response_header(r, "Access-Control-Expose-Headers", "upstash-sync-token");
    MHD_add_response_header(r, "Access-Control-Max-Age", "600");
    metrics_inc(rc->srv->w->metrics, MC_REST_STATUS_204);
    enum MHD_Result ok = MHD_queue_response(rc->mc, MHD_HTTP_NO_CONTENT, r);
    MHD_destroy_response(r);
    rc->phase = PHASE_DONE;
    return ok;
}

/* The headers have arrived. False: answered already (the body is not read). */
static bool on_head(struct rest_conn *rc, const char *method)
{
    struct rest_server *srv = rc->srv;
    const struct config_rest *cr = cfg_of(srv);
    const char *origin = MHD_lookup_connection_value(rc->mc, MHD_HEADER_KIND, MHD_HTTP_HEADER_ORIGIN);
    rc->origin_ok = origin_allowed(cr, origin) ? origin : NULL;
    const char *sync = MHD_lookup_connection_value(rc->mc, MHD_HEADER_KIND, "upstash-sync-token");
    rc->has_sync_token = sync && strlen(sync) <= SYNC_TOKEN_MAX && !strpbrk(sync, "\r\n");
    if (rc->has_sync_token)
        strcpy(rc->sync_token, sync);
    rc->base64 = ieq(MHD_lookup_connection_value(rc->mc, MHD_HEADER_KIND, "Upstash-Encoding"), "base64");
    const char *fmt = MHD_lookup_connection_value(rc->mc, MHD_HEADER_KIND, "Upstash-Response-Format");
    rc->resp2 = ieq(fmt, "resp2");
    if (srv->draining) {
        answer_error(rc, 503, "ERR respguard is shutting down");
        return false;
    }
    if (strcmp(method, MHD_HTTP_METHOD_OPTIONS) == 0)
        return false; /* answered by the caller (preflight) */
    rc->post = strcmp(method, MHD_HTTP_METHOD_POST) == 0;
    if (!route_of(rc, method))
        return false;
    if (fmt && !rc->resp2 && !ieq(fmt, "json")) {
        answer_error(rc, 400, "ERR unsupported Upstash-Response-Format (json or resp2)");
        return false;
    }
    /* Who it is, before any of the body is read: nobody without a valid token makes respguard
     * hold a body. */
    if (!(rc->user = authenticate(rc))) {
        answer_literal(rc, 401, body_unauthorized);
        return false;
    }
    const char *cl = MHD_lookup_connection_value(rc->mc, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
    if (cl) {
        unsigned long long want = strtoull(cl, NULL, 10);
        if (want > cr->max_request_bytes) {
            rc->too_large = true;
            return false;
        }
        /* the whole body in one allocation of its size, not doublings */
        if (want > rc->body.cap && buf_reserve(&rc->body, (size_t)want) != 0) {
            answer_error(rc, 500, "ERR respguard: out of memory");
            return false;
        }
    }
    return true;
}

static void answer_too_large(struct rest_conn *rc)
{
    char msg[96];
    snprintf(msg, sizeof msg, "ERR request body too large: more than %llu bytes",
             (unsigned long long)cfg_of(rc->srv)->max_request_bytes);
    answer_error(rc, 413, msg);
}

static enum MHD_Result on_access(void *cls, struct MHD_Connection *mc, const char *url, const char *method,
                                 const char *version, const char *upload, size_t *upload_size, void **con_cls)
{
    (void)cls;
    (void)mc;
    (void)url;
    (void)version;
    struct rest_conn *rc = *con_cls;
    if (!rc)
        return MHD_NO;
    switch (rc->phase) {
    case PHASE_DONE:
        return queue_answer(rc); /* resumed: the answer is ready */
    case PHASE_WAIT:
        return MHD_YES;
    default:
        break;
    }
    if (!rc->head_seen) {
        rc->head_seen = true;
        if (!on_head(rc, method)) {
            if (strcmp(method, MHD_HTTP_METHOD_OPTIONS) == 0 && !rc->srv->draining)
                return preflight(rc);
            if (rc->too_large)
                answer_too_large(rc);
            return queue_answer(rc);
        }
        return MHD_YES;
    }
    if (*upload_size) {
        size_t max = cfg_of(rc->srv)->max_request_bytes;
        if (!rc->too_large && buf_len(&rc->body) + *upload_size <= max) {
            if (buf_append(&rc->body, upload, *upload_size) != 0)
                rc->too_large = true;
            rc->has_body = true;
        } else {
            rc->too_large = true; /* read and dropped until the end, then 413 */
        }
        *upload_size = 0;
        return MHD_YES;
    }
    if (rc->too_large) {
        answer_too_large(rc);
        return queue_answer(rc);
    }
    /* A POST's body is the path form's last argument (a present but empty one adds none); a
     * GET has none, whatever it sent. */
    if (rc->route == ROUTE_PATH && (!rc->post || buf_len(&rc->body) == 0))
        rc->has_body = false;
    if (serve(rc))
        return MHD_YES; /* suspended until the replies are in */
    return queue_answer(rc);
}

/* The request line has arrived: a request begins. Its raw target is kept (MHD would decode
 * the path, and "%2F" must stay inside one argument). */
static void *on_uri(void *cls, const char *uri, struct MHD_Connection *mc)
{
    struct rest_server *srv = ((struct rest_daemon *)cls)->srv;
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(mc, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    struct rest_conn *rc = ci ? ci->socket_context : NULL;
    if (!rc)
        return NULL;
    rc->phase = PHASE_HEAD;
    rc->started_ms = now_ms(srv);
    rc->head_seen = rc->too_large = rc->has_body = false;
    rc->allow = NULL;
    rc->origin_ok = NULL;
    rc->has_sync_token = false;
    buf_reset(&rc->target);
    buf_reset(&rc->body);
    size_t n = strlen(uri);
    if (buf_append(&rc->target, uri, n) != 0)
        return NULL;
    const char *q = memchr(uri, '?', n);
    rc->path_len = q ? (size_t)(q - uri) : n;
    return rc;
}

static void on_completed(void *cls, struct MHD_Connection *mc, void **con_cls, enum MHD_RequestTerminationCode toe)
{
    (void)cls;
    (void)mc;
    (void)toe;
    struct rest_conn *rc = *con_cls;
    if (!rc)
        return;
    RG_INVARIANT(rc->phase != PHASE_WAIT);
    rc->phase = PHASE_IDLE;
    snapshot_unref(rc->snap);
    rc->snap = NULL;
    rc->user = NULL;
    restcodec_decoder_reset(&rc->dec);
    reset_request(rc);
    if (rc->target.data)
        crypto_wipe(rc->target.data, rc->target.cap); /* it may have held ?_token= */
    buf_reset(&rc->target);
    /* a big request's buffers are not kept by an idle connection */
    if (rc->body.cap > 65536)
        buf_free(&rc->body);
    if (rc->replies.cap > 65536)
        buf_free(&rc->replies);
    if (rc->enc.cap > 65536)
        buf_free(&rc->enc);
    if (rc->out.cap > 65536)
        restcodec_buf_free(&rc->out);
}

static void conn_free(struct rest_conn *rc)
{
    restcodec_decoder_deinit(&rc->dec);
    if (rc->target.data)
        crypto_wipe(rc->target.data, rc->target.cap);
    buf_free(&rc->target);
    buf_free(&rc->body);
    buf_free(&rc->replies);
    buf_free(&rc->enc);
    restcodec_buf_free(&rc->out);
    free(rc->slots);
    acl_scratch_free(&rc->scratch);
    snapshot_unref(rc->snap);
    snapshot_unref(rc->token_snap);
    crypto_wipe(rc->token, sizeof rc->token);
    free(rc);
}

static void on_connection(void *cls, struct MHD_Connection *mc, void **socket_context,
                          enum MHD_ConnectionNotificationCode toe)
{
    struct rest_daemon *dm = cls;
    struct rest_server *srv = dm->srv;
    if (toe == MHD_CONNECTION_NOTIFY_STARTED) {
        struct rest_conn *rc = calloc(1, sizeof *rc);
        if (!rc)
            return; /* on_uri finds no context and the request is refused */
        rc->srv = srv;
        rc->dm = dm;
        dm->conns++;
        srv->nconns++;
        rc->mc = mc;
        rc->id = ++srv->w->next_session_id;
        restcodec_decoder_init(&rc->dec);
        const union MHD_ConnectionInfo *fd = MHD_get_connection_info(mc, MHD_CONNECTION_INFO_CONNECTION_FD);
        rc->fd = fd ? fd->connect_fd : -1;
        const union MHD_ConnectionInfo *ad = MHD_get_connection_info(mc, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
        if (ad && ad->client_addr) {
            socklen_t len = ad->client_addr->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6)
                                                                   : sizeof(struct sockaddr_in);
            memcpy(&rc->addr, ad->client_addr, len);
            source_format_addr((const struct sockaddr *)&rc->addr, rc->peer, sizeof rc->peer);
        }
        rc->next = srv->conns;
        if (srv->conns)
            srv->conns->prev = rc;
        srv->conns = rc;
        *socket_context = rc;
        metrics_inc(srv->w->metrics, MC_REST_CONN_ACCEPTED);
        return;
    }
    struct rest_conn *rc = *socket_context;
    if (!rc)
        return;
    if (rc->prev)
        rc->prev->next = rc->next;
    else
        srv->conns = rc->next;
    if (rc->next)
        rc->next->prev = rc->prev;
    *socket_context = NULL;
    dm->conns--;
    srv->nconns--;
    dm->closed = true;
    metrics_inc(srv->w->metrics, MC_REST_CONN_CLOSED);
    conn_free(rc);
}

/* The listener's allow_from, checked before MHD takes the connection. */
static enum MHD_Result on_accept(void *cls, const struct sockaddr *addr, socklen_t len)
{
    (void)len;
    struct rest_server *srv = ((struct rest_daemon *)cls)->srv;
    if (!config_cidr_match(&cfg_of(srv)->listen.allow_from, addr)) {
        metrics_inc(srv->w->metrics, MC_CONN_REFUSED_SOURCE);
        return MHD_NO;
    }
    /* Each daemon has the cap; with retiring daemons of earlier certificates, all together. */
    if (srv->nconns >= srv->max_connections) {
        metrics_inc(srv->w->metrics, MC_CONN_REFUSED_MAX_CLIENTS);
        return MHD_NO;
    }
    return MHD_YES;
}

/* MHD's own messages, as log lines (they name no request data but the peer at most). */
static void on_mhd_log(void *cls, const char *fmt, va_list ap)
{
    struct rest_server *srv = ((struct rest_daemon *)cls)->srv;
    char msg[256];
    vsnprintf(msg, sizeof msg, fmt, ap);
    /* A message may quote the request target, which holds keys, values and maybe ?_token=:
     * nothing from the first '/' or '?' on is logged. */
    msg[strcspn(msg, "/?")] = '\0';
    size_t n = strlen(msg);
    while (n && (msg[n - 1] == '\n' || msg[n - 1] == '\r'))
        msg[--n] = '\0';
    log_event(LOG_DEBUG, "rest_http", LOG_STR("listener", srv->bound), LOG_STR("message", msg), LOG_END);
}

/* The identity: the target stays as it came (on_uri keeps the raw one anyway). */
static size_t keep_escaped(void *cls, struct MHD_Connection *c, char *s)
{
    (void)cls;
    (void)c;
    return strlen(s);
}

/* ---------------------------------------------------------------------------------------- */
/* The daemon in the loop                                                                   */
/* ---------------------------------------------------------------------------------------- */

/* Let MHD do what is due, then wait for its descriptor or its next timeout. */
static void run_daemon(struct rest_daemon *dm)
{
    if (!dm->d)
        return;
    /* A connection closed during a run frees a slot under max_connections: MHD then listens
     * again, but takes the connections that waited only in its next run. */
    for (int i = 0; i < 4; i++) {
        dm->closed = false;
        MHD_run(dm->d);
        if (!dm->closed)
            break;
    }
    MHD_UNSIGNED_LONG_LONG ms = 0;
    if (MHD_get_timeout(dm->d, &ms) == MHD_YES)
        uv_timer_start(&dm->timer, on_daemon_timer, ms, 0);
    else
        uv_timer_stop(&dm->timer);
}

static void on_poll(uv_poll_t *h, int status, int events)
{
    (void)status;
    (void)events;
    run_daemon(h->data);
}

static void on_daemon_timer(uv_timer_t *t) { run_daemon(t->data); }

static void on_daemon_closed(uv_handle_t *h)
{
    struct rest_daemon *dm = h->data;
    if (--dm->handles == 0)
        free(dm);
}

/* Stop a daemon (never from inside one of MHD's callbacks: its connections are closed, which
 * calls back on_completed and on_connection) and free it once its handles are closed. */
static void stop_daemon(struct rest_daemon *dm)
{
    if (dm->handles)
        uv_poll_stop(&dm->poll); /* before MHD closes the descriptor it watches */
    if (dm->d) {
        MHD_stop_daemon(dm->d);
        dm->d = NULL;
    }
    if (dm->handles) {
        uv_close((uv_handle_t *)&dm->poll, on_daemon_closed);
        uv_close((uv_handle_t *)&dm->timer, on_daemon_closed);
    } else {
        free(dm);
    }
}

static void pem_hash(const struct snapshot_pem *pem, uint8_t out[CRYPTO_SHA256_LEN])
{
    memset(out, 0, CRYPTO_SHA256_LEN);
    if (!pem || !pem->cert)
        return;
    /* the certificate's length first: moving a PEM block from one file to the other changes it */
    size_t n = sizeof pem->cert_len + pem->cert_len + pem->key_len;
    char *both = malloc(n);
    if (!both)
        return;
    memcpy(both, &pem->cert_len, sizeof pem->cert_len);
    memcpy(both + sizeof pem->cert_len, pem->cert, pem->cert_len);
    memcpy(both + sizeof pem->cert_len + pem->cert_len, pem->key, pem->key_len);
    crypto_sha256(both, n, out);
    crypto_wipe(both, n);
    free(both);
}

/* A daemon for the listener's settings in srv->snap; listen_fd >= 0: on that socket (a
 * rotation), else bound anew. NULL with the reason in err. */
static struct rest_daemon *start_daemon(struct rest_server *srv, int listen_fd, char *err, size_t errlen)
{
    const struct config_rest *cr = cfg_of(srv);
    const struct snapshot_pem *pem = cr->listen.tls_enabled ? &srv->snap->rest_tls[srv->index] : NULL;
    struct rest_daemon *dm = calloc(1, sizeof *dm);
    if (!dm) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    dm->srv = srv;
    unsigned flags = MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_TURBO;
    if (cr->listen.addr.ss_family == AF_INET6)
        flags |= MHD_USE_DUAL_STACK; /* [::] takes IPv4 too, as a RESP listener does */
    if (pem)
        flags |= MHD_USE_TLS;
    unsigned idle_s = (unsigned)((srv->idle_timeout_ms + 999) / 1000);
    struct MHD_OptionItem extra[] = {
        {MHD_OPTION_HTTPS_MEM_CERT, 0, pem ? pem->cert : NULL},
        {MHD_OPTION_HTTPS_MEM_KEY, 0, pem ? pem->key : NULL},
        {MHD_OPTION_HTTPS_PRIORITIES, 0, (void *)TLS_PRIORITIES},
        {listen_fd >= 0 ? MHD_OPTION_LISTEN_SOCKET : MHD_OPTION_SOCK_ADDR, listen_fd,
         listen_fd >= 0 ? NULL : (void *)&cr->listen.addr},
        {MHD_OPTION_END, 0, NULL},
    };
    dm->d = MHD_start_daemon(flags, cr->listen.port, on_accept, dm, on_access, dm, MHD_OPTION_CONNECTION_LIMIT,
                             (unsigned)srv->max_connections, MHD_OPTION_CONNECTION_TIMEOUT, idle_s,
                             MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)CONN_MEMORY, MHD_OPTION_NOTIFY_CONNECTION,
                             on_connection, dm, MHD_OPTION_NOTIFY_COMPLETED, on_completed, dm,
                             MHD_OPTION_URI_LOG_CALLBACK, on_uri, dm, MHD_OPTION_UNESCAPE_CALLBACK, keep_escaped,
                             dm, MHD_OPTION_EXTERNAL_LOGGER, on_mhd_log, dm, MHD_OPTION_ARRAY,
                             pem ? extra : &extra[3], MHD_OPTION_END);
    if (!dm->d) {
        snprintf(err, errlen, "rest[%zu]: cannot listen on %s (address in use, or a certificate or key the HTTP "
                 "library does not take)", srv->index, cr->listen.bind);
        free(dm);
        return NULL;
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(dm->d, MHD_DAEMON_INFO_EPOLL_FD);
    if (!di) {
        snprintf(err, errlen, "rest[%zu]: the HTTP library has no epoll descriptor", srv->index);
        MHD_stop_daemon(dm->d);
        free(dm);
        return NULL;
    }
    uv_loop_t *loop = srv->w->loop;
    uv_poll_init(loop, &dm->poll, di->epoll_fd);
    uv_timer_init(loop, &dm->timer);
    dm->poll.data = dm->timer.data = dm;
    dm->handles = 2;
    uv_poll_start(&dm->poll, UV_READABLE, on_poll);
    pem_hash(pem, dm->pem_hash);
    run_daemon(dm);
    return dm;
}

static void on_sweep_closed(uv_handle_t *h) { (void)h; }

/* The listener is done: every daemon stops, the sweep closes, and the worker may finish its
 * drain. Not from inside MHD's callbacks. */
static void stop_server(struct rest_server *srv)
{
    if (srv->stopped)
        return;
    srv->stopped = true;
    while (srv->retiring) {
        struct rest_daemon *dm = srv->retiring;
        srv->retiring = dm->next;
        stop_daemon(dm);
    }
    if (srv->cur) {
        stop_daemon(srv->cur);
        srv->cur = NULL;
    }
    if (srv->sweep_open)
        uv_close((uv_handle_t *)&srv->sweep, on_sweep_closed);
    if (!srv->started)
        return;
    log_event(LOG_INFO, "rest_stopped", LOG_STR("bind", srv->bound), LOG_END);
    srv->w->rest_running--;
    worker_check_drained(srv->w);
}

/* Every SWEEP_MS: a request that has not arrived whole within request_timeout of its first
 * line is cut (its socket shut down; MHD then closes the connection); retiring daemons whose
 * connections are gone stop; a draining listener stops once it has no connection left. */
static void on_sweep(uv_timer_t *t)
{
    struct rest_server *srv = t->data;
    if (srv->draining && !srv->conns) {
        stop_server(srv);
        return;
    }
    bool cut = false;
    if (srv->draining) {
        /* a connection that finished its answer since the drain began: it goes now */
        for (struct rest_conn *rc = srv->conns; rc; rc = rc->next) {
            if (rc->phase == PHASE_IDLE && rc->fd >= 0 && !rc->shut) {
                shutdown(rc->fd, SHUT_RDWR);
                rc->shut = true;
                cut = true;
            }
        }
    }
    for (struct rest_daemon **p = &srv->retiring; *p;) {
        struct rest_daemon *dm = *p;
        if (dm->conns == 0) {
            *p = dm->next;
            stop_daemon(dm);
        } else {
            p = &dm->next;
        }
    }
    uint64_t now = now_ms(srv), limit = cfg_of(srv)->request_timeout_ms;
    for (struct rest_conn *rc = srv->conns; rc; rc = rc->next) {
        if (rc->phase != PHASE_HEAD || now - rc->started_ms < limit || rc->fd < 0)
            continue;
        log_event(LOG_INFO, "rest_timeout", LOG_STR("peer", rc->peer), LOG_STR("listener", srv->bound),
                  LOG_INT("request_timeout_ms", (long long)limit), LOG_INT("session", rc->id), LOG_END);
        shutdown(rc->fd, SHUT_RDWR);
        rc->phase = PHASE_IDLE;
        rc->shut = true;
        cut = true;
    }
    /* Only now: MHD closes (and on_connection frees) the connections that were cut. */
    if (cut) {
        if (srv->cur)
            run_daemon(srv->cur);
        for (struct rest_daemon *dm = srv->retiring; dm; dm = dm->next)
            run_daemon(dm);
    }
}

static int start_one(struct rest_server *srv, struct worker *w, size_t index, char *err, size_t errlen)
{
    srv->w = w;
    srv->snap = snapshot_ref(w->snap);
    srv->index = index;
    const struct config_rest *cr = cfg_of(srv);
    snprintf(srv->bound, sizeof srv->bound, "%s", cr->listen.bind);
    srv->max_connections = cr->max_connections;
    srv->idle_timeout_ms = cr->idle_timeout_ms;
    srv->cur = start_daemon(srv, -1, err, errlen);
    if (!srv->cur)
        return -1;
    uv_timer_init(w->loop, &srv->sweep);
    srv->sweep.data = srv;
    srv->sweep_open = true;
    uv_timer_start(&srv->sweep, on_sweep, SWEEP_MS, SWEEP_MS);
    log_event(LOG_INFO, "rest_listening", LOG_STR("bind", cr->listen.bind), LOG_BOOL("tls", cr->listen.tls_enabled),
              LOG_END);
    return 0;
}

int rest_start(struct worker *w, struct rest_server **out, size_t *count, char *err, size_t errlen)
{
    size_t n = w->snap->cfg->rest_count;
    *out = NULL;
    *count = 0;
    if (n == 0)
        return 0;
    struct rest_server *s = calloc(n, sizeof *s);
    if (!s) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    *out = s;
    *count = n;
    for (size_t i = 0; i < n; i++) {
        if (start_one(&s[i], w, i, err, errlen) != 0)
            return -1;
        s[i].started = true;
        w->rest_running++;
    }
    return 0;
}

/* A new certificate or key for a TLS listener: a daemon with them starts on the same socket
 * (a duplicate of its descriptor), then the old one stops accepting and retires. If the new one
 * cannot start, the old one goes on and the log says why. */
static void rotate(struct rest_server *srv)
{
    const union MHD_DaemonInfo *li = MHD_get_daemon_info(srv->cur->d, MHD_DAEMON_INFO_LISTEN_FD);
    int fd = li ? dup(li->listen_fd) : -1;
    struct stat before;
    if (fd >= 0 && fstat(fd, &before) != 0) {
        close(fd);
        fd = -1;
    }
    char err[256];
    struct rest_daemon *next = fd >= 0 ? start_daemon(srv, fd, err, sizeof err) : NULL;
    if (!next) {
        /* libmicrohttpd closes a socket it was given on some failures and not on others: close
         * the duplicate only if the number still names our listening socket (another thread
         * may have been given the number since). */
        struct stat after;
        if (fd < 0)
            snprintf(err, sizeof err, "cannot share the listening socket: %s", strerror(errno));
        else if (fstat(fd, &after) == 0 && after.st_dev == before.st_dev && after.st_ino == before.st_ino)
            close(fd);
        log_event(LOG_ERROR, "rest_certificate", LOG_STR("bind", srv->bound), LOG_STR("result", "failed"),
                  LOG_STR("reason", err), LOG_END);
        return;
    }
    struct rest_daemon *old = srv->cur;
    int old_fd = MHD_quiesce_daemon(old->d);
    if (old_fd >= 0)
        close(old_fd); /* the new daemon's duplicate keeps the socket */
    old->next = srv->retiring;
    srv->retiring = old;
    srv->cur = next;
    log_event(LOG_INFO, "rest_certificate", LOG_STR("bind", srv->bound), LOG_STR("result", "rotated"),
              LOG_INT("retiring_connections", (long long)old->conns), LOG_END);
}

int rest_check_tls(const struct snapshot *snap, char *err, size_t errlen)
{
    const struct config *cfg = snap->cfg;
    for (size_t i = 0; i < cfg->rest_count; i++) {
        const struct snapshot_pem *pem = &snap->rest_tls[i];
        if (!cfg->rest[i].listen.tls_enabled)
            continue;
        struct MHD_Daemon *d = MHD_start_daemon(
            MHD_USE_NO_LISTEN_SOCKET | MHD_USE_EPOLL | MHD_USE_TLS, 0, NULL, NULL, on_access, NULL,
            MHD_OPTION_HTTPS_MEM_CERT, pem->cert, MHD_OPTION_HTTPS_MEM_KEY, pem->key, MHD_OPTION_HTTPS_PRIORITIES,
            TLS_PRIORITIES, MHD_OPTION_END);
        if (!d) {
            snprintf(err, errlen, "rest listener %s: the HTTP library's TLS (GnuTLS) does not take its certificate "
                     "and key", cfg->rest[i].listen.bind);
            return -1;
        }
        MHD_stop_daemon(d);
    }
    return 0;
}

void rest_reload(struct rest_server *servers, size_t count, struct snapshot *next)
{
    for (size_t i = 0; i < count; i++) {
        struct rest_server *srv = &servers[i];
        if (!srv->started || srv->stopped || srv->draining)
            continue;
        const struct config_rest *cur = cfg_of(srv);
        for (size_t j = 0; j < next->cfg->rest_count; j++) {
            const struct config_rest *c = &next->cfg->rest[j];
            if (!config_same_address(&c->listen, &cur->listen) || c->listen.tls_enabled != cur->listen.tls_enabled)
                continue;
            snapshot_unref(srv->snap);
            srv->snap = snapshot_ref(next);
            srv->index = j;
            if (c->listen.tls_enabled) {
                uint8_t h[CRYPTO_SHA256_LEN];
                pem_hash(&next->rest_tls[j], h);
                if (!crypto_equal(h, srv->cur->pem_hash, sizeof h))
                    rotate(srv);
            }
            break;
        }
    }
}

void rest_drain(struct rest_server *servers, size_t count)
{
    for (size_t i = 0; i < count; i++) {
        struct rest_server *srv = &servers[i];
        if (!srv->started || srv->stopped || srv->draining)
            continue;
        srv->draining = true;
        int fd = MHD_quiesce_daemon(srv->cur->d);
        if (fd >= 0)
            close(fd);
        /* Idle keep-alive connections go now; the others close after their answer
         * (Connection: close), and the sweep stops the listener once none is left. */
        for (struct rest_conn *rc = srv->conns; rc; rc = rc->next) {
            if (rc->phase == PHASE_IDLE && rc->fd >= 0) {
                shutdown(rc->fd, SHUT_RDWR);
                rc->shut = true;
            }
        }
        run_daemon(srv->cur);
        for (struct rest_daemon *dm = srv->retiring; dm; dm = dm->next)
            run_daemon(dm);
    }
}

void rest_close(struct rest_server *servers, size_t count)
{
    for (size_t i = 0; i < count; i++) {
        struct rest_server *srv = &servers[i];
        if (srv->stopped || !srv->w)
            continue; /* stopped, or never set up (a start that failed before it) */
        /* MHD cannot stop with suspended connections: what still waits gets 503. */
        for (struct rest_conn *rc = srv->conns; rc; rc = rc->next) {
            if (rc->phase != PHASE_WAIT)
                continue;
            pool_cancel(&rc->pc);
            pool_release(&rc->pc, POOL_RETURN_DIRTY);
            answer_error(rc, 503, "ERR respguard is shutting down");
            rc->phase = PHASE_DONE;
            srv->waiting--;
            MHD_resume_connection(rc->mc);
        }
        if (srv->cur)
            MHD_run(srv->cur->d);
        for (struct rest_daemon *dm = srv->retiring; dm; dm = dm->next)
            MHD_run(dm->d);
        stop_server(srv);
    }
}

void rest_free(struct rest_server *servers, size_t count)
{
    for (size_t i = 0; i < count; i++)
        snapshot_unref(servers[i].snap);
    free(servers);
}
