/*
 * log: JSON lines on stderr, one object per event.
 *
 *   log_event(LOG_INFO, "login", LOG_STR("user", name), LOG_STR("peer", peer), LOG_END);
 *   -> {"ts":"2026-11-29T03:04:05.123Z","level":"info","event":"login","user":"web",...}
 *
 * Each line leaves in one write(2), so lines from concurrent writers never interleave. Events
 * below the configured level are skipped before anything is formatted. Callers must never pass
 * a secret: this module cannot tell one from a name.
 */
#ifndef RESPGUARD_LOG_H
#define RESPGUARD_LOG_H

#include <stdbool.h>
#include <stddef.h>

enum log_level { LOG_DEBUG = 0, LOG_INFO = 1, LOG_WARN = 2, LOG_ERROR = 3 };

enum log_field_type { LOG_T_END = 0, LOG_T_STR, LOG_T_INT, LOG_T_BOOL, LOG_T_BYTES, LOG_T_NUM };

#define LOG_STR(k, v) LOG_T_STR, (const char *)(k), (const char *)(v)
#define LOG_INT(k, v) LOG_T_INT, (const char *)(k), (long long)(v)
#define LOG_BOOL(k, v) LOG_T_BOOL, (const char *)(k), (int)(v)
#define LOG_NUM(k, v) LOG_T_NUM, (const char *)(k), (double)(v)
/* A byte string that may hold anything (a key name): escaped, cut at 128 bytes. */
#define LOG_BYTES(k, p, n) LOG_T_BYTES, (const char *)(k), (const char *)(p), (size_t)(n)
#define LOG_END LOG_T_END

/* Set once at start-up and on reload, from the main thread. */
void log_set_level(enum log_level level);
bool log_enabled(enum log_level level);
void log_event(enum log_level level, const char *event, ...);

#endif
