/*
 * tlsconn.c: OpenSSL contexts and a per-connection TLS engine over memory BIOs.
 *
 * Job: build client and server SSL_CTXs with the project's fixed policy (TLS 1.2 minimum,
 * no renegotiation, no compression, clients always verify chain and name) and run one
 * connection's TLS state machine on bytes: ciphertext in through tlsconn_feed(), ciphertext
 * out through tlsconn_take(), plaintext through tlsconn_read()/tlsconn_write().
 *
 * Must not: touch a socket or an event loop, log, keep mutable globals, or leave anything on
 * the thread's OpenSSL error queue. Every function that may make OpenSSL push errors clears
 * the queue before it returns, after copying the first error into the connection's (or the
 * caller's) error buffer, so one connection's failure never shows up as another's reason.
 *
 * Lifetime: a struct tlsconn holds its own reference to the SSL_CTX (through SSL_new), so a
 * context may be freed (e.g. swapped out on reload) while connections made from it live on.
 */
#include "respguard/tlsconn.h"

#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

/* Error texts are short; OpenSSL's own ERR_error_string_n needs at least 256 bytes. */
#define TLSCONN_ERRLEN 320

/* Session id context for server contexts: needed so that resumption works when client
 * certificates are requested (otherwise OpenSSL refuses resumed sessions). */
static const unsigned char session_id_ctx[] = "respguard";

struct tlsconn_ctx {
    SSL_CTX *ssl_ctx;
    bool server;
};

/* One slot: the newest session an upstream server handed out, offered by the next connection
 * (see tlsconn.h). The SSL of a connection made with it points here (app data) so that
 * on_new_session can fill it. */
struct tlsconn_resume {
    SSL_SESSION *session; /* a copy: the connection's own is spoiled when it ends abruptly */
    char name[256];       /* the verify name it was made under ("": none yet) */
};

struct tlsconn {
    SSL *ssl;
    BIO *rbio;        /* ciphertext from the peer; owned by ssl */
    BIO *wbio;        /* ciphertext to the peer; owned by ssl */
    bool done;        /* handshake completed */
    bool failed;      /* fatal error seen; err says why, all further I/O is refused */
    bool closed;      /* peer's close_notify received */
    bool starved;     /* last SSL call wanted input and nothing was fed since */
    char err[TLSCONN_ERRLEN];
};

/* ---- error text -------------------------------------------------------------------- */

/* Write prefix (may be NULL) and the first error on the OpenSSL queue into buf, then clear
 * the queue. fallback is used when the queue is empty. */
static void take_queue_error(char *buf, size_t cap, const char *prefix, const char *fallback)
{
    const char *data = NULL;
    int flags = 0;
    unsigned long e;
    char text[256];

    if (buf == NULL || cap == 0) {
        ERR_clear_error();
        return;
    }
    e = ERR_get_error_all(NULL, NULL, NULL, &data, &flags);
    if (e == 0) {
        snprintf(text, sizeof(text), "%s", fallback);
    } else {
        ERR_error_string_n(e, text, sizeof(text));
    }
    /* Extra data ("calling fopen(/x, r)", "Expecting: CERTIFICATE") makes file errors
     * precise; only string data is meaningful. */
    if (e != 0 && (flags & ERR_TXT_STRING) && data != NULL && data[0] != '\0') {
        snprintf(buf, cap, "%s%s%s (%s)", prefix ? prefix : "", prefix ? ": " : "", text, data);
    } else {
        snprintf(buf, cap, "%s%s%s", prefix ? prefix : "", prefix ? ": " : "", text);
    }
    ERR_clear_error();
}

