/*
 * replyq: the ordered reply queue of one client (the contract is in replyq.h).
 *
 * A frame is streamed to the client as its bytes arrive unless the entry at the front may drop
 * it (SWALLOW, LOGIN, REPLACE, and the confirmations of an argument-less UNSUBSCRIBE, where the
 * frame may instead answer the marker after it): then it is held until it ends. Held frames are
 * small (+OK, +PONG, a short error); one that grows past HOLD_MAX cannot be such a reply and is
 * streamed from there on.
 */
#include "respguard/replyq.h"
#include "respguard/invariant.h"

#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* Frames held back in case they answer a dropped command are streamed past this size (or, for
 * a silent command, dropped as they arrive). */
#define HOLD_MAX (64u * 1024)
/* A reply to transform is held whole up to this size; a bigger one is dropped and the owner's
 * transform is told so. */
#define TRANSFORM_MAX (1024u * 1024)

void replyq_init(struct replyq *q, const struct replyq_ops *ops, void *owner)
{
    memset(q, 0, sizeof *q);
    q->ops = ops;
    q->owner = owner;
    q->proto = 2;
}

void replyq_deinit(struct replyq *q)
{
    free(q->ring);
    buf_free(&q->local);
    buf_free(&q->hold);
    buf_free(&q->xform);
    q->ring = NULL;
    q->len = q->cap = q->head = 0;
}

static struct replyq_entry *front(struct replyq *q) { return q->len ? replyq_at(q, 0) : NULL; }

bool replyq_subscribed(const struct replyq *q)
{
    return q->subs > 0 || q->ssubs > 0 || q->pending_subscribes > 0;
}

void replyq_stop(struct replyq *q) { q->stopped = true; }

void replyq_trim(struct replyq *q)
{
    if (q->len || q->frame_open)
        return;
    free(q->ring);
    q->ring = NULL;
    q->cap = q->head = 0;
    buf_free(&q->local);
    buf_free(&q->hold);
    buf_free(&q->xform);
}

static int push(struct replyq *q, const struct replyq_entry *e, const char *local, size_t local_len)
{
    if (q->len == q->cap) {
        size_t cap = q->cap ? q->cap * 2 : 16;
        struct replyq_entry *n = malloc(cap * sizeof *n);
        if (!n)
            return -ENOMEM;
        for (size_t i = 0; i < q->len; i++)
            n[i] = *replyq_at(q, i);
        free(q->ring);
        q->ring = n;
        q->cap = cap;
        q->head = 0;
    }
    if (local_len && buf_append(&q->local, local, local_len) != 0)
        return -ENOMEM;
    RG_INVARIANT(q->len < q->cap && (q->cap & (q->cap - 1)) == 0);
    struct replyq_entry *slot = &q->ring[(q->head + q->len) & (q->cap - 1)];
    *slot = *e;
    slot->local_len = (uint32_t)local_len;
    q->len++;
    if (e->kind != REPLYQ_LOCAL)
        q->upstream_due++;
    if (e->flags & REPLYQ_SUBSCRIBE)
        q->pending_subscribes++;
    return 0;
}

/* Remove the front entry, writing its local bytes unless told not to, and report it. */
static void pop(struct replyq *q, bool write_local, bool error, const char *reply, size_t len)
{
    RG_INVARIANT(q->len > 0);
    struct replyq_entry e = *front(q);
    if (e.local_len) {
        if (write_local && !q->stopped)
            q->ops->write(q->owner, buf_head(&q->local), e.local_len);
        buf_consume(&q->local, e.local_len);
    }
    q->head = (q->head + 1) & (q->cap - 1);
    q->len--;
    if (e.kind != REPLYQ_LOCAL)
        q->upstream_due--;
    if (e.flags & REPLYQ_SUBSCRIBE)
        q->pending_subscribes--;
    q->ops->done(q->owner, &e, error, reply, len);
}

