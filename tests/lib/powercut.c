/*
 * powercut.c: builds power-loss images from powercut_shim.c's record
 * (powercut.h).  The model is the strict POSIX one: a file's bytes survive
 * only up to its last fsync/fdatasync, a directory entry only up to its
 * directory's last fsync; anything later may or may not have reached the
 * disk, sector by sector and entry by entry.
 */
#define _GNU_SOURCE
#include "powercut.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define PC_SECTOR 512
#define PC_MAX_INOS 65536

const char *powercut_shim_path(void)
{
#ifdef POWERCUT_SHIM
    return POWERCUT_SHIM;
#else
    return NULL;
#endif
}

typedef struct {
    unsigned long long ino;
    char *path;
} pc_now;

/* The tree as the killed process left it: ino -> current path. */
static pc_now *now_tab;
static size_t now_n;

static int pc_now_add(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)flag;
    (void)ftw;
    if (now_n == PC_MAX_INOS) return 1;
    now_tab[now_n].ino = (unsigned long long)st->st_ino;
    now_tab[now_n].path = strdup(path);
    if (now_tab[now_n].path == NULL) return 1;
    now_n++;
    return 0;
}

static const char *pc_now_path(unsigned long long ino)
{
    for (size_t i = 0; i < now_n; i++)
        if (now_tab[i].ino == ino) return now_tab[i].path;
    return NULL;
}

static uint64_t pc_rng;

static bool pc_coin(void)
{
    pc_rng ^= pc_rng << 13;
    pc_rng ^= pc_rng >> 7;
    pc_rng ^= pc_rng << 17;
    return (pc_rng >> 32) & 1;
}

/* A whole file, malloc'd (NUL-terminated for listings); false if absent. */
static bool pc_slurp(const char *path, char **out, size_t *len)
{
    *out = NULL;
    *len = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return false;
    struct stat st;
    if (fstat(fd, &st) != 0) {
        close(fd);
        return false;
    }
    char *buf = malloc((size_t)st.st_size + 1);
    size_t n = 0;
    while (buf != NULL && n < (size_t)st.st_size) {
        ssize_t r = pread(fd, buf + n, (size_t)st.st_size - n, (off_t)n);
        if (r <= 0) break;
        n += (size_t)r;
    }
    close(fd);
    if (buf == NULL) return false;
    buf[n] = '\0';
    *out = buf;
    *len = n;
    return true;
}

static bool pc_spill(const char *path, const char *buf, size_t n)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0) return false;
    size_t done = 0;
    while (done < n) {
        ssize_t w = write(fd, buf + done, n - done);
        if (w <= 0) break;
        done += (size_t)w;
    }
    close(fd);
    return done == n;
}

static bool pc_file(const char *store, const char *out, unsigned long long ino, unsigned seed)
{
    char rec[PATH_MAX];
    snprintf(rec, sizeof(rec), "%s/f%llu", store, ino);
    char *dur = NULL, *cur = NULL;
    size_t dur_n = 0, cur_n = 0;
    (void)pc_slurp(rec, &dur, &dur_n); /* absent: created, never synced */
    const char *now = pc_now_path(ino);
    bool have_cur = now != NULL && pc_slurp(now, &cur, &cur_n);
    bool ok;
    if (seed == 0 || !have_cur) {
        ok = pc_spill(out, dur != NULL ? dur : "", dur_n);
    } else {
        size_t len = pc_coin() ? dur_n : cur_n;
        char *img = calloc(1, len + 1);
        ok = img != NULL;
        for (size_t off = 0; ok && off < len; off += PC_SECTOR) {
            size_t n = len - off < PC_SECTOR ? len - off : PC_SECTOR;
            for (size_t i = 0; i < n; i++) {
                size_t at = off + i;
                img[at] = at < dur_n ? dur[at] : 0;
            }
            char sec_cur[PC_SECTOR] = {0};
            if (off < cur_n) memcpy(sec_cur, cur + off, cur_n - off < n ? cur_n - off : n);
            if (memcmp(img + off, sec_cur, n) != 0 && pc_coin()) memcpy(img + off, sec_cur, n);
        }
        if (ok) ok = pc_spill(out, img, len);
        free(img);
    }
    free(dur);
    free(cur);
    if (!ok) fprintf(stderr, "powercut: cannot write %s: %s\n", out, strerror(errno));
    return ok;
}

typedef struct {
    char type;
    unsigned long long ino;
    char name[NAME_MAX + 1];
} pc_ent;

