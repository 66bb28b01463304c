/*
 * transport: a uv_tcp_t with optional TLS (through tlsconn's memory-BIO engine), buffered in and
 * out. It knows nothing of RESP or sessions: bytes in, bytes out, events to its owner.
 *
 * Writes are batched: transport_write only appends (encrypting on TLS) and transport_flush hands
 * the whole batch to one uv_write. Exactly one uv_write is in flight at a time, using two buffers
 * that swap, so the steady state allocates nothing.
 */
#include "respguard/transport.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <string.h>

#include "respguard/invariant.h"
#include "respguard/metrics.h"
#include "respguard/tlsconn.h"

#define READ_CHUNK (64 * 1024)
#define CIPHER_CHUNK (64 * 1024)
/* An idle buffer larger than this (left over from one big value) is given back. */
#define SHRINK_ABOVE (256 * 1024)

static void emit(struct transport *t, enum transport_event ev, const char *reason)
{
    t->cb(t, ev, reason);
}

static void fail(struct transport *t, const char *reason)
{
    if (t->quiet) {
        if (!t->deferred_error)
            t->deferred_error = reason; /* emitted by the next flush (transport_flush_quiet) */
        return;
    }
    if (t->closing) {
        /* Closing after a last reply that can no longer leave: nothing will ever finish that
         * flush (reading has stopped, so not even the peer's reset is seen). Close now. */
        if (t->close_when_flushed)
            transport_close(t);
        return;
    }
    emit(t, TRANSPORT_ERROR, reason);
}

int transport_init(struct transport *t, uv_loop_t *loop, transport_event_cb cb, void *owner)
{
    memset(t, 0, sizeof *t);
    t->cb = cb;
    t->owner = owner;
    t->handshake_done = true;
    int rc = uv_tcp_init(loop, &t->tcp);
    t->tcp.data = t;
    return rc;
}

/* Move ciphertext the TLS engine produced into out. */
static void take_cipher(struct transport *t)
{
    size_t n;
    while ((n = tlsconn_pending_out(t->tls)) > 0) {
        if (buf_reserve(&t->out, n) != 0) {
            fail(t, "out of memory");
            return;
        }
        t->out.end += tlsconn_take(t->tls, buf_tail(&t->out), buf_room(&t->out));
    }
}

static void on_write(uv_write_t *req, int status);

/* TLS: encrypt the staged plaintext as one batch of records. False when the engine failed. */
static bool encrypt_hold(struct transport *t)
{
    if (!t->tls || !t->handshake_done || buf_len(&t->hold) == 0)
        return true;
    /* In slices, taking the ciphertext after each, so the engine's memory BIO never grows
     * beyond one slice whatever the size of a value. */
    size_t len = buf_len(&t->hold);
    for (size_t off = 0; off < len; off += CIPHER_CHUNK) {
        size_t n = len - off < CIPHER_CHUNK ? len - off : CIPHER_CHUNK;
        if (tlsconn_write(t->tls, buf_head(&t->hold) + off, n) != TLSCONN_OK) {
            fail(t, tlsconn_error(t->tls));
            return false;
        }
        take_cipher(t);
    }
    buf_reset(&t->hold);
    if (t->hold.cap > SHRINK_ABOVE)
        buf_free(&t->hold);
    return true;
}

static void maybe_finish_close(struct transport *t);

/* Hand what is queued to the socket: first directly (uv_try_write: no request and no callback,
 * and none of the epoll_ctl that libuv 1.44 issues after every completed uv_write, which would
 * be one more system call per reply), then whatever the socket did not take with one uv_write.
 * notify: emit TRANSPORT_DRAINED when the direct write took everything (otherwise the write
 * callback emits it); the write callback itself and the transport's own flushes do not.
 * plaintext: encrypt the staged plaintext first; a flush of TLS records the engine made by itself
 * while reading (tickets, key updates) leaves the owner's plaintext for the owner's flush, so that
 * commands leave when their owner says. */
