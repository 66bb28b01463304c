/*
 * test_tlsconn.c: unit tests for the socket-free TLS engine.
 *
 * Both ends run in this process over memory: ciphertext is moved by hand between a client
 * engine and a server engine (or a raw OpenSSL peer where the engine has no such role, e.g.
 * a client presenting a certificate). Certificates are generated per run with the OpenSSL 3
 * API into a mkdtemp() directory that is removed at the end; nothing comes from the network
 * or the source tree. Must not depend on the system trust store containing anything.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <ctype.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "respguard/tlsconn.h"

#define DAY (24L * 3600L)
#define VALIDITY_DAYS 30L
#define MAX_FILES 32

/* ---- fixture: per-run PKI in a temp dir ------------------------------------------- */

static struct {
    char dir[256];
    char files[MAX_FILES][320];
    int nfiles;
} fx;

/* Full path of a fixture file (also remembers it for cleanup on first use). */
static const char *path_of(const char *name)
{
    static char buf[4][320];
    static int next;
    char *p = buf[next++ % 4];

    snprintf(p, sizeof(buf[0]), "%s/%s", fx.dir, name);
    return p;
}

static void remember(const char *path)
{
    assert_true(fx.nfiles < MAX_FILES);
    snprintf(fx.files[fx.nfiles++], sizeof(fx.files[0]), "%s", path);
}

static EVP_PKEY *gen_key(void)
{
    EVP_PKEY *k = EVP_EC_gen("P-256");

    assert_non_null(k);
    return k;
}

static void add_ext(X509 *cert, X509 *issuer, int nid, const char *value)
{
    X509V3_CTX v3;
    X509_EXTENSION *ext;

    X509V3_set_ctx(&v3, issuer, cert, NULL, NULL, 0);
    ext = X509V3_EXT_conf_nid(NULL, &v3, nid, value);
    assert_non_null(ext);
    assert_int_equal(X509_add_ext(cert, ext, -1), 1);
    X509_EXTENSION_free(ext);
}

struct cert_spec {
    const char *cn;       /* subject CN */
    const char *cn2;      /* optional second CN entry */
    int cn_len;           /* -1: strlen(cn); else explicit (embedded NUL tests) */
    bool ca;
    const char *san;      /* subjectAltName value or NULL */
    const char *eku;      /* extendedKeyUsage value or NULL */
    long not_before;      /* seconds from now */
    long not_after;       /* seconds from now */
};

/* Build a certificate for key, signed by issuer/issuer_key (self-signed when issuer NULL). */
static X509 *make_cert(const struct cert_spec *s, EVP_PKEY *key, X509 *issuer,
                       EVP_PKEY *issuer_key)
{
    static long serial = 1;
    X509 *x = X509_new();
    X509_NAME *name = X509_NAME_new();

    assert_non_null(x);
    assert_non_null(name);
    assert_int_equal(X509_set_version(x, 2), 1);
    assert_int_equal(ASN1_INTEGER_set(X509_get_serialNumber(x), serial++), 1);
    assert_non_null(X509_gmtime_adj(X509_getm_notBefore(x), s->not_before));
    assert_non_null(X509_gmtime_adj(X509_getm_notAfter(x), s->not_after));
    assert_int_equal(X509_set_pubkey(x, key), 1);
    assert_int_equal(X509_NAME_add_entry_by_txt(name, "O", MBSTRING_ASC,
                                                (const unsigned char *)"respguard tests", -1,
                                                -1, 0), 1);
    assert_int_equal(X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                                                (const unsigned char *)s->cn, s->cn_len, -1,
                                                0), 1);
    if (s->cn2 != NULL) {
        assert_int_equal(X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                                                    (const unsigned char *)s->cn2, -1, -1, 0),
                         1);
    }
    assert_int_equal(X509_set_subject_name(x, name), 1);
    assert_int_equal(X509_set_issuer_name(x, issuer ? X509_get_subject_name(issuer) : name), 1);
    X509_NAME_free(name);

    if (issuer == NULL) {
        issuer = x;
        issuer_key = key;
    }
    if (s->ca) {
        add_ext(x, issuer, NID_basic_constraints, "critical,CA:TRUE");
        add_ext(x, issuer, NID_key_usage, "critical,keyCertSign,cRLSign");
    } else {
        add_ext(x, issuer, NID_basic_constraints, "critical,CA:FALSE");
        add_ext(x, issuer, NID_key_usage, "critical,digitalSignature");
    }
    add_ext(x, issuer, NID_subject_key_identifier, "hash");
    if (s->san != NULL) {
        add_ext(x, issuer, NID_subject_alt_name, s->san);
    }
    if (s->eku != NULL) {
        add_ext(x, issuer, NID_ext_key_usage, s->eku);
    }
    assert_true(X509_sign(x, issuer_key, EVP_sha256()) > 0);
    return x;
}

/* Write certs (NULL-terminated list, leaf first) and/or a key to name in the fixture dir. */
static void write_pem(const char *name, X509 *const *certs, EVP_PKEY *key)
{
    const char *path = path_of(name);
    BIO *b = BIO_new_file(path, "w");

    assert_non_null(b);
    remember(path);
    for (; certs != NULL && *certs != NULL; certs++) {
        assert_int_equal(PEM_write_bio_X509(b, *certs), 1);
    }
    if (key != NULL) {
        assert_int_equal(PEM_write_bio_PrivateKey(b, key, NULL, NULL, 0, NULL, NULL), 1);
    }
    BIO_free(b);
}

static int group_setup(void **state)
{
    const char *tmp = getenv("TMPDIR");
    EVP_PKEY *ca1_key, *ca2_key, *srv_key, *cli_key, *mal_key, *other_key;
    X509 *ca1, *ca2, *srv, *cli, *mal, *expired, *twocn, *nulcn;

    (void)state;
    snprintf(fx.dir, sizeof(fx.dir), "%s/test_tlsconn.XXXXXX", tmp && *tmp ? tmp : "/tmp");
    assert_non_null(mkdtemp(fx.dir));

    ca1_key = gen_key();
    ca2_key = gen_key();
    srv_key = gen_key();
    cli_key = gen_key();
    mal_key = gen_key();
    other_key = gen_key();

    ca1 = make_cert(&(struct cert_spec){.cn = "respguard test CA", .cn_len = -1, .ca = true,
                                        .not_before = -60, .not_after = 365 * DAY},
                    ca1_key, NULL, NULL);
    ca2 = make_cert(&(struct cert_spec){.cn = "unrelated CA", .cn_len = -1, .ca = true,
                                        .not_before = -60, .not_after = 365 * DAY},
                    ca2_key, NULL, NULL);
    srv = make_cert(&(struct cert_spec){.cn = "localhost", .cn_len = -1,
                                        .san = "DNS:localhost,IP:127.0.0.1,IP:::1",
                                        .eku = "serverAuth", .not_before = -60,
                                        .not_after = VALIDITY_DAYS * DAY},
                    srv_key, ca1, ca1_key);
    expired = make_cert(&(struct cert_spec){.cn = "localhost", .cn_len = -1,
                                            .san = "DNS:localhost", .eku = "serverAuth",
                                            .not_before = -2 * DAY, .not_after = -DAY},
                        srv_key, ca1, ca1_key);
    cli = make_cert(&(struct cert_spec){.cn = "alice", .cn_len = -1, .eku = "clientAuth",
                                        .not_before = -60, .not_after = VALIDITY_DAYS * DAY},
                    cli_key, ca1, ca1_key);
    mal = make_cert(&(struct cert_spec){.cn = "mallory", .cn_len = -1, .eku = "clientAuth",
                                        .not_before = -60, .not_after = VALIDITY_DAYS * DAY},
                    mal_key, ca2, ca2_key);
    twocn = make_cert(&(struct cert_spec){.cn = "alice", .cn2 = "admin", .cn_len = -1,
                                          .eku = "clientAuth", .not_before = -60,
                                          .not_after = VALIDITY_DAYS * DAY},
                      cli_key, ca1, ca1_key);
    nulcn = make_cert(&(struct cert_spec){.cn = "admin\0.alice", .cn_len = 12,
                                          .eku = "clientAuth", .not_before = -60,
                                          .not_after = VALIDITY_DAYS * DAY},
                      cli_key, ca1, ca1_key);

    write_pem("ca1.pem", (X509 *[]){ca1, NULL}, NULL);
    write_pem("ca2.pem", (X509 *[]){ca2, NULL}, NULL);
    write_pem("server.pem", (X509 *[]){srv, NULL}, NULL);
    write_pem("server-chain.pem", (X509 *[]){srv, ca1, NULL}, NULL);
    write_pem("server.key", NULL, srv_key);
    write_pem("expired.pem", (X509 *[]){expired, NULL}, NULL);
    write_pem("client.pem", (X509 *[]){cli, NULL}, NULL);
    write_pem("client.key", NULL, cli_key);
    write_pem("mallory.pem", (X509 *[]){mal, NULL}, NULL);
    write_pem("mallory.key", NULL, mal_key);
    write_pem("twocn.pem", (X509 *[]){twocn, NULL}, NULL);
    write_pem("nulcn.pem", (X509 *[]){nulcn, NULL}, NULL);
    write_pem("other.key", NULL, other_key);
    {
        const char *path = path_of("encrypted.key");
        BIO *b = BIO_new_file(path, "w");

        assert_non_null(b);
        remember(path);
        assert_int_equal(PEM_write_bio_PrivateKey(b, srv_key, EVP_aes_256_cbc(),
                                                  (unsigned char *)"secret", 6, NULL, NULL),
                         1);
        BIO_free(b);
    }
    write_pem("empty.pem", NULL, NULL);

    X509_free(ca1);
    X509_free(ca2);
    X509_free(srv);
    X509_free(expired);
    X509_free(cli);
    X509_free(mal);
    X509_free(twocn);
    X509_free(nulcn);
    EVP_PKEY_free(ca1_key);
    EVP_PKEY_free(ca2_key);
    EVP_PKEY_free(srv_key);
    EVP_PKEY_free(cli_key);
    EVP_PKEY_free(mal_key);
    EVP_PKEY_free(other_key);
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    for (int i = 0; i < fx.nfiles; i++) {
        unlink(fx.files[i]);
    }
    if (fx.dir[0] != '\0') {
        rmdir(fx.dir);
    }
    return 0;
}

