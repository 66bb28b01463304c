/*
 * login: who a client is.
 *
 * Checks the credentials of AUTH and HELLO ... AUTH, a verified client certificate's CN and the
 * nopass default user against the worker's users (password, on/off, expiry, allow_from, the login
 * lockout), and records every outcome once: the JSON log line, the metrics, the anomaly detector
 * and the lockout table. The checks have no effect of their own, so a session may check, wait for
 * an upstream connection, and check again before it records anything. The session acts on the
 * answer; this file touches no socket and no connection.
 */
#ifndef RESPGUARD_LOGIN_H
#define RESPGUARD_LOGIN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "respguard/resp.h"

struct worker;
struct acl_user;

/* The client a login is for. */
struct login_source {
    struct worker *w;
    const struct sockaddr *addr; /* its address: allow_from, the lockout, per-source anomalies */
    const char *peer;            /* the same as text, for the log */
    uint64_t session;            /* the session id, for the log */
    const char *protocol;        /* "rest" for the REST listener; NULL: "resp" */
};

enum login_result {
    LOGIN_OK,
    LOGIN_UNKNOWN_USER,
    LOGIN_BAD_PASSWORD, /* or the user is off */
    LOGIN_EXPIRED,
    LOGIN_SOURCE,       /* the user's allow_from does not include the client */
};

/* Redis's answer to every failed login, with its CRLF. */
extern const char login_wrongpass[];

/* user/pass for AUTH or HELLO AUTH: *out is the user when the name exists. No record. The same
 * work is done for unknown names, so the time does not tell which names exist. */
enum login_result login_check(const struct login_source *src, const struct resp_arg *user,
                              const struct resp_arg *pass, const struct acl_user **out);
/* A known user without a password (certificate, nopass default): on, not expired, from an
 * allowed address. No record. */
enum login_result login_check_user(const struct login_source *src, const struct acl_user *u);

/* A REST token: the user one of whose passwords it is (users with nopass never match: a token
 * must be a secret). *out is that user, or NULL (LOGIN_UNKNOWN_USER); LOGIN_BAD_PASSWORD when
 * the user is off, else login_check_user's answer. No record. The token is hashed once and
 * compared with every password of every user, so the time does not tell which one matched. */
enum login_result login_check_token(const struct login_source *src, const char *token, size_t len,
                                    const struct acl_user **out);

/* The login lockout: true when logins of this name from this address are refused now; then the
 * attempt is recorded (metrics, anomaly detector) and reply holds the error line to send, with
 * '-' and CRLF. */
bool login_locked_out(const struct login_source *src, const struct resp_arg *user, char *reply, size_t cap);

/* Record a failed login (log line, metrics, anomaly detector, lockout table). method: NULL for a
 * password, "certificate" for a client certificate. */
void login_record_failure(const struct login_source *src, const struct resp_arg *user, enum login_result r,
                          const char *method);
/* Record a successful login (log line, metrics, anomaly detector). */
void login_record_success(const struct login_source *src, const struct acl_user *u);

#endif
