/*
 * libFuzzer target for config_load: the input is written to a temporary file (config_load reads
 * a path) and loaded; whatever the result, the snapshot is freed. Finds crashes, leaks and
 * undefined behaviour in config.c and in how it drives libyaml.
 *
 * It checks two properties besides memory safety: a failed load leaves *out NULL and writes a
 * one-line message in "file:line:column: message" form; a successful load writes no message.
 * The environment is left as it is: ${VAR} in inputs sees the fuzzer's own environment.
 *
 *   clang -fsanitize=fuzzer,address,undefined -Iinclude src/config.c tests/fuzz/fuzz_config.c \
 *       -lyaml -o fuzz_config && ./fuzz_config -max_total_time=60 corpus/
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "respguard/config.h"

static char path[64];

static void remove_file(void)
{
    if (path[0])
        unlink(path);
}

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    snprintf(path, sizeof path, "/tmp/respguard-fuzz-config-XXXXXX");
    int fd = mkstemp(path);
    if (fd < 0)
        abort();
    close(fd);
    atexit(remove_file);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    FILE *f = fopen(path, "wb");
    if (!f)
        abort();
    if (size && fwrite(data, 1, size, f) != size)
        abort();
    if (fclose(f) != 0)
        abort();

    char err[512];
    struct config *c = (struct config *)&c;
    int rc = config_load(path, &c, err, sizeof err);
    if (rc < 0) {
        size_t plen = strlen(path);
        if (c != NULL || strncmp(err, path, plen) != 0 || err[plen] != ':' || strchr(err, '\n'))
            abort();
    } else {
        if (rc != 0 || c == NULL || err[0] != '\0')
            abort();
        /* Touch what consumers read first. */
        if (c->listener_count == 0 || c->user_count == 0 || !c->upstream.host)
            abort();
        config_free(c);
    }
    return 0;
}
