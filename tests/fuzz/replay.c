/*
 * replay.c: runs a fuzz target's LLVMFuzzerTestOneInput over every file in
 * the directories (or files) named on the command line, so a gcc build
 * replays the seed corpus and every crash reproducer under ctest.
 */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int run_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        fprintf(stderr, "replay: cannot open %s\n", path);
        return 1;
    }
    uint8_t *buf = malloc(1u << 22);
    size_t n = buf != NULL ? fread(buf, 1, 1u << 22, f) : 0;
    fclose(f);
    if (buf == NULL) return 1;
    /* An exact-size copy, so ASan sees reads past the end. */
    uint8_t *exact = malloc(n > 0 ? n : 1);
    if (exact == NULL) return 1;
    memcpy(exact, buf, n);
    free(buf);
    LLVMFuzzerTestOneInput(exact, n);
    free(exact);
    return 0;
}

int main(int argc, char **argv)
{
    int files = 0, bad = 0;
    for (int i = 1; i < argc; i++) {
        struct stat st;
        if (stat(argv[i], &st) != 0) {
            fprintf(stderr, "replay: %s does not exist\n", argv[i]);
            return 1;
        }
        if (!S_ISDIR(st.st_mode)) {
            bad += run_file(argv[i]);
            files++;
            continue;
        }
        DIR *d = opendir(argv[i]);
        struct dirent *e;
        while (d != NULL && (e = readdir(d)) != NULL) {
            if (e->d_name[0] == '.' || strcmp(e->d_name, "README") == 0) continue;
            char path[4096];
            snprintf(path, sizeof(path), "%s/%s", argv[i], e->d_name);
            bad += run_file(path);
            files++;
        }
        if (d != NULL) closedir(d);
    }
    printf("replayed %d inputs\n", files);
    return bad != 0 || files == 0;
}
