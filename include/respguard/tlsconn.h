/*
 * tlsconn: OpenSSL behind a socket-free interface.
 *
 * Contexts (client and server) and a per-connection TLS engine that works over memory BIOs:
 * the caller feeds ciphertext it read from the socket, takes ciphertext to write to the socket,
 * and exchanges plaintext with the engine. No socket, no loop, no global state besides
 * OpenSSL's own. This is the only module that includes OpenSSL headers.
 *
 * Upstream (client) contexts always verify: TLS 1.2 minimum, the chain against the system
 * trust store or a CA file, the host name (or IP address SAN) and SNI. There is no switch that
 * turns verification off.
 */
#ifndef RESPGUARD_TLSCONN_H
#define RESPGUARD_TLSCONN_H

#include <stdbool.h>
#include <stddef.h>

struct tlsconn_ctx; /* an SSL_CTX, reference counted by OpenSSL */
struct tlsconn;     /* one connection's engine */

/* Client context for upstream connections. ca_file NULL: the system default trust store.
 * Returns NULL and writes a reason into err on failure. */
struct tlsconn_ctx *tlsconn_ctx_new_client(const char *ca_file, char *err, size_t errlen);

/* Server context for a TLS listener. client_ca_file non-NULL: client certificates are
 * required and verified against it. */
struct tlsconn_ctx *tlsconn_ctx_new_server(const char *cert_file, const char *key_file,
                                           const char *client_ca_file, char *err, size_t errlen);

void tlsconn_ctx_free(struct tlsconn_ctx *ctx);

/* Seconds until the certificate in cert_file (PEM) expires (negative when expired); used for
 * metrics and check output. 0 on success, -1 on failure. */
int tlsconn_cert_file_expiry(const char *cert_file, long long *seconds_left);

/* Session resumption for client engines: one slot that keeps (a copy of) the newest session a
 * server handed out (TLS 1.3 tickets arrive after the handshake, TLS 1.2 sessions with it) and
 * offers it to the next connection made with the slot, which then skips the certificate exchange
 * and the server's key operation if the server accepts it. A slot belongs to one thread and must
 * serve one context; it must outlive every engine made with it. Verification is not weakened: a
 * session exists only after a verified handshake, and is offered only under the verify name it
 * was made under (a connection under another name drops it). */
struct tlsconn_resume;
struct tlsconn_resume *tlsconn_resume_new(void); /* NULL when out of memory */
void tlsconn_resume_free(struct tlsconn_resume *r); /* NULL is fine */
/* Drop the kept session (e.g. after a failed handshake that offered it). NULL is fine. */
void tlsconn_resume_forget(struct tlsconn_resume *r);

/* New client engine. verify_name: the host name or IP literal the server certificate must
 * match; it is also sent as SNI unless it is an IP literal. resume: a slot to resume from and to
 * keep new sessions in, or NULL for a full handshake and no session kept. */
struct tlsconn *tlsconn_new_client(struct tlsconn_ctx *ctx, const char *verify_name, struct tlsconn_resume *resume);
/* The completed handshake resumed an earlier session. */
bool tlsconn_resumed(const struct tlsconn *t);
struct tlsconn *tlsconn_new_server(struct tlsconn_ctx *ctx);
void tlsconn_free(struct tlsconn *t);

enum tlsconn_status {
    TLSCONN_OK = 0,       /* progress made or nothing to do */
    TLSCONN_WANT_MORE = 1,/* needs more ciphertext from the peer */
    TLSCONN_CLOSED = 2,   /* the peer sent close_notify */
    TLSCONN_ERROR = -1,   /* fatal; tlsconn_error() says why (verification result included) */
};

/* Hand ciphertext read from the socket to the engine. Always accepts all of it. */
void tlsconn_feed(struct tlsconn *t, const char *data, size_t len);

/* Drive the handshake. TLSCONN_OK once it is complete (tlsconn_handshake_done() then true). */
enum tlsconn_status tlsconn_handshake(struct tlsconn *t);
bool tlsconn_handshake_done(const struct tlsconn *t);

/* Read decrypted application data into buf. *n is set to the bytes produced (0 when none are
 * available yet: status TLSCONN_WANT_MORE). */
enum tlsconn_status tlsconn_read(struct tlsconn *t, char *buf, size_t cap, size_t *n);

/* Encrypt application data; all of it is accepted (the ciphertext waits in the engine until
 * taken). Only after the handshake is done. */
enum tlsconn_status tlsconn_write(struct tlsconn *t, const char *data, size_t len);

/* Ciphertext waiting to go to the peer (handshake records, encrypted data, alerts). */
size_t tlsconn_pending_out(const struct tlsconn *t);
/* Move up to cap bytes of that ciphertext into buf; returns the count. */
size_t tlsconn_take(struct tlsconn *t, char *buf, size_t cap);

/* Queue a close_notify alert (to be taken with tlsconn_take). */
void tlsconn_shutdown(struct tlsconn *t);

/* Give back the engine's record buffers while the connection is idle (nothing buffered inside);
 * they are allocated again at its next record. */
void tlsconn_trim(struct tlsconn *t);

/* The last error, human readable, e.g. "certificate verify failed: Hostname mismatch" or
 * "certificate verify failed: unable to get local issuer certificate". Never NULL. */
const char *tlsconn_error(const struct tlsconn *t);

/* Server side with client certificates: the peer certificate's subject CN into buf.
 * 0 on success, -1 when there is none. */
int tlsconn_peer_cn(const struct tlsconn *t, char *buf, size_t cap);
/* Seconds until the verified peer certificate expires (negative: expired), 0 on success; -1
 * when the handshake is not done or not verified. */
int tlsconn_peer_cert_expiry(const struct tlsconn *t, long long *seconds_left);

/* The SNI host name: on a server engine the one the client sent (NULL if none, e.g. for IP
 * literals), on a client engine the one it sends. Owned by the engine; for logging and tests. */
const char *tlsconn_server_name(const struct tlsconn *t);

/* True when tlsconn_read() may produce data (or CLOSED/ERROR) without new socket input:
 * complete records wait inside the engine because the last read stopped at its buffer's
 * capacity, or the handshake finished with application data right behind it. False after
 * tlsconn_read() returned WANT_MORE until the next tlsconn_feed() (a partial record does not
 * count), so "while (tlsconn_has_input(t)) tlsconn_read(...)" cannot spin. A caller that
 * stopped reading (back-pressure) must check this on resume instead of waiting for the socket. */
bool tlsconn_has_input(const struct tlsconn *t);

#endif
