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

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "respguard/acl.h"
#include "respguard/anomaly.h"
#include "respguard/config.h"
#include "respguard/crypto.h"
#include "respguard/listener.h"
#include "respguard/log.h"
#include "respguard/metrics.h"
#include "respguard/session.h"
#include "respguard/snapshot.h"

size_t worker_user_slot(const struct worker *w, const struct snapshot *snap, const struct acl_user *u)
{
    (void)w;
    return snap->user_slot[snapshot_user_index(snap, u)];
}

const struct config_user *worker_user_config(const struct snapshot *snap, const struct acl_user *u)
{
    return &snap->cfg->users[snapshot_user_index(snap, u)];
}

struct pool *worker_user_pool(const struct worker *w, const struct acl_user *u)
{
    return w->pools[w->login_pool[w->snap->user_login[snapshot_user_index(w->snap, u)]]];
}

void worker_rate_limit_tick(struct worker *w, uint64_t now_ms)
{
    for (size_t i = 0; w->rates && i < w->slot_count; i++) {
        struct worker_user_rate *r = &w->rates[i];
        if (!r->limiting || now_ms - r->last_refused_ms < 1000)
            continue;
        log_event(LOG_INFO, "rate_limit", LOG_STR("phase", "end"), LOG_STR("user", w->slot_names[i]),
                  LOG_INT("refused", (long long)r->refused), LOG_END);
        r->limiting = false;
    }
}

/* ---------------------------------------------------------------------------------------- */
/* What outlives snapshots: user slots, the anomaly detector, the login lockout              */
/* ---------------------------------------------------------------------------------------- */

static size_t find_slot(const struct worker *w, const char *name)
{
    for (size_t i = 0; i < w->slot_count; i++)
        if (strcmp(w->slot_names[i], name) == 0)
            return i;
    return SIZE_MAX;
}

/* Give every user of snap its slot, adding slots (and their metrics and rate buckets) for names
 * not seen before. -ENOMEM adds no slot (the rate array may have grown: harmless). */
static int assign_slots(struct worker *w, struct snapshot *snap)
{
    size_t fresh = 0;
    for (size_t i = 0; i < snap->user_count; i++)
        fresh += find_slot(w, snap->users[i].name) == SIZE_MAX;
    if (fresh) {
        size_t total = w->slot_count + fresh;
        char **names = realloc(w->slot_names, total * sizeof *names);
        if (!names)
            return -ENOMEM;
        w->slot_names = names;
        struct worker_user_rate *rates = realloc(w->rates, total * sizeof *rates);
        if (!rates)
            return -ENOMEM;
        memset(rates + w->slot_count, 0, fresh * sizeof *rates);
        w->rates = rates;
        size_t first = w->slot_count;
        int rc = 0;
        for (size_t i = 0; rc == 0 && i < snap->user_count; i++) {
            if (find_slot(w, snap->users[i].name) != SIZE_MAX)
                continue;
            if (!(w->slot_names[w->slot_count] = strdup(snap->users[i].name)))
                rc = -ENOMEM;
            else
                w->slot_count++;
        }
        if (rc == 0)
            rc = metrics_add_users(w->metrics_all, w->slot_count - first, (const char *const *)w->slot_names + first);
        if (rc != 0) { /* the slots go again, so that a later reload adds them with their metrics */
            while (w->slot_count > first)
                free(w->slot_names[--w->slot_count]);
            return rc;
        }
    }
    for (size_t i = 0; i < snap->user_count; i++)
        snap->user_slot[i] = find_slot(w, snap->users[i].name);
    return 0;
}

/* The detector for snap's settings, per slot: the running one reconfigured when it can be (what
 * it learnt is kept), else a new one. Slots without a user in snap are disabled. */
static int update_anomaly(struct worker *w, const struct snapshot *snap)
{
    const struct config *cfg = snap->cfg;
    if (!cfg->anomaly_enabled) {
        anomaly_free(w->anomaly);
        w->anomaly = NULL;
        return 0;
    }
    struct anomaly_config ac = cfg->anomaly;
    struct anomaly_user_config *per_slot = calloc(w->slot_count ? w->slot_count : 1, sizeof *per_slot);
    if (!per_slot)
        return -ENOMEM;
    for (size_t i = 0; i < w->slot_count; i++) {
        per_slot[i] = ac.user;
        per_slot[i].disabled = true;
    }
    for (size_t i = 0; i < snap->user_count; i++)
        per_slot[snap->user_slot[i]] = cfg->users[i].anomaly;
    ac.overrides = per_slot;
    int rc = w->anomaly ? anomaly_reconfigure(w->anomaly, &ac, w->slot_count) : -EINVAL;
    if (rc == -EINVAL) {
        struct anomaly *d = NULL;
        rc = crypto_random(&ac.hash_seed, sizeof ac.hash_seed) != 0 ? -EIO : anomaly_new(&ac, w->slot_count, &d);
        if (rc == 0) {
            anomaly_free(w->anomaly);
            w->anomaly = d;
        }
    }
    free(per_slot);
    return rc;
}

