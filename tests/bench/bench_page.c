/*
 * bench_page.c: page crypto on one core against OpenSSL's own figure,
 * measured in the same run.
 *
 *   build/tests/bench_page [--seconds S] [--rounds R] [--cpu N]
 *
 * Each round runs, one after the other on the same CPU (the process and
 * its children are pinned to --cpu, default the one it starts on):
 *   reference: `openssl speed -mr -seconds S -evp aes-256-gcm -bytes 8192`
 *              (bulk EVP_EncryptUpdate on 8 KiB buffers, no per-message
 *              IV, AAD or tag: the upper bound of AES-256-GCM here);
 *   pages:     page_seal then page_open of 8 KiB pages (a fresh nonce per
 *              seal, the identity AAD, the tag written and checked), 8192
 *              bytes counted per seal and per open.
 * Which goes first alternates.  Prints each round, the median of the
 * per-round ratios pages/reference (target >= 0.90) and one RESULT line.
 * Not a test: nothing asserts on time.
 */
#define _GNU_SOURCE
#include <getopt.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kv_clock.h"
#include "page.h"

#define MAX_ROUNDS 64

static double reference_rate(double seconds)
{
    char cmd[256];
    snprintf(cmd, sizeof(cmd),
             "openssl speed -mr -seconds %d -evp aes-256-gcm -bytes 8192 2>/dev/null",
             (int)(seconds + 0.5) < 1 ? 1 : (int)(seconds + 0.5));
    FILE *p = popen(cmd, "r");
    if (p == NULL) return 0;
    char line[512];
    double rate = 0;
    while (fgets(line, sizeof(line), p) != NULL) {
        /* "+F:<n>:AES-256-GCM:<bytes per second for 8192-byte blocks>" */
        if (strncmp(line, "+F:", 3) != 0) continue;
        char *last = strrchr(line, ':');
        if (last != NULL) rate = strtod(last + 1, NULL);
    }
    pclose(p);
    return rate;
}

static double pages_rate(page_key *k, const page_identity *id, double seconds, uint64_t *counter)
{
    static uint8_t data[TDE_PAGE_DATA], page[TDE_PAGE_SIZE], back[TDE_PAGE_DATA];
    for (size_t i = 0; i < sizeof(data); i++)
        data[i] = (uint8_t)(i * 13);
    page_header h = {.format = TDE_PAGE_FORMAT, .dek_version = 1, .nonce_epoch = 1};
    int64_t start = kv_clock_mono_ms(), end = start + (int64_t)(seconds * 1000);
    uint64_t pages = 0;
    for (;;) {
        for (int i = 0; i < 256; i++, pages++) {
            h.counter = (*counter)++;
            h.page_no = pages & 1023;
            if (kv_failed(page_seal(k, id, &h, data, page)) ||
                kv_failed(page_open(k, id, h.page_no, page, back, NULL))) {
                fprintf(stderr, "bench_page: %s\n", kv_error_msg());
                exit(1);
            }
        }
        int64_t now = kv_clock_mono_ms();
        if (now >= end) return 2.0 * (double)pages * TDE_PAGE_SIZE * 1000.0 / (double)(now - start);
    }
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
    double seconds = 2;
    int rounds = 7, cpu = sched_getcpu();
    static const struct option opts[] = {{"seconds", required_argument, NULL, 's'},
                                         {"rounds", required_argument, NULL, 'r'},
                                         {"cpu", required_argument, NULL, 'c'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    int ch;
    while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        if (ch == 's')
            seconds = atof(optarg);
        else if (ch == 'r')
            rounds = atoi(optarg);
        else if (ch == 'c')
            cpu = atoi(optarg);
        else {
            printf("usage: bench_page [--seconds S] [--rounds R] [--cpu N]\n");
            return ch == 'h' ? 0 : 2;
        }
    }
    if (rounds < 1 || rounds > MAX_ROUNDS || seconds < 1) {
        fprintf(stderr, "bench_page: --rounds 1..%d, --seconds >= 1\n", MAX_ROUNDS);
        return 2;
    }
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu < 0 ? 0 : cpu, &set);
    if (sched_setaffinity(0, sizeof(set), &set) != 0) perror("bench_page: sched_setaffinity");

    static const uint8_t dek[32] = "bench_page key: thirty-two bytes";
    page_key *k = NULL;
    page_identity id;
    if (kv_failed(page_key_new(dek, 32, 1, &k)) ||
        kv_failed(page_identity_make("tenant-bench", "env-bench", "db-bench", &id))) {
        fprintf(stderr, "bench_page: %s\n", kv_error_msg());
        return 1;
    }
    uint64_t counter = 0;
    (void)pages_rate(k, &id, 1, &counter); /* warm-up */
    printf("bench_page: %d rounds of %.0f s on CPU %d; GB/s = 1e9 bytes/s\n", rounds, seconds, cpu);
    printf("%-6s %12s %12s %8s\n", "round", "openssl", "pages", "ratio");
    double ratios[MAX_ROUNDS], sum_ref = 0, sum_pages = 0;
    for (int r = 0; r < rounds; r++) {
        double ref, pg;
        if (r % 2 == 0) {
            ref = reference_rate(seconds);
            pg = pages_rate(k, &id, seconds, &counter);
        } else {
            pg = pages_rate(k, &id, seconds, &counter);
            ref = reference_rate(seconds);
        }
        if (ref <= 0) {
            fprintf(stderr, "bench_page: `openssl speed` gave no figure\n");
            return 1;
        }
        ratios[r] = pg / ref;
        sum_ref += ref;
        sum_pages += pg;
        printf("%-6d %9.2f GB/s %7.2f GB/s %8.3f\n", r + 1, ref / 1e9, pg / 1e9, ratios[r]);
        fflush(stdout);
    }
    qsort(ratios, (size_t)rounds, sizeof(double), cmp_double);
    double median =
        rounds % 2 ? ratios[rounds / 2] : (ratios[rounds / 2 - 1] + ratios[rounds / 2]) / 2;
    printf("mean: openssl %.2f GB/s, pages (seal+open) %.2f GB/s, ratio of means %.3f\n",
           sum_ref / rounds / 1e9, sum_pages / rounds / 1e9, sum_pages / sum_ref);
    printf("median of per-round ratios: %.3f (target >= 0.90)\n", median);
    printf("RESULT bench=page openssl_gbps=%.3f pages_gbps=%.3f ratio_median=%.3f rounds=%d "
           "seconds=%.0f\n",
           sum_ref / rounds / 1e9, sum_pages / rounds / 1e9, median, rounds, seconds);
    page_key_unref(k);
    return 0;
}
