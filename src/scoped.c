/*
 * scoped: respguard's scoped forms of server-wide commands (the contract is in scoped.h).
 *
 * What it must not do: pass on a field that is not in the lists below, whatever the upstream
 * sends (an unknown section, a field added by a later Redis, a line without a section).
 */
#include "respguard/scoped.h"

#include <ctype.h>
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

const char scoped_info_command[] =
    "*5\r\n$4\r\nINFO\r\n$6\r\nserver\r\n$6\r\nmemory\r\n$11\r\npersistence\r\n$7\r\ncluster\r\n";
const size_t scoped_info_command_len = sizeof scoped_info_command - 1;

/* The kept sections, their order in Redis's INFO, and the fields kept of each. */
struct kept_section {
    const char *name; /* lower case, as INFO's arguments name it */
    const char *const *fields;
};

static const char *const server_fields[] = {
    "redis_version", "redis_git_sha1", "redis_git_dirty", "redis_build_id", "redis_mode", "os", "arch_bits",
    "monotonic_clock", "multiplexing_api", "atomicvar_api", "gcc_version", "server_time_usec",
    "uptime_in_seconds", "uptime_in_days", "hz", "configured_hz", "lru_clock", "io_threads_active", NULL};
static const char *const memory_fields[] = {"maxmemory", "maxmemory_human", "maxmemory_policy", "mem_allocator",
                                            NULL};
static const char *const persistence_fields[] = {"loading", "async_loading", NULL};
static const char *const cluster_fields[] = {"cluster_enabled", NULL};

static const struct kept_section kept[] = {
    {"server", server_fields},
    {"memory", memory_fields},
    {"persistence", persistence_fields},
    {"cluster", cluster_fields},
};
#define KEPT_COUNT (sizeof kept / sizeof kept[0])
#define ALL_KEPT ((1u << KEPT_COUNT) - 1)

static bool same_lower(const char *p, size_t n, const char *lower)
{
    if (strlen(lower) != n)
        return false;
    for (size_t i = 0; i < n; i++)
        if (tolower((unsigned char)p[i]) != lower[i])
            return false;
    return true;
}

static int kept_index(const char *p, size_t n)
{
    for (size_t i = 0; i < KEPT_COUNT; i++)
        if (same_lower(p, n, kept[i].name))
            return (int)i;
    return -1;
}

unsigned scoped_info_sections(size_t argc, const struct resp_arg *argv)
{
    if (argc < 2)
        return ALL_KEPT;
    unsigned mask = 0;
    for (size_t i = 1; i < argc; i++) {
        const struct resp_arg *a = &argv[i];
        if (same_lower(a->ptr, a->len, "default") || same_lower(a->ptr, a->len, "all") ||
            same_lower(a->ptr, a->len, "everything"))
            return ALL_KEPT;
        int k = kept_index(a->ptr, a->len);
        if (k >= 0)
            mask |= 1u << k;
    }
    return mask;
}

static bool field_kept(int section, const char *line, size_t n)
{
    const char *colon = memchr(line, ':', n);
    if (section < 0 || !colon)
        return false;
    size_t klen = (size_t)(colon - line);
    for (const char *const *f = kept[section].fields; *f; f++)
        if (strlen(*f) == klen && memcmp(*f, line, klen) == 0)
            return true;
    return false;
}

/* Write the filtered INFO text of body into dst (NULL: only count) and return its length. Lines
 * end with CRLF; a section is written only when it keeps a field; sections are separated by an
 * empty line, as Redis writes them. */
static size_t filter_text(const char *body, size_t len, unsigned sections, char *dst)
{
    size_t out = 0;
    int section = -1;
    bool header_due = false, any_section = false;
    const char *p = body, *end = body + len;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *stop = nl ? nl : end;
        size_t n = (size_t)(stop - p);
        if (n && p[n - 1] == '\r')
            n--;
        if (n >= 2 && p[0] == '#' && p[1] == ' ') {
            int k = kept_index(p + 2, n - 2);
            section = k >= 0 && (sections & (1u << k)) ? k : -1;
            header_due = section >= 0;
        } else if (field_kept(section, p, n)) {
            if (header_due) {
                if (any_section) {
                    if (dst)
                        memcpy(dst + out, "\r\n", 2);
                    out += 2;
                }
                /* "# Server": the table's name, capitalised as Redis writes it */
                char head[32];
                int hn = snprintf(head, sizeof head, "# %s\r\n", kept[section].name);
                if (dst) {
                    memcpy(dst + out, head, (size_t)hn);
                    dst[out + 2] = (char)toupper((unsigned char)dst[out + 2]);
                }
                out += (size_t)hn;
                header_due = false;
                any_section = true;
            }
            if (dst) {
                memcpy(dst + out, p, n);
                memcpy(dst + out + n, "\r\n", 2);
            }
            out += n + 2;
        }
        p = nl ? nl + 1 : end;
    }
    return out;
}

/* The payload of a bulk ('$') or verbatim ('=') string frame. */
static bool string_payload(const char *reply, size_t len, char type, const char **body, size_t *body_len)
{
    const char *cr = memchr(reply, '\r', len);
    if (!cr || cr + 1 >= reply + len || cr[1] != '\n')
        return false;
    long long n = 0;
    if (!resp_string2ll(reply + 1, (size_t)(cr - reply - 1), &n) || n < 0)
        return false;
    const char *payload = cr + 2;
    size_t avail = len - (size_t)(payload - reply);
    if ((unsigned long long)n + 2 != avail || payload[n] != '\r' || payload[n + 1] != '\n')
        return false;
    if (type == '=') {
        if (n < 4 || payload[3] != ':')
            return false;
        payload += 4;
        n -= 4;
    }
    *body = payload;
    *body_len = (size_t)n;
    return true;
}

int scoped_info_filter(const char *reply, size_t len, unsigned sections, struct buf *out)
{
    static const char bad[] = "-ERR respguard: unexpected reply to INFO from the upstream\r\n";
    if (len == 0)
        return buf_append(out, bad, sizeof bad - 1);
    char type = reply[0];
    if (type == '-' || type == '!')
        return buf_append(out, reply, len); /* the upstream's error, as it is */
    const char *body;
    size_t body_len;
    if ((type != '$' && type != '=') || !string_payload(reply, len, type, &body, &body_len))
        return buf_append(out, bad, sizeof bad - 1);
    size_t n = filter_text(body, body_len, sections, NULL);
    char head[48];
    int hn = type == '='
                 ? snprintf(head, sizeof head, "=%zu\r\ntxt:", n + 4)
                 : snprintf(head, sizeof head, "$%zu\r\n", n);
    if (buf_reserve(out, (size_t)hn + n + 2) != 0)
        return -ENOMEM;
    if (buf_append(out, head, (size_t)hn) != 0)
        return -ENOMEM;
    filter_text(body, body_len, sections, buf_tail(out));
    out->end += n;
    return buf_append(out, "\r\n", 2);
}
