/*
 * resp.c: the RESP wire formats as pure functions over bytes.
 *
 * Requests: a multibulk command is scanned by our own code, which applies every limit and Redis
 * 7.0's exact acceptance rules (processMultibulkBuffer) as soon as each header line is visible,
 * and records where each argument is (as an offset, so a command may arrive in many pieces in a
 * buffer that moves); the views are made when the frame is complete. Header lines in the
 * canonical form ("$<digits>\r\n") take a short path; anything else goes through the general
 * line scan, which follows Redis byte for byte. Inline commands get a small parser of our own that
 * follows Redis 7.0's sdssplitargs. Replies: a streaming RESP2/RESP3 framer that finds where each
 * top-level frame ends while skipping payloads by count.
 *
 * This file must not: touch a socket or an event loop, keep mutable globals, allocate per command
 * once its buffers have grown to the working size, keep pointers into a caller's buffer between
 * calls, or allocate ahead of the bytes that arrived (argument slots grow as arguments come, not
 * with the count a header announces).
 */
#include "respguard/resp.h"
#include "respguard/invariant.h"

#include <errno.h>
#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Redis's PROTO_INLINE_MAX_SIZE: a multibulk header line with no '\r' after this many bytes. */
#define RESP_HEADER_MAX (64u * 1024)
/* The smallest possible element of a multibulk frame: "$0\r\n\r\n". */
#define RESP_MIN_ARG_BYTES 6u
/* No frame is bigger than this whatever the configured max_request (1 GiB is also Redis's default
 * client-query-buffer-limit). */
#define RESP_FRAME_HARD_MAX (1024ull * 1024 * 1024)

#define RESP_PROTO "ERR Protocol error: "
static const char ERR_MBULK_LEN[] = RESP_PROTO "invalid multibulk length";
static const char ERR_MBULK_UNAUTH[] = RESP_PROTO "unauthenticated multibulk length";
static const char ERR_BULK_LEN[] = RESP_PROTO "invalid bulk length";
static const char ERR_BULK_UNAUTH[] = RESP_PROTO "unauthenticated bulk length";
static const char ERR_TOO_BIG_MBULK[] = RESP_PROTO "too big mbulk count string";
static const char ERR_TOO_BIG_BULK[] = RESP_PROTO "too big bulk count string";
static const char ERR_TOO_BIG_INLINE[] = RESP_PROTO "too big inline request";
static const char ERR_QUOTES[] = RESP_PROTO "unbalanced quotes in request";
static const char ERR_MAX_REQUEST[] = RESP_PROTO "request exceeds max_request_bytes";
static const char ERR_OOM[] = "ERR out of memory";

enum resp_scan_mode {
    RESP_SCAN_IDLE = 0,
    RESP_SCAN_INLINE = 1,
    RESP_SCAN_MULTIBULK = 2,
};

/* ---------------------------------------------------------------------------------------- */
/* Small helpers                                                                            */
/* ---------------------------------------------------------------------------------------- */

/* The letters of an error's code only: the rest of the line may echo what was sent. */
void resp_error_code(const char *line, size_t len, char *out, size_t cap)
{
    size_t n = 0;
    if (cap == 0)
        return;
    if (len > 0 && (line[0] == '-' || line[0] == '!')) {
        for (size_t i = 1; i < len && n + 1 < cap && n < 31 && line[i] >= 'A' && line[i] <= 'Z'; i++)
            out[n++] = line[i];
    }
    out[n] = '\0';
}

/* The decimal digits s[i..n) (at least one), negated when neg, into *out within int64_t. The
 * one place that turns digits into a number; the callers decide which signs and zeros they take. */
static bool resp_digits_to_i64(const char *s, size_t i, size_t n, bool neg, int64_t *out)
{
    uint64_t v = 0;
    if (i == n)
        return false;
    for (; i < n; i++) {
        unsigned d;
        if (s[i] < '0' || s[i] > '9')
            return false;
        d = (unsigned)(s[i] - '0');
        if (v > (UINT64_MAX - d) / 10)
            return false;
        v = v * 10 + d;
    }
    if (neg) {
        if (v > (uint64_t)INT64_MAX + 1)
            return false;
        *out = v == (uint64_t)INT64_MAX + 1 ? INT64_MIN : -(int64_t)v;
    } else {
        if (v > (uint64_t)INT64_MAX)
            return false;
        *out = (int64_t)v;
    }
    return true;
}

/* Redis's string2ll: optional '-', then digits with no leading zero (a lone "0" aside); no '+',
 * no spaces, no overflow. Redis uses it for both request header lines, so it decides what a
 * valid count or length is. */
_Static_assert(sizeof(long long) == sizeof(int64_t), "resp_string2ll returns an int64_t as long long");

bool resp_string2ll(const char *s, size_t n, long long *out)
{
    if (n == 1 && s[0] == '0') {
        *out = 0;
        return true;
    }
    bool neg = n > 0 && s[0] == '-';
    size_t i = neg ? 1 : 0;
    if (i >= n || s[i] < '1' || s[i] > '9')
        return false;
    int64_t v;
    if (!resp_digits_to_i64(s, i, n, neg, &v))
        return false;
    *out = (long long)v;
    return true;
}

/* isspace() in the C locale, which is what Redis runs its parsers under. */
static bool resp_is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r';
}