/* Parses a listing ("t ino name" lines) into a malloc'd array. */
static size_t pc_parse(char *text, pc_ent **out)
{
    size_t cap = 16, n = 0;
    pc_ent *e = malloc(cap * sizeof(*e));
    for (char *line = text, *nl; e != NULL && line != NULL && *line != '\0'; line = nl) {
        nl = strchr(line, '\n');
        if (nl != NULL) *nl++ = '\0';
        char type;
        unsigned long long ino;
        int used = 0;
        if (sscanf(line, "%c %llu %n", &type, &ino, &used) != 2 || used == 0) continue;
        if (n == cap) e = realloc(e, (cap *= 2) * sizeof(*e));
        if (e == NULL) break;
        e[n].type = type;
        e[n].ino = ino;
        snprintf(e[n].name, sizeof(e[n].name), "%s", line + used);
        n++;
    }
    *out = e;
    return e != NULL ? n : 0;
}

/* The entries of a directory now (listed the shim's way). */
static size_t pc_list_now(const char *path, pc_ent **out)
{
    size_t cap = 16, n = 0;
    pc_ent *e = malloc(cap * sizeof(*e));
    for (size_t i = 0; path != NULL && e != NULL && i < now_n; i++) {
        const char *p = now_tab[i].path;
        size_t pl = strlen(path);
        if (strncmp(p, path, pl) != 0 || p[pl] != '/' || strchr(p + pl + 1, '/') != NULL) continue;
        struct stat st;
        if (lstat(p, &st) != 0 || !(S_ISREG(st.st_mode) || S_ISDIR(st.st_mode))) continue;
        if (n == cap) e = realloc(e, (cap *= 2) * sizeof(*e));
        if (e == NULL) break;
        e[n].type = S_ISDIR(st.st_mode) ? 'd' : 'f';
        e[n].ino = (unsigned long long)st.st_ino;
        snprintf(e[n].name, sizeof(e[n].name), "%s", p + pl + 1);
        n++;
    }
    *out = e;
    return e != NULL ? n : 0;
}

static const pc_ent *pc_find(const pc_ent *e, size_t n, const char *name)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(e[i].name, name) == 0) return &e[i];
    return NULL;
}

static bool pc_dir(const char *store, const char *out, unsigned long long ino, unsigned seed,
                   int depth)
{
    if (depth > 32 || mkdir(out, 0700) != 0) {
        fprintf(stderr, "powercut: cannot create %s: %s\n", out, strerror(errno));
        return false;
    }
    char rec[PATH_MAX], *text = NULL;
    size_t text_n;
    snprintf(rec, sizeof(rec), "%s/d%llu", store, ino);
    pc_ent *dur = NULL, *cur = NULL;
    size_t dur_n = 0, cur_n = 0;
    if (pc_slurp(rec, &text, &text_n)) dur_n = pc_parse(text, &dur);
    free(text);
    cur_n = pc_list_now(pc_now_path(ino), &cur);
    bool ok = true;
    /* Every name durable or present now, each once. */
    for (size_t i = 0; ok && i < dur_n + cur_n; i++) {
        const pc_ent *e = i < dur_n ? &dur[i] : &cur[i - dur_n];
        if (i >= dur_n && pc_find(dur, dur_n, e->name) != NULL) continue;
        const pc_ent *d = pc_find(dur, dur_n, e->name), *c = pc_find(cur, cur_n, e->name);
        const pc_ent *pick = d;
        bool same = d != NULL && c != NULL && d->ino == c->ino && d->type == c->type;
        if (!same && seed != 0 && pc_coin()) pick = c;
        if (pick == NULL) continue;
        char sub[PATH_MAX];
        if (snprintf(sub, sizeof(sub), "%s/%s", out, pick->name) >= (int)sizeof(sub)) {
            ok = false;
            break;
        }
        ok = pick->type == 'd' ? pc_dir(store, sub, pick->ino, seed, depth + 1)
                               : pc_file(store, sub, pick->ino, seed);
    }
    free(dur);
    free(cur);
    return ok;
}

bool powercut_image(const char *store, const char *root, const char *out, unsigned seed)
{
    char path[PATH_MAX], *text = NULL;
    size_t n;
    snprintf(path, sizeof(path), "%s/root", store);
    if (!pc_slurp(path, &text, &n)) {
        fprintf(stderr, "powercut: no record in %s (was the shim loaded?)\n", store);
        return false;
    }
    unsigned long long root_ino = strtoull(text, NULL, 10);
    free(text);
    now_tab = calloc(PC_MAX_INOS, sizeof(*now_tab));
    now_n = 0;
    if (now_tab == NULL || nftw(root, pc_now_add, 32, FTW_PHYS) != 0) {
        fprintf(stderr, "powercut: cannot walk %s\n", root);
        for (size_t i = 0; now_tab != NULL && i < now_n; i++)
            free(now_tab[i].path);
        free(now_tab);
        return false;
    }
    pc_rng = 0x9e3779b97f4a7c15ull ^ seed;
    bool ok = pc_dir(store, out, root_ino, seed, 0);
    for (size_t i = 0; i < now_n; i++)
        free(now_tab[i].path);
    free(now_tab);
    now_tab = NULL;
    return ok;
}
