/*
 * absl.c: see kv_absl.h.  Looks the setter up at run time (it is C++ and its
 * name is mangled with Debian's inline namespace), so nothing links against
 * Abseil and a different build simply keeps its default.
 */
#include "kv_absl.h"

#include <dlfcn.h>
#include <pthread.h>

/* absl::debian3::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle), where
 * OnDeadlockCycle::kIgnore is 0. */
#define KV_ABSL_SET_DEADLOCK_MODE                                                                  \
    "_ZN4absl7debian329SetMutexDeadlockDetectionModeENS0_15OnDeadlockCycleE"

static pthread_once_t kv_absl_once = PTHREAD_ONCE_INIT;

static void kv_absl_apply(void)
{
    void *sym = dlsym(RTLD_DEFAULT, KV_ABSL_SET_DEADLOCK_MODE);
    if (sym == NULL) return;
    void (*set_mode)(int);
    /* POSIX: a dlsym result may be converted to a function pointer. */
    *(void **)&set_mode = sym;
    set_mode(0);
}

void kv_absl_deadlock_detection_off(void)
{
    pthread_once(&kv_absl_once, kv_absl_apply);
}