static bool resp_is_hex(char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

static unsigned resp_hex_val(char c)
{
    if (c >= '0' && c <= '9')
        return (unsigned)(c - '0');
    if (c >= 'a' && c <= 'f')
        return (unsigned)(c - 'a' + 10);
    return (unsigned)(c - 'A' + 10);
}

static size_t resp_digits(uint64_t v)
{
    size_t n = 1;
    while (v >= 10) {
        v /= 10;
        n++;
    }
    return n;
}

static size_t resp_put_u64(char *dst, uint64_t v)
{
    size_t n = resp_digits(v);
    for (size_t i = n; i > 0; i--) {
        dst[i - 1] = (char)('0' + v % 10);
        v /= 10;
    }
    return n;
}

static int resp_grow_argv(struct resp_parser *p, size_t need)
{
    size_t cap;
    struct resp_arg *argv;

    if (need <= p->argv_cap)
        return 0;
    cap = p->argv_cap ? p->argv_cap : 16;
    while (cap < need)
        cap = cap > SIZE_MAX / 2 ? need : cap * 2;
    if (cap > SIZE_MAX / sizeof(*argv))
        return -ENOMEM;
    argv = realloc(p->argv, cap * sizeof(*argv));
    if (argv == NULL)
        return -ENOMEM;
    p->argv = argv;
    p->argv_cap = cap;
    return 0;
}

static int resp_grow_scratch(struct resp_parser *p, size_t need)
{
    size_t cap;
    char *s;

    if (need <= p->scratch_cap)
        return 0;
    cap = p->scratch_cap ? p->scratch_cap : 256;
    while (cap < need)
        cap = cap > SIZE_MAX / 2 ? need : cap * 2;
    s = realloc(p->scratch, cap);
    if (s == NULL)
        return -ENOMEM;
    p->scratch = s;
    p->scratch_cap = cap;
    return 0;
}

int resp_parser_init(struct resp_parser *p)
{
    memset(p, 0, sizeof(*p));
    return resp_grow_argv(p, 8);
}

void resp_parser_deinit(struct resp_parser *p)
{
    free(p->argv);
    free(p->scratch);
    memset(p, 0, sizeof(*p));
}

static bool resp_limits_equal(const struct resp_limits *a, const struct resp_limits *b)
{
    return a->max_args == b->max_args && a->max_bulk == b->max_bulk &&
           a->max_request == b->max_request && a->max_inline == b->max_inline &&
           a->unauthenticated == b->unauthenticated;
}

static void resp_scan_reset(struct resp_scan *s)
{
    memset(s, 0, sizeof(*s));
    s->mode = RESP_SCAN_IDLE;
}

static void resp_scan_start(struct resp_scan *s, int mode, const struct resp_limits *lim)
{
    resp_scan_reset(s);
    s->mode = mode;
    s->canonical = true;
    s->count = -1;
    s->bulk = -1;
    s->lim = *lim;
}

static void resp_scan_new_line(struct resp_scan *s)
{
    s->line_seen = 0;
    s->line_nul = false;
}

/*
 * Find the end of the header line starting at s->pos the way Redis does: strchr(pos, '\r'), so
 * a NUL before the '\r' hides it, and the byte after the '\r' must be present (it is skipped
 * unchecked). Redis gives up once more than 64 KiB wait without a '\r'; only '\r's within that
 * window count, so the answer does not depend on how the input was split.
 * Returns 1 with *cr set, 0 for "need more", -1 for "too big".
 */
static int resp_scan_line(struct resp_scan *s, const char *buf, size_t avail, size_t *cr)
{
    size_t start = s->pos + s->line_seen;
    size_t window_end = avail - s->pos > RESP_HEADER_MAX + 1 ? s->pos + RESP_HEADER_MAX + 1 : avail;

    if (!s->line_nul && start < window_end) {
        const char *seg = buf + start;
        size_t n = window_end - start;
        const char *r = memchr(seg, '\r', n);
        size_t upto = r != NULL ? (size_t)(r - seg) : n;

        if (memchr(seg, '\0', upto) != NULL) {
            s->line_nul = true;
        } else if (r != NULL) {
            size_t at = start + upto;
            if (at + 1 < avail) {
                *cr = at;
                return 1;
            }
            s->line_seen = at - s->pos; /* look at this '\r' again when more arrives */
            return 0;
        } else {
            s->line_seen = window_end - s->pos;
        }
    }
    return avail - s->pos > RESP_HEADER_MAX ? -1 : 0;
}

/* Smallest possible size of the frame given what is known, against max_request. */
static bool resp_over_request(uint64_t at_least, const struct resp_limits *lim)
{
    return at_least > lim->max_request || at_least > RESP_FRAME_HARD_MAX;
}

static enum resp_req_status resp_scan_fail(struct resp_scan *s, const char **err, const char *why)
{
    resp_scan_reset(s);
    *err = why;
    return RESP_REQ_ERROR;
}

/* "ERR Protocol error: expected '$', got '<c>'" in the parser's own buffer. */
static const char *resp_expected_dollar(struct resp_parser *p, char c)
{
    static const char prefix[] = RESP_PROTO "expected '$', got '";
    size_t n = sizeof(prefix) - 1;

    _Static_assert(sizeof(prefix) + 2 <= sizeof(p->errbuf), "errbuf too small");
    memcpy(p->errbuf, prefix, n);
    p->errbuf[n] = c;
    p->errbuf[n + 1] = '\'';
    p->errbuf[n + 2] = '\0';
    return p->errbuf;
}

/* A header line in the canonical form, entirely in buf: prefix, then a number without sign or
 * leading zero (at most 18 digits), then "\r\n", starting at pos. The common case, and
 * exactly what the general scan accepts as such; anything else (and every error) is left to it.
 * Returns true with the number and the line's '\r' position. */
static inline __attribute__((always_inline)) bool resp_quick_header(const char *buf, size_t pos, size_t avail, char prefix,
                                                                    long long *n, size_t *cr)
{
    size_t i = pos + 1, end = avail < pos + 19 ? avail : pos + 19; /* 18 digits fit */
    uint64_t v = 0;
    if (pos >= avail || buf[pos] != prefix)
        return false;
    while (i < end && buf[i] >= '0' && buf[i] <= '9')
        v = v * 10 + (uint64_t)(buf[i++] - '0');
    if (i == pos + 1 || i + 1 >= avail || buf[i] != '\r' || buf[i + 1] != '\n' ||
        (buf[pos + 1] == '0' && i > pos + 2))
        return false;
    *n = (long long)v;
    *cr = i;
    return true;
}

/* Remember where argument i starts (an offset: the caller's buffer may move before the frame is
 * complete). Slots grow with the arguments that arrived, not with the count announced. */
static int resp_note_arg(struct resp_parser *p, int64_t i, size_t offset, size_t len)
{
    if ((size_t)i >= p->argv_cap && resp_grow_argv(p, (size_t)i + 1) != 0)
        return -ENOMEM;
    p->argv[i].ptr = (const char *)(uintptr_t)offset;
    p->argv[i].len = len;
    return 0;
}

/* The common case in one pass: a whole canonical multibulk frame at the start of buf, within
 * the limits, with room for its arguments. Exactly what resp_parse_multibulk answers for such a
 * frame (the same checks, in the same order); for anything else (incomplete, not canonical,
 * over a limit, malformed, a count <= 0) it returns false and the general scan decides. */
static bool resp_quick_frame(struct resp_parser *p, const char *buf, size_t len, const struct resp_limits *lim,
                             struct resp_request *out)
{
    uint64_t max_request = lim->max_request < RESP_FRAME_HARD_MAX ? lim->max_request : RESP_FRAME_HARD_MAX;
    size_t avail = (uint64_t)len > max_request ? (size_t)max_request + 1 : len;
    long long ll;
    size_t cr;
    if (!resp_quick_header(buf, 0, avail, '*', &ll, &cr) || ll <= 0 || ll > INT_MAX ||
        (unsigned long long)ll > lim->max_args || (unsigned long long)ll > p->argv_cap)
        return false;
    size_t count = (size_t)ll, pos = cr + 2;
    if (resp_over_request((uint64_t)pos + (uint64_t)count * RESP_MIN_ARG_BYTES, lim))
        return false;
    for (size_t i = 0; i < count; i++) {
        if (!resp_quick_header(buf, pos, avail, '$', &ll, &cr) || (unsigned long long)ll > RESP_MAX_BULK_LEN ||
            (unsigned long long)ll > lim->max_bulk)
            return false;
        pos = cr + 2;
        size_t n = (size_t)ll;
        if (resp_over_request((uint64_t)pos + n + 2 + (uint64_t)(count - i - 1) * RESP_MIN_ARG_BYTES, lim) ||
            avail - pos < n + 2 || buf[pos + n] != '\r' || buf[pos + n + 1] != '\n')
            return false;
        p->argv[i].ptr = buf + pos;
        p->argv[i].len = n;
        pos += n + 2;
    }
    out->frame_len = pos;
    out->argc = count;
    out->argv = p->argv;
    out->is_inline = false;
    out->canonical = true;
    return true;
}

static enum resp_req_status resp_parse_multibulk(struct resp_parser *p, const char *buf,
                                                 size_t len, const struct resp_limits *lim,
                                                 struct resp_request *out, const char **err)
{
    struct resp_scan *s = &p->scan;
    uint64_t max_request = lim->max_request < RESP_FRAME_HARD_MAX ? lim->max_request
                                                                  : RESP_FRAME_HARD_MAX;
    size_t avail = len;
    size_t cr;
    long long ll;
    int r;

    /* Look at no more than max_request + 1 bytes: if the frame needs more than that it is too
     * big, and any error within those bytes is reported first, as it would be had the input
     * arrived one byte at a time. */
    if ((uint64_t)avail > max_request)
        avail = (size_t)max_request + 1;

    if (s->count < 0) {
        if (!resp_quick_header(buf, 0, avail, '*', &ll, &cr)) {
            r = resp_scan_line(s, buf, avail, &cr);
            if (r < 0)
                return resp_scan_fail(s, err, ERR_TOO_BIG_MBULK);
            if (r == 0)
                goto need_more;
            if (!resp_string2ll(buf + 1, cr - 1, &ll) || ll > INT_MAX)
                return resp_scan_fail(s, err, ERR_MBULK_LEN);
        } else if (ll > INT_MAX) {
            return resp_scan_fail(s, err, ERR_MBULK_LEN);
        }
        if (ll > 0 && (unsigned long long)ll > lim->max_args)
            return resp_scan_fail(s, err, lim->unauthenticated ? ERR_MBULK_UNAUTH : ERR_MBULK_LEN);
        if (buf[cr + 1] != '\n')
            s->canonical = false;
        s->pos = cr + 2;
        resp_scan_new_line(s);
        if (ll <= 0) {
            /* "*0", "*-1", any count <= 0: Redis ignores the line. */
            out->frame_len = s->pos;
            out->argc = 0;
            out->argv = p->argv;
            out->is_inline = false;
            out->canonical = false;
            resp_scan_reset(s);
            return RESP_REQ_SKIP;
        }
        s->count = ll;
        s->done = 0;
        if (resp_over_request((uint64_t)s->pos + (uint64_t)ll * RESP_MIN_ARG_BYTES, lim))
            return resp_scan_fail(s, err, ERR_MAX_REQUEST);
    }

    while (s->done < s->count) {
        if (s->bulk < 0) {
            if (!resp_quick_header(buf, s->pos, avail, '$', &ll, &cr)) {
                char c;
                r = resp_scan_line(s, buf, avail, &cr);
                if (r < 0)
                    return resp_scan_fail(s, err, ERR_TOO_BIG_BULK);
                if (r == 0)
                    goto need_more;
                c = buf[s->pos];
                if (c != '$') {
                    /* Redis's addReplyErrorFormat turns CR and LF into spaces. */
                    if (c == '\r' || c == '\n')
                        c = ' ';
                    return resp_scan_fail(s, err, resp_expected_dollar(p, c));
                }
                if (!resp_string2ll(buf + s->pos + 1, cr - s->pos - 1, &ll) || ll < 0)
                    return resp_scan_fail(s, err, ERR_BULK_LEN);
            }
            if ((unsigned long long)ll > RESP_MAX_BULK_LEN)
                return resp_scan_fail(s, err, ERR_BULK_LEN);
            if ((unsigned long long)ll > lim->max_bulk)
                return resp_scan_fail(s, err,
                                      lim->unauthenticated ? ERR_BULK_UNAUTH : ERR_BULK_LEN);
            if (buf[cr + 1] != '\n')
                s->canonical = false;
            s->pos = cr + 2;
            resp_scan_new_line(s);
            s->bulk = ll;
            if (resp_over_request((uint64_t)s->pos + (uint64_t)ll + 2 +
                                      (uint64_t)(s->count - s->done - 1) * RESP_MIN_ARG_BYTES,
                                  lim))
                return resp_scan_fail(s, err, ERR_MAX_REQUEST);
        }
        /* Redis needs the payload and two more bytes, which it skips unchecked. */
        if (avail - s->pos < (size_t)s->bulk + 2)
            goto need_more;
        if (resp_note_arg(p, s->done, s->pos, (size_t)s->bulk) != 0)
            return resp_scan_fail(s, err, ERR_OOM);
        if (buf[s->pos + (size_t)s->bulk] != '\r' || buf[s->pos + (size_t)s->bulk + 1] != '\n')
            s->canonical = false;
        s->pos += (size_t)s->bulk + 2;
        s->bulk = -1;
        s->done++;
    }

    /* Complete: the offsets become views into this buffer. */
    out->frame_len = s->pos;
    out->argc = (size_t)s->count;
    out->argv = p->argv;
    out->is_inline = false;
    out->canonical = s->canonical;
    for (size_t i = 0; i < out->argc; i++)
        p->argv[i].ptr = buf + (uintptr_t)p->argv[i].ptr;
    resp_scan_reset(s);
    return RESP_REQ_COMMAND;

need_more:
    if ((uint64_t)len > max_request)
        return resp_scan_fail(s, err, ERR_MAX_REQUEST); /* the frame needs bytes beyond it */
    s->len_seen = len;
    return RESP_REQ_NEED_MORE;
}

/*
 * Split one inline line like Redis 7.0's sdssplitargs. Blanks between arguments are isspace();
 * an unquoted argument ends only at ' ', '\t', '\r' or '\n' (so "\v" and "\f" stay inside it);
 * quotes may open in the middle of an argument; a closing quote must be followed by a blank or
 * the end of the line. Unescaped bytes go to p->scratch, which holds at least n bytes.
 */
static enum resp_req_status resp_split_inline(struct resp_parser *p, const char *c, size_t n,
                                              const struct resp_limits *lim, size_t *argc_out,
                                              const char **err)
{
    size_t i = 0, out = 0, argc = 0;
    char *dst = p->scratch;

    for (;;) {
        size_t start;
        bool inq = false, insq = false, done = false;

        while (i < n && resp_is_space(c[i]))
            i++;
        if (i == n)
            break;
        if (argc >= lim->max_args) {
            *err = lim->unauthenticated ? ERR_MBULK_UNAUTH : ERR_MBULK_LEN;
            return RESP_REQ_ERROR;
        }
        start = out;
        while (!done) {
            if (inq) {
                if (i + 3 < n && c[i] == '\\' && c[i + 1] == 'x' && resp_is_hex(c[i + 2]) &&
                    resp_is_hex(c[i + 3])) {
                    dst[out++] = (char)(resp_hex_val(c[i + 2]) * 16 + resp_hex_val(c[i + 3]));
                    i += 4;
                } else if (i + 1 < n && c[i] == '\\') {
                    char e = c[i + 1];
                    switch (e) {
                    case 'n': e = '\n'; break;
                    case 'r': e = '\r'; break;
                    case 't': e = '\t'; break;
                    case 'b': e = '\b'; break;
                    case 'a': e = '\a'; break;
                    default: break;
                    }
                    dst[out++] = e;
                    i += 2;
                } else if (i < n && c[i] == '"') {
                    if (i + 1 < n && !resp_is_space(c[i + 1]))
                        goto unbalanced;
                    done = true;
                    i++;
                } else if (i == n) {
                    goto unbalanced;
                } else {
                    dst[out++] = c[i++];
                }
            } else if (insq) {
                if (i + 1 < n && c[i] == '\\' && c[i + 1] == '\'') {
                    dst[out++] = '\'';
                    i += 2;
                } else if (i < n && c[i] == '\'') {
                    if (i + 1 < n && !resp_is_space(c[i + 1]))
                        goto unbalanced;
                    done = true;
                    i++;
                } else if (i == n) {
                    goto unbalanced;
                } else {
                    dst[out++] = c[i++];
                }
            } else if (i == n) {
                done = true;
            } else {
                switch (c[i]) {
                case ' ':
                case '\n':
                case '\r':
                case '\t':
                    done = true;
                    break;
                case '"':
                    inq = true;
                    break;
                case '\'':
                    insq = true;
                    break;
                default:
                    dst[out++] = c[i];
                    break;
                }
                i++;
            }
        }
        if (resp_grow_argv(p, argc + 1) != 0) {
            *err = ERR_OOM;
            return RESP_REQ_ERROR;
        }
        p->argv[argc].ptr = dst + start;
        p->argv[argc].len = out - start;
        argc++;
    }
    *argc_out = argc;
    return RESP_REQ_COMMAND;

unbalanced:
    *err = ERR_QUOTES;
    return RESP_REQ_ERROR;
}

static enum resp_req_status resp_parse_inline(struct resp_parser *p, const char *buf, size_t len,
                                              const struct resp_limits *lim,
                                              struct resp_request *out, const char **err)
{
    struct resp_scan *s = &p->scan;
    /* Only a '\n' within max_inline + 1 bytes counts, so that a longer line is refused however
     * it was split (Redis refuses once more than 64 KiB wait without one). */
    size_t window = len > lim->max_inline ? lim->max_inline + 1 : len;
    size_t start = s->line_seen;
    size_t nl = SIZE_MAX, line_len, argc = 0;
    enum resp_req_status st;

    if (!s->line_nul && start < window) {
        const char *seg = buf + start;
        const char *q = memchr(seg, '\n', window - start);
        size_t upto = q != NULL ? (size_t)(q - seg) : window - start;

        /* Redis looks for the '\n' with strchr: a NUL before it hides it for good. */
        if (memchr(seg, '\0', upto) != NULL)
            s->line_nul = true;
        else if (q != NULL)
            nl = start + upto;
        else
            s->line_seen = window;
    }
    if (nl == SIZE_MAX) {
        if (len > lim->max_inline)
            return resp_scan_fail(s, err, ERR_TOO_BIG_INLINE);
        s->len_seen = len;
        return RESP_REQ_NEED_MORE;
    }
    resp_scan_reset(s);

    line_len = nl > 0 && buf[nl - 1] == '\r' ? nl - 1 : nl;
    if (resp_grow_scratch(p, line_len > 0 ? line_len : 1) != 0) {
        *err = ERR_OOM;
        return RESP_REQ_ERROR;
    }
    st = resp_split_inline(p, buf, line_len, lim, &argc, err);
    if (st != RESP_REQ_COMMAND)
        return st;
    out->frame_len = nl + 1;
    out->argc = argc;
    out->argv = p->argv;
    out->is_inline = true;
    out->canonical = false;
    return argc == 0 ? RESP_REQ_SKIP : RESP_REQ_COMMAND;
}

enum resp_req_status resp_request_next(struct resp_parser *p, const char *buf, size_t len,
                                       const struct resp_limits *lim, struct resp_request *out,
                                       const char **err)
{
    int mode;

    *err = NULL;
    if (len == 0) {
        resp_scan_reset(&p->scan);
        return RESP_REQ_NEED_MORE;
    }
    /* As in Redis's processInputBuffer: '*' starts a multibulk frame, anything else a line. */
    mode = buf[0] == '*' ? RESP_SCAN_MULTIBULK : RESP_SCAN_INLINE;
    if (mode == RESP_SCAN_MULTIBULK && p->scan.mode == RESP_SCAN_IDLE && resp_quick_frame(p, buf, len, lim, out))
        return RESP_REQ_COMMAND; /* no scan state touched: it stays idle */

    /* Resume a scan only for what the contract promises: the same bytes with more appended,
     * under the same limits. Anything else starts over (correct, only slower). */
    if (p->scan.mode != mode || len < p->scan.len_seen || !resp_limits_equal(&p->scan.lim, lim))
        resp_scan_start(&p->scan, mode, lim);

    if (mode == RESP_SCAN_MULTIBULK)
        return resp_parse_multibulk(p, buf, len, lim, out, err);
    return resp_parse_inline(p, buf, len, lim, out, err);
}

size_t resp_encoded_size(size_t argc, const struct resp_arg *argv)
{
    size_t n = 1 + resp_digits(argc) + 2;
    for (size_t i = 0; i < argc; i++)
        n += 1 + resp_digits(argv[i].len) + 2 + argv[i].len + 2;
    return n;
}

size_t resp_encode_command(char *dst, size_t argc, const struct resp_arg *argv)
{
    char *d = dst;

    *d++ = '*';
    d += resp_put_u64(d, argc);
    *d++ = '\r';
    *d++ = '\n';
    for (size_t i = 0; i < argc; i++) {
        *d++ = '$';
        d += resp_put_u64(d, argv[i].len);
        *d++ = '\r';
        *d++ = '\n';
        if (argv[i].len > 0)
            memcpy(d, argv[i].ptr, argv[i].len);
        d += argv[i].len;
        *d++ = '\r';
        *d++ = '\n';
    }
    return (size_t)(d - dst);
}

/* ---------------------------------------------------------------------------------------- */
/* Reply framer                                                                             */
/* ---------------------------------------------------------------------------------------- */

enum resp_framer_state {
    RESP_FR_TYPE = 0,   /* the type byte of a value is due */
    RESP_FR_LINE,       /* a short header line is being copied into f->line */
    RESP_FR_LINE_LF,    /* short line: '\r' seen, '\n' due */
    RESP_FR_TEXT,       /* a '+', '-' or '(' line of any length is being skipped */
    RESP_FR_TEXT_LF,    /* text line: '\r' seen, '\n' due */
    RESP_FR_PAYLOAD,    /* bulk or chunk payload bytes are being skipped */
    RESP_FR_PAYLOAD_CR, /* the '\r' after a payload is due */
    RESP_FR_PAYLOAD_LF, /* the '\n' after a payload is due */
    RESP_FR_CHUNK,      /* streamed string: the ';' of the next chunk is due */
    RESP_FR_ERROR,      /* the stream is unusable; f->err says why */
};

enum resp_head_mode {
    RESP_HEAD_NONE = 0,
    RESP_HEAD_TEXT,     /* a '+' line, copied while it fits */
    RESP_HEAD_BULK,     /* a '$' payload that fits */
    RESP_HEAD_VERBATIM, /* a '=' payload whose part after "xxx:" fits */
};

/* What finishing a value means for its parent. */
enum resp_done {
    RESP_DONE_NO = 0,
    RESP_DONE_VALUE,     /* counts as an element of the enclosing aggregate */
    RESP_DONE_ATTRIBUTE, /* an attribute: describes the next element, is not one */
};

void resp_framer_init(struct resp_framer *f)
{
    memset(f, 0, sizeof(*f));
    f->state = RESP_FR_TYPE;
    f->max_bulk = RESP_MAX_BULK_LEN;
    f->max_depth = RESP_FRAMER_MAX_DEPTH;
}

/* Lenient signed 64-bit integer for reply headers: optional sign, at least one digit. */
static bool resp_parse_i64(const char *s, size_t n, int64_t *out)
{
    bool sign = n > 0 && (s[0] == '-' || s[0] == '+');
    return resp_digits_to_i64(s, sign ? 1 : 0, n, sign && s[0] == '-', out);
}

/* A RESP3 double: digits, sign, point, exponent, or inf / -inf / nan. Not parsed, only vetted. */
static bool resp_valid_double(const char *s, size_t n)
{
    if (n == 0)
        return false;
    for (size_t i = 0; i < n; i++)
        if (strchr("0123456789+-.eEinfaINFA", s[i]) == NULL || s[i] == '\0')
            return false;
    return true;
}

void resp_framer_deinit(struct resp_framer *f)
{
    free(f->heap);
    f->heap = NULL;
    f->heap_cap = 0;
}

static struct resp_framer_level *resp_fr_level(struct resp_framer *f, int i)
{
    return f->heap ? &f->heap[i] : &f->inline_levels[i];
}

/* Open an aggregate level; the stack moves to the heap (doubling) past the inline levels. */
static int resp_fr_max_depth(const struct resp_framer *f)
{
    return f->max_depth < 1 || f->max_depth > RESP_FRAMER_MAX_DEPTH ? RESP_FRAMER_MAX_DEPTH : f->max_depth;
}

static const char *resp_fr_push(struct resp_framer *f, char type, int64_t remaining)
{
    int max_depth = resp_fr_max_depth(f);
    if (f->depth >= max_depth)
        return "nesting too deep";
    int cap = f->heap ? f->heap_cap : RESP_FRAMER_INLINE_DEPTH;
    if (f->depth == cap) {
        int ncap = cap * 2 < max_depth ? cap * 2 : max_depth;
        struct resp_framer_level *n = malloc((size_t)ncap * sizeof *n);
        if (!n)
            return "out of memory";
        memcpy(n, f->heap ? f->heap : f->inline_levels, (size_t)f->depth * sizeof *n);
        free(f->heap);
        f->heap = n;
        f->heap_cap = ncap;
    }
    RG_INVARIANT(f->depth < (f->heap ? f->heap_cap : RESP_FRAMER_INLINE_DEPTH));
    struct resp_framer_level *l = resp_fr_level(f, f->depth++);
    l->remaining = remaining;
    l->type = type;
    l->odd = false;
    return NULL;
}

/* A value has ended; close every aggregate it completes. True when the top-level frame ended. */
static bool resp_fr_value_done(struct resp_framer *f, enum resp_done how)
{
    f->state = RESP_FR_TYPE;
    f->head_mode = RESP_HEAD_NONE;
    f->streamed_string = false;
    for (;;) {
        struct resp_framer_level *l;
        if (f->depth == 0) {
            if (f->heap)
                resp_framer_deinit(f); /* a deep frame ended: its stack goes */
            return true;
        }
        if (how == RESP_DONE_ATTRIBUTE)
            return false; /* precedes an element of this level; the level is unchanged */
        l = resp_fr_level(f, f->depth - 1);
        if (f->depth == 1)
            f->info.elements++;
        if (l->remaining < 0) {
            l->odd = !l->odd;
            return false;
        }
        if (--l->remaining > 0)
            return false;
        how = l->type == '|' ? RESP_DONE_ATTRIBUTE : RESP_DONE_VALUE;
        f->depth--;
    }
}

/* The type byte of a new value. */
static const char *resp_fr_begin(struct resp_framer *f, char c)
{
    if (f->depth == 0) {
        memset(&f->info, 0, sizeof(f->info));
        f->info.type = c;
        f->info.kind = c == '>' ? RESP_FRAME_PUSH
                     : c == '|' ? RESP_FRAME_ATTRIBUTE
                                : RESP_FRAME_REPLY;
        f->info.is_error = c == '-' || c == '!';
        f->in_frame = true;
    }
    f->cur_type = c;
    f->cur_direct = f->depth == 1 && c != '|' && c != '.';
    f->head_mode = RESP_HEAD_NONE;
    switch (c) {
    case '+':
    case '-':
    case '(':
        f->state = RESP_FR_TEXT;
        f->text_len = 0;
        if (c == '+' && f->cur_direct && f->info.elements == 0)
            f->head_mode = RESP_HEAD_TEXT;
        return NULL;
    case '.':
        if (f->depth == 0 || resp_fr_level(f, f->depth - 1)->remaining >= 0)
            return "unexpected end marker";
        /* fall through */
    case ':':
    case '$':
    case '*':
    case '_':
    case ',':
    case '#':
    case '!':
    case '=':
    case '%':
    case '~':
    case '|':
    case '>':
        f->state = RESP_FR_LINE;
        f->line_len = 0;
        return NULL;
    default:
        return "bad type byte";
    }
}

/* Start skipping a payload of n bytes (a bulk, blob error, verbatim string or chunk). */
static void resp_fr_payload(struct resp_framer *f, uint64_t n)
{
    f->payload_len = n;
    f->payload_off = 0;
    f->bulk_left = n;
    f->state = n > 0 ? RESP_FR_PAYLOAD : RESP_FR_PAYLOAD_CR;
}

/* A complete short header line is in f->line. */
static const char *resp_fr_line(struct resp_framer *f, enum resp_done *done)
{
    const char *s = f->line;
    size_t n = f->line_len;
    char c = f->cur_type;
    int64_t v;

    switch (c) {
    case ':':
        if (!resp_parse_i64(s, n, &v))
            return "bad integer";
        if (f->cur_direct) {
            f->info.last_int = v;
            f->info.has_last_int = true;
        }
        *done = RESP_DONE_VALUE;
        return NULL;
    case '_':
        if (n != 0)
            return "bad null";
        *done = RESP_DONE_VALUE;
        return NULL;
    case '#':
        if (n != 1 || (s[0] != 't' && s[0] != 'f'))
            return "bad boolean";
        *done = RESP_DONE_VALUE;
        return NULL;
    case ',':
        if (!resp_valid_double(s, n))
            return "bad double";
        *done = RESP_DONE_VALUE;
        return NULL;
    case '.':
        if (n != 0)
            return "bad end marker";
        if (resp_fr_level(f, f->depth - 1)->type == '%' && resp_fr_level(f, f->depth - 1)->odd)
            return "streamed map ends after a key";
        f->depth--; /* the streamed aggregate is complete: it is the value that ended */
        *done = RESP_DONE_VALUE;
        return NULL;
    case ';':
        if (!resp_parse_i64(s, n, &v) || v < 0)
            return "bad chunk length";
        if (v == 0) {
            *done = RESP_DONE_VALUE; /* ";0" ends the streamed string */
            return NULL;
        }
        if ((uint64_t)v > f->max_bulk || f->stream_len + (uint64_t)v > f->max_bulk)
            return "bulk too large";
        f->stream_len += (uint64_t)v;
        resp_fr_payload(f, (uint64_t)v);
        return NULL;
    case '$':
    case '!':
    case '=':
        if (c == '$' && n == 1 && s[0] == '?') {
            f->streamed_string = true;
            f->stream_len = 0;
            f->state = RESP_FR_CHUNK;
            return NULL;
        }
        if (!resp_parse_i64(s, n, &v))
            return "bad length";
        if (v == -1 && c == '$') {
            *done = RESP_DONE_VALUE; /* RESP2 null bulk */
            return NULL;
        }
        if (v < 0)
            return "bad length";
        if ((uint64_t)v > f->max_bulk)
            return "bulk too large";
        if (c == '=' && v < 4)
            return "bad verbatim string";
        if (f->cur_direct && f->info.elements == 0) {
            if (c == '$' && (uint64_t)v <= sizeof(f->info.head))
                f->head_mode = RESP_HEAD_BULK;
            else if (c == '=' && (uint64_t)v - 4 <= sizeof(f->info.head))
                f->head_mode = RESP_HEAD_VERBATIM;
        }
        resp_fr_payload(f, (uint64_t)v);
        return NULL;
    case '*':
    case '%':
    case '~':
    case '>':
    case '|': {
        if (n == 1 && s[0] == '?' && c != '|') {
            const char *why = resp_fr_push(f, c, -1);
            if (why)
                return why;
            f->state = RESP_FR_TYPE;
            return NULL;
        }
        if (!resp_parse_i64(s, n, &v))
            return "bad length";
        if (v == -1 && c == '*') {
            *done = RESP_DONE_VALUE; /* RESP2 null array */
            return NULL;
        }
        if (v < 0 || v > INT64_MAX / 2)
            return "bad length";
        if (c == '%' || c == '|')
            v *= 2;
        if (f->depth >= resp_fr_max_depth(f))
            return "nesting too deep"; /* an empty aggregate is a level too */
        if (v == 0) {
            *done = c == '|' ? RESP_DONE_ATTRIBUTE : RESP_DONE_VALUE;
            return NULL;
        }
        const char *why = resp_fr_push(f, c, v);
        if (why)
            return why;
        f->state = RESP_FR_TYPE;
        return NULL;
    }
    default:
        return "bad type byte"; /* not reached: resp_fr_begin filtered the type */
    }
}

/* Bytes of a '+', '-' or '(' line (no '\r' among them). Problems are reported in byte order,
 * so the reason does not depend on how the stream was cut. */
static const char *resp_fr_text(struct resp_framer *f, const char *b, size_t n)
{
    uint64_t room = f->max_bulk - f->text_len;
    size_t m = (uint64_t)n > room ? (size_t)room : n;

    /* A big number is framed like a simple string: Redis writes what a Lua script gives it
     * (big_number='123\r\n123' arrives as "(123  123"), so only the line ending is checked. */
    if (memchr(b, '\n', m) != NULL)
        return f->cur_type == '(' ? "bad big number" : "bad simple string";
    if (f->head_mode == RESP_HEAD_TEXT) {
        if (f->text_len + m <= sizeof(f->info.head))
            memcpy(f->info.head + f->text_len, b, m);
        else
            f->head_mode = RESP_HEAD_NONE; /* too long to be a head */
    }
    f->text_len += m;
    return m < n ? "simple string too long" : NULL;
}

static const char *resp_fr_text_done(struct resp_framer *f)
{
    if (f->head_mode == RESP_HEAD_TEXT) {
        f->info.has_head = true;
        f->info.head_len = (size_t)f->text_len;
    }
    return NULL;
}

/* Copy what belongs to the head out of n payload bytes at b. */
static void resp_fr_capture(struct resp_framer *f, const char *b, size_t n)
{
    uint64_t skip, lo, hi;

    if (f->head_mode != RESP_HEAD_BULK && f->head_mode != RESP_HEAD_VERBATIM)
        return;
    skip = f->head_mode == RESP_HEAD_VERBATIM ? 4 : 0; /* "txt:" */
    lo = f->payload_off > skip ? f->payload_off : skip;
    hi = f->payload_off + n;
    if (hi > lo)
        memcpy(f->info.head + (lo - skip), b + (lo - f->payload_off), (size_t)(hi - lo));
}

static void resp_fr_payload_done(struct resp_framer *f)
{
    if (f->head_mode == RESP_HEAD_BULK || f->head_mode == RESP_HEAD_VERBATIM) {
        f->info.has_head = true;
        f->info.head_len = (size_t)(f->payload_len - (f->head_mode == RESP_HEAD_VERBATIM ? 4 : 0));
    }
}

/* The usual reply in one step: a whole top-level "+..", "-..", ":n" or "$n" bulk (or "$-1") in
 * buf, in canonical form and within max_bulk. Returns its length, exactly what the byte-wise
 * machine would consume for it (the info of such a frame is only its type), or 0 to leave the
 * frame to that machine (anything else, incomplete, or malformed). */
static size_t resp_fr_quick(const struct resp_framer *f, const char *buf, size_t len)
{
    if (f->state != RESP_FR_TYPE || f->depth != 0 || len < 4)
        return 0;
    long long v;
    size_t cr;
    switch (buf[0]) {
    case '+':
    case '-': {
        const char *end = memchr(buf + 1, '\r', len - 1);
        if (end == NULL)
            return 0;
        size_t n = (size_t)(end - buf) - 1;
        if ((uint64_t)n > f->max_bulk || memchr(buf + 1, '\n', n) != NULL || n + 2 >= len || end[1] != '\n')
            return 0;
        return n + 3;
    }
    case ':': /* a non-negative one; "-" and anything unusual go the long way */
        return resp_quick_header(buf, 0, len, ':', &v, &cr) ? cr + 2 : 0;
    case '$':
        if (buf[1] == '-')
            return buf[2] == '1' && buf[3] == '\r' && len > 4 && buf[4] == '\n' ? 5 : 0;
        if (!resp_quick_header(buf, 0, len, '$', &v, &cr) || (uint64_t)v > f->max_bulk ||
            len - (cr + 2) < (uint64_t)v + 2 || buf[cr + 2 + v] != '\r' || buf[cr + 3 + v] != '\n')
            return 0;
        return cr + 2 + (size_t)v + 2;
    default:
        return 0;
    }
}

enum resp_frame_status resp_framer_feed(struct resp_framer *f, const char *buf, size_t len,
                                        size_t *consumed, struct resp_frame_info *info,
                                        const char **err)
{
    size_t i = 0;

    if (f->state == RESP_FR_TYPE && f->depth == 0) {
        size_t n = resp_fr_quick(f, buf, len);
        if (n > 0) {
            if (info != NULL) {
                memset(info, 0, sizeof(*info));
                info->type = buf[0];
                info->kind = RESP_FRAME_REPLY;
                info->is_error = buf[0] == '-';
            }
            *consumed = n;
            return RESP_FRAME_DONE;
        }
    }

    if (f->state == RESP_FR_ERROR) {
        *consumed = 0;
        if (err != NULL)
            *err = f->err;
        return RESP_FRAME_ERROR;
    }
    while (i < len) {
        const char *why = NULL;
        enum resp_done done = RESP_DONE_NO;

        switch (f->state) {
        case RESP_FR_TYPE:
            why = resp_fr_begin(f, buf[i++]);
            break;
        case RESP_FR_LINE: {
            const char *cr = memchr(buf + i, '\r', len - i);
            size_t n = cr != NULL ? (size_t)(cr - (buf + i)) : len - i;
            if (n > sizeof(f->line) - f->line_len) {
                why = "header line too long";
                break;
            }
            memcpy(f->line + f->line_len, buf + i, n);
            f->line_len += n;
            i += n;
            if (cr != NULL) {
                i++;
                f->state = RESP_FR_LINE_LF;
            }
            break;
        }
        case RESP_FR_LINE_LF:
            if (buf[i++] != '\n')
                why = "bad line terminator";
            else
                why = resp_fr_line(f, &done);
            break;
        case RESP_FR_TEXT: {
            const char *cr = memchr(buf + i, '\r', len - i);
            size_t n = cr != NULL ? (size_t)(cr - (buf + i)) : len - i;
            why = resp_fr_text(f, buf + i, n);
            i += n;
            if (why == NULL && cr != NULL) {
                i++;
                f->state = RESP_FR_TEXT_LF;
            }
            break;
        }
        case RESP_FR_TEXT_LF:
            if (buf[i++] != '\n') {
                why = "bad line terminator";
            } else {
                why = resp_fr_text_done(f);
                done = RESP_DONE_VALUE;
            }
            break;
        case RESP_FR_PAYLOAD: {
            size_t n = len - i;
            if ((uint64_t)n > f->bulk_left)
                n = (size_t)f->bulk_left;
            resp_fr_capture(f, buf + i, n);
            i += n;
            f->bulk_left -= n;
            f->payload_off += n;
            if (f->bulk_left == 0)
                f->state = RESP_FR_PAYLOAD_CR;
            break;
        }
        case RESP_FR_PAYLOAD_CR:
            if (buf[i++] != '\r')
                why = "bulk not followed by CRLF";
            else
                f->state = RESP_FR_PAYLOAD_LF;
            break;
        case RESP_FR_PAYLOAD_LF:
            if (buf[i++] != '\n') {
                why = "bulk not followed by CRLF";
            } else if (f->streamed_string) {
                f->state = RESP_FR_CHUNK;
            } else {
                resp_fr_payload_done(f);
                done = RESP_DONE_VALUE;
            }
            break;
        case RESP_FR_CHUNK:
            if (buf[i++] != ';') {
                why = "bad streamed string chunk";
            } else {
                f->cur_type = ';';
                f->line_len = 0;
                f->state = RESP_FR_LINE;
            }
            break;
        default:
            why = "framer state corrupt";
            break;
        }
        if (why != NULL) {
            f->state = RESP_FR_ERROR;
            f->err = why;
            *consumed = i;
            if (err != NULL)
                *err = why;
            return RESP_FRAME_ERROR;
        }
        if (done != RESP_DONE_NO && resp_fr_value_done(f, done)) {
            f->in_frame = false;
            if (info != NULL)
                *info = f->info;
            *consumed = i;
            return RESP_FRAME_DONE;
        }
    }
    *consumed = len;
    return RESP_FRAME_MORE;
}

bool resp_framer_idle(const struct resp_framer *f)
{
    return !f->in_frame && f->state != RESP_FR_ERROR;
}