static bool same_lockout(const struct config_login_lockout *a, const struct config_login_lockout *b)
{
    return a->enabled == b->enabled && a->failures == b->failures && a->window_ms == b->window_ms &&
           a->duration_ms == b->duration_ms;
}

/* The lockout table for lo; a change of settings starts a new, empty one. */
static int update_lockout(struct worker *w, const struct config_login_lockout *lo)
{
    if (!lo->enabled) {
        lockout_free(w->lockout);
        w->lockout = NULL;
        return 0;
    }
    /* The whole source may fail ten times as often as one name: a few apps with stale passwords
     * behind one address are not locked out together, a name sprayer is. */
    uint64_t source_max = (uint64_t)lo->failures * 10;
    struct lockout_config lc = {.max_failures = lo->failures,
                                .source_max_failures = source_max > UINT32_MAX ? UINT32_MAX : (uint32_t)source_max,
                                .window_ms = lo->window_ms,
                                .duration_ms = lo->duration_ms,
                                .table_size = 4096};
    struct lockout *l = NULL;
    if (crypto_random(&lc.hash_seed, sizeof lc.hash_seed) != 0 || lockout_new(&lc, &l) != 0)
        return -ENOMEM;
    lockout_free(w->lockout);
    w->lockout = l;
    return 0;
}

int worker_init(struct worker *w, uv_loop_t *loop, struct snapshot *snap, char *err, size_t errlen)
{
    const struct config *cfg = snap->cfg;
    memset(w, 0, sizeof *w);
    w->loop = loop;
    w->snap = snap;
    w->pool_mode = cfg->upstream.pool.mode;
    w->upstream_port = cfg->upstream.port;
    w->upstream_host = strdup(cfg->upstream.host);
    w->listener_count = cfg->listener_count;
    w->listeners = calloc(cfg->listener_count ? cfg->listener_count : 1, sizeof *w->listeners);
    if (!w->upstream_host || !w->listeners || metrics_new(0, NULL, 1, &w->metrics_all) != 0 ||
        assign_slots(w, snap) != 0 || update_lockout(w, &cfg->limits.login_lockout) != 0) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    w->metrics = metrics_shard(w->metrics_all, 0);
    if (update_anomaly(w, snap) != 0) {
        snprintf(err, errlen, "cannot start the anomaly detector");
        return -1;
    }
    return 0;
}

static void on_spin(uv_idle_t *h) { (void)h; } /* its being active is what counts */

static bool work_left(const struct worker *w)
{
    if (w->input_head || w->flush_head)
        return true;
    for (size_t i = 0; i < w->pool_count; i++)
        if (w->pools[i]->flush_head)
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
            pool_flush(w->pools[i]);
        session_turn_flush(w);
        if (!work_left(w))
            break;
    }
    if (work_left(w))
        uv_idle_start(&w->spin, on_spin);
    else
        uv_idle_stop(&w->spin);
}

/* A pool for login i of the current snapshot, appended to w->pools. A pool that cannot start is
 * kept retired (its users get no connection; the error is logged). */
static int add_pool(struct worker *w, size_t login)
{
    struct pool *p = calloc(1, sizeof *p);
    struct pool **pools = realloc(w->pools, (w->pool_count + 1) * sizeof *pools);
    if (!p || !pools) {
        free(p);
        if (pools)
            w->pools = pools;
        return -ENOMEM;
    }
    w->pools = pools;
    const char *name = snapshot_login_name(w->snap, login);
    int rc = pool_start(p, w, login, name);
    if (rc < 0) {
        log_event(LOG_ERROR, "pool_error", LOG_STR("credential", name), LOG_STR("reason", uv_strerror(rc)),
                  LOG_END);
        p->retired = true;
    }
    w->pools[w->pool_count] = p;
    w->login_pool[login] = w->pool_count++;
    return rc < 0 ? -1 : 0;
}

