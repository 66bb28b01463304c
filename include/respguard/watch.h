/*
 * watch: `watch: yes`: a reload when the configuration file or a file it names changes.
 *
 * Directories are watched, not files, so that a file replaced by rename (an editor's save) or a
 * Kubernetes volume's `..data` symlink swap is seen; within a directory only the names that
 * matter count (the files themselves, and kubelet's `..` entries), so that a log file written
 * next to the configuration does not set off reloads. Changes are debounced: one reload fires
 * once nothing has changed for WATCH_DEBOUNCE_MS, however many files a swap touches.
 */
#ifndef RESPGUARD_WATCH_H
#define RESPGUARD_WATCH_H

#include <stdbool.h>
#include <stddef.h>
#include <uv.h>

#define WATCH_DEBOUNCE_MS 200

struct config;
struct watch_dir;

struct watch {
    uv_loop_t *loop;
    void (*changed)(struct watch *wt); /* debounced: something watched changed */
    void *data;                        /* the caller's */
    struct watch_dir *dirs;            /* heap entries, each with its uv_fs_event_t */
    uv_timer_t debounce;
    bool timer_open;
};

/* Watch what cfg names (cfg->path and cfg->files, and the real files behind symlinks), replacing
 * what was watched before; with cfg NULL or cfg->watch false, watch nothing. 0, or a negative uv
 * error after logging it (what could be watched is). */
int watch_set(struct watch *wt, const struct config *cfg);
/* Stop watching and close the handles (the loop then ends without them). */
void watch_close(struct watch *wt);

#endif