static void set_err(char *buf, size_t cap, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void set_err(char *buf, size_t cap, const char *fmt, ...)
{
    va_list ap;

    if (buf == NULL || cap == 0) {
        return;
    }
    va_start(ap, fmt);
    vsnprintf(buf, cap, fmt, ap);
    va_end(ap);
}

/* Record a fatal failure of an SSL I/O call that returned ret. A failed certificate
 * verification wins over the generic "certificate verify failed" on the queue because it
 * names the reason. */
static void fail(struct tlsconn *t, int ret)
{
    int code = SSL_get_error(t->ssl, ret);
    long vr = SSL_get_verify_result(t->ssl);

    if (vr != X509_V_OK) {
        set_err(t->err, sizeof(t->err), "certificate verify failed: %s",
                X509_verify_cert_error_string(vr));
        ERR_clear_error();
    } else if (code == SSL_ERROR_SYSCALL && ERR_peek_error() == 0) {
        /* Memory BIOs have no errno; this means the BIO failed (allocation). */
        set_err(t->err, sizeof(t->err), "TLS transport failure (out of memory?)");
    } else {
        char fallback[64];

        snprintf(fallback, sizeof(fallback), "TLS failure (SSL_get_error %d)", code);
        take_queue_error(t->err, sizeof(t->err), NULL, fallback);
    }
    t->failed = true;
}

/* ---- contexts ---------------------------------------------------------------------- */

/* Never prompt on the terminal for a key pass phrase: an encrypted key is a config error. */
static int no_passphrase_cb(char *buf, int size, int rwflag, void *userdata)
{
    (void)buf;
    (void)size;
    (void)rwflag;
    (void)userdata;
    return -1;
}

static SSL_CTX *ctx_base(const SSL_METHOD *method, char *err, size_t errlen)
{
    SSL_CTX *c;

    ERR_clear_error();
    c = SSL_CTX_new(method);
    if (c == NULL) {
        take_queue_error(err, errlen, "cannot create TLS context", "out of memory");
        return NULL;
    }
    if (SSL_CTX_set_min_proto_version(c, TLS1_2_VERSION) != 1) {
        take_queue_error(err, errlen, "cannot set TLS 1.2 minimum", "unknown error");
        SSL_CTX_free(c);
        return NULL;
    }
    SSL_CTX_set_options(c, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION);
    /* Partial writes stay off: tlsconn_write() accepts everything, and the buffer may move
     * between retries. SSL_MODE_RELEASE_BUFFERS stays off too: it frees the record buffers
     * whenever they empty, which on a busy connection means a 16 KB malloc and free per
     * record (measured: 8 allocations per proxied command). */
    SSL_CTX_clear_mode(c, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_RELEASE_BUFFERS);
    SSL_CTX_set_mode(c, SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    SSL_CTX_set_default_passwd_cb(c, no_passphrase_cb);
    return c;
}

static struct tlsconn_ctx *ctx_wrap(SSL_CTX *c, bool server, char *err, size_t errlen)
{
    struct tlsconn_ctx *ctx = calloc(1, sizeof(*ctx));

    if (ctx == NULL) {
        set_err(err, errlen, "out of memory");
        SSL_CTX_free(c);
        return NULL;
    }
    ctx->ssl_ctx = c;
    ctx->server = server;
    return ctx;
}

/* A server handed this connection a session (TLS 1.3: a ticket after the handshake). Keep it in
 * the connection's resume slot, if it has one; returning 1 takes OpenSSL's reference. */
static int on_new_session(SSL *ssl, SSL_SESSION *session)
{
    struct tlsconn_resume *r = SSL_get_app_data(ssl);
    SSL_SESSION *copy;

    if (r == NULL || !SSL_SESSION_is_resumable(session)) {
        return 0;
    }
    /* A copy: OpenSSL marks a connection's session not resumable when the connection is freed
     * without a close_notify, which is how upstream connections end. */
    copy = SSL_SESSION_dup(session);
    if (copy == NULL) {
        ERR_clear_error();
        return 0;
    }
    SSL_SESSION_free(r->session);
    r->session = copy;
    return 0; /* OpenSSL keeps (and frees) the original */
}

struct tlsconn_ctx *tlsconn_ctx_new_client(const char *ca_file, char *err, size_t errlen)
{
    SSL_CTX *c = ctx_base(TLS_client_method(), err, errlen);

    if (c == NULL) {
        return NULL;
    }
    SSL_CTX_set_verify(c, SSL_VERIFY_PEER, NULL);
    /* Resumption: sessions are kept by their owner's resume slot, never in a cache inside the
     * context (which several threads may share). */
    SSL_CTX_set_session_cache_mode(c, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
    SSL_CTX_sess_set_new_cb(c, on_new_session);
    if (ca_file != NULL) {
        if (SSL_CTX_load_verify_locations(c, ca_file, NULL) != 1) {
            char prefix[1024];

            snprintf(prefix, sizeof(prefix), "cannot load CA file %s", ca_file);
            take_queue_error(err, errlen, prefix, "no certificate found");
            SSL_CTX_free(c);
            return NULL;
        }
    } else if (SSL_CTX_set_default_verify_paths(c) != 1) {
        take_queue_error(err, errlen, "cannot load the system trust store", "unknown error");
        SSL_CTX_free(c);
        return NULL;
    }
    ERR_clear_error();
    return ctx_wrap(c, false, err, errlen);
}

struct tlsconn_ctx *tlsconn_ctx_new_server(const char *cert_file, const char *key_file,
                                           const char *client_ca_file, char *err, size_t errlen)
{
    char prefix[1024];
    SSL_CTX *c;

    if (cert_file == NULL || key_file == NULL) {
        set_err(err, errlen, "a TLS listener needs cert_file and key_file");
        return NULL;
    }
    c = ctx_base(TLS_server_method(), err, errlen);
    if (c == NULL) {
        return NULL;
    }
    if (SSL_CTX_use_certificate_chain_file(c, cert_file) != 1) {
        snprintf(prefix, sizeof(prefix), "cannot load certificate chain %s", cert_file);
        goto fail_queue;
    }
    if (SSL_CTX_use_PrivateKey_file(c, key_file, SSL_FILETYPE_PEM) != 1) {
        /* OpenSSL 3 already compares the key with the certificate here. */
        unsigned long e = ERR_peek_error();

        if (ERR_GET_LIB(e) == ERR_LIB_X509 && ERR_GET_REASON(e) == X509_R_KEY_VALUES_MISMATCH) {
            snprintf(prefix, sizeof(prefix), "private key %s does not match certificate %s",
                     key_file, cert_file);
        } else {
            snprintf(prefix, sizeof(prefix), "cannot load private key %s", key_file);
        }
        goto fail_queue;
    }
    if (SSL_CTX_check_private_key(c) != 1) {
        snprintf(prefix, sizeof(prefix), "private key %s does not match certificate %s",
                 key_file, cert_file);
        goto fail_queue;
    }
    if (SSL_CTX_set_session_id_context(c, session_id_ctx, sizeof(session_id_ctx) - 1) != 1) {
        snprintf(prefix, sizeof(prefix), "cannot set session id context");
        goto fail_queue;
    }
    if (client_ca_file != NULL) {
        STACK_OF(X509_NAME) *names;

        if (SSL_CTX_load_verify_locations(c, client_ca_file, NULL) != 1) {
            snprintf(prefix, sizeof(prefix), "cannot load client CA file %s", client_ca_file);
            goto fail_queue;
        }
        names = SSL_load_client_CA_file(client_ca_file);
        if (names == NULL) {
            snprintf(prefix, sizeof(prefix), "no CA names in client CA file %s",
                     client_ca_file);
            goto fail_queue;
        }
        SSL_CTX_set_client_CA_list(c, names); /* takes ownership */
        SSL_CTX_set_verify(c, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
    } else {
        SSL_CTX_set_verify(c, SSL_VERIFY_NONE, NULL);
    }
    ERR_clear_error();
    return ctx_wrap(c, true, err, errlen);

fail_queue:
    take_queue_error(err, errlen, prefix, "unknown error");
    SSL_CTX_free(c);
    return NULL;
}

void tlsconn_ctx_free(struct tlsconn_ctx *ctx)
{
    if (ctx == NULL) {
        return;
    }
    SSL_CTX_free(ctx->ssl_ctx); /* live connections keep their own reference */
    free(ctx);
}

int tlsconn_cert_file_expiry(const char *cert_file, long long *seconds_left)
{
    BIO *bio;
    X509 *x = NULL;
    int day = 0, sec = 0;
    int rc = -1;

    if (cert_file == NULL || seconds_left == NULL) {
        return -1;
    }
    ERR_clear_error();
    bio = BIO_new_file(cert_file, "r");
    if (bio != NULL) {
        x = PEM_read_bio_X509(bio, NULL, no_passphrase_cb, NULL);
        BIO_free(bio);
    }
    /* The first certificate in a chain file is the leaf, the one that matters. NULL "from"
     * means now. */
    if (x != NULL && ASN1_TIME_diff(&day, &sec, NULL, X509_get0_notAfter(x)) == 1) {
        *seconds_left = (long long)day * 86400 + sec;
        rc = 0;
    }
    X509_free(x);
    ERR_clear_error();
    return rc;
}

/* ---- ciphertext queues ------------------------------------------------------------- */

/* The engine's two BIOs: a plain byte queue each. OpenSSL's memory BIO zeroes every byte it is
 * given before it copies it in (BUF_MEM_grow_clean), on every record of every connection; this
 * one only copies. Otherwise it behaves as a memory BIO with an EOF return of -1: writes always
 * succeed (or fail for memory), and an empty queue means "retry later", never EOF. */
struct byteq {
    char *data;
    size_t start, end, cap;
};

static int byteq_write(BIO *b, const char *in, int len)
{
    struct byteq *q = BIO_get_data(b);
    BIO_clear_retry_flags(b);
    if (len <= 0)
        return 0;
    size_t n = (size_t)len;
    if (q->cap - q->end < n && q->start > 0) {
        memmove(q->data, q->data + q->start, q->end - q->start);
        q->end -= q->start;
        q->start = 0;
    }
    if (q->cap - q->end < n) {
        size_t cap = q->cap ? q->cap : 4096;
        while (cap - q->end < n)
            cap *= 2;
        char *d = realloc(q->data, cap);
        if (d == NULL)
            return -1;
        q->data = d;
        q->cap = cap;
    }
    memcpy(q->data + q->end, in, n);
    q->end += n;
    return len;
}

static int byteq_read(BIO *b, char *out, int len)
{
    struct byteq *q = BIO_get_data(b);
    BIO_clear_retry_flags(b);
    size_t n = q->end - q->start;
    if (n == 0) {
        BIO_set_retry_read(b);
        return -1;
    }
    if (len <= 0)
        return 0;
    if (n > (size_t)len)
        n = (size_t)len;
    memcpy(out, q->data + q->start, n);
    q->start += n;
    if (q->start == q->end)
        q->start = q->end = 0;
    return (int)n;
}

static long byteq_ctrl(BIO *b, int cmd, long num, void *ptr)
{
    (void)num;
    (void)ptr;
    struct byteq *q = BIO_get_data(b);
    switch (cmd) {
    case BIO_CTRL_PENDING: return (long)(q->end - q->start);
    case BIO_CTRL_EOF: return q->end == q->start;
    case BIO_CTRL_FLUSH: return 1;
    case BIO_CTRL_RESET: q->start = q->end = 0; return 1;
    default: return 0; /* WPENDING and the rest, as the memory BIO */
    }
}

static int byteq_create(BIO *b)
{
    struct byteq *q = calloc(1, sizeof *q);
    if (q == NULL)
        return 0;
    BIO_set_data(b, q);
    BIO_set_init(b, 1);
    return 1;
}

static int byteq_destroy(BIO *b)
{
    struct byteq *q = BIO_get_data(b);
    if (q != NULL) {
        free(q->data);
        free(q);
    }
    BIO_set_data(b, NULL);
    return 1;
}

/* An empty queue gives its memory back (an idle connection keeps none). */
static void byteq_trim(BIO *b)
{
    struct byteq *q = BIO_get_data(b);
    if (q != NULL && q->start == q->end && q->data != NULL) {
        free(q->data);
        q->data = NULL;
        q->start = q->end = q->cap = 0;
    }
}

static BIO_METHOD *byteq_method;
static pthread_once_t byteq_once = PTHREAD_ONCE_INIT;

static void byteq_method_init(void)
{
    BIO_METHOD *m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "respguard byte queue");
    if (m == NULL || !BIO_meth_set_write(m, byteq_write) || !BIO_meth_set_read(m, byteq_read) ||
        !BIO_meth_set_ctrl(m, byteq_ctrl) || !BIO_meth_set_create(m, byteq_create) ||
        !BIO_meth_set_destroy(m, byteq_destroy)) {
        BIO_meth_free(m);
        return; /* byteq_new fails: conn_new reports no memory */
    }
    byteq_method = m;
}

static BIO *byteq_new(void)
{
    pthread_once(&byteq_once, byteq_method_init);
    return byteq_method ? BIO_new(byteq_method) : NULL;
}

/* ---- connections ------------------------------------------------------------------- */

static struct tlsconn *conn_new(struct tlsconn_ctx *ctx)
{
    struct tlsconn *t = calloc(1, sizeof(*t));

    if (t == NULL) {
        return NULL;
    }
    snprintf(t->err, sizeof(t->err), "no error");
    ERR_clear_error();
    t->ssl = SSL_new(ctx->ssl_ctx);
    t->rbio = byteq_new();
    t->wbio = byteq_new();
    if (t->ssl == NULL || t->rbio == NULL || t->wbio == NULL) {
        BIO_free(t->rbio);
        BIO_free(t->wbio);
        SSL_free(t->ssl);
        free(t);
        ERR_clear_error();
        return NULL;
    }
    /* An empty read BIO means "retry later", never EOF (byteq_read): the socket's EOF is the
     * caller's business (and a TLS stream without close_notify is a truncation it must treat
     * so). */
    SSL_set_bio(t->ssl, t->rbio, t->wbio); /* ssl owns both from here */
    return t;
}

/* Copy verify_name into out without IPv6 brackets and without one trailing dot (DNS
 * root); false when it is empty or too long for SNI (255 bytes). */
static bool normalize_name(const char *name, char *out, size_t cap)
{
    size_t len = strlen(name);

    if (len >= 2 && name[0] == '[' && name[len - 1] == ']') {
        name++;
        len -= 2;
    }
    if (len > 0 && name[len - 1] == '.') {
        len--;
    }
    if (len == 0 || len >= cap || len > 255) {
        return false;
    }
    memcpy(out, name, len);
    out[len] = '\0';
    return true;
}

static bool is_ip_literal(const char *name)
{
    ASN1_OCTET_STRING *ip = a2i_IPADDRESS(name); /* IPv4 or IPv6 */

    if (ip == NULL) {
        return false;
    }
    ASN1_OCTET_STRING_free(ip);
    return true;
}

struct tlsconn_resume *tlsconn_resume_new(void)
{
    return calloc(1, sizeof(struct tlsconn_resume));
}

void tlsconn_resume_forget(struct tlsconn_resume *r)
{
    if (r != NULL) {
        SSL_SESSION_free(r->session);
        r->session = NULL;
    }
}

void tlsconn_resume_free(struct tlsconn_resume *r)
{
    tlsconn_resume_forget(r);
    free(r);
}

bool tlsconn_resumed(const struct tlsconn *t)
{
    return t->done && SSL_session_reused(t->ssl) == 1;
}

struct tlsconn *tlsconn_new_client(struct tlsconn_ctx *ctx, const char *verify_name, struct tlsconn_resume *resume)
{
    char name[256];
    struct tlsconn *t;
    bool ok;

    /* Verification is never optional: no name, no connection. */
    if (ctx == NULL || ctx->server || verify_name == NULL ||
        !normalize_name(verify_name, name, sizeof(name))) {
        return NULL;
    }
    t = conn_new(ctx);
    if (t == NULL) {
        return NULL;
    }
    if (is_ip_literal(name)) {
        /* IP literals are matched against iPAddress SANs and never sent as SNI
         * (RFC 6066 section 3 forbids literal addresses there). */
        ok = X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(t->ssl), name) == 1;
    } else {
        SSL_set_hostflags(t->ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
        ok = SSL_set1_host(t->ssl, name) == 1 &&
             SSL_set_tlsext_host_name(t->ssl, name) == 1;
    }
    ERR_clear_error();
    if (ok && resume != NULL) {
        SSL_set_app_data(t->ssl, resume);
        /* A session made under this name (it was verified then) may be resumed; one made under
         * another name is dropped, never offered: resuming skips the certificate check. */
        if (strcmp(resume->name, name) != 0) {
            tlsconn_resume_forget(resume);
            snprintf(resume->name, sizeof(resume->name), "%s", name);
        }
        if (resume->session != NULL && SSL_SESSION_is_resumable(resume->session)) {
            ok = SSL_set_session(t->ssl, resume->session) == 1;
        }
    }
    ERR_clear_error();
    if (!ok) {
        tlsconn_free(t);
        return NULL;
    }
    SSL_set_connect_state(t->ssl);
    return t;
}

struct tlsconn *tlsconn_new_server(struct tlsconn_ctx *ctx)
{
    struct tlsconn *t;

    if (ctx == NULL || !ctx->server) {
        return NULL;
    }
    t = conn_new(ctx);
    if (t == NULL) {
        return NULL;
    }
    SSL_set_accept_state(t->ssl);
    return t;
}

void tlsconn_free(struct tlsconn *t)
{
    if (t == NULL) {
        return;
    }
    SSL_free(t->ssl); /* frees both BIOs and drops the SSL_CTX reference */
    ERR_clear_error();
    free(t);
}

void tlsconn_trim(struct tlsconn *t)
{
    if (t != NULL && t->done && !t->failed) {
        (void)SSL_free_buffers(t->ssl); /* refuses (harmlessly) while a record is in the buffers */
        ERR_clear_error();
        byteq_trim(t->rbio);
        byteq_trim(t->wbio);
    }
}

void tlsconn_feed(struct tlsconn *t, const char *data, size_t len)
{
    if (t->failed) {
        return; /* nothing will read it */
    }
    while (len > 0) {
        int chunk = len > INT_MAX ? INT_MAX : (int)len;
        int w = BIO_write(t->rbio, data, chunk);

        if (w <= 0) {
            ERR_clear_error();
            set_err(t->err, sizeof(t->err), "out of memory buffering TLS input");
            t->failed = true;
            return;
        }
        data += w;
        len -= (size_t)w;
        t->starved = false;
    }
}

enum tlsconn_status tlsconn_handshake(struct tlsconn *t)
{
    int ret, code;

    if (t->failed) {
        return TLSCONN_ERROR;
    }
    if (t->done) {
        return TLSCONN_OK;
    }
    ERR_clear_error();
    ret = SSL_do_handshake(t->ssl);
    if (ret == 1) {
        t->done = true;
        return TLSCONN_OK;
    }
    code = SSL_get_error(t->ssl, ret);
    if (code == SSL_ERROR_WANT_READ) {
        t->starved = true;
        return TLSCONN_WANT_MORE;
    }
    if (code == SSL_ERROR_ZERO_RETURN) {
        ERR_clear_error();
        t->closed = true;
        return TLSCONN_CLOSED;
    }
    fail(t, ret);
    return TLSCONN_ERROR;
}

bool tlsconn_handshake_done(const struct tlsconn *t)
{
    return t->done;
}

enum tlsconn_status tlsconn_read(struct tlsconn *t, char *buf, size_t cap, size_t *n)
{
    size_t total = 0;

    *n = 0;
    if (t->failed) {
        return TLSCONN_ERROR;
    }
    if (t->closed) {
        return TLSCONN_CLOSED;
    }
    if (!t->done) {
        enum tlsconn_status st = tlsconn_handshake(t);

        if (st != TLSCONN_OK) {
            return st;
        }
    }
    /* SSL_read returns at most one record; keep going until buf is full or the engine has
     * nothing complete left, so one call drains what one socket read brought in. */
    while (total < cap) {
        size_t got = 0;
        int ret, code;

        ERR_clear_error();
        ret = SSL_read_ex(t->ssl, buf + total, cap - total, &got);
        if (ret == 1) {
            total += got;
            continue;
        }
        code = SSL_get_error(t->ssl, ret);
        if (code == SSL_ERROR_WANT_READ) {
            t->starved = true; /* at most a partial record is left */
            break;
        }
        if (code == SSL_ERROR_ZERO_RETURN) {
            ERR_clear_error();
            t->closed = true; /* reported now or, if data came first, on the next call */
            break;
        }
        fail(t, ret); /* likewise sticky: data already decrypted is delivered first */
        break;
    }
    *n = total;
    if (total > 0) {
        return TLSCONN_OK;
    }
    if (t->failed) {
        return TLSCONN_ERROR;
    }
    return t->closed ? TLSCONN_CLOSED : TLSCONN_WANT_MORE;
}

enum tlsconn_status tlsconn_write(struct tlsconn *t, const char *data, size_t len)
{
    if (t->failed) {
        return TLSCONN_ERROR;
    }
    if (!t->done) {
        set_err(t->err, sizeof(t->err), "TLS write before the handshake completed");
        return TLSCONN_ERROR;
    }
    while (len > 0) {
        size_t w = 0;
        int ret;

        ERR_clear_error();
        ret = SSL_write_ex(t->ssl, data, len, &w);
        if (ret != 1) {
            /* Memory BIOs never block, so WANT_READ/WANT_WRITE cannot be transient here. */
            fail(t, ret);
            return TLSCONN_ERROR;
        }
        data += w;
        len -= w;
    }
    return TLSCONN_OK;
}

size_t tlsconn_pending_out(const struct tlsconn *t)
{
    return BIO_ctrl_pending(t->wbio);
}

size_t tlsconn_take(struct tlsconn *t, char *buf, size_t cap)
{
    int chunk = cap > INT_MAX ? INT_MAX : (int)cap;
    int r;

    if (chunk == 0) {
        return 0;
    }
    r = BIO_read(t->wbio, buf, chunk);
    return r > 0 ? (size_t)r : 0;
}

bool tlsconn_has_input(const struct tlsconn *t)
{
    /* Buffered bytes alone are not enough: a partial record is buffered too, and reporting
     * it would make a caller spin on WANT_MORE. Once the engine has said it is starved,
     * only new ciphertext can change that. */
    if (t->failed || t->closed || t->starved) {
        return false;
    }
    return SSL_has_pending(t->ssl) || BIO_ctrl_pending(t->rbio) > 0;
}

void tlsconn_shutdown(struct tlsconn *t)
{
    /* OpenSSL: no SSL_shutdown after a fatal error or during the handshake; and a second
     * call would try to read the peer's close_notify, consuming input. */
    if (t->failed || !t->done || (SSL_get_shutdown(t->ssl) & SSL_SENT_SHUTDOWN)) {
        return;
    }
    ERR_clear_error();
    (void)SSL_shutdown(t->ssl);
    ERR_clear_error();
}

const char *tlsconn_error(const struct tlsconn *t)
{
    return t->err;
}

const char *tlsconn_server_name(const struct tlsconn *t)
{
    return SSL_get_servername(t->ssl, TLSEXT_NAMETYPE_host_name);
}

int tlsconn_peer_cert_expiry(const struct tlsconn *t, long long *seconds_left)
{
    int day = 0, sec = 0;
    if (!t->done || t->failed || SSL_get_verify_result(t->ssl) != X509_V_OK) {
        return -1;
    }
    X509 *peer = SSL_get0_peer_certificate(t->ssl);
    if (peer == NULL || ASN1_TIME_diff(&day, &sec, NULL, X509_get0_notAfter(peer)) != 1) {
        return -1;
    }
    *seconds_left = (long long)day * 86400 + sec;
    return 0;
}

int tlsconn_peer_cn(const struct tlsconn *t, char *buf, size_t cap)
{
    X509 *peer;
    X509_NAME *subject;
    int idx, len;
    unsigned char *utf8 = NULL;
    int rc = -1;

    /* Only a verified peer has an identity. */
    if (!t->done || t->failed || cap == 0 || SSL_get_verify_result(t->ssl) != X509_V_OK) {
        return -1;
    }
    peer = SSL_get0_peer_certificate(t->ssl);
    if (peer == NULL) {
        return -1;
    }
    subject = X509_get_subject_name(peer);
    idx = X509_NAME_get_index_by_NID(subject, NID_commonName, -1);
    /* No CN, or more than one: no unambiguous identity. */
    if (idx < 0 || X509_NAME_get_index_by_NID(subject, NID_commonName, idx) >= 0) {
        return -1;
    }
    len = ASN1_STRING_to_UTF8(&utf8, X509_NAME_ENTRY_get_data(X509_NAME_get_entry(subject,
                                                                                   idx)));
    /* Reject embedded NULs (a truncated name is another user) and never truncate. */
    if (len > 0 && memchr(utf8, '\0', (size_t)len) == NULL && (size_t)len < cap) {
        memcpy(buf, utf8, (size_t)len);
        buf[len] = '\0';
        rc = 0;
    }
    OPENSSL_free(utf8);
    ERR_clear_error();
    return rc;
}
