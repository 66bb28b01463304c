/*
 * config: one YAML file -> one immutable, validated struct config.
 *
 * The file is loaded with libyaml's document API and walked against small tables of keys
 * (name, type, where the value goes, whether it is required, its range), so each level of the
 * file is described once. Every scalar value gets ${VAR} expansion from the environment; *_file
 * keys read a secret from a file. Everything is checked here, once, so the rest of respguard can
 * trust the snapshot: the first error ends the load with "file:line:column: message".
 *
 * This file must not: open a socket or resolve a name (addresses are numeric, the upstream host
 * is resolved by the upstream module), log, keep mutable global state, or put a secret (a
 * password, the upstream URL, an ACL string, the content of a *_file) into an error message.
 * Error messages name the key and the position, never the value of a secret.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include "respguard/config.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>
#include <yaml.h>

#include "respguard/anomaly.h"

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

#define CONFIG_FILE_MAX (16u << 20) /* the configuration file itself */
#define SECRET_FILE_MAX (1u << 20)  /* a *_file secret */
#define NAME_MAX_LEN 64             /* user and credential names */
#define PATH_LEN 256                /* "users.web.allow_from[3]" and the like */
#define SHOW_LEN 72                 /* a name echoed in a message is cut to this */
#define ENV_NAME_MAX 128

const char *const config_default_never[] = {
    "flushall",       "flushdb",         "config",          "debug",
    "shutdown",       "monitor",         "replicaof",       "slaveof",
    "sync",           "psync",           "module",          "acl",
    "swapdb",         "failover",        "cluster",         "save",
    "bgsave",         "bgrewriteaof",    "client|kill",     "client|list",
    "client|pause",   "client|unpause",  "client|unblock",  "client|no-evict",
    "script|flush",   "script|kill",     "function|flush",  "function|kill",
    "function|delete", "function|restore", NULL,
};

/* ---------------------------------------------------------------------------------------- */
/* Loader state and errors                                                                  */
/* ---------------------------------------------------------------------------------------- */

struct loader {
    const char *file;               /* the configuration path, for messages */
    char *dir;                      /* its directory; NULL: relative paths stay relative */
    const char *text;               /* the file's bytes, to place reader errors */
    size_t text_len;
    yaml_document_t *doc;
    struct config *c;
    char *err;
    size_t errlen;
    const yaml_node_t **user_cred;  /* per user: its upstream_credential value, checked last */
    bool never_set;                 /* guard.never_by_category was given */
    const yaml_node_t *anomaly_key; /* the top-level anomaly key, NULL when absent */
    const yaml_node_t **user_anomaly_key; /* per user: its anomaly key, NULL when absent */
    uint32_t *user_anomaly_set;     /* per user: bit i = user_anomaly_fields[i] was given */
    const yaml_node_t **rest_bind;  /* per rest listener: its bind value, checked last */
};

/* Overwrite and free a string that may hold a secret. Used for every string of the snapshot:
 * the cost is nothing next to remembering which ones were secret. */
static void sfree(char *s)
{
    if (s) {
        explicit_bzero(s, strlen(s));
        free(s);
    }
}

static void vfail_at(struct loader *ld, size_t line, size_t col, const char *fmt, va_list ap)
{
    if (!ld->err || ld->errlen == 0)
        return;
    int n = snprintf(ld->err, ld->errlen, "%s:%zu:%zu: ", ld->file, line, col);
    if (n >= 0 && (size_t)n < ld->errlen)
        vsnprintf(ld->err + n, ld->errlen - (size_t)n, fmt, ap);
    /* One line, whatever went into it. */
    for (char *p = ld->err; *p; p++)
        if ((unsigned char)*p < 0x20 || *p == 0x7f)
            *p = '?';
}

__attribute__((format(printf, 5, 6)))
static int fail_at(struct loader *ld, size_t line, size_t col, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vfail_at(ld, line, col, fmt, ap);
    va_end(ap);
    return code;
}

/* Report an error at node n (line 1, column 1 when there is none) and return -EINVAL. */
__attribute__((format(printf, 3, 4)))
static int fail(struct loader *ld, const yaml_node_t *n, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vfail_at(ld, n ? n->start_mark.line + 1 : 1, n ? n->start_mark.column + 1 : 1, fmt, ap);
    va_end(ap);
    return -EINVAL;
}

__attribute__((format(printf, 4, 5)))
static int fail_code(struct loader *ld, const yaml_node_t *n, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vfail_at(ld, n ? n->start_mark.line + 1 : 1, n ? n->start_mark.column + 1 : 1, fmt, ap);
    va_end(ap);
    return code;
}

static int oom(struct loader *ld, const yaml_node_t *n)
{
    return fail_code(ld, n, -ENOMEM, "out of memory");
}

/* A name from the file, cut and cleaned for a message (never more than one line). */
static const char *show(char *buf, size_t size, const char *s, size_t len)
{
    size_t k = 0, i = 0;
    for (; i < len && k + 4 < size; i++)
        buf[k++] = ((unsigned char)s[i] < 0x20 || s[i] == 0x7f) ? '?' : s[i];
    if (i < len) {
        memcpy(buf + k, "...", 3);
        k += 3;
    }
    buf[k] = '\0';
    return buf;
}

/* A path for messages, "listeners[0].tls" and the like; a very long one is cut. */
__attribute__((format(printf, 2, 3)))
static void make_path(char out[PATH_LEN], const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(out, PATH_LEN, fmt, ap);
    va_end(ap);
}

/* " in upstream" or nothing at the top level. */
static const char *in_word(const char *path)
{
    return *path ? " in " : "";
}

static const char *node_kind(const yaml_node_t *n)
{
    switch (n->type) {
    case YAML_MAPPING_NODE:
        return "a mapping";
    case YAML_SEQUENCE_NODE:
        return "a list";
    default:
        return "a single value";
    }
}

static int type_error(struct loader *ld, const yaml_node_t *n, const char *path, const char *want)
{
    return fail(ld, n, "%s: expected %s, found %s", path, want, node_kind(n));
}

static const char *scalar(const yaml_node_t *n, size_t *len)
{
    *len = n->data.scalar.length;
    return (const char *)n->data.scalar.value;
}

static bool is_null(const yaml_node_t *n)
{
    size_t len;
    const char *v = scalar(n, &len);
    if (n->data.scalar.style != YAML_PLAIN_SCALAR_STYLE)
        return false;
    return len == 0 || (len == 1 && v[0] == '~') ||
           (len == 4 && (!memcmp(v, "null", 4) || !memcmp(v, "Null", 4) || !memcmp(v, "NULL", 4)));
}

static yaml_node_t *node_at(struct loader *ld, int index)
{
    return yaml_document_get_node(ld->doc, index);
}

/* ---------------------------------------------------------------------------------------- */
/* Scalars: ${VAR} expansion, files                                                         */
/* ---------------------------------------------------------------------------------------- */

static bool env_name_ok(const char *s, size_t len)
{
    if (len == 0 || len >= ENV_NAME_MAX || !(isalpha((unsigned char)s[0]) || s[0] == '_'))
        return false;
    for (size_t i = 1; i < len; i++)
        if (!(isalnum((unsigned char)s[i]) || s[i] == '_'))
            return false;
    return true;
}

/* Expand ${VAR} from the environment and $$ into $; any other $ stays as it is. Two passes:
 * measure, then fill, so a secret is never in a buffer that realloc could leave behind. */
static int expand(struct loader *ld, const yaml_node_t *n, const char *v, size_t len, char **out)
{
    size_t need = 0;
    char *o = NULL;
    for (int pass = 0; pass < 2; pass++) {
        size_t k = 0;
        if (pass == 1) {
            o = malloc(need + 1);
            if (!o)
                return oom(ld, n);
        }
        for (size_t i = 0; i < len;) {
            const char *piece = v + i;
            size_t plen = 1;
            if (v[i] == '$' && i + 1 < len && v[i + 1] == '$') {
                i += 2;
            } else if (v[i] == '$' && i + 1 < len && v[i + 1] == '{') {
                const char *name = v + i + 2;
                const char *close = memchr(name, '}', len - i - 2);
                if (!close) {
                    sfree(o);
                    return fail(ld, n, "unterminated ${ (write $$ for a literal $)");
                }
                size_t nlen = (size_t)(close - name);
                if (!env_name_ok(name, nlen)) {
                    sfree(o);
                    return fail(ld, n, "invalid environment variable name in ${...}");
                }
                char var[ENV_NAME_MAX];
                memcpy(var, name, nlen);
                var[nlen] = '\0';
                piece = getenv(var);
                if (!piece) {
                    sfree(o);
                    return fail(ld, n, "environment variable %s is not set", var);
                }
                plen = strlen(piece);
                i = (size_t)(close - v) + 1;
            } else {
                i++;
            }
            if (o) {
                if (plen > need - k) { /* the environment changed between the passes */
                    sfree(o);
                    return fail(ld, n, "the environment changed while loading");
                }
                memcpy(o + k, piece, plen);
            }
            k += plen;
        }
        if (pass == 0) {
            need = k;
        } else {
            o[k] = '\0';
            explicit_bzero(o + k, need - k); /* keeps the whole buffer defined */
        }
    }
    *out = o;
    return 0;
}

/* The value of a scalar node after ${VAR} expansion; a null, a list or a mapping is an error. */
static int get_scalar(struct loader *ld, const yaml_node_t *n, const char *path, char **out)
{
    *out = NULL;
    if (n->type != YAML_SCALAR_NODE)
        return type_error(ld, n, path, "a single value");
    if (is_null(n))
        return fail(ld, n, "%s: missing value", path);
    size_t len;
    const char *v = scalar(n, &len);
    if (memchr(v, '\0', len))
        return fail(ld, n, "%s: contains a NUL character", path);
    return expand(ld, n, v, len, out);
}

/* Read a whole file. regular: only a regular file (secrets: no FIFO or device can block or
 * stream forever). Returns 0, -EINVAL (not a regular file), -EFBIG or -errno. The buffer is
 * NUL-terminated; *len excludes the NUL. */
int config_read_file(const char *path, bool regular, size_t max, char **out, size_t *len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | (regular ? O_NONBLOCK : 0));
    if (fd < 0)
        return -errno;
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = -errno;
        close(fd);
        return e;
    }
    if (S_ISDIR(st.st_mode) || (regular && !S_ISREG(st.st_mode))) {
        close(fd);
        return S_ISDIR(st.st_mode) ? -EISDIR : -EINVAL;
    }
    size_t cap = 4096;
    if (S_ISREG(st.st_mode) && st.st_size >= 0 && (uint64_t)st.st_size < max)
        cap = (size_t)st.st_size + 2;
    char *buf = malloc(cap);
    size_t n = 0;
    int rc = buf ? 0 : -ENOMEM;
    while (rc == 0) {
        if (n + 1 == cap) {
            if (cap > max) {
                rc = -EFBIG;
                break;
            }
            /* Grow by copy so no stale copy of a secret is left to realloc. */
            size_t ncap = cap * 2 > max + 2 ? max + 2 : cap * 2;
            char *nb = malloc(ncap);
            if (!nb) {
                rc = -ENOMEM;
                break;
            }
            memcpy(nb, buf, n);
            explicit_bzero(buf, cap);
            free(buf);
            buf = nb;
            cap = ncap;
        }
        ssize_t r = read(fd, buf + n, cap - 1 - n);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            rc = -errno;
        } else if (r == 0) {
            break;
        } else {
            n += (size_t)r;
            if (n > max)
                rc = -EFBIG;
        }
    }
    close(fd);
    if (rc < 0) {
        if (buf) {
            explicit_bzero(buf, cap);
            free(buf);
        }
        return rc;
    }
    buf[n] = '\0';
    *out = buf;
    *len = n;
    return 0;
}

static const char *errstr(int code, char *buf, size_t size)
{
    switch (code) {
    case -EINVAL:
        return "not a regular file";
    case -EFBIG:
        return "file too large";
    default:
        return strerror_r(-code, buf, size);
    }
}

/* Every file the configuration names goes on its list of files (what `watch` watches), once. */
static int note_file(struct loader *ld, const yaml_node_t *n, const char *file)
{
    struct config *c = ld->c;
    for (size_t i = 0; i < c->file_count; i++)
        if (strcmp(c->files[i], file) == 0)
            return 0;
    char **files = realloc(c->files, (c->file_count + 1) * sizeof *files);
    if (!files)
        return oom(ld, n);
    c->files = files;
    if (!(files[c->file_count] = strdup(file)))
        return oom(ld, n);
    c->file_count++;
    return 0;
}