/* ---- helpers ----------------------------------------------------------------------- */

static bool contains_nocase(const char *hay, const char *needle)
{
    size_t n = strlen(needle);

    for (; *hay != '\0'; hay++) {
        size_t i = 0;

        while (i < n && hay[i] != '\0' &&
               tolower((unsigned char)hay[i]) == tolower((unsigned char)needle[i])) {
            i++;
        }
        if (i == n) {
            return true;
        }
    }
    return n == 0;
}

static void assert_contains(const char *hay, const char *needle)
{
    if (!contains_nocase(hay, needle)) {
        print_error("\"%s\" does not contain \"%s\"\n", hay, needle);
        fail();
    }
}

/* The module promises never to leave anything on the thread's error queue. */
static void assert_queue_clean(void)
{
    unsigned long e = ERR_peek_error();

    if (e != 0) {
        char buf[256];

        ERR_error_string_n(e, buf, sizeof(buf));
        ERR_clear_error();
        print_error("error queue not empty: %s\n", buf);
        fail();
    }
}

static struct tlsconn_ctx *client_ctx(const char *ca_name)
{
    char err[512] = "";
    struct tlsconn_ctx *c = tlsconn_ctx_new_client(ca_name ? path_of(ca_name) : NULL, err,
                                                   sizeof(err));

    if (c == NULL) {
        print_error("client ctx: %s\n", err);
    }
    assert_non_null(c);
    return c;
}

static struct tlsconn_ctx *server_ctx(const char *cert, const char *key, const char *client_ca)
{
    char err[512] = "";
    struct tlsconn_ctx *c = tlsconn_ctx_new_server(path_of(cert), path_of(key),
                                                   client_ca ? path_of(client_ca) : NULL, err,
                                                   sizeof(err));

    if (c == NULL) {
        print_error("server ctx: %s\n", err);
    }
    assert_non_null(c);
    return c;
}

/* One end of a connection: a tlsconn engine, or a raw OpenSSL peer on memory BIOs. */
struct end {
    struct tlsconn *t;
    SSL *ssl;
    BIO *in, *out;
};

static struct end engine(struct tlsconn *t)
{
    assert_non_null(t);
    return (struct end){.t = t};
}

static struct end raw_peer(SSL_CTX *ctx, bool server)
{
    struct end e = {0};

    e.ssl = SSL_new(ctx);
    e.in = BIO_new(BIO_s_mem());
    e.out = BIO_new(BIO_s_mem());
    assert_non_null(e.ssl);
    assert_non_null(e.in);
    assert_non_null(e.out);
    BIO_set_mem_eof_return(e.in, -1);
    SSL_set_bio(e.ssl, e.in, e.out);
    if (server) {
        SSL_set_accept_state(e.ssl);
    } else {
        SSL_set_connect_state(e.ssl);
    }
    return e;
}

static void end_free(struct end *e)
{
    tlsconn_free(e->t);
    SSL_free(e->ssl);
    ERR_clear_error(); /* the raw peer's failures are not the module's */
}

static size_t end_take(struct end *e, char *buf, size_t cap)
{
    int r;

    if (e->t != NULL) {
        return tlsconn_take(e->t, buf, cap);
    }
    r = BIO_read(e->out, buf, (int)cap);
    return r > 0 ? (size_t)r : 0;
}

static void end_feed(struct end *e, const char *buf, size_t n)
{
    if (e->t != NULL) {
        tlsconn_feed(e->t, buf, n);
    } else {
        assert_int_equal(BIO_write(e->in, buf, (int)n), (int)n);
    }
}

/* Move all pending ciphertext from one end to the other, in odd-sized pieces. */
static size_t transfer(struct end *from, struct end *to)
{
    char buf[1500];
    size_t n, total = 0;

    while ((n = end_take(from, buf, sizeof(buf))) > 0) {
        end_feed(to, buf, n);
        total += n;
    }
    return total;
}

/* 1 done, 0 in progress, -1 failed. */
static int end_handshake(struct end *e)
{
    int r, code;

    if (e->t != NULL) {
        switch (tlsconn_handshake(e->t)) {
        case TLSCONN_OK:
            return 1;
        case TLSCONN_WANT_MORE:
            return 0;
        default:
            return -1;
        }
    }
    r = SSL_do_handshake(e->ssl);
    if (r == 1) {
        return 1;
    }
    code = SSL_get_error(e->ssl, r);
    ERR_clear_error();
    return code == SSL_ERROR_WANT_READ ? 0 : -1;
}

/* Run both handshakes until each side has finished or failed. */
static void handshake(struct end *c, struct end *s, int *rc, int *rs)
{
    *rc = 0;
    *rs = 0;
    for (int i = 0; i < 16 && (*rc == 0 || *rs == 0); i++) {
        if (*rc == 0) {
            *rc = end_handshake(c);
        }
        transfer(c, s);
        if (*rs == 0) {
            *rs = end_handshake(s);
        }
        transfer(s, c);
    }
}

static void handshake_ok(struct end *c, struct end *s)
{
    int rc, rs;

    handshake(c, s, &rc, &rs);
    if (rc != 1 || rs != 1) {
        print_error("handshake: client %d (%s), server %d (%s)\n", rc,
                    c->t ? tlsconn_error(c->t) : "raw", rs, s->t ? tlsconn_error(s->t) : "raw");
    }
    assert_int_equal(rc, 1);
    assert_int_equal(rs, 1);
}

/* Read from an engine until it wants more; returns the bytes read into buf. */
static size_t drain(struct tlsconn *t, char *buf, size_t cap, size_t piece)
{
    size_t total = 0;

    for (;;) {
        size_t n = 0;
        size_t want = cap - total < piece ? cap - total : piece;
        enum tlsconn_status st = tlsconn_read(t, buf + total, want, &n);

        if (st == TLSCONN_WANT_MORE) {
            assert_int_equal(n, 0);
            assert_false(tlsconn_has_input(t));
            return total;
        }
        if (st != TLSCONN_OK) {
            print_error("read: %d %s\n", st, tlsconn_error(t));
        }
        assert_int_equal(st, TLSCONN_OK);
        assert_true(n > 0 && n <= want);
        total += n;
        assert_true(total < cap); /* callers size buf with room to spare */
    }
}