/* Local replies at the front have nothing to wait for. */
static void drain_local(struct replyq *q)
{
    struct replyq_entry *e;
    while (!q->stopped && (e = front(q)) && e->kind == REPLYQ_LOCAL)
        pop(q, true, false, NULL, 0);
}

int replyq_expect(struct replyq *q, struct replyq_entry e, const char *local, size_t local_len)
{
    return push(q, &e, local, local_len);
}

int replyq_local(struct replyq *q, const char *bytes, size_t len, uint8_t flags, uint8_t tag)
{
    struct replyq_entry e = {.kind = REPLYQ_LOCAL, .flags = flags, .tag = tag};
    /* Straight out only when nothing is due and no out-of-band frame (a pub/sub message, a
     * push) is half way through to the client; otherwise it waits its turn. */
    if (q->len == 0 && !q->frame_open) {
        if (!q->stopped && len)
            q->ops->write(q->owner, bytes, len);
        q->ops->done(q->owner, &e, false, NULL, 0);
        return 0;
    }
    return push(q, &e, bytes, len);
}

/* ---------------------------------------------------------------------------------------- */
/* Frames                                                                                   */
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
static bool must_hold(struct replyq *q)
{
    struct replyq_entry *e = front(q);
    if (!e)
        return false;
    return e->kind != REPLYQ_FORWARD || (e->flags & (REPLYQ_UNBOUNDED | REPLYQ_SILENT));
}

static bool starts_with(const struct buf *b, const char *s)
{
    size_t n = strlen(s);
    return buf_len(b) >= n && memcmp(buf_head(b), s, n) == 0;
}

/* A held frame grown past HOLD_MAX while a silent command is at the front: can it be an
 * out-of-band frame (which must still reach the client) rather than the silent reply? Told from
 * its first bytes: a RESP3 push, or in RESP2 subscribed mode a message array. */
static bool may_be_out_of_band(const struct replyq *q)
{
    if (starts_with(&q->hold, ">"))
        return true;
    return q->proto == 2 && (q->subs > 0 || q->ssubs > 0) &&
           (starts_with(&q->hold, "*3\r\n$7\r\nmessage\r\n") || starts_with(&q->hold, "*4\r\n$8\r\npmessage\r\n") ||
            starts_with(&q->hold, "*3\r\n$8\r\nsmessage\r\n"));
}

static void forward_held(struct replyq *q)
{
    if (buf_len(&q->hold) && !q->stopped)
        q->ops->write(q->owner, buf_head(&q->hold), buf_len(&q->hold));
    buf_reset(&q->hold);
}

/* The held frame answers a silent command: it goes nowhere. */
static void drop_or_forward_held(struct replyq *q, bool silent)
{
    if (silent)
        buf_reset(&q->hold);
    else
        forward_held(q);
}

/* The front entry got its last reply. */
static void complete(struct replyq *q, bool error)
{
    struct replyq_entry *e = front(q);
    bool silent = e->flags & REPLYQ_SILENT;
    if (e->kind == REPLYQ_TRANSFORM) {
        buf_reset(&q->xform);
        bool whole = !q->frame_muted;
        q->ops->transform(q->owner, e, whole ? buf_head(&q->hold) : NULL, whole ? buf_len(&q->hold) : 0, &q->xform);
        if (!silent && !q->stopped && buf_len(&q->xform))
            q->ops->write(q->owner, buf_head(&q->xform), buf_len(&q->xform));
        if (q->xform.cap > HOLD_MAX)
            buf_free(&q->xform);
        else
            buf_reset(&q->xform);
    }
    if (!error) {
        if (e->flags & (REPLYQ_SET_RESP2 | REPLYQ_RESET))
            q->proto = 2;
        if (e->flags & REPLYQ_SET_RESP3)
            q->proto = 3;
        if (e->flags & REPLYQ_RESET)
            q->subs = q->ssubs = q->psubs = 0;
    }
    /* Dropped kinds: the held reply goes to the owner (LOGIN reads its error code), then away.
     * The local bytes of LOGIN and REPLACE are the client's answer; a failed LOGIN's are not. */
    bool dropped = e->kind != REPLYQ_FORWARD;
    bool write_local = !silent && (e->kind == REPLYQ_REPLACE || (e->kind == REPLYQ_LOGIN && !error));
    bool whole = dropped && !q->frame_muted; /* a muted frame's bytes are gone */
    pop(q, write_local, error, whole ? buf_head(&q->hold) : NULL, whole ? buf_len(&q->hold) : 0);
    if (dropped)
        buf_reset(&q->hold);
    drain_local(q);
}