/* A file path from the file: relative paths are relative to the configuration's directory. */
static int resolve_path(struct loader *ld, const yaml_node_t *n, char *s, char **out)
{
    char *p = s;
    if (s[0] != '/' && ld->dir) {
        size_t dl = strlen(ld->dir), sl = strlen(s);
        p = malloc(dl + 1 + sl + 1);
        if (!p) {
            sfree(s);
            return oom(ld, n);
        }
        memcpy(p, ld->dir, dl);
        p[dl] = '/';
        memcpy(p + dl + 1, s, sl + 1);
        sfree(s);
    }
    int rc = note_file(ld, n, p);
    if (rc < 0) {
        sfree(p);
        return rc;
    }
    *out = p;
    return 0;
}

static int get_path(struct loader *ld, const yaml_node_t *n, const char *path, char **out)
{
    char *s;
    int rc = get_scalar(ld, n, path, &s);
    if (rc < 0)
        return rc;
    if (!*s) {
        sfree(s);
        return fail(ld, n, "%s: empty file name", path);
    }
    return resolve_path(ld, n, s, out);
}

/* The content of a *_file secret, one trailing newline (\n or \r\n) removed. */
static int get_secret_file(struct loader *ld, const yaml_node_t *n, const char *path, char **out)
{
    char *file, *buf, eb[128], nb[SHOW_LEN * 3];
    size_t len;
    int rc = get_path(ld, n, path, &file);
    if (rc < 0)
        return rc;
    show(nb, sizeof nb, file, strlen(file));
    rc = config_read_file(file, true, SECRET_FILE_MAX, &buf, &len);
    sfree(file);
    if (rc == -ENOMEM)
        return oom(ld, n);
    if (rc < 0)
        return fail_code(ld, n, rc == -EINVAL || rc == -EFBIG ? -EINVAL : rc,
                         "%s: cannot read %s: %s", path, nb, errstr(rc, eb, sizeof eb));
    if (len > 0 && buf[len - 1] == '\n') {
        buf[--len] = '\0';
        if (len > 0 && buf[len - 1] == '\r')
            buf[--len] = '\0';
    }
    if (len == 0 || memchr(buf, '\0', len)) {
        bool empty = len == 0;
        explicit_bzero(buf, len);
        free(buf);
        return fail(ld, n, "%s: %s %s", path, nb, empty ? "is empty" : "contains a NUL byte");
    }
    *out = buf;
    return 0;
}

/* ---------------------------------------------------------------------------------------- */
/* Numbers, durations, sizes, times, addresses                                              */
/* ---------------------------------------------------------------------------------------- */

/* Leading decimal digits of s into *v; returns the number of digits, 0 if none, -ERANGE. */
static int parse_digits(const char *s, uint64_t *v)
{
    uint64_t x = 0;
    int i = 0;
    for (; s[i] >= '0' && s[i] <= '9'; i++) {
        unsigned d = (unsigned)(s[i] - '0');
        if (x > (UINT64_MAX - d) / 10)
            return -ERANGE;
        x = x * 10 + d;
        if (i > 1000)
            return -ERANGE;
    }
    *v = x;
    return i;
}

static int parse_u64(const char *s, uint64_t *v)
{
    int n = parse_digits(s, v);
    if (n < 0)
        return n;
    return n == 0 || s[n] != '\0' ? -EINVAL : 0;
}

/* "20", "0.5", "1.25": decimal digits with an optional fraction; no sign, exponent, hex, inf
 * or nan, so a value means what it reads as. 0 or -EINVAL. */
static int parse_number(const char *s, double *v)
{
    size_t i = 0, int_digits = 0, frac_digits = 0;
    while (s[i] >= '0' && s[i] <= '9') {
        i++;
        int_digits++;
    }
    if (s[i] == '.') {
        i++;
        while (s[i] >= '0' && s[i] <= '9') {
            i++;
            frac_digits++;
        }
        if (frac_digits == 0)
            return -EINVAL;
    }
    if (int_digits == 0 || s[i] != '\0' || i > 64)
        return -EINVAL;
    char *end;
    errno = 0;
    double x = strtod(s, &end);
    if (*end != '\0' || errno == ERANGE || !(x >= 0.0 && x <= 1e300))
        return -EINVAL;
    *v = x;
    return 0;
}

static int scale(uint64_t v, uint64_t unit, uint64_t *out)
{
    if (v > UINT64_MAX / unit)
        return -ERANGE;
    *out = v * unit;
    return 0;
}

int config_parse_duration(const char *s, uint64_t *ms)
{
    static const struct {
        const char *suffix;
        uint64_t unit;
    } units[] = {{"", 1000}, {"ms", 1}, {"s", 1000}, {"m", 60000}, {"h", 3600000}};
    uint64_t v;
    if (!s || !ms)
        return -EINVAL;
    int n = parse_digits(s, &v);
    if (n <= 0)
        return n < 0 ? n : -EINVAL;
    for (size_t i = 0; i < ARRAY_SIZE(units); i++)
        if (strcmp(s + n, units[i].suffix) == 0)
            return scale(v, units[i].unit, ms);
    return -EINVAL;
}

int config_parse_size(const char *s, uint64_t *bytes)
{
    static const struct {
        const char *suffix;
        uint64_t unit;
    } units[] = {{"", 1},         {"b", 1},         {"k", 1ull << 10}, {"kb", 1ull << 10},
                 {"m", 1ull << 20}, {"mb", 1ull << 20}, {"g", 1ull << 30}, {"gb", 1ull << 30}};
    uint64_t v;
    if (!s || !bytes)
        return -EINVAL;
    int n = parse_digits(s, &v);
    if (n <= 0)
        return n < 0 ? n : -EINVAL;
    for (size_t i = 0; i < ARRAY_SIZE(units); i++)
        if (strcasecmp(s + n, units[i].suffix) == 0)
            return scale(v, units[i].unit, bytes);
    return -EINVAL;
}

/* "2m" rather than "120000" in a range message. */
static const char *show_ms(char *buf, size_t size, uint64_t ms)
{
    if (ms == 0)
        snprintf(buf, size, "0s");
    else if (ms % 3600000 == 0)
        snprintf(buf, size, "%" PRIu64 "h", ms / 3600000);
    else if (ms % 60000 == 0)
        snprintf(buf, size, "%" PRIu64 "m", ms / 60000);
    else if (ms % 1000 == 0)
        snprintf(buf, size, "%" PRIu64 "s", ms / 1000);
    else
        snprintf(buf, size, "%" PRIu64 "ms", ms);
    return buf;
}

static const char *show_bytes(char *buf, size_t size, uint64_t b)
{
    if (b >= (1ull << 30) && b % (1ull << 30) == 0)
        snprintf(buf, size, "%" PRIu64 "gb", b >> 30);
    else if (b >= (1ull << 20) && b % (1ull << 20) == 0)
        snprintf(buf, size, "%" PRIu64 "mb", b >> 20);
    else if (b >= (1ull << 10) && b % (1ull << 10) == 0)
        snprintf(buf, size, "%" PRIu64 "kb", b >> 10);
    else
        snprintf(buf, size, "%" PRIu64, b);
    return buf;
}

static int two_digits(const char *s)
{
    if (s[0] < '0' || s[0] > '9' || s[1] < '0' || s[1] > '9')
        return -1;
    return (s[0] - '0') * 10 + (s[1] - '0');
}

/* "2027-06-30T00:00:00Z" (RFC 3339, UTC, whole seconds) into epoch seconds. */
static int parse_utc_time(const char *s, time_t *out)
{
    static const int mdays[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    if (strlen(s) != 20 || s[4] != '-' || s[7] != '-' || (s[10] != 'T' && s[10] != 't') ||
        s[13] != ':' || s[16] != ':' || (s[19] != 'Z' && s[19] != 'z'))
        return -EINVAL;
    int hi = two_digits(s), lo = two_digits(s + 2);
    int mon = two_digits(s + 5), day = two_digits(s + 8);
    int hour = two_digits(s + 11), min = two_digits(s + 14), sec = two_digits(s + 17);
    if (hi < 0 || lo < 0 || mon < 1 || mon > 12 || day < 1 || hour < 0 || hour > 23 || min < 0 ||
        min > 59 || sec < 0 || sec > 59)
        return -EINVAL;
    int year = hi * 100 + lo;
    bool leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    if (year < 1970 || day > mdays[mon - 1] + (mon == 2 && leap))
        return -EINVAL;
    struct tm tm = {.tm_year = year - 1900, .tm_mon = mon - 1, .tm_mday = day,
                    .tm_hour = hour, .tm_min = min, .tm_sec = sec};
    time_t t = timegm(&tm);
    if (t == (time_t)-1)
        return -EINVAL;
    *out = t;
    return 0;
}

static void set_sockaddr(struct sockaddr_storage *ss, int family, const void *addr, uint16_t port)
{
    memset(ss, 0, sizeof *ss);
    if (family == AF_INET) {
        struct sockaddr_in *sin = (struct sockaddr_in *)ss;
        sin->sin_family = AF_INET;
        sin->sin_port = htons(port);
        memcpy(&sin->sin_addr, addr, 4);
    } else {
        struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)ss;
        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = htons(port);
        memcpy(&sin6->sin6_addr, addr, 16);
    }
}

int config_parse_cidr(const char *s, struct config_cidr *out)
{
    char host[INET6_ADDRSTRLEN + 1];
    unsigned char addr[16];
    if (!s || !out)
        return -EINVAL;
    const char *slash = strchr(s, '/');
    size_t hlen = slash ? (size_t)(slash - s) : strlen(s);
    if (hlen == 0 || hlen >= sizeof host)
        return -EINVAL;
    memcpy(host, s, hlen);
    host[hlen] = '\0';
    int family = memchr(host, ':', hlen) ? AF_INET6 : AF_INET;
    unsigned max = family == AF_INET ? 32 : 128;
    if (inet_pton(family, host, addr) != 1)
        return -EINVAL;
    uint64_t prefix = max;
    if (slash) {
        int n = parse_digits(slash + 1, &prefix);
        if (n <= 0 || n > 3 || slash[1 + n] != '\0' || prefix > max)
            return -EINVAL;
    }
    for (unsigned bit = (unsigned)prefix; bit < max; bit++)
        addr[bit / 8] &= (unsigned char)~(0x80u >> (bit % 8));
    memset(out, 0, sizeof *out);
    set_sockaddr(&out->net, family, addr, 0);
    out->prefix = (unsigned)prefix;
    return 0;
}

static bool prefix_equal(const unsigned char *a, const unsigned char *b, unsigned prefix)
{
    unsigned whole = prefix / 8, rest = prefix % 8;
    if (memcmp(a, b, whole) != 0)
        return false;
    if (rest == 0)
        return true;
    unsigned char mask = (unsigned char)(0xffu << (8 - rest));
    return (a[whole] & mask) == (b[whole] & mask);
}

bool config_cidr_match(const struct config_cidr_list *l, const struct sockaddr *addr)
{
    static const unsigned char mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    unsigned char v4[4], v6[16];
    bool has4 = false, has6 = false;
    if (!l || l->count == 0)
        return true;
    if (!addr)
        return false;
    if (addr->sa_family == AF_INET) {
        memcpy(v4, &((const struct sockaddr_in *)addr)->sin_addr, 4);
        memcpy(v6, mapped, 12);
        memcpy(v6 + 12, v4, 4);
        has4 = has6 = true;
    } else if (addr->sa_family == AF_INET6) {
        memcpy(v6, &((const struct sockaddr_in6 *)addr)->sin6_addr, 16);
        has6 = true;
        if (memcmp(v6, mapped, 12) == 0) {
            memcpy(v4, v6 + 12, 4);
            has4 = true;
        }
    }
    for (size_t i = 0; i < l->count; i++) {
        const struct config_cidr *c = &l->items[i];
        const struct sockaddr_in *n4 = (const struct sockaddr_in *)&c->net;
        const struct sockaddr_in6 *n6 = (const struct sockaddr_in6 *)&c->net;
        if (c->net.ss_family == AF_INET && has4 &&
            prefix_equal(v4, (const unsigned char *)&n4->sin_addr, c->prefix))
            return true;
        if (c->net.ss_family == AF_INET6 && has6 &&
            prefix_equal(v6, n6->sin6_addr.s6_addr, c->prefix))
            return true;
    }
    return false;
}