int worker_start(struct worker *w)
{
    w->login_pool = calloc(w->snap->login_count, sizeof *w->login_pool);
    if (!w->login_pool)
        return -1;
    uv_prepare_init(w->loop, &w->turn);
    uv_idle_init(w->loop, &w->spin);
    w->turn.data = w->spin.data = w;
    w->turn_open = true;
    uv_prepare_start(&w->turn, on_turn);
    for (size_t i = 0; i < w->snap->login_count; i++)
        if (add_pool(w, i) != 0)
            return -1;
    return 0;
}

/* ---------------------------------------------------------------------------------------- */
/* Reload                                                                                    */
/* ---------------------------------------------------------------------------------------- */

static size_t pool_named(const struct worker *w, const char *name)
{
    for (size_t i = 0; i < w->pool_count; i++)
        if (!w->pools[i]->retired && strcmp(w->pools[i]->name, name) == 0)
            return i;
    return SIZE_MAX;
}

int worker_install(struct worker *w, struct snapshot *next, struct worker_reload_result *out, char *err,
                   size_t errlen)
{
    memset(out, 0, sizeof *out);
    /* What can fail comes first, and changes nothing anyone sees: slots (and their counters) for
     * new names, room for the login map. */
    size_t *login_pool = calloc(next->login_count, sizeof *login_pool);
    if (!login_pool || assign_slots(w, next) != 0) {
        free(login_pool);
        snapshot_unref(next);
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    struct snapshot *old = w->snap;
    const struct config *cfg = next->cfg;
    if (update_anomaly(w, next) != 0)
        log_event(LOG_ERROR, "reload", LOG_STR("part", "anomaly"),
                  LOG_STR("reason", "cannot apply the anomaly settings; the previous ones stay"), LOG_END);
    if (!same_lockout(&old->cfg->limits.login_lockout, &cfg->limits.login_lockout) &&
        update_lockout(w, &cfg->limits.login_lockout) != 0)
        log_event(LOG_ERROR, "reload", LOG_STR("part", "login_lockout"),
                  LOG_STR("reason", "cannot apply the login_lockout settings; the previous ones stay"), LOG_END);

    /* Pools follow credential names: a kept name keeps its pool (drained if its login or the
     * upstream verification changed), a new name gets one, a removed one is retired. */
    w->snap = next;
    bool *kept = calloc(w->pool_count ? w->pool_count : 1, sizeof *kept);
    for (size_t i = 0; i < next->login_count; i++) {
        size_t j = pool_named(w, snapshot_login_name(next, i));
        login_pool[i] = j;
        if (j == SIZE_MAX)
            continue;
        if (kept)
            kept[j] = true;
        struct pool *p = w->pools[j];
        bool same = snapshot_same_upstream_login(old, p->login, next, i);
        p->login = i;
        if (!same) {
            pool_drain(p);
            out->pools_drained++;
        }
    }
    for (size_t j = 0; kept && j < w->pool_count; j++)
        if (!kept[j] && !w->pools[j]->retired)
            pool_retire(w->pools[j]);
    free(kept);
    free(w->login_pool);
    w->login_pool = login_pool;
    for (size_t i = 0; i < next->login_count; i++)
        if (login_pool[i] == SIZE_MAX)
            (void)add_pool(w, i); /* logged; its users get no connection until a reload mends it */

    out->sessions_closed = worker_reload_sessions(w);
    for (size_t i = 0; i < w->listener_count; i++)
        listener_reload(&w->listeners[i], next);
    snapshot_unref(old);
    return 0;
}

void worker_stop_pools(struct worker *w)
{
    for (size_t i = 0; i < w->pool_count; i++)
        pool_stop(w->pools[i]);
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
    for (size_t i = 0; i < w->pool_count; i++) {
        pool_free(w->pools[i]);
        free(w->pools[i]);
    }
    free(w->pools);
    w->pools = NULL;
    w->pool_count = 0;
    free(w->login_pool);
    for (size_t i = 0; i < w->listener_count && w->listeners; i++)
        listener_free(&w->listeners[i]);
    free(w->listeners);
    for (size_t i = 0; i < w->slot_count; i++)
        free(w->slot_names[i]);
    free(w->slot_names);
    free(w->rates);
    anomaly_free(w->anomaly);
    lockout_free(w->lockout);
    metrics_free(w->metrics_all);
    free(w->upstream_host);
    snapshot_unref(w->snap);
    memset(w, 0, sizeof *w);
}
