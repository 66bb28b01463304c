/*
 * policy: counting, auditing, learning and rate limiting one command (the contract is in
 * policy.h).
 *
 * What it must not do: log a key name unless log.keys says so, or count one command twice.
 */
#include "respguard/policy.h"

#include <stdio.h>
#include <string.h>

#include "respguard/anomaly.h"
#include "respguard/cmdtab.h"
#include "respguard/config.h"
#include "respguard/invariant.h"
#include "respguard/log.h"
#include "respguard/ratelimit.h"
#include "respguard/snapshot.h"
#include "respguard/worker.h"

size_t policy_slot(const struct policy_actor *a) { return worker_user_slot(a->w, a->snap, a->user); }

void policy_count(const struct policy_actor *a, const struct cmdtab_cmd *cmd, enum metrics_verdict v)
{
    metrics_count_command(a->w->metrics, policy_slot(a), cmd ? metrics_category_of(cmd->categories) : MCAT_UNKNOWN,
                          v);
}

void policy_count_refusal(const struct policy_actor *a, const struct cmdtab_cmd *cmd, enum metrics_counter reason)
{
    policy_count(a, cmd, MV_DENIED);
    metrics_inc(a->w->metrics, reason);
}

static enum metrics_counter refusal_counter(enum acl_result r)
{
    switch (r) {
    case ACL_DENIED_KEY: return MC_REFUSED_KEY;
    case ACL_DENIED_CHANNEL: return MC_REFUSED_CHANNEL;
    case ACL_DENIED_SORT_BY:
    case ACL_DENIED_SORT_GET: return MC_REFUSED_SORT;
    default: return MC_REFUSED_COMMAND;
    }
}

static const char *refusal_kind(enum acl_result r)
{
    switch (r) {
    case ACL_DENIED_KEY: return "key";
    case ACL_DENIED_CHANNEL: return "channel";
    case ACL_DENIED_SORT_BY:
    case ACL_DENIED_SORT_GET: return "key";
    default: return "command";
    }
}

size_t policy_verdict(const struct policy_actor *a, size_t argc, const struct resp_arg *argv, int rc,
                      const struct acl_verdict *v, char *line, size_t cap)
{
    /* What the user does, allowed or not, feeds its baselines: a read-only client trying DEL
     * is the change in behaviour even when it is refused. */
    if (a->w->anomaly && v->cmd) {
        int idx = (int)policy_slot(a);
        uint64_t now = uv_now(a->w->loop);
        anomaly_record_command(a->w->anomaly, idx, v->cmd->categories, now);
        if (rc != 0 && v->result >= ACL_DENIED_COMMAND)
            anomaly_record_denial(a->w->anomaly, idx, a->addr, now);
    }
    if (rc == 0)
        return 0; /* counted by the caller, which may still refuse it */
    if (v->result >= ACL_DENIED_COMMAND)
        policy_count_refusal(a, v->cmd, refusal_counter(v->result));
    else
        policy_count(a, v->cmd, MV_ERROR);

    RG_INVARIANT(cap >= ACL_ERROR_MAX + 3);
    line[0] = '-';
    size_t n = acl_verdict_error(v, argc, argv, line + 1, ACL_ERROR_MAX);
    if (n > ACL_ERROR_MAX - 1)
        n = ACL_ERROR_MAX - 1;
    memcpy(line + 1 + n, "\r\n", 2);
    if (v->result >= ACL_DENIED_COMMAND) {
        /* The audit line: who, what, why, and where (argument position; 0: the command). Key
         * names only with log.keys: they may be personal data. */
        const char *cmd = v->cmd ? v->cmd->name : "?";
        bool with_key = a->snap->cfg->log_keys && v->pos > 0 && v->pos < argc;
        const struct resp_arg *arg = with_key ? &argv[v->pos] : NULL;
        log_event(LOG_WARN, "refused", LOG_STR("user", a->user->name), LOG_STR("peer", a->peer),
                  LOG_STR("protocol", a->protocol), LOG_STR("command", cmd), LOG_STR("reason", refusal_kind(v->result)),
                  LOG_STR("rule", acl_reason_name(v->reason)), LOG_INT("position", (long long)v->pos),
                  LOG_INT("session", a->id), with_key ? LOG_T_BYTES : LOG_T_END, "argument",
                  arg ? arg->ptr : NULL, arg ? arg->len : (size_t)0, LOG_END);
    }
    return n + 3;
}

bool policy_rate_limited(const struct policy_actor *a, const struct cmdtab_cmd *cmd, char *line, size_t cap,
                         size_t *len)
{
    const struct config_rate_limit *rl = &worker_user_config(a->snap, a->user)->rate_limit;
    if (!rl->enabled)
        return false;
    struct worker_user_rate *r = &a->w->rates[policy_slot(a)];
    uint64_t now = uv_now(a->w->loop);
    if (token_bucket_take(&r->bucket, rl->rate, rl->burst, now))
        return false;
    if (!r->limiting) {
        log_event(LOG_WARN, "rate_limit", LOG_STR("phase", "begin"), LOG_STR("user", a->user->name),
                  LOG_STR("peer", a->peer), LOG_STR("protocol", a->protocol), LOG_NUM("commands_per_second", rl->rate),
                  LOG_NUM("burst", rl->burst), LOG_END);
        r->limiting = true;
        r->refused = 0;
    }
    r->refused++;
    r->last_refused_ms = now;
    /* What the user tries is still its behaviour: the detector sees the attempted rate. */
    if (a->w->anomaly && cmd)
        anomaly_record_command(a->w->anomaly, (int)policy_slot(a), cmd->categories, now);
    policy_count(a, cmd, MV_RATE_LIMITED);
    metrics_inc(a->w->metrics, MC_REFUSED_RATE_LIMIT);
    *len = policy_rate_limit_error(a->user, line, cap);
    return true;
}

size_t policy_rate_limit_error(const struct acl_user *u, char *line, size_t cap)
{
    int n = snprintf(line, cap, "-ERR rate limit exceeded for user '%s'\r\n", u->name);
    if (n >= 0 && (size_t)n < cap)
        return (size_t)n;
    memcpy(line + cap - 3, "\r\n", 3); /* a very long user name: cut, still one line */
    return cap - 1;
}