static void flush_out(struct transport *t, bool notify, bool plaintext)
{
    if (t->deferred_error) {
        if (!t->quiet) {
            const char *reason = t->deferred_error;
            t->deferred_error = NULL;
            fail(t, reason);
        }
        return;
    }
    if (!t->tcp_connected)
        return;
    if (plaintext && !encrypt_hold(t))
        return;
    if (t->writing || buf_len(&t->out) == 0)
        return;
    if (t->closing && !t->close_when_flushed)
        return;
    size_t len = buf_len(&t->out);
    uv_buf_t direct = uv_buf_init(buf_head(&t->out), len > UINT32_MAX ? UINT32_MAX : (unsigned)len);
    int n = uv_try_write((uv_stream_t *)&t->tcp, &direct, 1);
    if (n > 0 && (size_t)n == len) {
        buf_reset(&t->out);
        if (t->out.cap > SHRINK_ABOVE)
            buf_free(&t->out);
        if (t->close_when_flushed)
            maybe_finish_close(t);
        else if (notify && !t->closing)
            emit(t, TRANSPORT_DRAINED, NULL);
        return;
    }
    if (n > 0) {
        buf_consume(&t->out, (size_t)n);
    } else if (n != UV_EAGAIN) {
        fail(t, uv_strerror(n));
        return;
    }
    /* Swap: out becomes the in-flight buffer; the old in-flight buffer (empty) takes new bytes. */
    RG_INVARIANT(buf_len(&t->inflight) == 0);
    struct buf tmp = t->inflight;
    t->inflight = t->out;
    t->out = tmp;
    buf_reset(&t->out);
    uv_buf_t b = uv_buf_init(buf_head(&t->inflight), 0);
    b.len = buf_len(&t->inflight); /* uv_buf_init takes an unsigned int; a batch may pass 4 GiB */
    int rc = uv_write(&t->write_req, (uv_stream_t *)&t->tcp, &b, 1, on_write);
    if (rc < 0) {
        buf_reset(&t->inflight);
        fail(t, uv_strerror(rc));
        return;
    }
    t->writing = true;
}

static void flush(struct transport *t, bool notify) { flush_out(t, notify, true); }

void transport_flush(struct transport *t) { flush(t, true); }

void transport_flush_quiet(struct transport *t)
{
    if (t->closing)
        return;
    t->quiet = true;
    flush(t, false);
    t->quiet = false;
}

static void on_write(uv_write_t *req, int status)
{
    struct transport *t = req->handle->data;
    RG_INVARIANT(t->writing); /* one write in flight per connection */
    t->writing = false;
    buf_reset(&t->inflight);
    if (t->inflight.cap > SHRINK_ABOVE)
        buf_free(&t->inflight); /* the two output buffers swap: both shrink in turn */
    if (status < 0) {
        if (status != UV_ECANCELED)
            fail(t, uv_strerror(status));
        return;
    }
    flush(t, false);
    if (t->close_when_flushed) {
        maybe_finish_close(t);
        return;
    }
    if (!t->closing)
        emit(t, TRANSPORT_DRAINED, NULL);
}

void transport_write(struct transport *t, const void *data, size_t len)
{
    if (t->closing || len == 0)
        return;
    /* TLS plaintext is staged in hold and encrypted per flush, so a batch of replies or a
     * pipeline becomes full-size records rather than one record per command (Redis reads one
     * record per event-loop turn, so small records would serialise a pipeline). Until the
     * connection is up (and for TLS, verified) bytes wait there too: nothing may leave before
     * the engine that must encrypt it exists. */
    struct buf *dst = (t->tls || !t->tcp_connected) ? &t->hold : &t->out;
    if (buf_append(dst, data, len) != 0) {
        fail(t, "out of memory");
        return;
    }
    if (t->bytes_out_counter)
        metrics_add(t->bytes_out_counter, len);
}