/* Read everything a raw OpenSSL peer has decrypted. */
static size_t raw_drain(struct end *e, char *buf, size_t cap)
{
    size_t total = 0, n;

    while (total < cap && SSL_read_ex(e->ssl, buf + total, cap - total, &n) == 1) {
        total += n;
    }
    ERR_clear_error();
    return total;
}

static void fill_pattern(char *buf, size_t len, uint32_t seed)
{
    for (size_t i = 0; i < len; i++) {
        seed = seed * 1103515245u + 12345u;
        buf[i] = (char)(seed >> 16);
    }
}

/* ---- tests ------------------------------------------------------------------------- */

static void test_handshake_and_data(void **state)
{
    struct tlsconn_ctx *cc = client_ctx("ca1.pem");
    struct tlsconn_ctx *sc = server_ctx("server.pem", "server.key", NULL);
    struct end c = engine(tlsconn_new_client(cc, "localhost", NULL));
    struct end s = engine(tlsconn_new_server(sc));
    char buf[256], cn[64];
    size_t n;

    (void)state;
    assert_false(tlsconn_handshake_done(c.t));
    assert_string_equal(tlsconn_error(c.t), "no error");
    handshake_ok(&c, &s);
    assert_true(tlsconn_handshake_done(c.t));
    assert_true(tlsconn_handshake_done(s.t));
    assert_int_equal(tlsconn_handshake(c.t), TLSCONN_OK); /* idempotent once done */

    assert_int_equal(tlsconn_write(c.t, "*1\r\n$4\r\nPING\r\n", 14), TLSCONN_OK);
    assert_true(tlsconn_pending_out(c.t) > 14);
    transfer(&c, &s);
    assert_int_equal(tlsconn_pending_out(c.t), 0);
    n = drain(s.t, buf, sizeof(buf), sizeof(buf));
    assert_int_equal(n, 14);
    assert_memory_equal(buf, "*1\r\n$4\r\nPING\r\n", 14);

    assert_int_equal(tlsconn_write(s.t, "+PONG\r\n", 7), TLSCONN_OK);
    transfer(&s, &c);
    n = drain(c.t, buf, sizeof(buf), sizeof(buf));
    assert_int_equal(n, 7);
    assert_memory_equal(buf, "+PONG\r\n", 7);

    /* nothing to read: WANT_MORE with n = 0 */
    n = 99;
    assert_int_equal(tlsconn_read(s.t, buf, sizeof(buf), &n), TLSCONN_WANT_MORE);
    assert_int_equal(n, 0);

    /* no client certificate on this listener; the client sees the server's CN */
    assert_int_equal(tlsconn_peer_cn(s.t, cn, sizeof(cn)), -1);
    assert_int_equal(tlsconn_peer_cn(c.t, cn, sizeof(cn)), 0);
    assert_string_equal(cn, "localhost");
    assert_string_equal(tlsconn_error(c.t), "no error");
    assert_string_equal(tlsconn_error(s.t), "no error");
    assert_queue_clean();

    end_free(&c);
    end_free(&s);
    tlsconn_ctx_free(cc);
    tlsconn_ctx_free(sc);
}

static void test_large_payload(void **state)
{
    const size_t total = 1024 * 1024;
    struct tlsconn_ctx *cc = client_ctx("ca1.pem");
    struct tlsconn_ctx *sc = server_ctx("server-chain.pem", "server.key", NULL);
    struct end c = engine(tlsconn_new_client(cc, "localhost", NULL));
    struct end s = engine(tlsconn_new_server(sc));
    char *src = malloc(total), *dst = malloc(total + 1);
    size_t sent = 0, got = 0, n;

    (void)state;
    assert_non_null(src);
    assert_non_null(dst);
    fill_pattern(src, total, 42);
    handshake_ok(&c, &s);

    /* client -> server in 7919-byte writes, pumped every few writes, read 3001 at a time */
    while (sent < total) {
        size_t piece = total - sent < 7919 ? total - sent : 7919;

        assert_int_equal(tlsconn_write(c.t, src + sent, piece), TLSCONN_OK);
        sent += piece;
        if ((sent / 7919) % 5 == 0 || sent == total) {
            transfer(&c, &s);
            got += drain(s.t, dst + got, total + 1 - got, 3001);
        }
    }
    assert_int_equal(got, total);
    assert_memory_equal(src, dst, total);

    /* server -> client: 1 MiB in a single write, all accepted */
    fill_pattern(src, total, 7);
    assert_int_equal(tlsconn_write(s.t, src, total), TLSCONN_OK);
    assert_true(tlsconn_pending_out(s.t) > total);
    transfer(&s, &c);
    assert_int_equal(tlsconn_pending_out(s.t), 0);

    /* plaintext stays inside the engine until read: has_input says so */
    assert_true(tlsconn_has_input(c.t));
    assert_int_equal(tlsconn_read(c.t, dst, 100, &n), TLSCONN_OK);
    assert_int_equal(n, 100);
    assert_true(tlsconn_has_input(c.t));
    got = 100 + drain(c.t, dst + 100, total + 1 - 100, 16384);
    assert_int_equal(got, total);
    assert_memory_equal(src, dst, total);
    assert_false(tlsconn_has_input(c.t));
    assert_queue_clean();

    free(src);
    free(dst);
    end_free(&c);
    end_free(&s);
    tlsconn_ctx_free(cc);
    tlsconn_ctx_free(sc);
}

/* Client verification must fail with want_client; the server sees the client's alert. */
static void expect_client_verify_failure(const char *ca, const char *cert, const char *name,
                                         const char *want_client)
{
    struct tlsconn_ctx *cc = client_ctx(ca);
    struct tlsconn_ctx *sc = server_ctx(cert, "server.key", NULL);
    struct end c = engine(tlsconn_new_client(cc, name, NULL));
    struct end s = engine(tlsconn_new_server(sc));
    char buf[64];
    size_t n;
    int rc, rs;

    handshake(&c, &s, &rc, &rs);
    assert_int_equal(rc, -1);
    assert_int_equal(rs, -1);
    assert_false(tlsconn_handshake_done(c.t));
    assert_contains(tlsconn_error(c.t), "certificate verify failed: ");
    assert_contains(tlsconn_error(c.t), want_client);
    assert_contains(tlsconn_error(s.t), "alert");
    assert_queue_clean();

    /* the failure is sticky and nothing else moves */
    assert_int_equal(tlsconn_handshake(c.t), TLSCONN_ERROR);
    assert_int_equal(tlsconn_read(c.t, buf, sizeof(buf), &n), TLSCONN_ERROR);
    assert_int_equal(n, 0);
    assert_int_equal(tlsconn_write(c.t, "x", 1), TLSCONN_ERROR);
    tlsconn_shutdown(c.t);
    assert_queue_clean();

    end_free(&c);
    end_free(&s);
    tlsconn_ctx_free(cc);
    tlsconn_ctx_free(sc);
}

static void test_hostname_mismatch(void **state)
{
    (void)state;
    /* OpenSSL 3 spells it "hostname mismatch" (1.1.1: "Hostname mismatch") */
    expect_client_verify_failure("ca1.pem", "server.pem", "redis.example.com",
                                 "hostname mismatch");
    /* a name must not match partially through a wildcard-free SAN either */
    expect_client_verify_failure("ca1.pem", "server.pem", "localhost.example",
                                 "hostname mismatch");
}

static void test_untrusted_ca(void **state)
{
    (void)state;
    expect_client_verify_failure("ca2.pem", "server.pem", "localhost",
                                 "unable to get local issuer certificate");
    expect_client_verify_failure("ca2.pem", "server-chain.pem", "localhost",
                                 "self-signed certificate in certificate chain");
    /* the system store does not know a CA made a moment ago */
    expect_client_verify_failure(NULL, "server.pem", "localhost",
                                 "unable to get local issuer certificate");
    expect_client_verify_failure("ca1.pem", "expired.pem", "localhost",
                                 "certificate has expired");
}

/* Handshake with verify_name; returns the client's result and sets *sni to whether the
 * server saw an SNI equal to want_sni. */
