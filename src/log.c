/*
 * log: formats JSON log lines and writes each with a single write(2) to stderr.
 * A sink: calls no other module. It must not block for long nor allocate: lines are built in a
 * fixed stack buffer and cut (with "truncated":true) when a value would overflow it.
 */
#include "respguard/log.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static atomic_int min_level = LOG_INFO;

static const char *const level_names[] = {"debug", "info", "warn", "error"};

void log_set_level(enum log_level level) { atomic_store(&min_level, (int)level); }

bool log_enabled(enum log_level level) { return (int)level >= atomic_load(&min_level); }

struct line {
    char buf[4096];
    size_t len;
    bool truncated;
};

static void put(struct line *l, const char *s, size_t n)
{
    /* Keep room for the closing part: ,"truncated":true}\n */
    if (l->len + n > sizeof(l->buf) - 24) {
        l->truncated = true;
        return;
    }
    memcpy(l->buf + l->len, s, n);
    l->len += n;
}

static void put_escaped(struct line *l, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    put(l, "\"", 1);
    for (size_t i = 0; i < n && !l->truncated; i++) {
        unsigned char c = (unsigned char)s[i];
        char esc[6];
        if (c == '"' || c == '\\') {
            esc[0] = '\\';
            esc[1] = (char)c;
            put(l, esc, 2);
        } else if (c < 0x20 || c >= 0x7f) {
            /* Non-ASCII bytes are escaped too: the log stays valid JSON whatever a client sent. */
            memcpy(esc, "\\u00", 4);
            esc[4] = hex[c >> 4];
            esc[5] = hex[c & 15];
            put(l, esc, 6);
        } else {
            put(l, (const char *)&c, 1);
        }
    }
    put(l, "\"", 1);
}

static void put_key(struct line *l, const char *k)
{
    put(l, ",", 1);
    put_escaped(l, k, strlen(k));
    put(l, ":", 1);
}

void log_event(enum log_level level, const char *event, ...)
{
    if (!log_enabled(level))
        return;
    struct line l = {.len = 0, .truncated = false};
    struct timeval tv;
    gettimeofday(&tv, NULL);
    struct tm tm;
    gmtime_r(&tv.tv_sec, &tm);
    char ts[64];
    int n = snprintf(ts, sizeof ts, "{\"ts\":\"%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ\",\"level\":\"%s\"",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                     (long)(tv.tv_usec / 1000), level_names[level]);
    put(&l, ts, (size_t)n);
    put_key(&l, "event");
    put_escaped(&l, event, strlen(event));

    va_list ap;
    va_start(ap, event);
    for (;;) {
        int type = va_arg(ap, int);
        if (type == LOG_T_END)
            break;
        const char *key = va_arg(ap, const char *);
        put_key(&l, key);
        switch (type) {
        case LOG_T_STR: {
            const char *v = va_arg(ap, const char *);
            if (v)
                put_escaped(&l, v, strlen(v));
            else
                put(&l, "null", 4);
            break;
        }
        case LOG_T_INT: {
            char num[32];
            int m = snprintf(num, sizeof num, "%lld", va_arg(ap, long long));
            put(&l, num, (size_t)m);
            break;
        }
        case LOG_T_NUM: {
            char num[48];
            double v = va_arg(ap, double);
            int m = v == v && v - v == 0 ? snprintf(num, sizeof num, "%.6g", v) : snprintf(num, sizeof num, "null");
            put(&l, num, (size_t)m);
            break;
        }
        case LOG_T_BOOL:
            if (va_arg(ap, int))
                put(&l, "true", 4);
            else
                put(&l, "false", 5);
            break;
        case LOG_T_BYTES: {
            const char *p = va_arg(ap, const char *);
            size_t len = va_arg(ap, size_t);
            put_escaped(&l, p, len > 128 ? 128 : len);
            break;
        }
        default:
            va_end(ap);
            return; /* a caller bug; writing a half line would be worse */
        }
    }
    va_end(ap);
    if (l.truncated) {
        memcpy(l.buf + l.len, ",\"truncated\":true", 17);
        l.len += 17;
    }
    l.buf[l.len++] = '}';
    l.buf[l.len++] = '\n';
    ssize_t w = write(STDERR_FILENO, l.buf, l.len);
    (void)w;
}
