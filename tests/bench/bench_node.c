/*
 * bench_node.c: pages per second written and read through tdenode's API by
 * concurrent clients, against the same node code with the cipher replaced
 * by a copy (tdenode_copycipher, a bench-only build), measured in the same
 * run: what encryption costs the node's throughput.
 *
 *   build/tests/bench_node [--callers N] [--seconds S] [--rounds R]
 *                          [--batch B] [--pages P] [--workers W]
 *
 * Starts a real vaultd --dev and the two nodes (each its own data
 * directory, W RPC workers).  Each of N callers (threads of this process,
 * each with its own mTLS channel) owns one database on each node, filled
 * with P pages first.  A round runs, on one node then the other (which goes
 * first alternates):
 *   write: WritePages of B pages (WritePage when B is 1), no flush (the
 *          journal checkpoints itself when full), random page numbers < P;
 *   read:  ReadPages of B pages (ReadPage when B is 1), random pages < P;
 * for S seconds each.  Prints each round (pages/s, CPU per page of the node
 * and of node + callers), the medians of the per-round ratios gcm/copy of
 * pages/s and of CPU per page (copy/gcm: the throughput ratio when CPU is
 * what bounds both, steadier than pages/s on a loaded machine), target
 * >= 0.90 (encryption costs at most 10%), and one RESULT line.  Default: 8 callers,
 * 3 s, 5 rounds, batch 1, 1024 pages, 4 workers.  Not a test: nothing
 * asserts on time.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_common.h"
#include "hsmvault/v1/pages.pb-c.h"
#include "kv_pb.h"
#include "kv_test.h"
#include "page.h"
#include "tdenode_proc.h"

#define MAX_CALLERS 64
#define MAX_ROUNDS 32
#define MAX_BATCH 256

static int n_callers = 8, rounds = 5, batch = 1, n_pages = 1024;
static double seconds = 3;

typedef struct {
    vc *c;
    char db[64];
    unsigned seed;
} caller;

typedef struct {
    const char *label;
    tdenode_proc proc;
    caller callers[MAX_CALLERS];
} node;

static char env_id[64];
static node nodes[2];
static vaultd_proc vd;
static char tmp[256];

/* bench_die exits: no node, vaultd or data directory is left behind. */
static void cleanup(void)
{
    for (int i = 0; i < 2; i++)
        tdenode_proc_kill(&nodes[i].proc);
    vaultd_proc_kill(&vd);
    if (tmp[0] != '\0') kv_test_rmtree(tmp);
}

static uint64_t next_page(caller *c)
{
    c->seed = c->seed * 1103515245u + 12345u;
    return (c->seed >> 8) % (unsigned)n_pages;
}

static Hsmvault__V1__NodeDatabaseRef ref_of(caller *c)
{
    Hsmvault__V1__NodeDatabaseRef r = HSMVAULT__V1__NODE_DATABASE_REF__INIT;
    r.environment_id = env_id;
    r.database_id = c->db;
    return r;
}

/* One write call of batch pages (or of the given first page range). */
static void write_once(caller *c, const uint64_t *fixed)
{
    static uint8_t data[TDE_PAGE_DATA];
    Hsmvault__V1__NodeDatabaseRef ref = ref_of(c);
    Hsmvault__V1__Page pages[MAX_BATCH], *ptrs[MAX_BATCH];
    for (int i = 0; i < batch; i++) {
        hsmvault__v1__page__init(&pages[i]);
        pages[i].number = fixed != NULL ? fixed[i] : next_page(c);
        pages[i].data = (ProtobufCBinaryData){TDE_PAGE_DATA, data};
        ptrs[i] = &pages[i];
    }
    ProtobufCMessage *resp = NULL;
    kv_result r;
    if (batch == 1) {
        Hsmvault__V1__WritePageRequest req = HSMVAULT__V1__WRITE_PAGE_REQUEST__INIT;
        req.database = &ref;
        req.page = ptrs[0];
        r = vc_call(c->c, "/hsmvault.v1.Pages/WritePage", &req.base,
                    &hsmvault__v1__write_pages_response__descriptor, &resp);
    } else {
        Hsmvault__V1__WritePagesRequest req = HSMVAULT__V1__WRITE_PAGES_REQUEST__INIT;
        req.database = &ref;
        req.n_pages = (size_t)batch;
        req.pages = ptrs;
        r = vc_call(c->c, "/hsmvault.v1.Pages/WritePages", &req.base,
                    &hsmvault__v1__write_pages_response__descriptor, &resp);
    }
    if (kv_failed(r)) bench_die("write pages");
    kv_pb_free(resp);
}