/* A user, credential or command name: 1..64 bytes, no space, no control character. */
static bool name_ok(const char *s, size_t len)
{
    if (len == 0 || len > NAME_MAX_LEN)
        return false;
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)s[i] <= 0x20 || s[i] == 0x7f)
            return false;
    return true;
}

/* A DNS name or an IPv4 literal: letters, digits, '-', '_' and '.', at most 253 bytes. */
static bool host_name_ok(const char *s, size_t len)
{
    if (len == 0 || len > 253)
        return false;
    for (size_t i = 0; i < len; i++)
        if (!isalnum((unsigned char)s[i]) && s[i] != '-' && s[i] != '_' && s[i] != '.')
            return false;
    return true;
}

/* "6379" into 1..65535. */
static int parse_port(const char *s, size_t len, uint16_t *port)
{
    uint64_t v = 0;
    if (len == 0 || len > 5)
        return -EINVAL;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -EINVAL;
        v = v * 10 + (uint64_t)(s[i] - '0');
    }
    if (v < 1 || v > 65535)
        return -EINVAL;
    *port = (uint16_t)v;
    return 0;
}

/* ---------------------------------------------------------------------------------------- */
/* Keys that need a restart (RESTART): is the running value the new one?                   */
/* ---------------------------------------------------------------------------------------- */



/* The listeners are bound sockets: the same addresses, in the same order, each TLS or not as
 * before. (Their certificates, client CAs and allow_from are applied by a reload.) */
static bool same_listeners(const struct config *a, const struct config *b)
{
    if (a->listener_count != b->listener_count)
        return false;
    for (size_t i = 0; i < a->listener_count; i++)
        if (!config_same_address(&a->listeners[i], &b->listeners[i]) ||
            a->listeners[i].tls_enabled != b->listeners[i].tls_enabled)
            return false;
    return true;
}

/* Host names are compared without case (DNS); the URL's credential is not part of it. */
static bool same_upstream_address(const struct config *a, const struct config *b)
{
    return strcasecmp(a->upstream.host, b->upstream.host) == 0 && a->upstream.port == b->upstream.port;
}

static bool same_pool_mode(const struct config *a, const struct config *b)
{
    return a->upstream.pool.mode == b->upstream.pool.mode;
}

static bool same_admin_enabled(const struct config *a, const struct config *b)
{
    return a->admin.enabled == b->admin.enabled;
}

static bool same_admin_bind(const struct config *a, const struct config *b)
{
    return !a->admin.enabled || !b->admin.enabled || config_same_address(&a->admin.listen, &b->admin.listen);
}

static bool same_probe_interval(const struct config *a, const struct config *b)
{
    return !a->admin.enabled || !b->admin.enabled || a->admin.probe_interval_ms == b->admin.probe_interval_ms;
}

/* What rest[i] keeps until a restart (rest.c hands it to the HTTP library at start): the
 * address, TLS on or off, the connection cap and the idle timeout (a new certificate or key is
 * rotated in by rest.c). Empty when the same. */
static const char *rest_restart_key(const struct config_rest *a, const struct config_rest *b)
{
    if (!config_same_address(&a->listen, &b->listen))
        return "bind";
    if (a->listen.tls_enabled != b->listen.tls_enabled)
        return "tls";
    if (a->max_connections != b->max_connections)
        return "max_connections";
    if (a->idle_timeout_ms != b->idle_timeout_ms)
        return "idle_timeout";
    return "";
}

static bool same_rest(const struct config *a, const struct config *b)
{
    if (a->rest_count != b->rest_count)
        return false;
    for (size_t i = 0; i < a->rest_count; i++)
        if (*rest_restart_key(&a->rest[i], &b->rest[i]))
            return false;
    return true;
}

/* ---------------------------------------------------------------------------------------- */
/* The key tables                                                                           */
/* ---------------------------------------------------------------------------------------- */

enum ftype {
    T_STRING,      /* char *, non-empty */
    T_PATH,        /* char *, a file name resolved against the configuration's directory */
    T_SECRET_FILE, /* char *, the content of the named file */
    T_BOOL,        /* bool */
    T_COUNT,       /* uint64_t in [min, max] */
    T_DURATION,    /* uint64_t milliseconds in [min, max] */
    T_SIZE,        /* uint64_t bytes in [min, max] */
    T_U32,         /* uint32_t in [min, max] */
    T_SECONDS,     /* uint32_t seconds from a duration in whole seconds */
    T_NUMBER,      /* double, a non-negative decimal number ("20", "0.5"); ranges are the
                      consumer's (anomaly_config_check) */
    T_CIDRS,       /* struct config_cidr_list */
    T_CUSTOM,      /* load() */
};

#define REQUIRED 1u
/* The key cannot change while respguard runs (a socket is bound, a thread started, sessions
 * depend on it): a reload keeps the running value and logs the key as needing a restart. Every
 * other key is applied by a reload. */
#define RESTART 2u

struct field {
    const char *name;
    enum ftype type;
    size_t off;           /* where the value goes in the object the table describes */
    unsigned flags;
    uint64_t min, max;
    const char *excludes; /* a key that cannot be given together with this one */
    int (*load)(struct loader *ld, const yaml_node_t *v, void *obj, const char *path);
    /* RESTART keys: does the running value equal the new one? (config_restart_keys) */
    bool (*same)(const struct config *running, const struct config *next);
};

struct found {
    const yaml_node_t *key, *value;
};

static bool key_is(const yaml_node_t *k, const char *name)
{
    size_t len;
    const char *s = scalar(k, &len);
    return strlen(name) == len && memcmp(s, name, len) == 0;
}

static int load_cidrs(struct loader *ld, const yaml_node_t *v, const char *path,
                      struct config_cidr_list *out)
{
    if (v->type != YAML_SEQUENCE_NODE)
        return type_error(ld, v, path, "a list of addresses or CIDR ranges");
    size_t n = (size_t)(v->data.sequence.items.top - v->data.sequence.items.start);
    if (n == 0)
        return fail(ld, v, "%s: empty list (remove the key to allow every address)", path);
    out->items = calloc(n, sizeof *out->items);
    if (!out->items)
        return oom(ld, v);
    out->count = n;
    for (size_t i = 0; i < n; i++) {
        const yaml_node_t *item = node_at(ld, v->data.sequence.items.start[i]);
        char ipath[PATH_LEN], nb[SHOW_LEN], *s;
        make_path(ipath, "%s[%zu]", path, i);
        int rc = get_scalar(ld, item, ipath, &s);
        if (rc < 0)
            return rc;
        if (config_parse_cidr(s, &out->items[i]) < 0)
            rc = fail(ld, item, "%s: invalid address or CIDR range '%s'", ipath,
                      show(nb, sizeof nb, s, strlen(s)));
        sfree(s);
        if (rc < 0)
            return rc;
    }
    return 0;
}

static int load_value(struct loader *ld, const struct field *f, const yaml_node_t *v, void *obj,
                      const char *path)
{
    void *dst = (char *)obj + f->off;
    char *s = NULL, b1[32], b2[32];
    uint64_t x = 0;
    int rc;

    switch (f->type) {
    case T_CUSTOM:
        return f->load(ld, v, obj, path);
    case T_CIDRS:
        return load_cidrs(ld, v, path, dst);
    case T_PATH:
    case T_SECRET_FILE:
        rc = f->type == T_PATH ? get_path(ld, v, path, &s) : get_secret_file(ld, v, path, &s);
        if (rc < 0)
            return rc;
        sfree(*(char **)dst);
        *(char **)dst = s;
        return 0;
    default:
        break;
    }

    rc = get_scalar(ld, v, path, &s);
    if (rc < 0)
        return rc;
    switch (f->type) {
    case T_STRING:
        if (!*s) {
            rc = fail(ld, v, "%s: empty value", path);
            break;
        }
        sfree(*(char **)dst);
        *(char **)dst = s;
        return 0;
    case T_BOOL:
        if (!strcasecmp(s, "yes") || !strcasecmp(s, "true"))
            *(bool *)dst = true;
        else if (!strcasecmp(s, "no") || !strcasecmp(s, "false"))
            *(bool *)dst = false;
        else
            rc = fail(ld, v, "%s: expected yes, no, true or false", path);
        break;
    case T_COUNT:
        if (parse_u64(s, &x) < 0 || x < f->min || x > f->max)
            rc = fail(ld, v, "%s: expected a whole number from %" PRIu64 " to %" PRIu64, path,
                      f->min, f->max);
        else
            *(uint64_t *)dst = x;
        break;
    case T_DURATION:
        if (config_parse_duration(s, &x) < 0 || x < f->min || x > f->max)
            rc = fail(ld, v, "%s: expected a duration from %s to %s, like 250ms, 5s, 2m or 1h",
                      path, show_ms(b1, sizeof b1, f->min), show_ms(b2, sizeof b2, f->max));
        else
            *(uint64_t *)dst = x;
        break;
    case T_SIZE:
        if (config_parse_size(s, &x) < 0 || x < f->min || x > f->max)
            rc = fail(ld, v, "%s: expected a size from %s to %s, like 512kb, 10mb or 1gb", path,
                      show_bytes(b1, sizeof b1, f->min), show_bytes(b2, sizeof b2, f->max));
        else
            *(uint64_t *)dst = x;
        break;
    case T_U32:
        if (parse_u64(s, &x) < 0 || x < f->min || x > f->max || x > UINT32_MAX)
            rc = fail(ld, v, "%s: expected a whole number from %" PRIu64 " to %" PRIu64, path,
                      f->min, f->max);
        else
            *(uint32_t *)dst = (uint32_t)x;
        break;
    case T_SECONDS:
        if (config_parse_duration(s, &x) < 0 || x % 1000 != 0 || x / 1000 > UINT32_MAX)
            rc = fail(ld, v, "%s: expected a duration in whole seconds, like 30s, 10m or 1h",
                      path);
        else
            *(uint32_t *)dst = (uint32_t)(x / 1000);
        break;
    case T_NUMBER: {
        double d;
        if (parse_number(s, &d) < 0)
            rc = fail(ld, v, "%s: expected a number that is not negative, like 20 or 0.5",
                      path);
        else
            *(double *)dst = d;
        break;
    }
    default:
        rc = fail(ld, v, "%s: internal error: bad field type", path);
        break;
    }
    sfree(s);
    return rc;
}

/* Load mapping v into obj as described by the table f[0..nf). Keys are checked first (unknown,
 * duplicate, mutually exclusive), then values in the order of the file, then required keys.
 * found[i] receives the key and value nodes of f[i] (NULL when absent) for the caller's own
 * cross-checks. path names the mapping in messages ("" at the top level). */
static int load_fields(struct loader *ld, const yaml_node_t *v, const char *path,
                       const struct field *f, size_t nf, void *obj, struct found *found)
{
    char nb[SHOW_LEN];
    memset(found, 0, nf * sizeof *found);
    if (v->type != YAML_MAPPING_NODE)
        return type_error(ld, v, *path ? path : "the configuration", "a mapping");

    for (yaml_node_pair_t *p = v->data.mapping.pairs.start; p < v->data.mapping.pairs.top; p++) {
        const yaml_node_t *k = node_at(ld, p->key);
        if (k->type != YAML_SCALAR_NODE)
            return fail(ld, k, "expected a key name%s%s, found %s", in_word(path), path,
                        node_kind(k));
        size_t i = 0;
        while (i < nf && !key_is(k, f[i].name))
            i++;
        size_t len;
        const char *name = scalar(k, &len);
        if (i == nf)
            return fail(ld, k, "unknown key '%s'%s%s", show(nb, sizeof nb, name, len),
                        in_word(path), path);
        if (found[i].key)
            return fail(ld, k, "duplicate key '%s'%s%s", f[i].name, in_word(path), path);
        found[i].key = k;
        found[i].value = node_at(ld, p->value);
        for (size_t j = 0; f[i].excludes && j < nf; j++)
            if (found[j].key && strcmp(f[j].name, f[i].excludes) == 0)
                return fail(ld, k, "%s%s'%s' and '%s' cannot both be given", path,
                            *path ? ": " : "", f[j].name, f[i].name);
    }

    for (yaml_node_pair_t *p = v->data.mapping.pairs.start; p < v->data.mapping.pairs.top; p++) {
        const yaml_node_t *k = node_at(ld, p->key);
        size_t i = 0;
        while (!key_is(k, f[i].name))
            i++;
        char vpath[PATH_LEN];
        make_path(vpath, "%s%s%s", path, *path ? "." : "", f[i].name);
        int rc = load_value(ld, &f[i], found[i].value, obj, vpath);
        if (rc < 0)
            return rc;
    }

    for (size_t i = 0; i < nf; i++)
        if ((f[i].flags & REQUIRED) && !found[i].key)
            return fail(ld, v, "missing required key '%s'%s%s", f[i].name, in_word(path), path);
    return 0;
}

