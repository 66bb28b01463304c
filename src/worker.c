/*
 * worker: lookups over the shared configuration and the registry of live sessions.
 * Holds no state of its own beyond struct worker; touches no socket.
 */
#include "respguard/worker.h"

#include <string.h>

#include "respguard/acl.h"
#include "respguard/config.h"

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