static void read_once(caller *c)
{
    Hsmvault__V1__NodeDatabaseRef ref = ref_of(c);
    ProtobufCMessage *resp = NULL;
    kv_result r;
    if (batch == 1) {
        Hsmvault__V1__ReadPageRequest req = HSMVAULT__V1__READ_PAGE_REQUEST__INIT;
        req.database = &ref;
        req.number = next_page(c);
        r = vc_call(c->c, "/hsmvault.v1.Pages/ReadPage", &req.base, &hsmvault__v1__page__descriptor,
                    &resp);
    } else {
        uint64_t nums[MAX_BATCH];
        for (int i = 0; i < batch; i++)
            nums[i] = next_page(c);
        Hsmvault__V1__ReadPagesRequest req = HSMVAULT__V1__READ_PAGES_REQUEST__INIT;
        req.database = &ref;
        req.n_numbers = (size_t)batch;
        req.numbers = nums;
        r = vc_call(c->c, "/hsmvault.v1.Pages/ReadPages", &req.base,
                    &hsmvault__v1__read_pages_response__descriptor, &resp);
    }
    if (kv_failed(r)) bench_die("read pages");
    kv_pb_free(resp);
}

static void *writer(void *arg)
{
    long n = 0;
    while (!atomic_load(&bench_stop)) {
        write_once(arg, NULL);
        n += batch;
    }
    atomic_fetch_add(&bench_done, n);
    return NULL;
}

static void *reader(void *arg)
{
    long n = 0;
    while (!atomic_load(&bench_stop)) {
        read_once(arg);
        n += batch;
    }
    atomic_fetch_add(&bench_done, n);
    return NULL;
}

static void node_prepare(node *nd, const char *state, const char *binary, const char *name,
                         const char *workers)
{
    char data_dir[512];
    snprintf(data_dir, sizeof(data_dir), "%s/%s", tmp, name);
    const char *extra[] = {"--data-dir", data_dir, "--workers", workers, NULL};
    if (!tdenode_proc_start(&nd->proc, binary, state, name, extra)) bench_die("start a node");
    for (int i = 0; i < n_callers; i++) {
        caller *c = &nd->callers[i];
        c->c = tdenode_proc_client(&nd->proc, "engine");
        c->seed = 7919u * (unsigned)(i + 1);
        if (c->c == NULL) bench_die("open a node client");
        Hsmvault__V1__CreateNodeDatabaseRequest req =
            HSMVAULT__V1__CREATE_NODE_DATABASE_REQUEST__INIT;
        char db_name[96];
        snprintf(db_name, sizeof(db_name), "%s-%d", name, i);
        req.environment_id = env_id;
        req.name = db_name;
        Hsmvault__V1__NodeDatabase *d = NULL;
        if (kv_failed(vc_call(c->c, "/hsmvault.v1.Pages/CreateDatabase", &req.base,
                              &hsmvault__v1__node_database__descriptor, (ProtobufCMessage **)&d)))
            bench_die("create a database");
        snprintf(c->db, sizeof(c->db), "%s", d->database_id);
        kv_pb_free(&d->base);
        /* Fill every page once so reads find them. */
        for (int p = 0; p < n_pages; p += batch) {
            uint64_t nums[MAX_BATCH];
            for (int k = 0; k < batch; k++)
                nums[k] = (uint64_t)((p + k) % n_pages);
            write_once(c, nums);
        }
    }
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof(double), cmp_double);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

