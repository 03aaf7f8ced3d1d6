/*
 * bench_rpc.c: the RPC adapter's own cost per call: WhoAmI (authenticated,
 * no token work) through vaultd by concurrent callers, with the CPU vaultd
 * and the callers spend per call.  The figure to watch when tuning
 * rpc_server.c / rpc_client.c is CPU ms per call (it barely moves with the
 * machine's load), not calls per second.
 *
 *   build/tests/bench_rpc [--callers N] [--seconds S] [--rounds R] [--workers N]
 *
 * Not a test: nothing asserts on time.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "bench_common.h"
#include "hsmvault/v1/tenants.pb-c.h"
#include "kv_pb.h"
#include "kv_test.h"

static void *whoami_worker(void *arg)
{
    vc *c = arg;
    long n = 0;
    Hsmvault__V1__WhoAmIRequest req = HSMVAULT__V1__WHO_AM_IREQUEST__INIT;
    while (!atomic_load(&bench_stop)) {
        ProtobufCMessage *resp = NULL;
        if (kv_failed(vc_call(c, "/hsmvault.v1.Tenants/WhoAmI", &req.base,
                              &hsmvault__v1__who_am_iresponse__descriptor, &resp)))
            bench_die("WhoAmI through vaultd");
        kv_pb_free(resp);
        n++;
    }
    atomic_fetch_add(&bench_done, n);
    return NULL;
}

int main(int argc, char **argv)
{
    int callers = 8, rounds = 3, workers = 4;
    double seconds = 3;
    static const struct option opts[] = {{"callers", required_argument, NULL, 'c'},
                                         {"seconds", required_argument, NULL, 's'},
                                         {"rounds", required_argument, NULL, 'r'},
                                         {"workers", required_argument, NULL, 'w'},
                                         {NULL, 0, NULL, 0}};
    int ch;
    while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (ch) {
        case 'c':
            callers = atoi(optarg);
            break;
        case 's':
            seconds = atof(optarg);
            break;
        case 'r':
            rounds = atoi(optarg);
            break;
        case 'w':
            workers = atoi(optarg);
            break;
        default:
            fprintf(stderr, "usage: bench_rpc [--callers N] [--seconds S] [--rounds R] "
                            "[--workers N]\n");
            return 2;
        }
    }
    if (callers < 1 || callers > 256 || workers < 1 || workers > 64 || seconds <= 0 || rounds < 1 ||
        rounds > 100) {
        fprintf(stderr, "bench_rpc: callers 1..256, workers 1..64, seconds > 0, rounds 1..100\n");
        return 2;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    char tmp[256], state[300], w_arg[16];
    kv_test_tmpdir(tmp, sizeof(tmp), "bench");
    snprintf(state, sizeof(state), "%s/state", tmp);
    snprintf(w_arg, sizeof(w_arg), "%d", workers);
    const char *extra[] = {"--workers", w_arg, NULL};
    vaultd_proc vd;
    if (!vaultd_proc_start_args(&vd, state, extra)) return 1;
    void *args[256];
    for (int i = 0; i < callers; i++)
        if ((args[i] = vaultd_proc_client(&vd, "storage-node")) == NULL) return 1;
    printf("bench_rpc: WhoAmI, %d callers (own mTLS channel each) -> vaultd with %d workers, "
           "%ld CPUs\n",
           callers, workers, sysconf(_SC_NPROCESSORS_ONLN));
    bench_run(callers, whoami_worker, args, 0.5, vd.pid);
    double sum = 0, v_sum = 0, c_sum = 0, ops = 0;
    for (int r = 0; r < rounds; r++) {
        double rate = bench_run(callers, whoami_worker, args, seconds, vd.pid);
        printf("  round %d: %7.0f calls/s   CPU ms/call: vaultd %.3f, callers %.3f\n", r + 1, rate,
               bench_last_cpu_vaultd * 1e3 / bench_last_ops,
               bench_last_cpu_self * 1e3 / bench_last_ops);
        sum += rate;
        v_sum += bench_last_cpu_vaultd;
        c_sum += bench_last_cpu_self;
        ops += bench_last_ops;
    }
    printf("  mean:    %7.0f calls/s   CPU ms/call: vaultd %.3f, callers %.3f\n", sum / rounds,
           v_sum * 1e3 / ops, c_sum * 1e3 / ops);
    for (int i = 0; i < callers; i++)
        vc_close(args[i]);
    vaultd_proc_stop(&vd);
    kv_test_rmtree(tmp);
    return 0;
}
