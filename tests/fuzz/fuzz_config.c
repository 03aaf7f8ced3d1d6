/*
 * fuzz_config.c: the config-file parser behind vaultd's config and
 * vaultctl's profiles, on arbitrary file contents.
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include "vaultclient.h"
#include "vaultd_config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int fd = memfd_create("fuzz-config", MFD_CLOEXEC);
    if (fd < 0) return 0;
    if (size > 0 && write(fd, data, size) != (ssize_t)size) {
        close(fd);
        return 0;
    }
    char path[64];
    snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
    vaultd_config c;
    vaultd_config_defaults(&c);
    if (kv_ok(vaultd_config_load(path, &c)) && kv_ok(vaultd_config_check(&c)) && c.workers == 0)
        abort();
    vc_profile p;
    if (kv_ok(vc_profile_load(path, &p)) && p.target[0] == '\0')
        abort(); /* a loaded profile has a target */
    close(fd);
    return 0;
}