static int connect_name(const char *name, const char *want_sni, bool *sni_ok, char *err,
                        size_t errlen)
{
    struct tlsconn_ctx *cc = client_ctx("ca1.pem");
    struct tlsconn_ctx *sc = server_ctx("server.pem", "server.key", NULL);
    struct end c = engine(tlsconn_new_client(cc, name, NULL));
    struct end s = engine(tlsconn_new_server(sc));
    const char *seen;
    int rc, rs;

    handshake(&c, &s, &rc, &rs);
    seen = tlsconn_server_name(s.t);
    *sni_ok = want_sni == NULL ? seen == NULL : seen != NULL && strcmp(seen, want_sni) == 0;
    snprintf(err, errlen, "%s", tlsconn_error(c.t));
    assert_queue_clean();
    end_free(&c);
    end_free(&s);
    tlsconn_ctx_free(cc);
    tlsconn_ctx_free(sc);
    return rc;
}

static void test_ip_literals(void **state)
{
    char err[320];
    bool sni;

    (void)state;
    assert_int_equal(connect_name("127.0.0.1", NULL, &sni, err, sizeof(err)), 1);
    assert_true(sni); /* no SNI for an IP literal */
    assert_int_equal(connect_name("::1", NULL, &sni, err, sizeof(err)), 1);
    assert_true(sni);
    assert_int_equal(connect_name("[::1]", NULL, &sni, err, sizeof(err)), 1);
    assert_true(sni);

    assert_int_equal(connect_name("127.0.0.2", NULL, &sni, err, sizeof(err)), -1);
    assert_true(sni);
    assert_contains(err, "certificate verify failed: IP address mismatch");
    assert_int_equal(connect_name("::2", NULL, &sni, err, sizeof(err)), -1);
    assert_contains(err, "certificate verify failed: IP address mismatch");
    /* an IP SAN does not vouch for the same address written as a name, nor vice versa */
    assert_int_equal(connect_name("10.0.0.1", NULL, &sni, err, sizeof(err)), -1);
    assert_contains(err, "IP address mismatch");
}

static void test_sni(void **state)
{
    struct tlsconn_ctx *cc = client_ctx("ca1.pem");
    struct tlsconn_ctx *sc = server_ctx("server.pem", "server.key", NULL);
    struct end c = engine(tlsconn_new_client(cc, "localhost", NULL));
    struct end s = engine(tlsconn_new_server(sc));
    char err[320];
    bool sni;

    (void)state;
    assert_string_equal(tlsconn_server_name(c.t), "localhost");
    assert_null(tlsconn_server_name(s.t)); /* nothing received yet */
    handshake_ok(&c, &s);
    assert_non_null(tlsconn_server_name(s.t));
    assert_string_equal(tlsconn_server_name(s.t), "localhost");
    end_free(&c);
    end_free(&s);
    tlsconn_ctx_free(cc);
    tlsconn_ctx_free(sc);

    /* fully qualified form: the root dot is neither sent nor matched */
    assert_int_equal(connect_name("localhost.", "localhost", &sni, err, sizeof(err)), 1);
    assert_true(sni);
    /* SNI is sent even when verification then fails */
    assert_int_equal(connect_name("other.example", "other.example", &sni, err, sizeof(err)),
                     -1);
    assert_true(sni);
}

static void test_client_cert_missing(void **state)
{
    struct tlsconn_ctx *cc = client_ctx("ca1.pem");
    struct tlsconn_ctx *sc = server_ctx("server.pem", "server.key", "ca1.pem");
    struct end c = engine(tlsconn_new_client(cc, "localhost", NULL));
    struct end s = engine(tlsconn_new_server(sc));
    char buf[64];
    size_t n = 0;
    enum tlsconn_status st;
    int rc, rs;

    (void)state;
    handshake(&c, &s, &rc, &rs);
    assert_int_equal(rs, -1);
    assert_false(tlsconn_handshake_done(s.t));
    assert_contains(tlsconn_error(s.t), "peer did not return a certificate");
    /* TLS 1.3: the client finished before the server judged its (empty) certificate; it
     * learns from the alert at its next read. TLS 1.2 would fail the handshake itself. */
    if (rc == 1) {
        st = tlsconn_read(c.t, buf, sizeof(buf), &n);
        assert_int_equal(st, TLSCONN_ERROR);
        assert_int_equal(n, 0);
    }
    assert_contains(tlsconn_error(c.t), "certificate required");
    assert_int_equal(tlsconn_peer_cn(s.t, buf, sizeof(buf)), -1);
    assert_queue_clean();

    end_free(&c);
    end_free(&s);
    tlsconn_ctx_free(cc);
    tlsconn_ctx_free(sc);
}

static SSL_CTX *raw_client_ctx(const char *cert, const char *key)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());

    assert_non_null(ctx);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    assert_int_equal(SSL_CTX_load_verify_locations(ctx, path_of("ca1.pem"), NULL), 1);
    if (cert != NULL) {
        assert_int_equal(SSL_CTX_use_certificate_chain_file(ctx, path_of(cert)), 1);
        assert_int_equal(SSL_CTX_use_PrivateKey_file(ctx, path_of(key), SSL_FILETYPE_PEM), 1);
    }
    return ctx;
}

/* A raw OpenSSL client with cert/key against an mTLS listener; returns the server result
 * and copies the peer CN lookup result into cn (rc in *cn_rc). */
static int mtls_connect(const char *cert, const char *key, char *cn, size_t cncap, int *cn_rc,
                        char *err, size_t errlen)
{
    SSL_CTX *rc_ctx = raw_client_ctx(cert, key);
    struct tlsconn_ctx *sc = server_ctx("server.pem", "server.key", "ca1.pem");
    struct end c = raw_peer(rc_ctx, false);
    struct end s = engine(tlsconn_new_server(sc));
    int rc, rs;

    handshake(&c, &s, &rc, &rs);
    *cn_rc = tlsconn_peer_cn(s.t, cn, cncap);
    snprintf(err, errlen, "%s", tlsconn_error(s.t));
    if (rs == 1) {
        char buf[64];
        size_t n;

        /* data both ways over the authenticated channel */
        assert_int_equal(SSL_write(c.ssl, "hello", 5), 5);
        transfer(&c, &s);
        n = drain(s.t, buf, sizeof(buf), sizeof(buf));
        assert_int_equal(n, 5);
        assert_memory_equal(buf, "hello", 5);
        assert_int_equal(tlsconn_write(s.t, "+OK\r\n", 5), TLSCONN_OK);
        transfer(&s, &c);
        assert_int_equal(raw_drain(&c, buf, sizeof(buf)), 5);
        assert_memory_equal(buf, "+OK\r\n", 5);
    }
    assert_queue_clean();
    end_free(&c);
    end_free(&s);
    tlsconn_ctx_free(sc);
    SSL_CTX_free(rc_ctx);
    return rs;
}

static void test_client_cert_present(void **state)
{
    char cn[64], small[5], err[320];
    int cn_rc;

    (void)state;
    assert_int_equal(mtls_connect("client.pem", "client.key", cn, sizeof(cn), &cn_rc, err,
                                  sizeof(err)), 1);
    assert_int_equal(cn_rc, 0);
    assert_string_equal(cn, "alice");

    /* never truncated: "alice" needs 6 bytes */
    assert_int_equal(mtls_connect("client.pem", "client.key", small, sizeof(small), &cn_rc,
                                  err, sizeof(err)), 1);
    assert_int_equal(cn_rc, -1);
}

static void test_client_cert_untrusted(void **state)
{
    char cn[64], err[320];
    int cn_rc;

    (void)state;
    assert_int_equal(mtls_connect("mallory.pem", "mallory.key", cn, sizeof(cn), &cn_rc, err,
                                  sizeof(err)), -1);
    assert_int_equal(cn_rc, -1);
    assert_contains(err, "certificate verify failed: unable to get local issuer certificate");
}

static void test_peer_cn_ambiguous(void **state)
{
    char cn[64], err[320];
    int cn_rc;

    (void)state;
    /* two CN entries: no single identity */
    assert_int_equal(mtls_connect("twocn.pem", "client.key", cn, sizeof(cn), &cn_rc, err,
                                  sizeof(err)), 1);
    assert_int_equal(cn_rc, -1);
    /* "admin\0.alice" must not become "admin" */
    assert_int_equal(mtls_connect("nulcn.pem", "client.key", cn, sizeof(cn), &cn_rc, err,
                                  sizeof(err)), 1);
    assert_int_equal(cn_rc, -1);
}

/* TLS 1.3: the client's first request travels with its Finished; the server's handshake
 * completes with it already inside the engine, and has_input says so. */