/* Iterate a mapping whose keys are names (users, credentials): check each name, reject
 * duplicates, and hand back the name and the value node. */
static int check_name_key(struct loader *ld, const yaml_node_t *v, size_t i, const char *path,
                          const char *what, const yaml_node_t **value, char **name)
{
    char nb[SHOW_LEN];
    const yaml_node_pair_t *p = &v->data.mapping.pairs.start[i];
    const yaml_node_t *k = node_at(ld, p->key);
    size_t len;
    if (k->type != YAML_SCALAR_NODE)
        return fail(ld, k, "%s: expected a %s name, found %s", path, what, node_kind(k));
    const char *s = scalar(k, &len);
    if (!name_ok(s, len))
        return fail(ld, k, "%s: invalid %s name '%s': 1 to %d characters, no spaces or control "
                    "characters", path, what, show(nb, sizeof nb, s, len), NAME_MAX_LEN);
    for (const yaml_node_pair_t *q = v->data.mapping.pairs.start; q < p; q++) {
        size_t qlen;
        const char *qs = scalar(node_at(ld, q->key), &qlen);
        if (qlen == len && memcmp(qs, s, len) == 0)
            return fail(ld, k, "duplicate key '%s' in %s", show(nb, sizeof nb, s, len), path);
    }
    *name = strndup(s, len);
    if (!*name)
        return oom(ld, k);
    *value = node_at(ld, p->value);
    return 0;
}

/* ---------------------------------------------------------------------------------------- */
/* listeners                                                                                */
/* ---------------------------------------------------------------------------------------- */

static int load_user_from_cert(struct loader *ld, const yaml_node_t *v, void *obj,
                               const char *path)
{
    struct config_listener_tls *t = obj;
    char *s;
    int rc = get_scalar(ld, v, path, &s);
    if (rc < 0)
        return rc;
    if (strcmp(s, "cn") == 0)
        t->user_from_cert_cn = true;
    else
        rc = fail(ld, v, "%s: expected cn (the only supported source)", path);
    sfree(s);
    return rc;
}

enum { TLS_CERT, TLS_KEY, TLS_CA, TLS_USER, TLS_N };
static const struct field tls_fields[TLS_N] = {
    [TLS_CERT] = {.name = "cert_file", .type = T_PATH,
                  .off = offsetof(struct config_listener_tls, cert_file), .flags = REQUIRED},
    [TLS_KEY] = {.name = "key_file", .type = T_PATH,
                 .off = offsetof(struct config_listener_tls, key_file), .flags = REQUIRED},
    [TLS_CA] = {.name = "client_ca_file", .type = T_PATH,
                .off = offsetof(struct config_listener_tls, client_ca_file)},
    [TLS_USER] = {.name = "user_from_cert", .type = T_CUSTOM, .load = load_user_from_cert},
};

static int load_tls(struct loader *ld, const yaml_node_t *v, void *obj, const char *path)
{
    struct config_listener *l = obj;
    struct found f[TLS_N];
    int rc = load_fields(ld, v, path, tls_fields, TLS_N, &l->tls, f);
    if (rc < 0)
        return rc;
    if (f[TLS_USER].key && !l->tls.client_ca_file)
        return fail(ld, f[TLS_USER].key, "%s: user_from_cert needs client_ca_file (only a "
                    "verified client certificate can name a user)", path);
    l->tls_enabled = true;
    return 0;
}

enum { LS_BIND, LS_TLS, LS_ALLOW, LS_N };
static const struct field listener_fields[LS_N] = {
    [LS_BIND] = {.name = "bind", .type = T_STRING, .off = offsetof(struct config_listener, bind),
                 .flags = REQUIRED},
    [LS_TLS] = {.name = "tls", .type = T_CUSTOM, .load = load_tls},
    [LS_ALLOW] = {.name = "allow_from", .type = T_CIDRS,
                  .off = offsetof(struct config_listener, allow_from)},
};

/* "127.0.0.1:6379", "[::1]:6379" or "localhost:6379" into host, port and addr. */
static int parse_bind(struct loader *ld, const yaml_node_t *n, const char *path,
                      struct config_listener *l)
{
    char host[INET6_ADDRSTRLEN + 1], text[INET6_ADDRSTRLEN];
    unsigned char addr[16];
    const char *s = l->bind, *h, *port;
    size_t hlen;
    int family = AF_INET;

    if (s[0] == '[') {
        const char *close = strchr(s, ']');
        if (!close || close[1] != ':')
            goto syntax;
        h = s + 1;
        hlen = (size_t)(close - h);
        port = close + 2;
        family = AF_INET6;
    } else {
        const char *colon = strrchr(s, ':');
        if (!colon)
            goto syntax;
        h = s;
        hlen = (size_t)(colon - s);
        port = colon + 1;
        if (memchr(h, ':', hlen))
            return fail(ld, n, "%s: write an IPv6 address in brackets, like [::1]:6379", path);
    }
    if (hlen == 0 || hlen >= sizeof host)
        goto syntax;
    memcpy(host, h, hlen);
    host[hlen] = '\0';
    if (family == AF_INET && strcmp(host, "localhost") == 0)
        strcpy(host, "127.0.0.1");
    if (inet_pton(family, host, addr) != 1)
        goto syntax;
    if (parse_port(port, strlen(port), &l->port) < 0)
        return fail(ld, n, "%s: the port must be a number from 1 to 65535", path);
    if (!inet_ntop(family, addr, text, sizeof text))
        goto syntax;
    l->host = strdup(text);
    if (!l->host)
        return oom(ld, n);
    set_sockaddr(&l->addr, family, addr, l->port);
    return 0;
syntax:
    return fail(ld, n, "%s: expected host:port with a numeric IPv4 address, [IPv6]:port or "
                "localhost:port", path);
}

static bool is_loopback(const struct sockaddr_storage *ss)
{
    if (ss->ss_family == AF_INET) {
        const unsigned char *a = (const unsigned char *)&((const struct sockaddr_in *)ss)->sin_addr;
        return a[0] == 127;
    }
    const struct in6_addr *a6 = &((const struct sockaddr_in6 *)ss)->sin6_addr;
    return IN6_IS_ADDR_LOOPBACK(a6) || (IN6_IS_ADDR_V4MAPPED(a6) && a6->s6_addr[12] == 127);
}

bool config_same_address(const struct config_listener *a, const struct config_listener *b)
{
    if (a->addr.ss_family != b->addr.ss_family || a->port != b->port)
        return false;
    if (a->addr.ss_family == AF_INET)
        return memcmp(&((const struct sockaddr_in *)&a->addr)->sin_addr,
                      &((const struct sockaddr_in *)&b->addr)->sin_addr, 4) == 0;
    return memcmp(&((const struct sockaddr_in6 *)&a->addr)->sin6_addr,
                  &((const struct sockaddr_in6 *)&b->addr)->sin6_addr, 16) == 0;
}

static int load_listeners(struct loader *ld, const yaml_node_t *v, void *obj, const char *path)
{
    struct config *c = obj;
    char nb[SHOW_LEN];
    if (v->type != YAML_SEQUENCE_NODE)
        return type_error(ld, v, path, "a list");
    size_t n = (size_t)(v->data.sequence.items.top - v->data.sequence.items.start);
    if (n == 0)
        return fail(ld, v, "%s: at least one listener is required", path);
    c->listeners = calloc(n, sizeof *c->listeners);
    if (!c->listeners)
        return oom(ld, v);
    c->listener_count = n;
    for (size_t i = 0; i < n; i++) {
        const yaml_node_t *item = node_at(ld, v->data.sequence.items.start[i]);
        struct config_listener *l = &c->listeners[i];
        struct found f[LS_N];
        char lpath[PATH_LEN], bpath[PATH_LEN];
        make_path(lpath, "%s[%zu]", path, i);
        make_path(bpath, "%s.bind", lpath);
        int rc = load_fields(ld, item, lpath, listener_fields, LS_N, l, f);
        if (rc == 0)
            rc = parse_bind(ld, f[LS_BIND].value, bpath, l);
        if (rc < 0)
            return rc;
        if (!l->tls_enabled && !is_loopback(&l->addr))
            return fail(ld, f[LS_BIND].value, "plaintext listener on non-loopback address %s is "
                        "refused: add tls or bind to 127.0.0.1",
                        show(nb, sizeof nb, l->bind, strlen(l->bind)));
        for (size_t j = 0; j < i; j++)
            if (config_same_address(&c->listeners[j], l))
                return fail(ld, f[LS_BIND].value, "%s: %s is already used by %s[%zu]", bpath,
                            show(nb, sizeof nb, l->bind, strlen(l->bind)), path, j);
    }
    return 0;
}

/* ---------------------------------------------------------------------------------------- */
/* upstream                                                                                 */
/* ---------------------------------------------------------------------------------------- */

static int hexval(char ch)
{
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    ch = (char)tolower((unsigned char)ch);
    return ch >= 'a' && ch <= 'f' ? ch - 'a' + 10 : -1;
}

/* Percent-decode s[0..len) into a new string; NULL for an empty one. -EINVAL on a bad escape or
 * an encoded NUL. */
static int pct_decode(const char *s, size_t len, char **out)
{
    *out = NULL;
    if (len == 0)
        return 0;
    char *o = malloc(len + 1);
    size_t k = 0;
    if (!o)
        return -ENOMEM;
    for (size_t i = 0; i < len; i++) {
        if (s[i] != '%') {
            o[k++] = s[i];
            continue;
        }
        int hi = i + 2 < len ? hexval(s[i + 1]) : -1;
        int lo = i + 2 < len ? hexval(s[i + 2]) : -1;
        if (hi < 0 || lo < 0 || (hi == 0 && lo == 0)) {
            explicit_bzero(o, len + 1);
            free(o);
            return -EINVAL;
        }
        o[k++] = (char)(hi * 16 + lo);
        i += 2;
    }
    o[k] = '\0';
    *out = o;
    return 0;
}

/* rediss://[user[:password]@]host[:port][/0] into the upstream's host, port and credential.
 * Nothing of the URL ever goes into a message: it holds the password. */
static int parse_url(struct loader *ld, const yaml_node_t *n, struct config_upstream *u,
                     const yaml_node_t *password_file)
{
    const char *s = u->url, *rest, *end, *p;
    if (strncasecmp(s, "rediss://", 9) == 0)
        rest = s + 9;
    else if (strncasecmp(s, "redis://", 8) == 0)
        return fail(ld, n, "upstream.url: plaintext redis:// is refused, upstream is TLS always "
                    "(use rediss://)");
    else
        return fail(ld, n, "upstream.url: expected a rediss:// URL");

    const char *at = strrchr(rest, '@');
    const char *hp = at ? at + 1 : rest;
    if (strpbrk(hp, "?#"))
        return fail(ld, n, "upstream.url: query and fragment are not supported (TLS "
                    "verification cannot be switched off)");
    if (at) {
        const char *colon = memchr(rest, ':', (size_t)(at - rest));
        const char *uend = colon ? colon : at;
        int rc = pct_decode(rest, (size_t)(uend - rest), &u->username);
        if (rc == 0 && colon) {
            char *pw;
            rc = pct_decode(colon + 1, (size_t)(at - colon - 1), &pw);
            if (rc == 0 && pw && u->password) {
                sfree(pw);
                return fail(ld, password_file, "upstream: the password is given both in url and "
                            "in password_file");
            }
            if (rc == 0 && pw)
                u->password = pw;
        }
        if (rc == -ENOMEM)
            return oom(ld, n);
        if (rc < 0)
            return fail(ld, n, "upstream.url: invalid percent-encoding in the user or password");
    }

    end = strchr(hp, '/');
    if (!end)
        end = hp + strlen(hp);
    if (*hp == '[') {
        const char *close = memchr(hp, ']', (size_t)(end - hp));
        char host[INET6_ADDRSTRLEN + 1];
        unsigned char a6[16];
        size_t hlen = close ? (size_t)(close - hp - 1) : 0;
        if (!close || hlen == 0 || hlen >= sizeof host)
            return fail(ld, n, "upstream.url: invalid IPv6 address in brackets");
        memcpy(host, hp + 1, hlen);
        host[hlen] = '\0';
        if (inet_pton(AF_INET6, host, a6) != 1)
            return fail(ld, n, "upstream.url: invalid IPv6 address in brackets");
        u->host = strdup(host);
        p = close + 1;
    } else {
        p = memchr(hp, ':', (size_t)(end - hp));
        if (!p)
            p = end;
        if (!host_name_ok(hp, (size_t)(p - hp)))
            return fail(ld, n, "upstream.url: expected a host name, an IPv4 address or [IPv6]");
        u->host = strndup(hp, (size_t)(p - hp));
    }
    if (!u->host)
        return oom(ld, n);
    u->port = 6379;
    if (p < end && (*p != ':' || parse_port(p + 1, (size_t)(end - p - 1), &u->port) < 0))
        return fail(ld, n, "upstream.url: the port must be a number from 1 to 65535");
    if (*end && strcmp(end, "/") != 0 && strcmp(end, "/0") != 0)
        return fail(ld, n, "upstream.url: the database must be 0 or absent (respguard sessions "
                    "use database 0)");
    if (u->username && !u->password)
        return fail(ld, n, "upstream.url: a user name needs a password (in the url or in "
                    "password_file)");
    return 0;
}