int main(int argc, char **argv)
{
    const char *workers = "4";
    static const struct option opts[] = {
        {"callers", required_argument, NULL, 'c'}, {"seconds", required_argument, NULL, 's'},
        {"rounds", required_argument, NULL, 'r'},  {"batch", required_argument, NULL, 'b'},
        {"pages", required_argument, NULL, 'p'},   {"workers", required_argument, NULL, 'w'},
        {"help", no_argument, NULL, 'h'},          {NULL, 0, NULL, 0}};
    int ch;
    while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        if (ch == 'c')
            n_callers = atoi(optarg);
        else if (ch == 's')
            seconds = atof(optarg);
        else if (ch == 'r')
            rounds = atoi(optarg);
        else if (ch == 'b')
            batch = atoi(optarg);
        else if (ch == 'p')
            n_pages = atoi(optarg);
        else if (ch == 'w')
            workers = optarg;
        else {
            printf("usage: bench_node [--callers N] [--seconds S] [--rounds R] [--batch B] "
                   "[--pages P] [--workers W]\n");
            return ch == 'h' ? 0 : 2;
        }
    }
    if (n_callers < 1 || n_callers > MAX_CALLERS || rounds < 1 || rounds > MAX_ROUNDS ||
        batch < 1 || batch > MAX_BATCH || n_pages < batch || seconds <= 0) {
        fprintf(stderr,
                "bench_node: --callers 1..%d, --rounds 1..%d, --batch 1..%d, --pages >= "
                "batch\n",
                MAX_CALLERS, MAX_ROUNDS, MAX_BATCH);
        return 2;
    }
    char state[300];
    kv_test_tmpdir(tmp, sizeof(tmp), "bench-node");
    snprintf(state, sizeof(state), "%s/vault", tmp);
    atexit(cleanup);
    if (!vaultd_proc_start(&vd, state)) bench_die("start vaultd");
    vc *op = vaultd_proc_client(&vd, "operator");
    char tenant[64];
    bench_tenant(op, "bench", tenant);
    bench_environment(op, tenant, "bench", env_id);
    bench_bind(op, "spiffe://hsmvault.dev/storage-node", HSMVAULT__V1__ROLE__ROLE_STORAGE_NODE,
               tenant, NULL);
    nodes[0].label = "gcm";
    nodes[1].label = "copy";
    node_prepare(&nodes[0], state, "storage/tdenode", "bench-gcm", workers);
    node_prepare(&nodes[1], state, "storage/tdenode_copycipher", "bench-copy", workers);
    printf("bench_node: %d callers, batch %d, %d pages per database, %.0f s per phase, %d rounds, "
           "%s workers per node\n",
           n_callers, batch, n_pages, seconds, rounds, workers);
    printf("%-6s %-6s %12s %12s %10s %10s %10s %10s\n", "round", "node", "write pg/s", "read pg/s",
           "w node us", "w all us", "r node us", "r all us");
    /* Per round and node: pages/s and CPU us per page (node; node + callers). */
    double wr[MAX_ROUNDS], rr[MAX_ROUNDS], wc[MAX_ROUNDS], rc[MAX_ROUNDS], sums[2][2] = {{0}};
    for (int r = 0; r < rounds; r++) {
        double w[2], rd[2], wcpu[2], rcpu[2];
        for (int k = 0; k < 2; k++) {
            int i = (r % 2 == 0) ? k : 1 - k;
            node *nd = &nodes[i];
            void *args[MAX_CALLERS];
            for (int c = 0; c < n_callers; c++)
                args[c] = &nd->callers[c];
            w[i] = bench_run(n_callers, writer, args, seconds, nd->proc.pid);
            double ops = bench_last_ops > 0 ? bench_last_ops : 1;
            double wnode = bench_last_cpu_vaultd / ops;
            wcpu[i] = (bench_last_cpu_vaultd + bench_last_cpu_self) / ops;
            rd[i] = bench_run(n_callers, reader, args, seconds, nd->proc.pid);
            ops = bench_last_ops > 0 ? bench_last_ops : 1;
            double rnode = bench_last_cpu_vaultd / ops;
            rcpu[i] = (bench_last_cpu_vaultd + bench_last_cpu_self) / ops;
            printf("%-6d %-6s %12.0f %12.0f %10.1f %10.1f %10.1f %10.1f\n", r + 1, nd->label, w[i],
                   rd[i], wnode * 1e6, wcpu[i] * 1e6, rnode * 1e6, rcpu[i] * 1e6);
            fflush(stdout);
        }
        wr[r] = w[0] / w[1];
        rr[r] = rd[0] / rd[1];
        /* What the throughput ratio is when CPU bounds both (this machine's
         * 2 cores run the callers too): copy's CPU per page over gcm's. */
        wc[r] = wcpu[1] / wcpu[0];
        rc[r] = rcpu[1] / rcpu[0];
        for (int i = 0; i < 2; i++) {
            sums[i][0] += w[i];
            sums[i][1] += rd[i];
        }
    }
    double wm = median(wr, rounds), rm = median(rr, rounds);
    double wcm = median(wc, rounds), rcm = median(rc, rounds);
    printf("mean pages/s: write gcm %.0f copy %.0f, read gcm %.0f copy %.0f\n", sums[0][0] / rounds,
           sums[1][0] / rounds, sums[0][1] / rounds, sums[1][1] / rounds);
    printf("median gcm/copy pages/s: write %.3f, read %.3f; CPU ratio (copy/gcm CPU per page, node "
           "+ callers): write %.3f, read %.3f (target >= 0.90: encryption costs <= 10%%)\n",
           wm, rm, wcm, rcm);
    printf("RESULT bench=node callers=%d batch=%d write_gcm=%.0f write_copy=%.0f read_gcm=%.0f "
           "read_copy=%.0f write_ratio_median=%.3f read_ratio_median=%.3f write_cpu_ratio=%.3f "
           "read_cpu_ratio=%.3f\n",
           n_callers, batch, sums[0][0] / rounds, sums[1][0] / rounds, sums[0][1] / rounds,
           sums[1][1] / rounds, wm, rm, wcm, rcm);
    for (int i = 0; i < 2; i++) {
        for (int c = 0; c < n_callers; c++)
            vc_close(nodes[i].callers[c].c);
        tdenode_proc_stop(&nodes[i].proc);
    }
    vc_close(op);
    vaultd_proc_stop(&vd);
    return 0; /* cleanup() removes the directory */
}