/* One complete top-level frame arrived. */
static void frame_end(struct replyq *q, const struct resp_frame_info *f)
{
    bool held = q->frame_held;
    struct replyq_entry *e = front(q);
    bool shard = false, confirm = false, oob = false;

    if (f->kind == RESP_FRAME_ATTRIBUTE)
        return; /* it belongs to the frame after it: held with it, or already streamed */
    bool subscribed2 = q->proto == 2 && (q->subs > 0 || q->ssubs > 0);
    bool expecting = e && (e->flags & REPLYQ_PUBSUB);
    if ((f->kind == RESP_FRAME_PUSH || (f->type == '*' && (expecting || subscribed2))) &&
        is_confirmation(f, &shard)) {
        /* A real confirmation: a push, or a RESP2 array where one can stand. Its count says
         * whether the connection is still in subscribed mode. It answers the entry at the front
         * only if it is the kind that entry expects: a server may also unsubscribe a client on
         * its own (a cluster moving a shard channel's slot sends sunsubscribe). */
        if (f->has_last_int) {
            if (shard) {
                q->ssubs = f->last_int;
            } else {
                /* The count is channels and patterns together; a (P)(UN)SUBSCRIBE changes only
                 * its own kind, so the other kind's number is what it was. */
                bool pattern = head_is(f, "psubscribe") || head_is(f, "punsubscribe");
                long long channels = q->subs - q->psubs;
                q->subs = f->last_int;
                if (pattern)
                    q->psubs = q->subs - channels >= 0 ? q->subs - channels : 0;
                else if (q->psubs > q->subs)
                    q->psubs = q->subs;
            }
        }
        confirm = expecting && e->confirm && head_is(f, e->confirm);
        oob = !confirm;
    } else if (f->kind == RESP_FRAME_PUSH) {
        oob = true;
    } else if (subscribed2 && f->type == '*' && is_message(f)) {
        oob = true;
    }
    if (q->frame_unsolicited)
        oob = true; /* e.g. a push arriving while nothing was due */
    if (oob || !e) {
        if (held)
            forward_held(q);
        drain_local(q); /* local replies that waited for this frame to end */
        return;
    }

    if (e->flags & REPLYQ_UNBOUNDED) {
        if (confirm) {
            forward_held(q);
            return;
        }
        if (f->is_error) {
            /* The argument-less UNSUBSCRIBE itself failed: the error is its reply. */
            drop_or_forward_held(q, e->flags & REPLYQ_SILENT);
            complete(q, true);
            return;
        }
        /* The first reply that is not a confirmation answers the marker after it. */
        complete(q, false);
        e = front(q);
        if (!e || q->stopped) {
            forward_held(q);
            return;
        }
    }

    switch ((enum replyq_kind)e->kind) {
    case REPLYQ_FORWARD:
        if (held)
            drop_or_forward_held(q, (e->flags & REPLYQ_SILENT) && !confirm);
        break;
    case REPLYQ_LOGIN:
    case REPLYQ_SWALLOW:
    case REPLYQ_REPLACE:
    case REPLYQ_TRANSFORM:
        if (!f->is_error && e->expected > 1)
            buf_reset(&q->hold); /* more replies due: this one is simply dropped */
        break;
    case REPLYQ_LOCAL:
        /* Only when a frame nobody asked for ends behind it: the frame goes out, then the
         * local replies that waited for it. */
        forward_held(q);
        drain_local(q);
        return;
    }
    if (f->is_error || e->expected <= 1)
        complete(q, f->is_error);
    else
        e->expected--;
}