enum { CR_USER, CR_PASS, CR_PASS_FILE, CR_N };
static const struct field credential_fields[CR_N] = {
    [CR_USER] = {.name = "username", .type = T_STRING,
                 .off = offsetof(struct config_credential, username)},
    [CR_PASS] = {.name = "password", .type = T_STRING,
                 .off = offsetof(struct config_credential, password), .excludes = "password_file"},
    [CR_PASS_FILE] = {.name = "password_file", .type = T_SECRET_FILE,
                      .off = offsetof(struct config_credential, password), .excludes = "password"},
};

static int load_credentials(struct loader *ld, const yaml_node_t *v, void *obj, const char *path)
{
    struct config_upstream *u = obj;
    if (v->type != YAML_MAPPING_NODE)
        return type_error(ld, v, path, "a mapping");
    size_t n = (size_t)(v->data.mapping.pairs.top - v->data.mapping.pairs.start);
    if (n == 0)
        return 0;
    u->credentials = calloc(n, sizeof *u->credentials);
    if (!u->credentials)
        return oom(ld, v);
    u->credential_count = n;
    for (size_t i = 0; i < n; i++) {
        struct config_credential *cr = &u->credentials[i];
        const yaml_node_t *value;
        struct found f[CR_N];
        char cpath[PATH_LEN];
        int rc = check_name_key(ld, v, i, path, "credential", &value, &cr->name);
        if (rc < 0)
            return rc;
        make_path(cpath, "%s.%s", path, cr->name);
        rc = load_fields(ld, value, cpath, credential_fields, CR_N, cr, f);
        if (rc < 0)
            return rc;
        if (!cr->password)
            return fail(ld, value, "missing required key 'password' (or 'password_file') in %s",
                        cpath);
    }
    return 0;
}

static int load_pool_mode(struct loader *ld, const yaml_node_t *v, void *obj, const char *path)
{
    struct config_pool *p = obj;
    char *s;
    int rc = get_scalar(ld, v, path, &s);
    if (rc < 0)
        return rc;
    if (strcmp(s, "session") == 0)
        p->mode = CONFIG_POOL_SESSION;
    else if (strcmp(s, "multiplex") == 0)
        p->mode = CONFIG_POOL_MULTIPLEX;
    else
        rc = fail(ld, v, "%s: expected session or multiplex", path);
    sfree(s);
    return rc;
}

#define PO(name, type, member, min, max) \
    {name, type, offsetof(struct config_pool, member), 0, min, max, NULL, NULL, NULL}
enum { PO_MODE, PO_SIZE, PO_MIN_IDLE, PO_IDLE, PO_LIFETIME, PO_KEEPALIVE, PO_ACQUIRE, PO_N };
static const struct field pool_fields[PO_N] = {
    [PO_MODE] = {"mode", T_CUSTOM, 0, RESTART, 0, 0, NULL, load_pool_mode, same_pool_mode},
    [PO_SIZE] = PO("size", T_COUNT, size, 1, 100000),
    [PO_MIN_IDLE] = PO("min_idle", T_COUNT, min_idle, 0, 100000),
    [PO_IDLE] = PO("idle_timeout", T_DURATION, idle_timeout_ms, 0, 7ull * 86400000),
    [PO_LIFETIME] = PO("max_lifetime", T_DURATION, max_lifetime_ms, 0, 365ull * 86400000),
    [PO_KEEPALIVE] = PO("keepalive", T_DURATION, keepalive_ms, 0, 86400000),
    [PO_ACQUIRE] = PO("acquire_timeout", T_DURATION, acquire_timeout_ms, 1, 3600000),
};
#undef PO

static int load_pool(struct loader *ld, const yaml_node_t *v, void *obj, const char *path)
{
    struct config_pool *p = &((struct config_upstream *)obj)->pool;
    struct found f[PO_N];
    int rc = load_fields(ld, v, path, pool_fields, PO_N, p, f);
    if (rc < 0)
        return rc;
    if (p->min_idle > p->size) {
        if (!f[PO_MIN_IDLE].value) {
            p->min_idle = p->size; /* the default never exceeds a smaller size */
            return 0;
        }
        return fail(ld, f[PO_MIN_IDLE].value, "%s.min_idle: %" PRIu64 " is more than size (%" PRIu64 ")", path,
                    p->min_idle, p->size);
    }
    return 0;
}

enum { UP_URL, UP_CA, UP_SNI, UP_TIMEOUT, UP_PASS_FILE, UP_CREDS, UP_POOL, UP_N };
static const struct field upstream_fields[UP_N] = {
    /* Only the URL's host and port need a restart; its credential is applied by a reload. */
    [UP_URL] = {.name = "url", .type = T_STRING, .off = offsetof(struct config_upstream, url),
                .flags = REQUIRED | RESTART, .same = same_upstream_address},
    [UP_CA] = {.name = "ca_file", .type = T_PATH, .off = offsetof(struct config_upstream, ca_file)},
    [UP_SNI] = {.name = "server_name", .type = T_STRING,
                .off = offsetof(struct config_upstream, server_name)},
    [UP_TIMEOUT] = {.name = "connect_timeout", .type = T_DURATION,
                    .off = offsetof(struct config_upstream, connect_timeout_ms), .min = 1,
                    .max = 3600000},
    [UP_PASS_FILE] = {.name = "password_file", .type = T_SECRET_FILE,
                      .off = offsetof(struct config_upstream, password)},
    [UP_CREDS] = {.name = "credentials", .type = T_CUSTOM, .load = load_credentials},
    [UP_POOL] = {.name = "pool", .type = T_CUSTOM, .load = load_pool},
};

static int load_upstream(struct loader *ld, const yaml_node_t *v, void *obj, const char *path)
{
    struct config *c = obj;
    struct config_upstream *u = &c->upstream;
    struct found f[UP_N];
    int rc = load_fields(ld, v, path, upstream_fields, UP_N, u, f);
    if (rc < 0)
        return rc;
    if (u->server_name && !host_name_ok(u->server_name, strlen(u->server_name)))
        return fail(ld, f[UP_SNI].value, "%s.server_name: expected a DNS name", path);
    return parse_url(ld, f[UP_URL].value, u, f[UP_PASS_FILE].key);
}

/* ---------------------------------------------------------------------------------------- */
/* users                                                                                    */
/* ---------------------------------------------------------------------------------------- */

static int load_expires(struct loader *ld, const yaml_node_t *v, void *obj, const char *path)
{
    struct config_user *u = obj;
    char *s;
    int rc = get_scalar(ld, v, path, &s);
    if (rc < 0)
        return rc;
    if (parse_utc_time(s, &u->expires) < 0)
        rc = fail(ld, v, "%s: expected an RFC 3339 UTC time like 2027-06-30T00:00:00Z", path);
    else
        u->has_expires = true;
    sfree(s);
    return rc;
}

/* users.<name>.anomaly: the per-user settings; each key given replaces the anomaly section's
 * value for this user. The values are merged in finish(), once the section (which may come
 * later in the file) is known. */
#define UA(name, type, member) \
    {name, type, offsetof(struct anomaly_user_config, member), 0, 0, UINT32_MAX, NULL, NULL, NULL}
static const struct field user_anomaly_fields[] = {
    UA("disabled", T_BOOL, disabled),
    UA("min_rate", T_NUMBER, min_rate),
    UA("factor", T_NUMBER, factor),
    UA("k", T_NUMBER, k),
    UA("sustain", T_SECONDS, sustain_s),
    UA("denial_burst", T_U32, denial_burst),
    UA("connection_surge_min", T_U32, connection_surge_min),
    UA("connection_surge_factor", T_NUMBER, connection_surge_factor),
};
#undef UA
#define UA_N ARRAY_SIZE(user_anomaly_fields)
_Static_assert(UA_N <= 32, "user_anomaly_set is a 32-bit mask");

static size_t field_size(enum ftype t)
{
    switch (t) {
    case T_BOOL:
        return sizeof(bool);
    case T_U32:
    case T_SECONDS:
        return sizeof(uint32_t);
    case T_NUMBER:
        return sizeof(double);
    default:
        return 0; /* not used in user_anomaly_fields */
    }
}

static int load_user_anomaly(struct loader *ld, const yaml_node_t *v, void *obj, const char *path)
{
    struct config_user *u = obj;
    struct found f[UA_N];
    size_t i = (size_t)(u - ld->c->users);
    int rc = load_fields(ld, v, path, user_anomaly_fields, UA_N, &u->anomaly, f);
    if (rc < 0)
        return rc;
    uint32_t set = 0;
    for (size_t j = 0; j < UA_N; j++)
        if (f[j].key)
            set |= 1u << j;
    ld->user_anomaly_set[i] = set;
    u->has_anomaly_override = true;
    return 0;
}

/* rate_limit: {commands_per_second: N, burst: M}. 0 commands a second means no limit (a user
 * can opt out of limits.rate_limit that way); burst defaults to one second's worth. */
enum { RL_RATE, RL_BURST, RL_N };
static const struct field rate_limit_fields[RL_N] = {
    [RL_RATE] = {.name = "commands_per_second", .type = T_NUMBER, .flags = REQUIRED,
                 .off = offsetof(struct config_rate_limit, rate)},
    [RL_BURST] = {.name = "burst", .type = T_NUMBER, .off = offsetof(struct config_rate_limit, burst)},
};

static int load_rate_limit(struct loader *ld, const yaml_node_t *v, const char *path,
                           struct config_rate_limit *rl)
{
    struct found f[RL_N];
    *rl = (struct config_rate_limit){0};
    int rc = load_fields(ld, v, path, rate_limit_fields, RL_N, rl, f);
    if (rc < 0)
        return rc;
    if (rl->rate > 1e9)
        return fail(ld, f[RL_RATE].value, "%s.commands_per_second: at most 1000000000", path);
    if (f[RL_BURST].key && (rl->burst < 1 || rl->burst > 1e9))
        return fail(ld, f[RL_BURST].value, "%s.burst: expected a number from 1 to 1000000000", path);
    rl->enabled = rl->rate > 0;
    if (!f[RL_BURST].key)
        rl->burst = rl->rate < 1 ? 1 : rl->rate;
    return 0;
}

static int load_user_rate_limit(struct loader *ld, const yaml_node_t *v, void *obj, const char *path)
{
    struct config_user *u = obj;
    u->has_rate_limit = true;
    return load_rate_limit(ld, v, path, &u->rate_limit);
}

enum { US_ACL, US_ACL_FILE, US_CRED, US_EXPIRES, US_ALLOW, US_ANOMALY, US_RATE, US_N };
static const struct field user_fields[US_N] = {
    [US_ACL] = {.name = "acl", .type = T_STRING, .off = offsetof(struct config_user, acl),
                .excludes = "acl_file"},
    [US_ACL_FILE] = {.name = "acl_file", .type = T_SECRET_FILE,
                     .off = offsetof(struct config_user, acl), .excludes = "acl"},
    [US_CRED] = {.name = "upstream_credential", .type = T_STRING,
                 .off = offsetof(struct config_user, upstream_credential)},
    [US_EXPIRES] = {.name = "expires", .type = T_CUSTOM, .load = load_expires},
    [US_ALLOW] = {.name = "allow_from", .type = T_CIDRS,
                  .off = offsetof(struct config_user, allow_from)},
    [US_ANOMALY] = {.name = "anomaly", .type = T_CUSTOM, .load = load_user_anomaly},
    [US_RATE] = {.name = "rate_limit", .type = T_CUSTOM, .load = load_user_rate_limit},
};