static void test_data_behind_handshake(void **state)
{
    struct tlsconn_ctx *cc = client_ctx("ca1.pem");
    struct tlsconn_ctx *sc = server_ctx("server.pem", "server.key", NULL);
    struct end c = engine(tlsconn_new_client(cc, "localhost", NULL));
    struct end s = engine(tlsconn_new_server(sc));
    char buf[64];
    size_t n;

    (void)state;
    assert_int_equal(tlsconn_handshake(c.t), TLSCONN_WANT_MORE);  /* ClientHello */
    assert_true(tlsconn_pending_out(c.t) > 0);
    transfer(&c, &s);
    assert_int_equal(tlsconn_handshake(s.t), TLSCONN_WANT_MORE);  /* ServerHello..Finished */
    transfer(&s, &c);
    assert_int_equal(tlsconn_handshake(c.t), TLSCONN_OK);         /* client Finished */
    assert_int_equal(tlsconn_write(c.t, "*1\r\n$4\r\nPING\r\n", 14), TLSCONN_OK);
    transfer(&c, &s);
    assert_int_equal(tlsconn_handshake(s.t), TLSCONN_OK);
    assert_true(tlsconn_has_input(s.t));
    assert_int_equal(tlsconn_read(s.t, buf, sizeof(buf), &n), TLSCONN_OK);
    assert_int_equal(n, 14);
    assert_false(tlsconn_has_input(s.t));
    assert_queue_clean();

    end_free(&c);
    end_free(&s);
    tlsconn_ctx_free(cc);
    tlsconn_ctx_free(sc);
}

/* Records split across socket reads: no data and no spin until the record is complete. */
static void test_partial_records(void **state)
{
    struct tlsconn_ctx *cc = client_ctx("ca1.pem");
    struct tlsconn_ctx *sc = server_ctx("server.pem", "server.key", NULL);
    struct end c = engine(tlsconn_new_client(cc, "localhost", NULL));
    struct end s = engine(tlsconn_new_server(sc));
    char msg[40000], cipher[50000], got[40001];
    size_t clen, n, total;

    (void)state;
    fill_pattern(msg, sizeof(msg), 3);
    handshake_ok(&c, &s);
    /* TLS 1.3 tickets from the server: let the client consume them first */
    assert_int_equal(drain(c.t, got, sizeof(got), sizeof(got)), 0);

    assert_int_equal(tlsconn_write(c.t, msg, sizeof(msg)), TLSCONN_OK); /* 3 records */
    clen = tlsconn_take(c.t, cipher, sizeof(cipher));
    assert_true(clen > sizeof(msg) && clen < sizeof(cipher));
    assert_int_equal(tlsconn_pending_out(c.t), 0);

    /* a record header and a few bytes: buffered, but nothing to read yet */
    tlsconn_feed(s.t, cipher, 10);
    assert_true(tlsconn_has_input(s.t));
    assert_int_equal(tlsconn_read(s.t, got, sizeof(got), &n), TLSCONN_WANT_MORE);
    assert_int_equal(n, 0);
    assert_false(tlsconn_has_input(s.t)); /* starved until fed */

    /* the rest, one byte short: the first two records come out */
    tlsconn_feed(s.t, cipher + 10, clen - 11);
    assert_true(tlsconn_has_input(s.t));
    total = drain(s.t, got, sizeof(got), 1000);
    assert_true(total >= 2 * 16384 && total < sizeof(msg));
    tlsconn_feed(s.t, cipher + clen - 1, 1);
    total += drain(s.t, got + total, sizeof(got) - total, sizeof(got));
    assert_int_equal(total, sizeof(msg));
    assert_memory_equal(got, msg, sizeof(msg));

    /* back-pressure: stop mid-stream, resume from the engine without new input */
    assert_int_equal(tlsconn_write(c.t, msg, sizeof(msg)), TLSCONN_OK);
    transfer(&c, &s);
    assert_int_equal(tlsconn_read(s.t, got, 5000, &n), TLSCONN_OK);
    assert_int_equal(n, 5000);
    total = n;
    while (tlsconn_has_input(s.t)) {
        assert_int_equal(tlsconn_read(s.t, got + total, 5000, &n), TLSCONN_OK);
        total += n;
    }
    assert_int_equal(total, sizeof(msg));
    assert_memory_equal(got, msg, sizeof(msg));
    assert_queue_clean();

    end_free(&c);
    end_free(&s);
    tlsconn_ctx_free(cc);
    tlsconn_ctx_free(sc);
}

static void test_close_notify(void **state)
{
    struct tlsconn_ctx *cc = client_ctx("ca1.pem");
    struct tlsconn_ctx *sc = server_ctx("server.pem", "server.key", NULL);
    struct end c = engine(tlsconn_new_client(cc, "localhost", NULL));
    struct end s = engine(tlsconn_new_server(sc));
    char buf[64];
    size_t n, out;

    (void)state;
    /* before the handshake there is nothing to close */
    tlsconn_shutdown(c.t);
    assert_int_equal(tlsconn_pending_out(c.t), 0);
    handshake_ok(&c, &s);

    /* data and close_notify in one flight: data first, then CLOSED, sticky */
    assert_int_equal(tlsconn_write(c.t, "QUIT\r\n", 6), TLSCONN_OK);
    tlsconn_shutdown(c.t);
    out = tlsconn_pending_out(c.t);
    assert_true(out > 6);
    tlsconn_shutdown(c.t); /* idempotent: no second alert */
    assert_int_equal(tlsconn_pending_out(c.t), out);
    transfer(&c, &s);
    assert_int_equal(tlsconn_read(s.t, buf, sizeof(buf), &n), TLSCONN_OK);
    assert_int_equal(n, 6);
    assert_memory_equal(buf, "QUIT\r\n", 6);
    assert_int_equal(tlsconn_read(s.t, buf, sizeof(buf), &n), TLSCONN_CLOSED);
    assert_int_equal(n, 0);
    assert_int_equal(tlsconn_read(s.t, buf, sizeof(buf), &n), TLSCONN_CLOSED);
    assert_false(tlsconn_has_input(s.t));

    /* half-close: the server may still answer, then closes too */
    assert_int_equal(tlsconn_write(s.t, "+OK\r\n", 5), TLSCONN_OK);
    tlsconn_shutdown(s.t);
    transfer(&s, &c);
    assert_int_equal(tlsconn_read(c.t, buf, sizeof(buf), &n), TLSCONN_OK);
    assert_int_equal(n, 5);
    assert_int_equal(tlsconn_read(c.t, buf, sizeof(buf), &n), TLSCONN_CLOSED);
    assert_queue_clean();

    end_free(&c);
    end_free(&s);
    tlsconn_ctx_free(cc);
    tlsconn_ctx_free(sc);
}

static void test_cert_expiry(void **state)
{
    long long left = 0;

    (void)state;
    assert_int_equal(tlsconn_cert_file_expiry(path_of("server.pem"), &left), 0);
    assert_true(left > VALIDITY_DAYS * DAY - 300 && left <= VALIDITY_DAYS * DAY);
    /* a chain file: the leaf counts, not the longer-lived CA after it */
    assert_int_equal(tlsconn_cert_file_expiry(path_of("server-chain.pem"), &left), 0);
    assert_true(left > VALIDITY_DAYS * DAY - 300 && left <= VALIDITY_DAYS * DAY);
    assert_int_equal(tlsconn_cert_file_expiry(path_of("expired.pem"), &left), 0);
    assert_true(left < -DAY + 300 && left >= -DAY - 300);
    assert_int_equal(tlsconn_cert_file_expiry(path_of("missing.pem"), &left), -1);
    assert_int_equal(tlsconn_cert_file_expiry(path_of("server.key"), &left), -1);
    assert_int_equal(tlsconn_cert_file_expiry(path_of("empty.pem"), &left), -1);
    assert_queue_clean();
}

