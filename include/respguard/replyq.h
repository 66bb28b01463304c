/*
 * replyq: one client's ordered reply queue.
 *
 * Every command a client sends becomes one entry, in order. An entry either waits for the
 * upstream's reply (or replies: SUBSCRIBE a b is answered twice) or carries respguard's own reply
 * bytes (a refusal, +OK for AUTH), which leave only when every entry before them is answered, so
 * a refusal takes its own place in a pipeline. The upstream's reply frames are fed in as they
 * arrive, in pieces; the queue streams them to the client, or holds back a frame that may have to
 * be dropped (the reply to a command respguard injected) until it ends.
 *
 * Frames that answer no command pass through without touching the queue: RESP3 pushes that are
 * not expected confirmations, and in RESP2 subscribed mode the message/pmessage/smessage arrays.
 * Subscribed mode is tracked from the counts in the confirmations themselves, so it ends exactly
 * where Redis ends it.
 *
 * Pure: bytes in, bytes out through the owner's callbacks; no socket, no loop, no clock. What it
 * must not do: write a reply out of order, or let a frame meant to be dropped reach the client.
 */
#ifndef RESPGUARD_REPLYQ_H
#define RESPGUARD_REPLYQ_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "respguard/buf.h"
#include "respguard/resp.h"

enum replyq_kind {
    REPLYQ_FORWARD, /* the upstream's reply goes to the client */
    REPLYQ_LOCAL,   /* respguard's reply: its bytes leave when the entry reaches the front */
    REPLYQ_SWALLOW, /* a command respguard injected: its reply is dropped */
    REPLYQ_LOGIN,   /* respguard's upstream login: the reply is dropped and reported to the
                       owner; the entry's local bytes (if any) are sent on success */
    REPLYQ_REPLACE, /* the upstream's reply is dropped and the local bytes are sent instead */
    REPLYQ_TRANSFORM, /* the upstream's reply is held whole and the owner's transform of it is
                         sent instead (a scoped INFO) */
};

enum replyq_flag {
    REPLYQ_PUBSUB = 1u << 0,      /* replies are confirmations named by entry.confirm (RESP3:
                                     pushes); other confirmations are not its replies */
    REPLYQ_UNBOUNDED = 1u << 1,   /* argument-less UNSUBSCRIBE: as many confirmations as there
                                     were subscriptions; the reply to the command queued right
                                     after it (a marker) ends them */
    REPLYQ_CLOSE_AFTER = 1u << 2, /* the owner closes the client once this reply is out */
    REPLYQ_SET_RESP2 = 1u << 3,   /* on success the connection speaks RESP2 (HELLO 2) */
    REPLYQ_SET_RESP3 = 1u << 4,   /* on success the connection speaks RESP3 (HELLO 3) */
    REPLYQ_RESET = 1u << 5,       /* RESET: on success subscriptions end and RESP2 is back */
    REPLYQ_SUBSCRIBE = 1u << 6,   /* a (P|S)SUBSCRIBE: counted as pending until answered */
    REPLYQ_SILENT = 1u << 7,      /* CLIENT REPLY OFF|SKIP: the client gets no reply to this
                                     command (errors included); pub/sub confirmations and
                                     out-of-band frames still pass, as in Redis */
};

struct replyq_entry {
    const char *confirm;/* REPLYQ_PUBSUB: the confirmations it expects, by their first element
                           ("subscribe", "punsubscribe", ...: the command's name) */
    uint8_t kind;       /* enum replyq_kind */
    uint8_t flags;      /* enum replyq_flag */
    uint8_t tag;        /* the owner's, reported back when the entry leaves */
    uint32_t expected;  /* upstream replies still due (0 for LOCAL) */
    uint32_t local_len; /* bytes of the queue's local buffer that belong to this entry */
    uint32_t seq;       /* the owner's */
    uint64_t t_in;      /* the owner's timestamps (latency) */
    uint64_t t_sent;
};