static int load_users(struct loader *ld, const yaml_node_t *v, void *obj, const char *path)
{
    struct config *c = obj;
    if (v->type != YAML_MAPPING_NODE)
        return type_error(ld, v, path, "a mapping");
    size_t n = (size_t)(v->data.mapping.pairs.top - v->data.mapping.pairs.start);
    if (n == 0)
        return fail(ld, v, "%s: at least one user is required", path);
    c->users = calloc(n, sizeof *c->users);
    ld->user_cred = calloc(n, sizeof *ld->user_cred);
    ld->user_anomaly_key = calloc(n, sizeof *ld->user_anomaly_key);
    ld->user_anomaly_set = calloc(n, sizeof *ld->user_anomaly_set);
    if (!c->users || !ld->user_cred || !ld->user_anomaly_key || !ld->user_anomaly_set)
        return oom(ld, v);
    c->user_count = n;
    for (size_t i = 0; i < n; i++) {
        struct config_user *u = &c->users[i];
        const yaml_node_t *value;
        struct found f[US_N];
        char upath[PATH_LEN];
        u->file = c->path;
        int rc = check_name_key(ld, v, i, path, "user", &value, &u->name);
        if (rc < 0)
            return rc;
        make_path(upath, "%s.%s", path, u->name);
        rc = load_fields(ld, value, upath, user_fields, US_N, u, f);
        if (rc < 0)
            return rc;
        const yaml_node_t *acl = f[US_ACL].value ? f[US_ACL].value : f[US_ACL_FILE].value;
        if (!acl)
            return fail(ld, value, "missing required key 'acl' (or 'acl_file') in %s", upath);
        /* Where the rule text starts, so that acl parsing can add a byte offset to the column
         * (exact for a one-line value without escapes or ${VAR}): after an opening quote. */
        bool quoted = acl == f[US_ACL].value &&
                      (acl->data.scalar.style == YAML_SINGLE_QUOTED_SCALAR_STYLE ||
                       acl->data.scalar.style == YAML_DOUBLE_QUOTED_SCALAR_STYLE);
        u->acl_line = (int)acl->start_mark.line + 1;
        u->acl_column = (int)acl->start_mark.column + 1 + quoted;
        ld->user_cred[i] = f[US_CRED].value;
        ld->user_anomaly_key[i] = f[US_ANOMALY].key;
    }
    return 0;
}

/* ---------------------------------------------------------------------------------------- */
/* guard, limits, log, the top level                                                        */
/* ---------------------------------------------------------------------------------------- */

/* "flushall", "client|kill": lower-case letters, digits, '-', '_', '.', one optional '|'. */
static bool command_name_ok(const char *s)
{
    size_t len = strlen(s), bars = 0;
    if (len == 0 || len > NAME_MAX_LEN || s[0] == '|' || s[len - 1] == '|')
        return false;
    for (size_t i = 0; i < len; i++) {
        if (s[i] == '|')
            bars++;
        else if (!islower((unsigned char)s[i]) && !isdigit((unsigned char)s[i]) && s[i] != '-' &&
                 s[i] != '_' && s[i] != '.')
            return false;
    }
    return bars <= 1;
}

static int load_never(struct loader *ld, const yaml_node_t *v, void *obj, const char *path)
{
    struct config *c = obj;
    if (v->type != YAML_SEQUENCE_NODE)
        return type_error(ld, v, path, "a list of command names");
    size_t n = (size_t)(v->data.sequence.items.top - v->data.sequence.items.start);
    ld->never_set = true;
    if (n == 0)
        return 0;
    c->never_by_category = calloc(n, sizeof *c->never_by_category);
    c->never_pos = calloc(n, sizeof *c->never_pos);
    if (!c->never_by_category || !c->never_pos)
        return oom(ld, v);
    c->never_count = n;
    for (size_t i = 0; i < n; i++) {
        const yaml_node_t *item = node_at(ld, v->data.sequence.items.start[i]);
        c->never_pos[i][0] = (int)item->start_mark.line + 1;
        c->never_pos[i][1] = (int)item->start_mark.column + 1;
        char ipath[PATH_LEN], *s;
        make_path(ipath, "%s[%zu]", path, i);
        int rc = get_scalar(ld, item, ipath, &s);
        if (rc < 0)
            return rc;
        for (char *q = s; *q; q++)
            *q = (char)tolower((unsigned char)*q);
        c->never_by_category[i] = s;
        if (!command_name_ok(s))
            return fail(ld, item, "%s: expected a command name like flushall or client|kill",
                        ipath);
    }
    return 0;
}

enum { GU_NEVER, GU_N };
static const struct field guard_fields[GU_N] = {
    [GU_NEVER] = {.name = "never_by_category", .type = T_CUSTOM, .load = load_never},
};

static int load_guard(struct loader *ld, const yaml_node_t *v, void *obj, const char *path)
{
    struct found f[GU_N];
    return load_fields(ld, v, path, guard_fields, GU_N, obj, f);
}

static int load_limits_rate_limit(struct loader *ld, const yaml_node_t *v, void *obj, const char *path)
{
    struct config_limits *l = obj;
    return load_rate_limit(ld, v, path, &l->rate_limit);
}

#define LO(name, type, member, min, max) \
    {name, type, offsetof(struct config_login_lockout, member), 0, min, max, NULL, NULL, NULL}
static const struct field lockout_fields[] = {
    LO("failures", T_U32, failures, 1, 1000000),
    LO("window", T_DURATION, window_ms, 1000, 86400000),
    LO("duration", T_DURATION, duration_ms, 1000, 86400000),
};
#undef LO

/* "key:" with nothing after it (YAML null): for sections whose presence alone turns a feature on
 * with its defaults, the same as "key: {}". */
static bool empty_value(const yaml_node_t *v)
{
    if (v->type != YAML_SCALAR_NODE || v->data.scalar.style != YAML_PLAIN_SCALAR_STYLE)
        return false;
    static const char *const nulls[] = {"", "~", "null", "Null", "NULL"};
    for (size_t i = 0; i < ARRAY_SIZE(nulls); i++)
        if (v->data.scalar.length == strlen(nulls[i]) &&
            memcmp(v->data.scalar.value, nulls[i], v->data.scalar.length) == 0)
            return true;
    return false;
}

/* limits.login_lockout: giving the key turns the lockout on; its keys have defaults. */
static int load_lockout(struct loader *ld, const yaml_node_t *v, void *obj, const char *path)
{
    struct config_limits *l = obj;
    struct found f[ARRAY_SIZE(lockout_fields)];
    l->login_lockout = (struct config_login_lockout){
        .enabled = true, .failures = 10, .window_ms = 60000, .duration_ms = 300000};
    if (empty_value(v))
        return 0;
    return load_fields(ld, v, path, lockout_fields, ARRAY_SIZE(lockout_fields), &l->login_lockout, f);
}

#define LIMIT(name, type, member, min, max) \
    {name, type, offsetof(struct config_limits, member), 0, min, max, NULL, NULL, NULL}
static const struct field limits_fields[] = {
    LIMIT("max_clients", T_COUNT, max_clients, 1, 1000000),
    LIMIT("max_request_bytes", T_SIZE, max_request_bytes, 1ull << 10, 4ull << 30),
    LIMIT("max_args", T_COUNT, max_args, 1, INT32_MAX),
    LIMIT("login_timeout", T_DURATION, login_timeout_ms, 1, 3600000),
    LIMIT("client_output_bytes", T_SIZE, client_output_bytes, 1ull << 10, 64ull << 30),
    LIMIT("upstream_output_bytes", T_SIZE, upstream_output_bytes, 1ull << 10, 64ull << 30),
    LIMIT("shutdown_timeout", T_DURATION, shutdown_timeout_ms, 1, 3600000),
    {"rate_limit", T_CUSTOM, 0, 0, 0, 0, NULL, load_limits_rate_limit, NULL},
    {"login_lockout", T_CUSTOM, 0, 0, 0, 0, NULL, load_lockout, NULL},
};
#undef LIMIT

static int load_limits(struct loader *ld, const yaml_node_t *v, void *obj, const char *path)
{
    struct config *c = obj;
    struct found f[ARRAY_SIZE(limits_fields)];
    return load_fields(ld, v, path, limits_fields, ARRAY_SIZE(limits_fields), &c->limits, f);
}

static int load_level(struct loader *ld, const yaml_node_t *v, void *obj, const char *path)
{
    static const char *const names[] = {
        [CONFIG_LOG_DEBUG] = "debug", [CONFIG_LOG_INFO] = "info",
        [CONFIG_LOG_WARN] = "warn", [CONFIG_LOG_ERROR] = "error"};
    struct config *c = obj;
    char *s;
    int rc = get_scalar(ld, v, path, &s);
    if (rc < 0)
        return rc;
    size_t i = 0;
    while (i < ARRAY_SIZE(names) && strcmp(s, names[i]) != 0)
        i++;
    sfree(s);
    if (i == ARRAY_SIZE(names))
        return fail(ld, v, "%s: expected debug, info, warn or error", path);
    c->log_level = (enum config_log_level)i;
    return 0;
}

enum { LG_LEVEL, LG_KEYS, LG_N };
static const struct field log_fields[LG_N] = {
    [LG_LEVEL] = {.name = "level", .type = T_CUSTOM, .load = load_level},
    [LG_KEYS] = {.name = "keys", .type = T_BOOL, .off = offsetof(struct config, log_keys)},
};

static int load_log(struct loader *ld, const yaml_node_t *v, void *obj, const char *path)
{
    struct found f[LG_N];
    return load_fields(ld, v, path, log_fields, LG_N, obj, f);
}

/* The anomaly section. Offsets are into struct config: enabled is config.anomaly_enabled, the
 * rest goes into config.anomaly (the per-user keys into its per-user defaults, anomaly.user).
 * Ranges are anomaly_config_check's, applied in finish(); here only the form is checked. */
enum {
    AN_ENABLED, AN_HALF_LIFE, AN_WARMUP, AN_SUSTAIN, AN_RECOVERY, AN_MIN_RATE, AN_FACTOR, AN_K,
    AN_DENIAL, AN_AUTH_FAILURE, AN_SURGE_MIN, AN_SURGE_FACTOR, AN_N
};
#define AN(id, name, type, member) \
    [id] = {name, type, offsetof(struct config, member), 0, 0, UINT32_MAX, NULL, NULL, NULL}
static const struct field anomaly_fields[AN_N] = {
    AN(AN_ENABLED, "enabled", T_BOOL, anomaly_enabled),
    AN(AN_HALF_LIFE, "half_life", T_SECONDS, anomaly.half_life_s),
    AN(AN_WARMUP, "warmup", T_SECONDS, anomaly.warmup_s),
    AN(AN_SUSTAIN, "sustain", T_SECONDS, anomaly.user.sustain_s),
    AN(AN_RECOVERY, "recovery", T_SECONDS, anomaly.recovery_s),
    AN(AN_MIN_RATE, "min_rate", T_NUMBER, anomaly.user.min_rate),
    AN(AN_FACTOR, "factor", T_NUMBER, anomaly.user.factor),
    AN(AN_K, "k", T_NUMBER, anomaly.user.k),
    AN(AN_DENIAL, "denial_burst", T_U32, anomaly.user.denial_burst),
    AN(AN_AUTH_FAILURE, "auth_failure_burst", T_U32, anomaly.auth_failure_burst),
    AN(AN_SURGE_MIN, "connection_surge_min", T_U32, anomaly.user.connection_surge_min),
    AN(AN_SURGE_FACTOR, "connection_surge_factor", T_NUMBER,
       anomaly.user.connection_surge_factor),
};
#undef AN

static int load_anomaly(struct loader *ld, const yaml_node_t *v, void *obj, const char *path)
{
    struct config *c = obj;
    struct found f[AN_N];
    int rc = load_fields(ld, v, path, anomaly_fields, AN_N, c, f);
    if (rc < 0)
        return rc;
    /* denial_burst and the connection surge apply per user and per source alike. */
    c->anomaly.denial_burst_source = c->anomaly.user.denial_burst;
    c->anomaly.connection_surge_min_source = c->anomaly.user.connection_surge_min;
    c->anomaly.connection_surge_factor_source = c->anomaly.user.connection_surge_factor;
    return 0;
}