static void test_ctx_errors(void **state)
{
    char err[512];
    struct tlsconn_ctx *ctx;

    (void)state;
    err[0] = '\0';
    ctx = tlsconn_ctx_new_server(path_of("server.pem"), path_of("other.key"), NULL, err,
                                 sizeof(err));
    assert_null(ctx);
    assert_contains(err, "key");
    assert_contains(err, "other.key");
    assert_contains(err, "does not match");
    assert_contains(err, "key values mismatch");
    assert_queue_clean();

    /* an encrypted key is refused with a reason, never a pass phrase prompt */
    err[0] = '\0';
    ctx = tlsconn_ctx_new_server(path_of("server.pem"), path_of("encrypted.key"), NULL, err,
                                 sizeof(err));
    assert_null(ctx);
    assert_contains(err, "cannot load private key");
    assert_contains(err, "encrypted.key");
    assert_queue_clean();

    err[0] = '\0';
    ctx = tlsconn_ctx_new_server(path_of("missing.pem"), path_of("server.key"), NULL, err,
                                 sizeof(err));
    assert_null(ctx);
    assert_contains(err, "missing.pem");
    assert_contains(err, "No such file");
    assert_queue_clean();

    err[0] = '\0';
    ctx = tlsconn_ctx_new_server(path_of("server.pem"), path_of("server.key"),
                                 path_of("missing-ca.pem"), err, sizeof(err));
    assert_null(ctx);
    assert_contains(err, "missing-ca.pem");
    assert_queue_clean();

    err[0] = '\0';
    ctx = tlsconn_ctx_new_server(path_of("server.pem"), path_of("server.key"),
                                 path_of("empty.pem"), err, sizeof(err));
    assert_null(ctx);
    assert_contains(err, "empty.pem");
    assert_queue_clean();

    err[0] = '\0';
    ctx = tlsconn_ctx_new_client(path_of("missing-ca.pem"), err, sizeof(err));
    assert_null(ctx);
    assert_contains(err, "missing-ca.pem");
    assert_queue_clean();

    err[0] = '\0';
    ctx = tlsconn_ctx_new_client(path_of("server.key"), err, sizeof(err));
    assert_null(ctx);
    assert_contains(err, "server.key");
    assert_queue_clean();

    err[0] = '\0';
    ctx = tlsconn_ctx_new_server(NULL, path_of("server.key"), NULL, err, sizeof(err));
    assert_null(ctx);
    assert_true(err[0] != '\0');

    /* a tiny or absent error buffer is fine */
    assert_null(tlsconn_ctx_new_server(path_of("server.pem"), path_of("other.key"), NULL, err,
                                       8));
    assert_int_equal(strlen(err), 7);
    assert_null(tlsconn_ctx_new_client(path_of("missing-ca.pem"), NULL, 0));
    assert_queue_clean();
}

static void test_misuse(void **state)
{
    struct tlsconn_ctx *cc = client_ctx("ca1.pem");
    struct tlsconn_ctx *sc = server_ctx("server.pem", "server.key", NULL);
    char longname[300];
    struct tlsconn *t;

    (void)state;
    memset(longname, 'a', sizeof(longname) - 1);
    longname[sizeof(longname) - 1] = '\0';
    assert_null(tlsconn_new_client(sc, "localhost", NULL));
    assert_null(tlsconn_new_server(cc));
    assert_null(tlsconn_new_client(cc, NULL, NULL)); /* verification is not optional */
    assert_null(tlsconn_new_client(cc, "", NULL));
    assert_null(tlsconn_new_client(cc, ".", NULL));
    assert_null(tlsconn_new_client(cc, longname, NULL));
    assert_null(tlsconn_new_client(NULL, "localhost", NULL));
    assert_null(tlsconn_new_server(NULL));
    tlsconn_free(NULL);
    tlsconn_ctx_free(NULL);

    t = tlsconn_new_client(cc, "localhost", NULL);
    assert_non_null(t);
    assert_int_equal(tlsconn_write(t, "x", 1), TLSCONN_ERROR);
    assert_contains(tlsconn_error(t), "handshake");
    assert_int_equal(tlsconn_take(t, longname, 0), 0);
    tlsconn_free(t);
    assert_queue_clean();

    tlsconn_ctx_free(cc);
    tlsconn_ctx_free(sc);
}

static void test_garbage_input(void **state)
{
    struct tlsconn_ctx *sc = server_ctx("server.pem", "server.key", NULL);
    struct tlsconn *s = tlsconn_new_server(sc);
    struct tlsconn *s2 = tlsconn_new_server(sc);
    char buf[64];
    size_t n;

    (void)state;
    assert_non_null(s);
    assert_non_null(s2);
    /* a plaintext Redis client on a TLS port */
    tlsconn_feed(s, "*1\r\n$4\r\nPING\r\n", 14);
    assert_int_equal(tlsconn_read(s, buf, sizeof(buf), &n), TLSCONN_ERROR);
    assert_int_equal(n, 0);
    assert_true(strlen(tlsconn_error(s)) > 0);
    assert_string_not_equal(tlsconn_error(s), "no error");
    assert_queue_clean();
    tlsconn_feed(s, "more", 4); /* ignored after a fatal error */
    assert_int_equal(tlsconn_handshake(s), TLSCONN_ERROR);

    /* the other connection on the same thread is untouched */
    assert_int_equal(tlsconn_handshake(s2), TLSCONN_WANT_MORE);
    assert_string_equal(tlsconn_error(s2), "no error");
    /* an empty feed and a handshake with no input stay in progress */
    tlsconn_feed(s2, "", 0);
    assert_int_equal(tlsconn_handshake(s2), TLSCONN_WANT_MORE);
    assert_int_equal(tlsconn_pending_out(s2), 0);

    tlsconn_free(s);
    tlsconn_free(s2);
    tlsconn_ctx_free(sc);
}

/* Reload: a context may be freed while connections made from it are still running. */
static void test_ctx_freed_before_connections(void **state)
{
    struct tlsconn_ctx *cc = client_ctx("ca1.pem");
    struct tlsconn_ctx *sc = server_ctx("server.pem", "server.key", NULL);
    struct end c = engine(tlsconn_new_client(cc, "localhost", NULL));
    struct end s = engine(tlsconn_new_server(sc));
    char buf[16];

    (void)state;
    tlsconn_ctx_free(cc);
    tlsconn_ctx_free(sc);
    handshake_ok(&c, &s);
    assert_int_equal(tlsconn_write(c.t, "ping", 4), TLSCONN_OK);
    transfer(&c, &s);
    assert_int_equal(drain(s.t, buf, sizeof(buf), sizeof(buf)), 4);
    end_free(&c);
    end_free(&s);
}

/* Our client against a TLS 1.2-only server: verification holds on the older protocol. */
static void test_tls12_server(void **state)
{
    SSL_CTX *raw = SSL_CTX_new(TLS_server_method());
    struct tlsconn_ctx *cc = client_ctx("ca1.pem");
    struct end c, s;
    char buf[16];
    int rc, rs;

    (void)state;
    assert_non_null(raw);
    assert_int_equal(SSL_CTX_set_max_proto_version(raw, TLS1_2_VERSION), 1);
    assert_int_equal(SSL_CTX_use_certificate_chain_file(raw, path_of("server.pem")), 1);
    assert_int_equal(SSL_CTX_use_PrivateKey_file(raw, path_of("server.key"), SSL_FILETYPE_PEM),
                     1);

    c = engine(tlsconn_new_client(cc, "localhost", NULL));
    s = raw_peer(raw, true);
    handshake_ok(&c, &s);
    assert_int_equal(SSL_version(s.ssl), TLS1_2_VERSION);
    assert_string_equal(SSL_get_servername(s.ssl, TLSEXT_NAMETYPE_host_name), "localhost");
    assert_int_equal(SSL_write(s.ssl, "+PONG\r\n", 7), 7);
    transfer(&s, &c);
    assert_int_equal(drain(c.t, buf, sizeof(buf), sizeof(buf)), 7);
    /* A TLS 1.2 renegotiation request is refused, not followed: the client answers with a
     * no_renegotiation alert and stays usable; the server gives up. */
    {
        size_t n = 99;

        assert_int_equal(SSL_renegotiate(s.ssl), 1);
        (void)SSL_do_handshake(s.ssl);
        transfer(&s, &c);
        assert_int_equal(tlsconn_read(c.t, buf, sizeof(buf), &n), TLSCONN_WANT_MORE);
        assert_int_equal(n, 0);
        assert_true(tlsconn_pending_out(c.t) > 0);
        assert_queue_clean();
        transfer(&c, &s);
        assert_true(SSL_read(s.ssl, buf, sizeof(buf)) <= 0);
        assert_int_equal(ERR_GET_REASON(ERR_peek_error()), SSL_R_NO_RENEGOTIATION);
        ERR_clear_error();
    }
    end_free(&c);
    end_free(&s);

    c = engine(tlsconn_new_client(cc, "127.0.0.2", NULL));
    s = raw_peer(raw, true);
    handshake(&c, &s, &rc, &rs);
    assert_int_equal(rc, -1);
    assert_contains(tlsconn_error(c.t), "certificate verify failed: IP address mismatch");
    assert_queue_clean();
    end_free(&c);
    end_free(&s);

    tlsconn_ctx_free(cc);
    SSL_CTX_free(raw);
}

