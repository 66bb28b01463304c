/*
 * resp: the RESP wire formats, as pure functions over bytes.
 *
 *  - Requests (client -> respguard): multibulk scanned by our own code, which checks every
 *    limit and Redis 7.0's acceptance rules as each header line arrives and records where the
 *    arguments are; inline commands with a small parser of our own that follows Redis 7.0's
 *    quoting rules. The result is an argument view; nothing is allocated per command once the
 *    parser's scratch space has grown to the working size.
 *  - Replies (upstream -> respguard): a streaming framer for RESP2 and RESP3 that finds the end
 *    of each top-level frame without buffering values, so large replies pass straight through.
 *
 * This module never touches a socket or an event loop. Upstream replies are untrusted input too:
 * the framer has depth and size limits.
 */
#ifndef RESPGUARD_RESP_H
#define RESPGUARD_RESP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ---------------------------------------------------------------------------------------- */
/* Requests                                                                                 */
/* ---------------------------------------------------------------------------------------- */

/* Limits applied while parsing. Checked as soon as the header that announces a size is seen,
 * before the payload is waited for. */
struct resp_limits {
    size_t max_args;       /* more elements than this: protocol error (see below) */
    size_t max_bulk;       /* one bulk string longer than this: protocol error */
    size_t max_request;    /* a whole multibulk frame longer than this: protocol error */
    size_t max_inline;     /* an inline line longer than this without '\n': protocol error */
    bool unauthenticated;  /* true before login: errors use Redis's "unauthenticated ..." texts
                              for the args and bulk limits (Redis: 10 args, 16384 bytes) */
};

/* Redis's own pre-login limits and respguard's defaults after login. */
#define RESP_UNAUTH_MAX_ARGS 10
#define RESP_UNAUTH_MAX_BULK 16384
#define RESP_DEFAULT_MAX_REQUEST (10u * 1024 * 1024)
#define RESP_DEFAULT_MAX_ARGS (1024u * 1024)
#define RESP_MAX_INLINE (64u * 1024)
#define RESP_MAX_BULK_LEN (512ull * 1024 * 1024) /* proto-max-bulk-len */

/* One argument: a view into the input passed to resp_request_next (multibulk) or into the
 * parser's scratch buffer (inline commands, whose arguments may be unescaped). Valid until the
 * next call on the same parser or until the caller changes its input buffer. */
struct resp_arg {
    const char *ptr;
    size_t len;
};

struct resp_request {
    size_t frame_len;       /* bytes of input this command occupied (always > 0) */
    size_t argc;            /* >= 1 for RESP_REQ_COMMAND */
    struct resp_arg *argv;  /* parser-owned array of argc views */
    bool is_inline;         /* came as an inline command */
    bool canonical;         /* the frame bytes are exactly the canonical multibulk encoding of
                               argv ("*<n>\r\n" then "$<len>\r\n<bytes>\r\n" each, no leading
                               zeros or signs): they may be forwarded as they are. Otherwise the
                               caller must re-encode with resp_encode_command. */
};

enum resp_req_status {
    RESP_REQ_NEED_MORE = 0, /* no complete command yet; nothing consumed: call again with the
                               same bytes and more appended */
    RESP_REQ_COMMAND = 1,   /* *out holds a command occupying out->frame_len bytes */
    RESP_REQ_SKIP = 2,      /* out->frame_len bytes held nothing to run (empty inline line,
                               "*0", "*-1"): consume them and call again */
    RESP_REQ_ERROR = -1,    /* protocol error: *err is Redis's text without '-' and CRLF, e.g.
                               "ERR Protocol error: invalid multibulk length". The caller answers
                               it and closes the connection. */
};

/* Private to resp.c: how far the pre-scan got in a command that is not complete yet, so that a
 * command arriving in many pieces is scanned once rather than once per piece. */
struct resp_scan {
    int mode;               /* 0 idle, 1 inline line, 2 multibulk frame */
    size_t len_seen;        /* input length at the last call */
    size_t pos;             /* the next header line, or the pending payload, starts here */
    size_t line_seen;       /* bytes after pos already searched for the line end */
    bool line_nul;          /* a NUL came first: like Redis's strchr, no line end follows */
    bool canonical;         /* every CRLF so far was a real CRLF */
    int64_t count;          /* announced elements, -1 until the "*<n>" line is parsed */
    int64_t done;           /* elements complete */
    int64_t bulk;           /* payload length pending at pos, -1 while a "$<n>" line is due */
    struct resp_limits lim; /* the limits the scan ran under: a change restarts it */
};

struct resp_parser {
    struct resp_arg *argv;     /* grows to the largest argc seen, never shrinks; while a frame
                                  is scanned its entries hold offsets, not pointers */
    size_t argv_cap;
    char *scratch;             /* inline arguments, unescaped */
    size_t scratch_cap;
    /* Private to resp.c. */
    struct resp_scan scan;
    char errbuf[64];           /* "expected '$', got 'c'" */
};

/* 0 on success, -ENOMEM. */
int resp_parser_init(struct resp_parser *p) __attribute__((warn_unused_result));
void resp_parser_deinit(struct resp_parser *p);

/* Parse the first command in buf[0..len). Never reads past len, never writes to buf. */
enum resp_req_status resp_request_next(struct resp_parser *p, const char *buf, size_t len,
                                       const struct resp_limits *lim, struct resp_request *out,
                                       const char **err);

/* Redis's string2ll: "0", or an optional '-' then [1-9][0-9]* within long long; nothing else
 * (no '+', spaces or leading zeros). Redis parses counts, lengths and numeric arguments this way,
 * so every module that must agree with Redis on a number uses this one. */