size_t transport_pending(const struct transport *t)
{
    return buf_len(&t->out) + buf_len(&t->inflight) + buf_len(&t->hold);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *out)
{
    struct transport *t = h->data;
    (void)suggested;
    if (t->tls) {
        if (!t->cipher) {
            t->cipher = malloc(CIPHER_CHUNK);
            t->cipher_cap = t->cipher ? CIPHER_CHUNK : 0;
        }
        *out = uv_buf_init(t->cipher, (unsigned)t->cipher_cap);
        return;
    }
    if (buf_reserve(&t->in, READ_CHUNK) != 0) {
        *out = uv_buf_init(NULL, 0); /* libuv reports UV_ENOBUFS */
        return;
    }
    *out = uv_buf_init(buf_tail(&t->in), (unsigned)buf_room(&t->in));
}

/* Drive the TLS engine after ciphertext arrived: handshake, then decrypt into in. Returns true
 * when new plaintext was produced. */
static bool tls_pump(struct transport *t, bool *eof)
{
    if (!t->handshake_done) {
        enum tlsconn_status st = tlsconn_handshake(t->tls);
        take_cipher(t);
        if (st == TLSCONN_ERROR) {
            flush(t, false); /* let the alert reach the peer */
            fail(t, tlsconn_error(t->tls));
            return false;
        }
        if (!tlsconn_handshake_done(t->tls)) {
            flush(t, false);
            return false;
        }
        t->handshake_done = true;
        flush(t, false); /* what waited for the handshake leaves now */
        emit(t, TRANSPORT_CONNECTED, NULL);
        if (t->closing)
            return false;
    }
    bool got = false;
    for (;;) {
        if (buf_reserve(&t->in, 16 * 1024) != 0) {
            fail(t, "out of memory");
            return got;
        }
        size_t n = 0;
        enum tlsconn_status st = tlsconn_read(t->tls, buf_tail(&t->in), buf_room(&t->in), &n);
        t->in.end += n;
        got |= n > 0;
        if (t->bytes_in_counter)
            metrics_add(t->bytes_in_counter, n);
        if (st == TLSCONN_OK && n > 0)
            continue;
        if (st == TLSCONN_CLOSED)
            *eof = true;
        else if (st == TLSCONN_ERROR) {
            take_cipher(t);
            flush(t, false);
            fail(t, tlsconn_error(t->tls));
            return false;
        }
        break;
    }
    /* Reading may have produced records to send (key updates, session tickets). */
    take_cipher(t);
    flush_out(t, false, false);
    return got;
}

void transport_trim(struct transport *t)
{
    if (t->closing)
        return;
    if (buf_len(&t->in) == 0)
        buf_free(&t->in);
    if (!t->writing) {
        if (buf_len(&t->out) == 0)
            buf_free(&t->out);
        buf_free(&t->inflight);
    }
    if (buf_len(&t->hold) == 0)
        buf_free(&t->hold);
    if (t->tls) {
        free(t->cipher); /* only used inside a read: allocated again by the next one */
        t->cipher = NULL;
        t->cipher_cap = 0;
        tlsconn_trim(t->tls);
    }
}

void transport_shrink_input(struct transport *t)
{
    if (!t->closing && buf_len(&t->in) == 0 && t->in.cap > SHRINK_ABOVE)
        buf_free(&t->in);
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *b)
{
    struct transport *t = s->data;
    (void)b;
    if (t->closing)
        return;
    if (nread == 0)
        return; /* EAGAIN: nothing to do */
    if (nread < 0) {
        if (nread == UV_EOF)
            emit(t, TRANSPORT_EOF, NULL);
        else
            fail(t, uv_strerror((int)nread));
        return;
    }
    if (!t->tls) {
        t->in.end += (size_t)nread;
        if (t->bytes_in_counter)
            metrics_add(t->bytes_in_counter, (uint64_t)nread);
        emit(t, TRANSPORT_DATA, NULL);
        transport_shrink_input(t);
        return;
    }
    tlsconn_feed(t->tls, t->cipher, (size_t)nread);
    bool eof = false;
    bool got = tls_pump(t, &eof);
    if (t->closing)
        return;
    if (got) {
        emit(t, TRANSPORT_DATA, NULL);
        transport_shrink_input(t);
    }
    if (eof && !t->closing)
        emit(t, TRANSPORT_EOF, NULL);
}

static int start_reading(struct transport *t)
{
    t->reading = true;
    return uv_read_start((uv_stream_t *)&t->tcp, on_alloc, on_read);
}

