/*
 * watch: directory watches and the debounce timer behind `watch: yes` (the contract is in
 * watch.h). libuv's uv_fs_event_t is inotify on Linux: one handle per directory reports the
 * names created, changed, moved or deleted in it.
 */
#include "respguard/watch.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "respguard/config.h"
#include "respguard/log.h"

struct watch_dir {
    uv_fs_event_t h;
    struct watch *owner;
    struct watch_dir *next;
    char *path;
    char **names; /* the file names in it that matter */
    size_t name_count;
};

static void dir_free(struct watch_dir *d)
{
    for (size_t i = 0; i < d->name_count; i++)
        free(d->names[i]);
    free(d->names);
    free(d->path);
    free(d);
}

static void on_dir_closed(uv_handle_t *h) { dir_free(h->data); }

static void on_debounced(uv_timer_t *t)
{
    struct watch *wt = t->data;
    wt->changed(wt);
}

static bool matters(const struct watch_dir *d, const char *name)
{
    if (!name || strncmp(name, "..", 2) == 0) /* unknown, or kubelet's ..data and ..<timestamp> */
        return true;
    for (size_t i = 0; i < d->name_count; i++)
        if (strcmp(d->names[i], name) == 0)
            return true;
    return false;
}

static void on_event(uv_fs_event_t *h, const char *name, int events, int status)
{
    struct watch_dir *d = h->data;
    (void)events;
    if (status < 0 || !d->owner || !matters(d, name))
        return;
    uv_timer_start(&d->owner->debounce, on_debounced, WATCH_DEBOUNCE_MS, 0);
}

/* Note that name in directory dir matters (one watch_dir per directory, on the list). */
static int add_name(struct watch_dir **list, const char *dir, const char *name)
{
    struct watch_dir *d = *list;
    while (d && strcmp(d->path, dir) != 0)
        d = d->next;
    if (!d) {
        if (!(d = calloc(1, sizeof *d)) || !(d->path = strdup(dir))) {
            free(d);
            return UV_ENOMEM;
        }
        d->next = *list;
        *list = d;
    }
    for (size_t i = 0; i < d->name_count; i++)
        if (strcmp(d->names[i], name) == 0)
            return 0;
    char **names = realloc(d->names, (d->name_count + 1) * sizeof *names);
    if (!names)
        return UV_ENOMEM;
    d->names = names;
    if (!(d->names[d->name_count] = strdup(name)))
        return UV_ENOMEM;
    d->name_count++;
    return 0;
}

/* The directory and name of path ("." for a bare name). */
static int add_path(struct watch_dir **list, const char *path)
{
    const char *slash = strrchr(path, '/');
    if (!slash)
        return add_name(list, ".", path);
    char dir[PATH_MAX];
    size_t n = slash == path ? 1 : (size_t)(slash - path);
    if (n >= sizeof dir)
        return UV_ENAMETOOLONG;
    memcpy(dir, path, n);
    dir[n] = '\0';
    return add_name(list, dir, slash + 1);
}

/* path as written, and the file it resolves to when that is elsewhere (a symlink). */
static int add_file(struct watch_dir **list, const char *path)
{
    int rc = add_path(list, path);
    char real[PATH_MAX];
    if (rc == 0 && realpath(path, real) && strcmp(real, path) != 0)
        rc = add_path(list, real);
    return rc;
}

static void close_dirs(struct watch_dir *d)
{
    while (d) {
        struct watch_dir *next = d->next;
        d->owner = NULL;
        uv_close((uv_handle_t *)&d->h, on_dir_closed);
        d = next;
    }
}

int watch_set(struct watch *wt, const struct config *cfg)
{
    if (!wt->timer_open) {
        uv_timer_init(wt->loop, &wt->debounce);
        wt->debounce.data = wt;
        wt->timer_open = true;
    }
    close_dirs(wt->dirs);
    wt->dirs = NULL;
    if (!cfg || !cfg->watch)
        return 0;
    /* What cannot be watched (a name too long, no memory, a directory that is not there) is
     * logged and left out; the rest is watched. */
    struct watch_dir *list = NULL;
    int rc = 0;
    for (size_t i = 0; i <= cfg->file_count; i++) {
        const char *file = i == 0 ? cfg->path : cfg->files[i - 1];
        int err = add_file(&list, file);
        if (err < 0) {
            log_event(LOG_WARN, "watch", LOG_STR("file", file), LOG_STR("reason", uv_strerror(err)), LOG_END);
            rc = rc ? rc : err;
        }
    }
    struct watch_dir **link = &list;
    while (*link) {
        struct watch_dir *d = *link;
        int err = uv_fs_event_init(wt->loop, &d->h);
        if (err == 0) {
            d->h.data = d;
            d->owner = wt;
            err = uv_fs_event_start(&d->h, on_event, d->path, 0);
            if (err < 0) {
                d->owner = NULL;
                *link = d->next;
                uv_close((uv_handle_t *)&d->h, on_dir_closed);
                log_event(LOG_WARN, "watch", LOG_STR("dir", d->path), LOG_STR("reason", uv_strerror(err)), LOG_END);
                rc = rc ? rc : err;
                continue;
            }
        } else {
            log_event(LOG_WARN, "watch", LOG_STR("dir", d->path), LOG_STR("reason", uv_strerror(err)), LOG_END);
            rc = rc ? rc : err;
            *link = d->next;
            dir_free(d);
            continue;
        }
        link = &d->next;
    }
    wt->dirs = list;
    return rc;
}

void watch_close(struct watch *wt)
{
    close_dirs(wt->dirs);
    wt->dirs = NULL;
    if (wt->timer_open) {
        wt->timer_open = false;
        uv_close((uv_handle_t *)&wt->debounce, NULL);
    }
}