struct replyq_ops {
    /* Bytes for the client, in reply order. */
    void (*write)(void *owner, const char *p, size_t n);
    /* Entry e left the queue: its reply is complete and written (or dropped). error: the
     * upstream's reply was an error (or the upstream failed). reply/len: that reply's bytes when
     * the queue held it back (every kind but FORWARD; LOCAL: NULL); for LOGIN the owner learns
     * the outcome here. Called for LOCAL entries too, also for those written straight away. */
    void (*done)(void *owner, const struct replyq_entry *e, bool error, const char *reply, size_t len);
    /* TRANSFORM entries: write into out what the client gets instead of the upstream's reply
     * (reply/len; NULL when the reply was too big to hold). Called before done. */
    void (*transform)(void *owner, const struct replyq_entry *e, const char *reply, size_t len, struct buf *out);
};

struct replyq {
    const struct replyq_ops *ops;
    void *owner;
    struct replyq_entry *ring; /* power-of-two ring */
    size_t head, len, cap;
    size_t upstream_due;       /* entries waiting for the upstream (every kind but LOCAL) */
    struct buf local;          /* local reply bytes, in queue order */
    struct buf hold;           /* a frame held back until it ends */
    struct buf xform;          /* a TRANSFORM entry's replacement */
    bool frame_open;           /* a frame has begun and not ended */
    bool frame_held;           /* ... and is held in hold */
    bool frame_muted;          /* ... and is being dropped as it arrives (a silent reply, or one
                                  too big to transform) */
    bool frame_unsolicited;    /* ... and began with nothing due: it answers no command */
    bool stopped;              /* replyq_stop: the client is going, write nothing more */
    int proto;                 /* 2 or 3: what the upstream speaks at the current reply */
    long long subs, ssubs;     /* subscriptions (channels and patterns; shard channels), from
                                  the counts in the last confirmations */
    long long psubs;           /* of subs, the patterns (each confirmation changes one kind) */
    uint32_t pending_subscribes; /* subscribe entries not yet answered */
};

void replyq_init(struct replyq *q, const struct replyq_ops *ops, void *owner);
void replyq_deinit(struct replyq *q);

/* Queue an entry that waits for the upstream (kind is not LOCAL). local: bytes sent when it
 * succeeds (LOGIN: the client's answer to its login; REPLACE: the replacement). 0 or -ENOMEM. */
int replyq_expect(struct replyq *q, struct replyq_entry e, const char *local, size_t local_len)
    __attribute__((warn_unused_result));

/* respguard's own reply: written straight away when nothing is due before it and no frame is
 * half way out, else queued in its place. flags: REPLYQ_CLOSE_AFTER. 0 or -ENOMEM. */
int replyq_local(struct replyq *q, const char *bytes, size_t len, uint8_t flags, uint8_t tag)
    __attribute__((warn_unused_result));

/* A piece of the upstream's reply stream: bytes of one top-level frame; end is non-NULL when
 * the frame ends with this piece (the framer's description of it). 0 or -ENOMEM. */
int replyq_feed(struct replyq *q, const char *p, size_t n, const struct resp_frame_info *end)
    __attribute__((warn_unused_result));

/* The upstream connection is gone. Every entry that waits for it is answered with err (the
 * entries a client waits on: FORWARD, REPLACE, a LOGIN with local bytes) and local replies keep
 * their place. Returns true when a reply was half way out to the client: then nothing is
 * written, the queue is emptied, and the owner must close the client. */
bool replyq_fail(struct replyq *q, const char *err, size_t len);

/* Write nothing more (the client is closing). */
void replyq_stop(struct replyq *q);
/* An empty queue gives back its memory (allocated again by the next entry). */
void replyq_trim(struct replyq *q);

/* The i-th entry from the front (i < q->len). */
static inline struct replyq_entry *replyq_at(struct replyq *q, size_t i)
{
    return &q->ring[(q->head + i) & (q->cap - 1)];
}
/* The newest entry, or NULL. For the owner's stamps. */
static inline struct replyq_entry *replyq_back(struct replyq *q)
{
    return q->len ? replyq_at(q, q->len - 1) : NULL;
}

/* In subscribed mode, or about to be (a subscribe command not yet answered). */
bool replyq_subscribed(const struct replyq *q);

#endif
