/*
 * buf: a growable byte buffer with a read position, for connection input and output.
 *
 * Bytes live in data[start..end). Appending grows the allocation geometrically and never
 * shrinks it, so a connection reaches its working size once and then allocates nothing.
 * Consuming moves start; buf_compact moves the unread bytes to the front when that is cheap.
 * Header-only and pure.
 */
#ifndef RESPGUARD_BUF_H
#define RESPGUARD_BUF_H

#include <errno.h>
#include <stdlib.h>
#include <string.h>

struct buf {
    char *data;
    size_t start;
    size_t end;
    size_t cap;
};

static inline size_t buf_len(const struct buf *b) { return b->end - b->start; }
static inline char *buf_head(const struct buf *b) { return b->data + b->start; }
static inline char *buf_tail(const struct buf *b) { return b->data + b->end; }
static inline size_t buf_room(const struct buf *b) { return b->cap - b->end; }

/* Move unread bytes to the front. */
static inline void buf_compact(struct buf *b)
{
    if (b->start == 0)
        return;
    size_t n = buf_len(b);
    if (n)
        memmove(b->data, b->data + b->start, n);
    b->start = 0;
    b->end = n;
}

/* Make room for at least n more bytes after end. 0 or -ENOMEM. */
static inline int buf_reserve(struct buf *b, size_t n)
{
    if (buf_room(b) >= n)
        return 0;
    /* Reclaim consumed space first when it is enough and the move is small. */
    if (b->start && b->cap - buf_len(b) >= n && buf_len(b) <= 64 * 1024) {
        buf_compact(b);
        return 0;
    }
    size_t need = buf_len(b) + n;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < need)
        cap *= 2;
    if (b->start == 0 && cap == b->cap)
        return 0;
    char *d = malloc(cap);
    if (!d)
        return -ENOMEM;
    if (buf_len(b))
        memcpy(d, b->data + b->start, buf_len(b));
    free(b->data);
    b->end = buf_len(b);
    b->start = 0;
    b->data = d;
    b->cap = cap;
    return 0;
}

static inline int buf_append(struct buf *b, const void *p, size_t n)
{
    if (n == 0)
        return 0;
    int rc = buf_reserve(b, n);
    if (rc)
        return rc;
    memcpy(b->data + b->end, p, n);
    b->end += n;
    return 0;
}

static inline int buf_append_str(struct buf *b, const char *s) { return buf_append(b, s, strlen(s)); }

static inline void buf_consume(struct buf *b, size_t n)
{
    b->start += n;
    if (b->start >= b->end)
        b->start = b->end = 0;
}

static inline void buf_reset(struct buf *b) { b->start = b->end = 0; }

static inline void buf_free(struct buf *b)
{
    free(b->data);
    b->data = NULL;
    b->start = b->end = b->cap = 0;
}

#endif