/* admin: the HTTP listener for /metrics, /healthz and /readyz. Giving the key turns it on. It
 * has no authentication, so an address other than loopback needs allow_from. */
enum { AD_BIND, AD_ALLOW, AD_PROBE, AD_N };
static const struct field admin_fields[AD_N] = {
    [AD_BIND] = {.name = "bind", .type = T_STRING, .off = offsetof(struct config_admin, listen.bind),
                 .flags = RESTART, .same = same_admin_bind},
    [AD_ALLOW] = {.name = "allow_from", .type = T_CIDRS, .off = offsetof(struct config_admin, allow_from)},
    [AD_PROBE] = {.name = "probe_interval", .type = T_DURATION, .min = 100, .max = 3600000,
                  .off = offsetof(struct config_admin, probe_interval_ms), .flags = RESTART,
                  .same = same_probe_interval},
};

static int load_admin(struct loader *ld, const yaml_node_t *v, void *obj, const char *path)
{
    struct config *c = obj;
    struct config_admin *a = &c->admin;
    struct found f[AD_N];
    a->enabled = true;
    a->probe_interval_ms = 5000;
    memset(f, 0, sizeof f);
    int rc = empty_value(v) ? 0 : load_fields(ld, v, path, admin_fields, AD_N, a, f);
    if (rc < 0)
        return rc;
    if (!a->listen.bind && !(a->listen.bind = strdup("127.0.0.1:9121")))
        return oom(ld, v);
    const yaml_node_t *at = f[AD_BIND].value ? f[AD_BIND].value : v;
    rc = parse_bind(ld, at, "admin.bind", &a->listen);
    if (rc < 0)
        return rc;
    if (!is_loopback(&a->listen.addr) && a->allow_from.count == 0)
        return fail(ld, at, "admin.bind: the admin listener has no authentication; a non-loopback "
                    "address needs admin.allow_from");
    return 0;
}

/* rest: Upstash-compatible REST listeners. Like RESP listeners: plaintext only on loopback. */
static int load_rest_tls(struct loader *ld, const yaml_node_t *v, void *obj, const char *path)
{
    struct config_rest *r = obj;
    int rc = load_tls(ld, v, &r->listen, path);
    if (rc == 0 && r->listen.tls.client_ca_file)
        return fail(ld, v, "%s: client certificates are not supported on rest listeners (the token is the "
                    "credential): remove client_ca_file", path);
    return rc;
}

static int load_origins(struct loader *ld, const yaml_node_t *v, void *obj, const char *path)
{
    struct config_rest *r = obj;
    if (v->type != YAML_SEQUENCE_NODE)
        return type_error(ld, v, path, "a list of origins");
    size_t n = (size_t)(v->data.sequence.items.top - v->data.sequence.items.start);
    if (n == 0)
        return 0;
    r->cors_origins = calloc(n, sizeof *r->cors_origins);
    if (!r->cors_origins)
        return oom(ld, v);
    for (size_t i = 0; i < n; i++) {
        const yaml_node_t *item = node_at(ld, v->data.sequence.items.start[i]);
        char ipath[PATH_LEN], *s;
        make_path(ipath, "%s[%zu]", path, i);
        int rc = get_scalar(ld, item, ipath, &s);
        if (rc < 0)
            return rc;
        r->cors_origins[r->cors_count++] = s;
        /* An origin is a scheme and a host (and a port): what browsers send in Origin, which
         * rest.c compares byte for byte. */
        const char *host = strncmp(s, "http://", 7) == 0 ? s + 7 : strncmp(s, "https://", 8) == 0 ? s + 8 : NULL;
        bool ok = strcmp(s, "*") == 0 || (host && *host && *host != ':' && !strpbrk(host, "/?#@* \t\r\n,\"'"));
        if (!ok)
            return fail(ld, item, "%s: expected an origin like https://app.example.com (scheme and host, no "
                        "path) or \"*\"", ipath);
    }
    return 0;
}

enum { CO_ORIGINS, CO_N };
static const struct field cors_fields[CO_N] = {
    [CO_ORIGINS] = {.name = "allowed_origins", .type = T_CUSTOM, .load = load_origins, .flags = REQUIRED},
};

static int load_cors(struct loader *ld, const yaml_node_t *v, void *obj, const char *path)
{
    struct found f[CO_N];
    return load_fields(ld, v, path, cors_fields, CO_N, obj, f);
}

enum { RS_BIND, RS_TLS, RS_ALLOW, RS_CORS, RS_MAX_BYTES, RS_MAX_CONN, RS_REQ_TIMEOUT, RS_IDLE_TIMEOUT, RS_N };
static const struct field rest_fields[RS_N] = {
    [RS_BIND] = {.name = "bind", .type = T_STRING, .off = offsetof(struct config_rest, listen.bind),
                 .flags = REQUIRED},
    [RS_TLS] = {.name = "tls", .type = T_CUSTOM, .load = load_rest_tls},
    [RS_ALLOW] = {.name = "allow_from", .type = T_CIDRS, .off = offsetof(struct config_rest, listen.allow_from)},
    [RS_CORS] = {.name = "cors", .type = T_CUSTOM, .load = load_cors},
    [RS_MAX_BYTES] = {.name = "max_request_bytes", .type = T_SIZE, .min = 1024, .max = 1ull << 30,
                      .off = offsetof(struct config_rest, max_request_bytes)},
    [RS_MAX_CONN] = {.name = "max_connections", .type = T_COUNT, .min = 1, .max = 1000000,
                     .off = offsetof(struct config_rest, max_connections)},
    [RS_REQ_TIMEOUT] = {.name = "request_timeout", .type = T_DURATION, .min = 100, .max = 3600000,
                        .off = offsetof(struct config_rest, request_timeout_ms)},
    [RS_IDLE_TIMEOUT] = {.name = "idle_timeout", .type = T_DURATION, .min = 1000, .max = 86400000,
                         .off = offsetof(struct config_rest, idle_timeout_ms)},
};

static int load_rest(struct loader *ld, const yaml_node_t *v, void *obj, const char *path)
{
    struct config *c = obj;
    char nb[SHOW_LEN];
    if (v->type != YAML_SEQUENCE_NODE)
        return type_error(ld, v, path, "a list");
    size_t n = (size_t)(v->data.sequence.items.top - v->data.sequence.items.start);
    if (n == 0)
        return 0;
    c->rest = calloc(n, sizeof *c->rest);
    ld->rest_bind = calloc(n, sizeof *ld->rest_bind);
    if (!c->rest || !ld->rest_bind)
        return oom(ld, v);
    c->rest_count = n;
    for (size_t i = 0; i < n; i++) {
        const yaml_node_t *item = node_at(ld, v->data.sequence.items.start[i]);
        struct config_rest *r = &c->rest[i];
        r->max_request_bytes = 1u << 20;
        r->max_connections = 1000;
        r->request_timeout_ms = 10000;
        r->idle_timeout_ms = 60000;
        struct found f[RS_N];
        char rpath[PATH_LEN], bpath[PATH_LEN];
        make_path(rpath, "%s[%zu]", path, i);
        make_path(bpath, "%s.bind", rpath);
        int rc = load_fields(ld, item, rpath, rest_fields, RS_N, r, f);
        if (rc == 0)
            rc = parse_bind(ld, f[RS_BIND].value, bpath, &r->listen);
        if (rc < 0)
            return rc;
        if (!r->listen.tls_enabled && !is_loopback(&r->listen.addr))
            return fail(ld, f[RS_BIND].value, "plaintext rest listener on non-loopback address %s is refused: add "
                        "tls or bind to 127.0.0.1", show(nb, sizeof nb, r->listen.bind, strlen(r->listen.bind)));
        ld->rest_bind[i] = f[RS_BIND].value;
    }
    return 0;
}

/* After every section is loaded (the file may name rest before listeners or admin): no two
 * sockets on one address. */
static int check_rest_binds(struct loader *ld, const struct config *c)
{
    char nb[SHOW_LEN];
    for (size_t i = 0; i < c->rest_count; i++) {
        const struct config_listener *l = &c->rest[i].listen;
        const yaml_node_t *at = ld->rest_bind[i];
        const char *shown = show(nb, sizeof nb, l->bind, strlen(l->bind));
        for (size_t j = 0; j < c->listener_count; j++)
            if (config_same_address(&c->listeners[j], l))
                return fail(ld, at, "rest[%zu].bind: %s is already used by listeners[%zu]", i, shown, j);
        for (size_t j = 0; j < i; j++)
            if (config_same_address(&c->rest[j].listen, l))
                return fail(ld, at, "rest[%zu].bind: %s is already used by rest[%zu]", i, shown, j);
        if (c->admin.enabled && config_same_address(&c->admin.listen, l))
            return fail(ld, at, "rest[%zu].bind: %s is already used by admin.bind", i, shown);
    }
    return 0;
}

enum { TOP_LISTENERS, TOP_UPSTREAM, TOP_USERS, TOP_GUARD, TOP_LIMITS, TOP_LOG, TOP_ANOMALY,
       TOP_ADMIN, TOP_REST, TOP_WATCH, TOP_N };
static const struct field top_fields[TOP_N] = {
    [TOP_LISTENERS] = {.name = "listeners", .type = T_CUSTOM, .flags = REQUIRED | RESTART,
                       .load = load_listeners, .same = same_listeners},
    [TOP_UPSTREAM] = {.name = "upstream", .type = T_CUSTOM, .flags = REQUIRED,
                      .load = load_upstream},
    [TOP_USERS] = {.name = "users", .type = T_CUSTOM, .flags = REQUIRED, .load = load_users},
    [TOP_GUARD] = {.name = "guard", .type = T_CUSTOM, .load = load_guard},
    [TOP_LIMITS] = {.name = "limits", .type = T_CUSTOM, .load = load_limits},
    [TOP_LOG] = {.name = "log", .type = T_CUSTOM, .load = load_log},
    [TOP_ANOMALY] = {.name = "anomaly", .type = T_CUSTOM, .load = load_anomaly},
    [TOP_ADMIN] = {.name = "admin", .type = T_CUSTOM, .flags = RESTART, .load = load_admin,
                   .same = same_admin_enabled},
    [TOP_REST] = {.name = "rest", .type = T_CUSTOM, .flags = RESTART, .load = load_rest, .same = same_rest},
    [TOP_WATCH] = {.name = "watch", .type = T_BOOL, .off = offsetof(struct config, watch)},
};

/* Apply each user's anomaly keys over the section's per-user settings, build the overrides
 * array, and check the whole with anomaly_config_check. A failure is reported at the anomaly
 * key it comes from: the user's when only that user's settings are wrong, else the section's
 * (1:1 when there is none). */
static int finish_anomaly(struct loader *ld, struct config *c)
{
    char msg[256];
    bool any = false;
    for (size_t i = 0; i < c->user_count; i++) {
        struct config_user *u = &c->users[i];
        struct anomaly_user_config m = c->anomaly.user;
        for (size_t j = 0; j < UA_N; j++)
            if (ld->user_anomaly_set[i] & (1u << j))
                memcpy((char *)&m + user_anomaly_fields[j].off,
                       (const char *)&u->anomaly + user_anomaly_fields[j].off,
                       field_size(user_anomaly_fields[j].type));
        u->anomaly = m;
        any |= u->has_anomaly_override;
    }
    if (any) {
        struct anomaly_user_config *o = calloc(c->user_count, sizeof *o);
        if (!o)
            return oom(ld, ld->anomaly_key);
        for (size_t i = 0; i < c->user_count; i++)
            o[i] = c->users[i].anomaly;
        c->anomaly.overrides = o;
    }
    if (anomaly_config_check(&c->anomaly, c->user_count, msg, sizeof msg) == 0)
        return 0;
    /* The check stops at the first problem: the section's settings, then users in order. */
    const yaml_node_t *at = ld->anomaly_key;
    struct anomaly_config one = c->anomaly;
    one.overrides = NULL;
    if (anomaly_config_check(&one, c->user_count, NULL, 0) == 0) {
        for (size_t i = 0; i < c->user_count; i++) {
            one.user = c->users[i].anomaly;
            if (c->users[i].has_anomaly_override &&
                anomaly_config_check(&one, c->user_count, NULL, 0) != 0) {
                at = ld->user_anomaly_key[i];
                break;
            }
        }
    }
    return fail(ld, at, "anomaly: %s", msg);
}