bool resp_string2ll(const char *s, size_t n, long long *out);

/* The code of an error reply ("-WRONGPASS invalid ..." -> "WRONGPASS"; "!..." too): the
 * upper-case letters after the type byte, up to 31 of them, into out (cap >= 32, always
 * NUL-terminated; "" when there is none). Only the code: the rest of an error may echo what was
 * sent (Redis's "unknown command ... with args beginning with: ..."), which may be a secret. */
void resp_error_code(const char *line, size_t len, char *out, size_t cap);

/* Bytes needed by resp_encode_command for argv. */
size_t resp_encoded_size(size_t argc, const struct resp_arg *argv);
/* Write the canonical multibulk encoding of argv into dst (resp_encoded_size bytes); returns the
 * number of bytes written. */
size_t resp_encode_command(char *dst, size_t argc, const struct resp_arg *argv);

/* ---------------------------------------------------------------------------------------- */
/* Replies                                                                                  */
/* ---------------------------------------------------------------------------------------- */

/* Nesting: the first RESP_FRAMER_INLINE_DEPTH levels live in the framer itself; deeper replies
 * (a Lua script returning a recursive table nests thousands of levels) get a heap stack of
 * sizeof(struct resp_framer_level) bytes per level, given back when the frame ends. */
#define RESP_FRAMER_INLINE_DEPTH 16
#define RESP_FRAMER_MAX_DEPTH (1 << 20)

enum resp_frame_kind {
    RESP_FRAME_REPLY = 0,     /* an ordinary reply to a command (any type, incl. errors) */
    RESP_FRAME_PUSH = 1,      /* RESP3 '>' push: out of band, answers no command */
    RESP_FRAME_ATTRIBUTE = 2, /* RESP3 '|' attribute: precedes a reply, is not one itself */
};

/* What the framer tells about a complete top-level frame. */
struct resp_frame_info {
    enum resp_frame_kind kind;
    char type;          /* first byte of the frame: '+', '-', ':', '$', '*', '%', '>', ... */
    bool is_error;      /* '-' or '!' at top level */
    /* For a top-level aggregate ('*', '>', '~', '%'): its first element if that is a simple,
     * bulk or verbatim string of at most sizeof(head) bytes (verbatim: without the "txt:"
     * prefix). Used to tell pub/sub messages from subscribe confirmations. */
    char head[24];
    size_t head_len;    /* 0 when absent or longer than sizeof(head) */
    bool has_head;
    /* For a top-level aggregate: the value of the last integer (':') element seen directly in it
     * (depth 1). Subscribe confirmations carry the subscription count there. */
    long long last_int;
    bool has_last_int;
    size_t elements;    /* top-level aggregate: number of direct elements (0 otherwise) */
};

struct resp_framer_level {
    int64_t remaining;  /* elements still expected at this level, -1 for streamed ('?') */
    char type;
    bool odd;           /* streamed level: an odd number of elements so far (a map's key) */
};

struct resp_framer {
    /* Opaque to callers except max_bulk and max_depth (set them after resp_framer_init);
     * see resp.c. Allocates only for replies nested deeper than RESP_FRAMER_INLINE_DEPTH. */
    int state;
    int depth;
    int heap_cap;              /* levels in heap (0: the inline levels are the stack) */
    struct resp_framer_level *heap;
    struct resp_framer_level inline_levels[RESP_FRAMER_INLINE_DEPTH];
    uint64_t bulk_left;        /* payload bytes still to skip (its CRLF is checked after) */
    char line[64];             /* current header line being assembled */
    size_t line_len;
    char cur_type;
    bool in_frame;
    bool streamed_string;
    struct resp_frame_info info; /* being built for the current top-level frame */
    int head_mode;             /* the current value is the top-level aggregate's first element
                                  and is being copied into info.head */
    uint64_t max_bulk;         /* default RESP_MAX_BULK_LEN */
    int max_depth;             /* default RESP_FRAMER_MAX_DEPTH, at most that */
    bool cur_direct;           /* the current value sits directly in the top-level aggregate */
    uint64_t text_len;         /* bytes of the current '+', '-' or '(' line so far */
    uint64_t stream_len;       /* bytes of the current streamed string so far */
    uint64_t payload_len;      /* length of the current bulk payload or chunk */
    uint64_t payload_off;      /* bytes of it skipped so far */
    const char *err;           /* why the stream became unusable */
};

void resp_framer_init(struct resp_framer *f);
/* Give back a deep frame's stack (only held while such a frame is half read). Call before
 * resp_framer_init on a framer that was used, and before freeing it. */
void resp_framer_deinit(struct resp_framer *f);

enum resp_frame_status {
    RESP_FRAME_MORE = 0,      /* all of buf consumed (*consumed == len), frame not finished */
    RESP_FRAME_DONE = 1,      /* a top-level frame ended after *consumed bytes; *info filled */
    RESP_FRAME_ERROR = -1,    /* malformed or over a limit; *err says why. Stream unusable. */
};

/* Feed reply bytes. Consumes at most up to the end of the first top-level frame that completes
 * in buf, so the caller can act between frames (insert a local reply, drop a swallowed frame).
 * Keeps no pointer into buf. */
enum resp_frame_status resp_framer_feed(struct resp_framer *f, const char *buf, size_t len,
                                        size_t *consumed, struct resp_frame_info *info,
                                        const char **err);

/* Between two frames: every frame fed so far has ended (and the stream is usable). */
bool resp_framer_idle(const struct resp_framer *f);

#endif
