/*
 * worker: lookups over the shared configuration, the end of rate-limit episodes, the pools and
 * the work at the end of each loop turn. Holds no state of its own beyond struct worker.
 *
 * The loop turn: everything sessions and pools write during a turn (replies to clients, commands
 * to the upstream) is queued, and sent in one write per connection just before the loop waits
 * for I/O again (a uv_prepare_t, Redis's beforeSleep). So the commands of many clients that
 * arrive in one turn leave on a shared upstream connection in one write, and a pipeline's
 * replies leave in one write to its client.
 */
#include "respguard/worker.h"

#include <string.h>

#include "respguard/acl.h"
#include "respguard/config.h"
#include "respguard/log.h"
#include "respguard/session.h"

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

static void on_spin(uv_idle_t *h) { (void)h; } /* its being active is what counts */

static bool work_left(const struct worker *w)
{
    if (w->input_head || w->flush_head)
        return true;
    for (size_t i = 0; i < w->pool_count; i++)
        if (w->pools[i].flush_head)
            return true;
    return false;
}

static void on_turn(uv_prepare_t *h)
{
    struct worker *w = h->data;
    /* A write that leaves at once may free a paused side (TRANSPORT_DRAINED), whose work is
     * then done here too; a few rounds at most, the rest next turn without waiting. */
    for (int round = 0; round < 4; round++) {
        session_turn_input(w);
        for (size_t i = 0; i < w->pool_count; i++)
            pool_flush(&w->pools[i]);
        session_turn_flush(w);
        if (!work_left(w))
            break;
    }
    if (work_left(w))
        uv_idle_start(&w->spin, on_spin);
    else
        uv_idle_stop(&w->spin);
}

static const char *pool_name(const struct worker *w, size_t i)
{
    return i == 0 ? "url" : w->cfg->upstream.credentials[i - 1].name;
}

int worker_start(struct worker *w)
{
    w->pools = calloc(w->upstream_login_count, sizeof *w->pools);
    if (!w->pools)
        return -1;
    uv_prepare_init(w->loop, &w->turn);
    uv_idle_init(w->loop, &w->spin);
    w->turn.data = w->spin.data = w;
    w->turn_open = true;
    uv_prepare_start(&w->turn, on_turn);
    for (size_t i = 0; i < w->upstream_login_count; i++) {
        int rc = pool_start(&w->pools[i], w, i, pool_name(w, i));
        if (rc < 0) {
            log_event(LOG_ERROR, "pool_error", LOG_STR("credential", pool_name(w, i)),
                      LOG_STR("reason", uv_strerror(rc)), LOG_END);
            for (size_t j = 0; j < i; j++)
                pool_stop(&w->pools[j]);
            return -1;
        }
        w->pool_count = i + 1;
    }
    return 0;
}

void worker_stop_pools(struct worker *w)
{
    for (size_t i = 0; i < w->pool_count; i++)
        pool_stop(&w->pools[i]);
}

void worker_close_turn(struct worker *w)
{
    if (!w->turn_open)
        return;
    w->turn_open = false;
    uv_close((uv_handle_t *)&w->turn, NULL);
    uv_close((uv_handle_t *)&w->spin, NULL);
}

void worker_free(struct worker *w)
{
    for (size_t i = 0; i < w->pool_count; i++)
        pool_free(&w->pools[i]);
    free(w->pools);
    w->pools = NULL;
    w->pool_count = 0;
}
