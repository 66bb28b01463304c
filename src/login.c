/*
 * login: credential checks and the record of every login (the contract is in login.h).
 *
 * What it must not do: log a password, tell an unknown user name from a wrong password (in the
 * reply or the time taken), or count one attempt twice.
 */
#include "respguard/login.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

#include "respguard/acl.h"
#include "respguard/anomaly.h"
#include "respguard/config.h"
#include "respguard/crypto.h"
#include "respguard/log.h"
#include "respguard/metrics.h"
#include "respguard/ratelimit.h"
#include "respguard/snapshot.h"
#include "respguard/worker.h"

const char login_wrongpass[] = "-WRONGPASS invalid username-password pair or user is disabled.\r\n";

static const char *result_name(enum login_result r)
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

static const char *proto(const struct login_source *src) { return src->protocol ? src->protocol : "resp"; }

static enum metrics_counter result_counter(enum login_result r)
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

enum login_result login_check_user(const struct login_source *src, const struct acl_user *u)
{
    if (!u->enabled)
        return LOGIN_BAD_PASSWORD;
    const struct config_user *uc = worker_user_config(src->w->snap, u);
    if (uc->has_expires && time(NULL) >= uc->expires)
        return LOGIN_EXPIRED;
    if (uc->allow_from.count && !config_cidr_match(&uc->allow_from, src->addr))
        return LOGIN_SOURCE;
    return LOGIN_OK;
}

enum login_result login_check(const struct login_source *src, const struct resp_arg *user,
                              const struct resp_arg *pass, const struct acl_user **out)
{
    const struct acl_user *u = snapshot_find_user(src->w->snap, user->ptr, user->len);
    *out = u;
    if (!u) {
        /* Same work as for a real user, so timing does not tell which names exist. */
        uint8_t h[CRYPTO_SHA256_LEN];
        crypto_sha256(pass->ptr, pass->len, h);
        return LOGIN_UNKNOWN_USER;
    }
    if (!acl_user_check_password(u, pass->ptr, pass->len))
        return LOGIN_BAD_PASSWORD;
    return login_check_user(src, u);
}

enum login_result login_check_token(const struct login_source *src, const char *token, size_t len,
                                    const struct acl_user **out)
{
    const struct snapshot *snap = src->w->snap;
    uint8_t h[CRYPTO_SHA256_LEN];
    crypto_sha256(token, len, h);
    const struct acl_user *found = NULL;
    for (size_t i = 0; i < snap->user_count; i++) {
        const struct acl_user *u = &snap->users[i];
        bool match = false;
        for (size_t j = 0; j < u->hash_count; j++)
            match |= crypto_equal(h, u->hashes[j], CRYPTO_SHA256_LEN);
        if (match && !u->nopass && !found)
            found = u;
    }
    crypto_wipe(h, sizeof h);
    *out = found;
    if (!found)
        return LOGIN_UNKNOWN_USER;
    if (!found->enabled)
        return LOGIN_BAD_PASSWORD;
    return login_check_user(src, found);
}

bool login_locked_out(const struct login_source *src, const struct resp_arg *user, char *reply, size_t cap)
{
    struct worker *w = src->w;
    uint64_t retry_ms = 0, now = uv_now(w->loop);
    if (!w->lockout || !lockout_locked(w->lockout, src->addr, user->ptr, user->len, now, &retry_ms))
        return false;
    /* Each attempt still counts as a failed login for the anomaly detector, not in the log: the
     * lockout's start was logged once. */
    if (w->anomaly)
        anomaly_record_auth_failure(w->anomaly, src->addr, now);
    metrics_inc(w->metrics, MC_LOGIN_LOCKED_OUT);
    snprintf(reply, cap,
             "-WRONGPASS too many failed logins for this user from this address, try again in %llu seconds\r\n",
             (unsigned long long)((retry_ms + 999) / 1000));
    return true;
}

void login_record_failure(const struct login_source *src, const struct resp_arg *user, enum login_result r,
                          const char *method)
{
    struct worker *w = src->w;
    uint64_t now = uv_now(w->loop);
    metrics_inc(w->metrics, result_counter(r));
    if (method) {
        /* A certificate is not guessed: it counts towards neither a lockout nor an auth failure
         * burst. */
        log_event(LOG_WARN, "login", LOG_STR("result", "fail"), LOG_BYTES("user", user->ptr, user->len),
                  LOG_STR("peer", src->peer), LOG_STR("protocol", proto(src)), LOG_STR("reason", result_name(r)),
                  LOG_STR("method", method),
                  LOG_INT("session", src->session), LOG_END);
        return;
    }
    if (w->anomaly)
        anomaly_record_auth_failure(w->anomaly, src->addr, now);
    log_event(LOG_WARN, "login", LOG_STR("result", "fail"), LOG_BYTES("user", user->ptr, user->len),
              LOG_STR("peer", src->peer), LOG_STR("protocol", proto(src)), LOG_STR("reason", result_name(r)),
              LOG_INT("session", src->session),
              LOG_END);
    if (!w->lockout || !lockout_record_failure(w->lockout, src->addr, user->ptr, user->len, now))
        return;
    const struct config_login_lockout *lo = &w->snap->cfg->limits.login_lockout;
    log_event(LOG_WARN, "login_lockout", LOG_STR("peer", src->peer), LOG_BYTES("user", user->ptr, user->len),
              LOG_INT("failures", lo->failures), LOG_INT("window_ms", (long long)lo->window_ms),
              LOG_INT("duration_ms", (long long)lo->duration_ms), LOG_END);
    metrics_inc(w->metrics, MC_LOCKOUTS);
}

void login_record_success(const struct login_source *src, const struct acl_user *u)
{
    struct worker *w = src->w;
    log_event(LOG_INFO, "login", LOG_STR("result", "ok"), LOG_STR("user", u->name), LOG_STR("peer", src->peer),
              LOG_STR("protocol", proto(src)), LOG_INT("session", src->session), LOG_END);
    metrics_inc(w->metrics, MC_LOGIN_OK);
    if (w->anomaly)
        anomaly_record_connection(w->anomaly, (int)worker_user_slot(w, w->snap, u), src->addr, uv_now(w->loop));
}