/* A TLS 1.1 client is refused by our server. */
static void test_old_protocol_refused(void **state)
{
    SSL_CTX *raw = SSL_CTX_new(TLS_client_method());
    struct tlsconn_ctx *sc = server_ctx("server.pem", "server.key", NULL);
    struct end c, s;
    int rc, rs;

    (void)state;
    assert_non_null(raw);
    SSL_CTX_set_security_level(raw, 0);
    assert_int_equal(SSL_CTX_set_min_proto_version(raw, TLS1_VERSION), 1);
    assert_int_equal(SSL_CTX_set_max_proto_version(raw, TLS1_1_VERSION), 1);
    assert_int_equal(SSL_CTX_set_cipher_list(raw, "ALL:@SECLEVEL=0"), 1);
    c = raw_peer(raw, false);
    s = engine(tlsconn_new_server(sc));
    handshake(&c, &s, &rc, &rs);
    assert_int_equal(rc, -1);
    assert_int_equal(rs, -1);
    assert_contains(tlsconn_error(s.t), "unsupported protocol");
    assert_queue_clean();
    end_free(&c);
    end_free(&s);
    tlsconn_ctx_free(sc);
    SSL_CTX_free(raw);
}

/* ---- session resumption ------------------------------------------------------------ */

/* How a connection of the resumption tests ends. */
enum close_how {
    CLOSE_CLEAN,  /* the client sends close_notify first (tlsconn_shutdown), then both free */
    CLOSE_ABRUPT, /* freed as they are (what a dropped or discarded socket leads to) */
};

/* One upstream connection made with resume slot r (NULL: none) to a server engine of sc under
 * verify_name: the handshake, a request and its reply; the client reads after the handshake,
 * which is when a TLS 1.3 server's tickets reach it (read_after false: it never reads them).
 * Returns 1 when the handshake completed (*resumed: whether it resumed; the server agrees),
 * -1 when the client failed (err: why). The connection is left open in *c, *s when they are
 * not NULL, else closed as `how` says. */
static int resume_round(struct tlsconn_ctx *cc, struct tlsconn_ctx *sc, const char *verify_name,
                        struct tlsconn_resume *r, bool read_after, enum close_how how,
                        bool *resumed, char *err, size_t errlen, struct end *keep_c,
                        struct end *keep_s)
{
    struct end c = engine(tlsconn_new_client(cc, verify_name, r));
    struct end s = engine(tlsconn_new_server(sc));
    char buf[256];
    size_t n;
    int rc, rs;

    *resumed = false;
    assert_false(tlsconn_resumed(c.t)); /* nothing to say before the handshake */
    handshake(&c, &s, &rc, &rs);
    snprintf(err, errlen, "%s", tlsconn_error(c.t));
    if (rc != 1) {
        assert_false(tlsconn_resumed(c.t));
        assert_queue_clean();
        end_free(&c);
        end_free(&s);
        return -1;
    }
    assert_int_equal(rs, 1);
    *resumed = tlsconn_resumed(c.t);
    assert_int_equal(tlsconn_resumed(s.t), *resumed);

    /* data flows both ways, resumed or not */
    assert_int_equal(tlsconn_write(c.t, "*1\r\n$4\r\nPING\r\n", 14), TLSCONN_OK);
    transfer(&c, &s);
    assert_int_equal(drain(s.t, buf, sizeof(buf), sizeof(buf)), 14);
    assert_memory_equal(buf, "*1\r\n$4\r\nPING\r\n", 14);
    assert_int_equal(tlsconn_write(s.t, "+PONG\r\n", 7), TLSCONN_OK);
    transfer(&s, &c);
    if (read_after) {
        assert_int_equal(drain(c.t, buf, sizeof(buf), sizeof(buf)), 7);
        assert_memory_equal(buf, "+PONG\r\n", 7);
    }
    assert_int_equal(tlsconn_resumed(c.t), *resumed); /* stays what the handshake was */
    assert_queue_clean();
    if (keep_c != NULL) {
        *keep_c = c;
        *keep_s = s;
        return 1;
    }
    if (how == CLOSE_CLEAN) {
        tlsconn_shutdown(c.t);
        transfer(&c, &s);
        assert_int_equal(tlsconn_read(s.t, buf, sizeof(buf), &n), TLSCONN_CLOSED);
        assert_queue_clean();
    }
    end_free(&c);
    end_free(&s);
    return 1;
}

static bool resumes_how(struct tlsconn_ctx *cc, struct tlsconn_ctx *sc, struct tlsconn_resume *r,
                        enum close_how how)
{
    char err[320];
    bool resumed;
    int rc = resume_round(cc, sc, "localhost", r, true, how, &resumed, err, sizeof(err), NULL,
                          NULL);

    if (rc != 1) {
        print_error("handshake failed: %s\n", err);
    }
    assert_int_equal(rc, 1);
    return resumed;
}

static bool resumes(struct tlsconn_ctx *cc, struct tlsconn_ctx *sc, struct tlsconn_resume *r)
{
    return resumes_how(cc, sc, r, CLOSE_CLEAN);
}

/* Connections that end with close_notify: the first with a fresh slot is full, the next ones
 * resume; no slot, no resumption; slots are separate; forget makes the next one full. */
static void test_resumption(void **state)
{
    struct tlsconn_ctx *cc = client_ctx("ca1.pem");
    struct tlsconn_ctx *sc = server_ctx("server.pem", "server.key", NULL);
    struct tlsconn_resume *r = tlsconn_resume_new();
    struct tlsconn_resume *other = tlsconn_resume_new();

    (void)state;
    assert_non_null(r);
    assert_non_null(other);
    /* A fresh slot: a full handshake, whose ticket the slot keeps. */
    assert_false(resumes(cc, sc, r));
    /* Then resumed, again and again (each resumption brings a new ticket). */
    assert_true(resumes(cc, sc, r));
    assert_true(resumes(cc, sc, r));
    /* Without a slot: never. */
    assert_false(resumes(cc, sc, NULL));
    assert_false(resumes(cc, sc, NULL));
    /* Slots are separate: another one starts full. */
    assert_false(resumes(cc, sc, other));
    assert_true(resumes(cc, sc, other));
    assert_true(resumes(cc, sc, r));
    /* Forgotten: full, then resumed from the session that full handshake brought. */
    tlsconn_resume_forget(r);
    assert_false(resumes(cc, sc, r));
    assert_true(resumes(cc, sc, r));
    tlsconn_resume_forget(r);
    tlsconn_resume_forget(r); /* twice is fine */
    assert_false(resumes(cc, sc, r));

    tlsconn_resume_forget(NULL);
    tlsconn_resume_free(NULL);
    tlsconn_resume_free(r);
    tlsconn_resume_free(other);
    assert_queue_clean();
    tlsconn_ctx_free(cc);
    tlsconn_ctx_free(sc);
}

/* Pool growth: while the connection whose ticket the slot keeps is still open, new ones
 * resume from it, however the earlier ones ended. */
static void test_resumption_while_open(void **state)
{
    struct tlsconn_ctx *cc = client_ctx("ca1.pem");
    struct tlsconn_ctx *sc = server_ctx("server.pem", "server.key", NULL);
    struct tlsconn_resume *r = tlsconn_resume_new();
    struct end c[4], s[4];
    char err[320];
    bool resumed;

    (void)state;
    for (int i = 0; i < 4; i++) {
        assert_int_equal(resume_round(cc, sc, "localhost", r, true, CLOSE_ABRUPT, &resumed, err,
                                      sizeof(err), &c[i], &s[i]),
                         1);
        assert_int_equal(resumed, i > 0);
    }
    for (int i = 0; i < 4; i++) {
        end_free(&c[i]);
        end_free(&s[i]);
    }
    tlsconn_resume_free(r);
    tlsconn_ctx_free(cc);
    tlsconn_ctx_free(sc);
}