/* Checks that span sections, and defaults that depend on what was given. */
static int finish(struct loader *ld, struct config *c)
{
    char nb[SHOW_LEN];
    for (size_t i = 0; i < c->user_count; i++) {
        const struct config_user *u = &c->users[i];
        bool ok = false;
        if (!ld->user_cred[i])
            continue;
        for (size_t j = 0; j < c->upstream.credential_count && !ok; j++)
            ok = strcmp(c->upstream.credentials[j].name, u->upstream_credential) == 0;
        if (!ok)
            return fail(ld, ld->user_cred[i], "users.%s.upstream_credential: no credential '%s' "
                        "in upstream.credentials", u->name,
                        show(nb, sizeof nb, u->upstream_credential,
                             strlen(u->upstream_credential)));
    }
    if (!ld->never_set) {
        size_t n = 0;
        while (config_default_never[n])
            n++;
        c->never_by_category = calloc(n, sizeof *c->never_by_category);
        if (!c->never_by_category)
            return oom(ld, NULL);
        c->never_count = n;
        for (size_t i = 0; i < n; i++) {
            c->never_by_category[i] = strdup(config_default_never[i]);
            if (!c->never_by_category[i])
                return oom(ld, NULL);
        }
    }
    for (size_t i = 0; i < c->user_count; i++)
        if (!c->users[i].has_rate_limit)
            c->users[i].rate_limit = c->limits.rate_limit;
    int rc = check_rest_binds(ld, c);
    return rc < 0 ? rc : finish_anomaly(ld, c);
}

/* ---------------------------------------------------------------------------------------- */
/* Entry points                                                                             */
/* ---------------------------------------------------------------------------------------- */

/* Overwrite what libyaml kept of the file before it frees it: the scalars of the document and
 * the parser's input buffers (public fields of yaml_parser_t). */
static void wipe_document(yaml_document_t *doc)
{
    for (yaml_node_t *n = doc->nodes.start; n && n < doc->nodes.top; n++)
        if (n->type == YAML_SCALAR_NODE && n->data.scalar.value)
            explicit_bzero(n->data.scalar.value, n->data.scalar.length);
    yaml_document_delete(doc);
}

static void wipe_parser(yaml_parser_t *p)
{
    if (p->buffer.start)
        explicit_bzero(p->buffer.start, (size_t)(p->buffer.end - p->buffer.start));
    if (p->raw_buffer.start)
        explicit_bzero(p->raw_buffer.start, (size_t)(p->raw_buffer.end - p->raw_buffer.start));
    yaml_parser_delete(p);
}

static int syntax_error(struct loader *ld, const yaml_parser_t *p)
{
    size_t line = p->problem_mark.line + 1, col = p->problem_mark.column + 1;
    if (p->error == YAML_MEMORY_ERROR)
        return fail_at(ld, 1, 1, -ENOMEM, "out of memory");
    if (p->error == YAML_READER_ERROR) {
        /* The reader reports a byte offset, not a mark. */
        size_t off = p->problem_offset < ld->text_len ? p->problem_offset : ld->text_len;
        line = 1;
        col = 1;
        for (size_t i = 0; i < off; i++) {
            if (ld->text[i] == '\n') {
                line++;
                col = 1;
            } else {
                col++;
            }
        }
    }
    return fail_at(ld, line, col, -EINVAL, "invalid YAML: %s%s%s",
                   p->problem ? p->problem : "syntax error", p->context ? " " : "",
                   p->context ? p->context : "");
}

static int load_document(struct loader *ld, yaml_parser_t *parser)
{
    yaml_document_t doc, extra;
    if (!yaml_parser_load(parser, &doc))
        return syntax_error(ld, parser);
    ld->doc = &doc;
    int rc = 0;
    const yaml_node_t *root = yaml_document_get_root_node(&doc);
    if (!root) {
        rc = fail(ld, NULL, "the configuration is empty");
    } else if (!yaml_parser_load(parser, &extra)) {
        rc = syntax_error(ld, parser);
    } else {
        const yaml_node_t *second = yaml_document_get_root_node(&extra);
        if (second)
            rc = fail(ld, second, "only one YAML document is allowed");
        wipe_document(&extra);
    }
    if (rc == 0) {
        struct found f[TOP_N];
        rc = load_fields(ld, root, "", top_fields, TOP_N, ld->c, f);
        ld->anomaly_key = f[TOP_ANOMALY].key;
    }
    if (rc == 0)
        rc = finish(ld, ld->c);
    wipe_document(&doc);
    ld->doc = NULL;
    return rc;
}

int config_load(const char *path, struct config **out, char *err, size_t errlen)
{
    struct loader ld = {.file = path ? path : "(null)", .err = err, .errlen = errlen};
    char eb[128];
    char *text = NULL;
    size_t len = 0;
    int rc;

    if (err && errlen)
        err[0] = '\0';
    if (out)
        *out = NULL;
    if (!path || !out)
        return fail_at(&ld, 1, 1, -EINVAL, "no configuration file given");

    struct config *c = calloc(1, sizeof *c);
    if (!c || !(c->path = strdup(path))) {
        free(c);
        return fail_at(&ld, 1, 1, -ENOMEM, "out of memory");
    }
    c->upstream.connect_timeout_ms = 5000;
    c->upstream.pool = (struct config_pool){
        .mode = CONFIG_POOL_SESSION,
        .size = 64,
        .min_idle = 4,
        .idle_timeout_ms = 300000,
        .max_lifetime_ms = 3600000,
        .keepalive_ms = 30000,
        .acquire_timeout_ms = 5000,
    };
    c->limits = (struct config_limits){
        .max_clients = 10000,
        .max_request_bytes = 10ull << 20,
        .max_args = 1048576,
        .login_timeout_ms = 10000,
        .client_output_bytes = 64ull << 20,
        .upstream_output_bytes = 64ull << 20,
        .shutdown_timeout_ms = 10000,
    };
    c->log_level = CONFIG_LOG_INFO;
    anomaly_config_defaults(&c->anomaly);
    c->anomaly_enabled = true;
    ld.c = c;

    const char *slash = strrchr(path, '/');
    if (slash && !(ld.dir = strndup(path, (size_t)(slash - path)))) {
        config_free(c);
        return fail_at(&ld, 1, 1, -ENOMEM, "out of memory");
    }

    rc = config_read_file(path, false, CONFIG_FILE_MAX, &text, &len);
    if (rc < 0) {
        fail_at(&ld, 1, 1, rc, "cannot read the configuration file: %s",
                errstr(rc, eb, sizeof eb));
    } else {
        yaml_parser_t parser;
        ld.text = text;
        ld.text_len = len;
        if (!yaml_parser_initialize(&parser)) {
            rc = fail_at(&ld, 1, 1, -ENOMEM, "out of memory");
        } else {
            yaml_parser_set_input_string(&parser, (const unsigned char *)text, len);
            rc = load_document(&ld, &parser);
            wipe_parser(&parser);
        }
        explicit_bzero(text, len);
        free(text);
    }

    free(ld.dir);
    free(ld.user_cred);
    free(ld.user_anomaly_key);
    free(ld.user_anomaly_set);
    free(ld.rest_bind);
    if (rc < 0) {
        config_free(c);
        return rc;
    }
    *out = c;
    return 0;
}

static void free_cidrs(struct config_cidr_list *l)
{
    free(l->items);
    l->items = NULL;
    l->count = 0;
}

void config_free(struct config *c)
{
    if (!c)
        return;
    for (size_t i = 0; c->listeners && i < c->listener_count; i++) {
        struct config_listener *l = &c->listeners[i];
        sfree(l->bind);
        sfree(l->host);
        sfree(l->tls.cert_file);
        sfree(l->tls.key_file);
        sfree(l->tls.client_ca_file);
        free_cidrs(&l->allow_from);
    }
    free(c->listeners);

    struct config_upstream *u = &c->upstream;
    sfree(u->url);
    sfree(u->host);
    sfree(u->username);
    sfree(u->password);
    sfree(u->ca_file);
    sfree(u->server_name);
    for (size_t i = 0; u->credentials && i < u->credential_count; i++) {
        sfree(u->credentials[i].name);
        sfree(u->credentials[i].username);
        sfree(u->credentials[i].password);
    }
    free(u->credentials);

    for (size_t i = 0; c->users && i < c->user_count; i++) {
        sfree(c->users[i].name);
        sfree(c->users[i].acl);
        sfree(c->users[i].upstream_credential);
        free_cidrs(&c->users[i].allow_from);
    }
    free(c->users);

    for (size_t i = 0; c->never_by_category && i < c->never_count; i++)
        sfree(c->never_by_category[i]);
    free(c->never_by_category);
    free(c->never_pos);
    free((void *)c->anomaly.overrides);
    sfree(c->admin.listen.bind);
    sfree(c->admin.listen.host);
    free_cidrs(&c->admin.allow_from);
    for (size_t i = 0; c->rest && i < c->rest_count; i++) {
        struct config_rest *r = &c->rest[i];
        sfree(r->listen.bind);
        sfree(r->listen.host);
        sfree(r->listen.tls.cert_file);
        sfree(r->listen.tls.key_file);
        sfree(r->listen.tls.client_ca_file);
        free_cidrs(&r->listen.allow_from);
        for (size_t j = 0; j < r->cors_count; j++)
            sfree(r->cors_origins[j]);
        free(r->cors_origins);
    }
    free(c->rest);
    for (size_t i = 0; c->files && i < c->file_count; i++)
        free(c->files[i]);
    free(c->files);
    sfree(c->path);
    explicit_bzero(c, sizeof *c);
    free(c);
}

/* ---------------------------------------------------------------------------------------- */
/* Reload                                                                                   */
/* ---------------------------------------------------------------------------------------- */

/* The sections whose tables may hold RESTART keys, with the key path they are under. */
static const struct {
    const struct field *fields;
    size_t count;
    const char *prefix;
} restart_tables[] = {
    {top_fields, TOP_N, ""},
    {upstream_fields, UP_N, "upstream."},
    {pool_fields, PO_N, "upstream.pool."},
    {admin_fields, AD_N, "admin."},
};

static void append_key(char *out, size_t outlen, size_t *off, size_t index, const char *prefix, const char *name)
{
    if (*off >= outlen)
        return;
    int w = snprintf(out + *off, outlen - *off, "%s%s%s", index ? "," : "", prefix, name);
    if (w > 0)
        *off += (size_t)w < outlen - *off ? (size_t)w : outlen - *off - 1;
}

size_t config_restart_keys(const struct config *running, const struct config *next, char *out, size_t outlen)
{
    size_t n = 0, off = 0;
    if (outlen)
        out[0] = '\0';
    for (size_t t = 0; t < ARRAY_SIZE(restart_tables); t++) {
        for (size_t i = 0; i < restart_tables[t].count; i++) {
            const struct field *f = &restart_tables[t].fields[i];
            if (!(f->flags & RESTART) || f->same(running, next))
                continue;
            if (f == &top_fields[TOP_LISTENERS]) { /* name the listener and what changed */
                size_t most = running->listener_count > next->listener_count ? running->listener_count
                                                                               : next->listener_count;
                for (size_t l = 0; l < most; l++) {
                    const struct config_listener *a = l < running->listener_count ? &running->listeners[l] : NULL;
                    const struct config_listener *b = l < next->listener_count ? &next->listeners[l] : NULL;
                    char key[48];
                    if (!a || !b)
                        snprintf(key, sizeof key, "listeners[%zu]", l);
                    else if (!config_same_address(a, b))
                        snprintf(key, sizeof key, "listeners[%zu].bind", l);
                    else if (a->tls_enabled != b->tls_enabled)
                        snprintf(key, sizeof key, "listeners[%zu].tls", l);
                    else
                        continue;
                    append_key(out, outlen, &off, n++, "", key);
                }
                continue;
            }
            if (f == &top_fields[TOP_REST]) {
                size_t most = running->rest_count > next->rest_count ? running->rest_count : next->rest_count;
                for (size_t r = 0; r < most; r++) {
                    char key[48];
                    if (r >= running->rest_count || r >= next->rest_count) {
                        snprintf(key, sizeof key, "rest[%zu]", r);
                    } else {
                        const char *what = rest_restart_key(&running->rest[r], &next->rest[r]);
                        if (!*what)
                            continue;
                        snprintf(key, sizeof key, "rest[%zu].%s", r, what);
                    }
                    append_key(out, outlen, &off, n++, "", key);
                }
                continue;
            }
            append_key(out, outlen, &off, n++, restart_tables[t].prefix, f->name);
        }
    }
    return n;
}