/* The usual case, decided at once: a whole ordinary frame for a plain forwarded command at the
 * front (no flags, one reply, no local bytes), which cannot be a confirmation or a message (not
 * an array in RESP2 subscribed mode). frame_end would forward it and complete the entry; this
 * does the same without its questions. */
static bool plain_reply(const struct replyq *q, const struct resp_frame_info *end)
{
    if (q->frame_open || q->len == 0 || end->kind != RESP_FRAME_REPLY)
        return false;
    const struct replyq_entry *e = replyq_at((struct replyq *)q, 0);
    return e->kind == REPLYQ_FORWARD && e->flags == 0 && e->expected == 1 && e->local_len == 0 &&
           (end->type != '*' || q->proto != 2 || (q->subs == 0 && q->ssubs == 0));
}

int replyq_feed(struct replyq *q, const char *p, size_t n, const struct resp_frame_info *end)
{
    if (q->stopped)
        return 0;
    if (end && plain_reply(q, end)) {
        if (n)
            q->ops->write(q->owner, p, n);
        pop(q, false, end->is_error, NULL, 0);
        drain_local(q);
        return 0;
    }
    if (!q->frame_open) {
        q->frame_open = true;
        q->frame_held = must_hold(q);
        q->frame_unsolicited = q->len == 0;
    }
    if (q->frame_muted) {
        /* dropped as it arrives */
    } else if (q->frame_held) {
        if (buf_append(&q->hold, p, n) != 0)
            return -ENOMEM;
        struct replyq_entry *e = front(q);
        bool transform = e && e->kind == REPLYQ_TRANSFORM;
        if (!end && buf_len(&q->hold) > (transform ? TRANSFORM_MAX : HOLD_MAX)) {
            if ((transform || (e && (e->flags & REPLYQ_SILENT))) && !may_be_out_of_band(q)) {
                /* A silent command's big reply, or one too big to transform: dropped. */
                buf_reset(&q->hold);
                q->frame_held = false;
                q->frame_muted = true;
            } else {
                /* Dropped replies (+OK, +PONG, a short error) are small; a frame this big is
                 * an out-of-band message or a confirmation's neighbour: stream the rest. */
                forward_held(q);
                q->frame_held = false;
            }
        }
    } else if (n) {
        q->ops->write(q->owner, p, n);
    }
    if (end) {
        q->frame_open = false;
        frame_end(q, end);
        q->frame_muted = false;
        if (!q->frame_open && q->hold.cap > HOLD_MAX && buf_len(&q->hold) == 0)
            buf_free(&q->hold);
    }
    return 0;
}

bool replyq_fail(struct replyq *q, const char *err, size_t len)
{
    /* A reply that was half streamed cannot be completed: the client only gets the close. */
    bool midframe = q->frame_open && !q->frame_held && !q->frame_muted;
    buf_reset(&q->hold);
    q->frame_open = q->frame_muted = false;
    if (midframe) {
        q->stopped = true;
        while (q->len)
            pop(q, false, true, NULL, 0);
        return true;
    }
    while (q->len && !q->stopped) {
        struct replyq_entry *e = front(q);
        if (e->kind == REPLYQ_LOCAL) {
            pop(q, true, false, NULL, 0);
            continue;
        }
        /* Only entries the client is waiting on get the error: not what respguard injected. */
        bool waited = e->kind == REPLYQ_FORWARD || e->kind == REPLYQ_REPLACE || e->kind == REPLYQ_TRANSFORM ||
                      (e->kind == REPLYQ_LOGIN && e->local_len);
        if (waited && !(e->flags & REPLYQ_SILENT))
            q->ops->write(q->owner, err, len);
        pop(q, false, true, NULL, 0);
    }
    while (q->len) /* stopped by a CLOSE_AFTER on the way: the rest is never written */
        pop(q, false, true, NULL, 0);
    return false;
}