/* TLS 1.3 tickets come after the handshake: a client that never reads never keeps one. */
static void test_resumption_needs_a_read(void **state)
{
    struct tlsconn_ctx *cc = client_ctx("ca1.pem");
    struct tlsconn_ctx *sc = server_ctx("server.pem", "server.key", NULL);
    struct tlsconn_resume *r = tlsconn_resume_new();
    char err[320];
    bool resumed;

    (void)state;
    for (int i = 0; i < 2; i++) {
        assert_int_equal(resume_round(cc, sc, "localhost", r, false, CLOSE_CLEAN, &resumed, err,
                                      sizeof(err), NULL, NULL),
                         1);
        assert_false(resumed); /* nothing was kept */
    }
    assert_false(resumes(cc, sc, r));
    assert_true(resumes(cc, sc, r));
    tlsconn_resume_free(r);
    tlsconn_ctx_free(cc);
    tlsconn_ctx_free(sc);
}

/* A session only the server that issued it can resume: another server context (its own ticket
 * keys) makes it a full handshake, verified as always, which fails on a bad certificate. */
static void test_resumption_other_server(void **state)
{
    struct tlsconn_ctx *cc = client_ctx("ca1.pem");
    struct tlsconn_ctx *sc = server_ctx("server.pem", "server.key", NULL);
    struct tlsconn_ctx *sc2 = server_ctx("server.pem", "server.key", NULL);
    struct tlsconn_ctx *bad = server_ctx("expired.pem", "server.key", NULL);
    struct tlsconn_resume *r = tlsconn_resume_new();
    char err[320];
    bool resumed;

    (void)state;
    assert_false(resumes(cc, sc, r));
    assert_true(resumes(cc, sc, r));
    /* The other server cannot resume it: a full handshake that succeeds. */
    assert_false(resumes(cc, sc2, r));
    /* The slot now holds sc2's session. */
    assert_true(resumes(cc, sc2, r));
    /* A server with an expired certificate gets the offer too, and the full handshake fails
     * verification. */
    assert_int_equal(resume_round(cc, bad, "localhost", r, true, CLOSE_CLEAN, &resumed, err,
                                  sizeof(err), NULL, NULL),
                     -1);
    assert_contains(err, "certificate verify failed: certificate has expired");
    /* The owner forgets after a failed handshake that offered the session: then full. */
    tlsconn_resume_forget(r);
    assert_false(resumes(cc, sc2, r));
    tlsconn_resume_free(r);
    tlsconn_ctx_free(cc);
    tlsconn_ctx_free(sc);
    tlsconn_ctx_free(sc2);
    tlsconn_ctx_free(bad);
}

/* TLS 1.2: the session comes with the handshake itself and resumes too. */
static void test_resumption_tls12(void **state)
{
    SSL_CTX *raw = SSL_CTX_new(TLS_server_method());
    struct tlsconn_ctx *cc = client_ctx("ca1.pem");
    struct tlsconn_resume *r = tlsconn_resume_new();
    bool reused[3];

    (void)state;
    assert_non_null(raw);
    assert_int_equal(SSL_CTX_set_max_proto_version(raw, TLS1_2_VERSION), 1);
    assert_int_equal(SSL_CTX_use_certificate_chain_file(raw, path_of("server.pem")), 1);
    assert_int_equal(SSL_CTX_use_PrivateKey_file(raw, path_of("server.key"), SSL_FILETYPE_PEM),
                     1);
    for (int i = 0; i < 3; i++) {
        struct end c = engine(tlsconn_new_client(cc, "localhost", r));
        struct end s = raw_peer(raw, true);
        char buf[16];

        handshake_ok(&c, &s);
        assert_int_equal(SSL_version(s.ssl), TLS1_2_VERSION);
        reused[i] = tlsconn_resumed(c.t);
        assert_int_equal(SSL_session_reused(s.ssl), reused[i]);
        assert_int_equal(SSL_write(s.ssl, "+OK\r\n", 5), 5);
        transfer(&s, &c);
        assert_int_equal(drain(c.t, buf, sizeof(buf), sizeof(buf)), 5);
        tlsconn_shutdown(c.t);
        transfer(&c, &s);
        end_free(&c);
        end_free(&s);
    }
    assert_false(reused[0]);
    assert_true(reused[1]);
    assert_true(reused[2]);
    assert_queue_clean();
    tlsconn_resume_free(r);
    tlsconn_ctx_free(cc);
    SSL_CTX_free(raw);
}

/* A reconnect after the connection that brought the slot's session went away without
 * close_notify (upstream connections are closed that way): OpenSSL's SSL_free treats that
 * connection's session as bad (ssl_clear_bad_session marks it not resumable), so the slot must
 * keep a copy of it, not the connection's own object. */
static void test_resumption_after_abrupt_close(void **state)
{
    struct tlsconn_ctx *cc = client_ctx("ca1.pem");
    struct tlsconn_ctx *sc = server_ctx("server.pem", "server.key", NULL);
    struct tlsconn_resume *r = tlsconn_resume_new();
    bool second, third;

    (void)state;
    assert_false(resumes_how(cc, sc, r, CLOSE_ABRUPT));
    second = resumes_how(cc, sc, r, CLOSE_ABRUPT);
    third = resumes_how(cc, sc, r, CLOSE_ABRUPT);
    tlsconn_resume_free(r);
    tlsconn_ctx_free(cc);
    tlsconn_ctx_free(sc);
    if (!second || !third) {
        print_error("reconnects after an abrupt close: resumed %d, %d (want 1, 1)\n", second,
                    third);
    }
    assert_true(second);
    assert_true(third);
}

/* A slot's session is never offered under another verify name than the one it was made under:
 * a resumed TLS 1.3 handshake has no certificate to verify, so the connection under a name the
 * server certificate does not match must fail (a full handshake, hostname mismatch). */
static void test_resumption_other_name(void **state)
{
    struct tlsconn_ctx *cc = client_ctx("ca1.pem");
    struct tlsconn_ctx *sc = server_ctx("server.pem", "server.key", NULL);
    struct tlsconn_resume *r = tlsconn_resume_new();
    char err[320];
    bool resumed;
    int rc;

    (void)state;
    assert_false(resumes(cc, sc, r));
    /* a full handshake under that name fails, of course */
    assert_int_equal(resume_round(cc, sc, "redis.example.com", NULL, true, CLOSE_CLEAN, &resumed,
                                  err, sizeof(err), NULL, NULL),
                     -1);
    assert_contains(err, "hostname mismatch");
    rc = resume_round(cc, sc, "redis.example.com", r, true, CLOSE_CLEAN, &resumed, err,
                      sizeof(err), NULL, NULL);
    tlsconn_resume_free(r);
    tlsconn_ctx_free(cc);
    tlsconn_ctx_free(sc);
    if (rc == 1) {
        print_error("a session made under 'localhost' was %s under 'redis.example.com', which "
                    "the certificate does not match\n",
                    resumed ? "resumed" : "accepted");
    }
    assert_int_equal(rc, -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_handshake_and_data),
        cmocka_unit_test(test_large_payload),
        cmocka_unit_test(test_hostname_mismatch),
        cmocka_unit_test(test_untrusted_ca),
        cmocka_unit_test(test_ip_literals),
        cmocka_unit_test(test_sni),
        cmocka_unit_test(test_client_cert_missing),
        cmocka_unit_test(test_client_cert_present),
        cmocka_unit_test(test_client_cert_untrusted),
        cmocka_unit_test(test_peer_cn_ambiguous),
        cmocka_unit_test(test_data_behind_handshake),
        cmocka_unit_test(test_partial_records),
        cmocka_unit_test(test_close_notify),
        cmocka_unit_test(test_cert_expiry),
        cmocka_unit_test(test_ctx_errors),
        cmocka_unit_test(test_misuse),
        cmocka_unit_test(test_garbage_input),
        cmocka_unit_test(test_ctx_freed_before_connections),
        cmocka_unit_test(test_tls12_server),
        cmocka_unit_test(test_old_protocol_refused),
        cmocka_unit_test(test_resumption),
        cmocka_unit_test(test_resumption_while_open),
        cmocka_unit_test(test_resumption_needs_a_read),
        cmocka_unit_test(test_resumption_other_server),
        cmocka_unit_test(test_resumption_tls12),
        cmocka_unit_test(test_resumption_after_abrupt_close),
        cmocka_unit_test(test_resumption_other_name),
    };

    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
