/*
 * worker: lookups over the shared configuration, the end of rate-limit episodes, and the
 * registry of live sessions. Holds no state of its own beyond struct worker; touches no socket.
 */
#include "respguard/worker.h"

#include <string.h>

#include "respguard/acl.h"
#include "respguard/config.h"
#include "respguard/log.h"

const struct acl_user *worker_find_user(const struct worker *w, const char *name, size_t len)
{
    for (size_t i = 0; i < w->user_count; i++) {
        const char *n = w->users[i].name;
        if (strlen(n) == len && memcmp(n, name, len) == 0)
            return &w->users[i];
    }
    return NULL;
}

const struct config_user *worker_user_config(const struct worker *w, const struct acl_user *u)
{
    return &w->cfg->users[u - w->users];
}

void worker_rate_limit_tick(struct worker *w, uint64_t now_ms)
{
    for (size_t i = 0; w->rates && i < w->user_count; i++) {
        struct worker_user_rate *r = &w->rates[i];
        if (!r->limiting || now_ms - r->last_refused_ms < 1000)
            continue;
        log_event(LOG_INFO, "rate_limit", LOG_STR("phase", "end"), LOG_STR("user", w->users[i].name),
                  LOG_INT("refused", (long long)r->refused), LOG_END);
        r->limiting = false;
    }
}
