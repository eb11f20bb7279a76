/* core/parallel.c: the process-wide thread count and the scope each entry point opens to
 * apply it (OpenMP keeps its count per calling thread). */
#include "core/parallel.h"

#include <omp.h>
#include <stdatomic.h>

static atomic_int default_threads; // 0: not set, follow OpenMP

// OpenMP's own default, remembered from the first call. That call must come from a thread
// that has not changed its own count; the Python module makes it at import.
static int openmp_default(void) {
    static atomic_int initial;
    int n = atomic_load(&initial);
    if (n <= 0) {
        n = omp_get_max_threads();
        atomic_store(&initial, n);
    }
    return n;
}

void mp_set_num_threads(int n) {
    int fallback = openmp_default();
    atomic_store(&default_threads, n > 0 ? n : 0);
    omp_set_num_threads(n > 0 ? n : fallback);
}

int mp_get_num_threads(void) {
    int n = atomic_load(&default_threads);
    return n > 0 ? n : openmp_default();
}

struct mp_thread_scope mp_thread_scope_begin(int num_threads) {
    struct mp_thread_scope scope = {.previous = omp_get_max_threads()};
    omp_set_num_threads(num_threads > 0 ? num_threads : mp_get_num_threads());
    return scope;
}

void mp_thread_scope_end(struct mp_thread_scope scope) { omp_set_num_threads(scope.previous); }
