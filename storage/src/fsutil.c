/*
 * fsutil.c: file helpers of tdenode: whole-buffer pread/pwrite with EINTR
 * and short transfers handled, directory fsync, rm -rf, random ids.
 * Must never follow a symbolic link out of the data directory when
 * deleting (nftw with FTW_PHYS, no FTW_MOUNT crossing).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#include "kv_base64.h"
#include "node.h"

kv_result tde_pwrite_all(int fd, const void *buf, size_t n, off_t off, const char *what)
{
    const uint8_t *p = buf;
    size_t done = 0;
    while (done < n) {
        ssize_t w = pwrite(fd, p + done, n - done, off + (off_t)done);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) {
            kv_error_set(errno == ENOSPC || errno == EDQUOT ? KV_ERR_RESOURCE_EXHAUSTED
                                                            : KV_ERR_UNAVAILABLE,
                         __FILE__, __LINE__, "cannot write %s: %s", what,
                         w < 0 ? strerror(errno) : "no progress");
            return KV_FAILURE;
        }
        done += (size_t)w;
    }
    return KV_SUCCESS;
}

kv_result tde_pread_upto(int fd, void *buf, size_t n, off_t off, size_t *got, const char *what)
{
    uint8_t *p = buf;
    size_t done = 0;
    while (done < n) {
        ssize_t r = pread(fd, p + done, n - done, off + (off_t)done);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) KV_BAIL(KV_ERR_UNAVAILABLE, "cannot read %s: %s", what, strerror(errno));
        if (r == 0) break;
        done += (size_t)r;
    }
    *got = done;
    return KV_SUCCESS;
}

kv_result tde_fsync_dir(const char *path)
{
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    KV_ENSURE(fd >= 0, KV_ERR_UNAVAILABLE, "cannot open directory %s: %s", path, strerror(errno));
    int rc = fsync(fd);
    int e = errno;
    close(fd);
    KV_ENSURE(rc == 0, KV_ERR_UNAVAILABLE, "cannot fsync directory %s: %s", path, strerror(e));
    return KV_SUCCESS;
}

static int tde_rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st, (void)ftw;
    int rc = flag == FTW_DP ? rmdir(path) : unlink(path);
    return rc == 0 || errno == ENOENT ? 0 : -1;
}

kv_result tde_rmtree(const char *path)
{
    if (access(path, F_OK) != 0 && errno == ENOENT) return KV_SUCCESS;
    KV_ENSURE(nftw(path, tde_rm_one, 16, FTW_DEPTH | FTW_PHYS | FTW_MOUNT) == 0, KV_ERR_UNAVAILABLE,
              "cannot delete %s: %s", path, strerror(errno));
    return KV_SUCCESS;
}

void tde_random_id(const char *prefix, char *out, size_t cap)
{
    uint8_t rnd[8] = {0};
    /* getrandom on 8 bytes does not fail once the pool is initialized. */
    if (getrandom(rnd, sizeof(rnd), 0) != (ssize_t)sizeof(rnd)) {
        uint64_t t = (uint64_t)getpid() ^ (uint64_t)(uintptr_t)out;
        memcpy(rnd, &t, sizeof(rnd));
    }
    char hex[17];
    kv_hex_encode(rnd, sizeof(rnd), hex);
    snprintf(out, cap, "%s-%s", prefix, hex);
}

kv_result tde_path_join(char *out, size_t cap, const char *dir, const char *name)
{
    int w = snprintf(out, cap, "%s/%s", dir, name);
    KV_ENSURE(w > 0 && (size_t)w < cap, KV_ERR_INVALID_ARGUMENT, "path too long under %s", dir);
    return KV_SUCCESS;
}

kv_result tde_fsync_up(const char *dir, const char *root)
{
    char path[PATH_MAX];
    KV_ENSURE(snprintf(path, sizeof(path), "%s", dir) < (int)sizeof(path), KV_ERR_INVALID_ARGUMENT,
              "path too long: %s", dir);
    size_t root_len = strlen(root);
    for (;;) {
        KV_GUARD(tde_fsync_dir(path));
        char *slash = strrchr(path, '/');
        if (slash == NULL || (size_t)(slash - path) < root_len ||
            strncmp(path, root, root_len) != 0)
            return KV_SUCCESS;
        *slash = '\0';
    }
}