int transport_accept(struct transport *t, uv_stream_t *server, struct tlsconn_ctx *tls_ctx)
{
    int rc = uv_accept(server, (uv_stream_t *)&t->tcp);
    if (rc < 0)
        return rc;
    uv_tcp_nodelay(&t->tcp, 1);
    if (tls_ctx) {
        t->tls = tlsconn_new_server(tls_ctx);
        if (!t->tls)
            return UV_ENOMEM;
        t->handshake_done = false;
    }
    t->tcp_connected = true; /* only now: before, a write could not know it must be encrypted */
    return start_reading(t);
}

static void on_connect(uv_connect_t *req, int status)
{
    struct transport *t = req->handle->data;
    if (t->closing)
        return;
    if (status < 0) {
        fail(t, uv_strerror(status));
        return;
    }
    t->tcp_connected = true;
    uv_tcp_nodelay(&t->tcp, 1);
    int rc = start_reading(t);
    if (rc < 0) {
        fail(t, uv_strerror(rc));
        return;
    }
    if (!t->tls) {
        if (buf_len(&t->hold)) {
            if (buf_append(&t->out, buf_head(&t->hold), buf_len(&t->hold)) != 0) {
                fail(t, "out of memory");
                return;
            }
            buf_reset(&t->hold);
            flush(t, false);
        }
        emit(t, TRANSPORT_CONNECTED, NULL);
        return;
    }
    /* Client speaks first: send the ClientHello now. */
    if (tlsconn_handshake(t->tls) == TLSCONN_ERROR) {
        fail(t, tlsconn_error(t->tls));
        return;
    }
    take_cipher(t);
    flush(t, false);
}

int transport_connect(struct transport *t, const struct sockaddr *addr, struct tlsconn_ctx *tls_ctx,
                      const char *verify_name, struct tlsconn_resume *resume)
{
    t->is_client = true;
    if (tls_ctx) {
        t->tls = tlsconn_new_client(tls_ctx, verify_name, resume);
        if (!t->tls)
            return UV_ENOMEM;
        t->handshake_done = false;
    }
    return uv_tcp_connect(&t->connect_req, &t->tcp, addr, on_connect);
}

void transport_pause(struct transport *t)
{
    if (t->reading && !t->closing) {
        uv_read_stop((uv_stream_t *)&t->tcp);
        t->reading = false;
    }
}

void transport_resume(struct transport *t)
{
    if (!t->reading && !t->closing) {
        if (start_reading(t) < 0)
            t->reading = false;
    }
}

static void on_close(uv_handle_t *h)
{
    struct transport *t = h->data;
    if (t->tls) {
        tlsconn_free(t->tls);
        t->tls = NULL;
    }
    free(t->cipher);
    t->cipher = NULL;
    buf_free(&t->in);
    buf_free(&t->out);
    buf_free(&t->inflight);
    buf_free(&t->hold);
    emit(t, TRANSPORT_CLOSED, NULL);
}

void transport_close(struct transport *t)
{
    if (t->closing && !t->close_when_flushed)
        return;
    t->closing = true;
    t->close_when_flushed = false;
    t->reading = false;
    if (!uv_is_closing((uv_handle_t *)&t->tcp))
        uv_close((uv_handle_t *)&t->tcp, on_close);
}

static void maybe_finish_close(struct transport *t)
{
    if (!t->writing && buf_len(&t->out) == 0)
        transport_close(t);
}

void transport_close_when_flushed(struct transport *t)
{
    if (t->closing)
        return;
    if (t->reading) {
        uv_read_stop((uv_stream_t *)&t->tcp);
        t->reading = false;
    }
    t->closing = true;
    t->close_when_flushed = true;
    /* The last replies are encrypted before the close_notify that must follow them. */
    if (!encrypt_hold(t) || !t->close_when_flushed)
        return;
    if (t->tls && t->handshake_done) {
        tlsconn_shutdown(t->tls);
        take_cipher(t);
    }
    flush(t, false);
    if (t->close_when_flushed)
        maybe_finish_close(t);
}
