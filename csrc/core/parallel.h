/* core/parallel.h: how many OpenMP threads megapairs kernels (and oneDNN) use.
 *
 * OpenMP keeps the thread count per calling thread, so a process-wide default is
 * kept here and applied by each entry point through a scope:
 *
 *     struct mp_thread_scope scope = mp_thread_scope_begin(num_threads); // 0: the default
 *     status = mp_some_kernel(...);
 *     mp_thread_scope_end(scope);
 *
 * oneDNN reads the count when a primitive is created, so the scope must cover both
 * creation and execution (it does when it wraps the whole call). */
#ifndef MP_CORE_PARALLEL_H
#define MP_CORE_PARALLEL_H

// Sets the process-wide default thread count; n <= 0 restores OpenMP's own default
// (OMP_NUM_THREADS or the number of cores). Also applies to the calling thread.
void mp_set_num_threads(int n);

// The count a call on this thread would use with num_threads = 0.
int mp_get_num_threads(void);

struct mp_thread_scope {
    int previous; // the calling thread's count before the scope, restored at its end
};

// num_threads > 0 wins, then the process-wide default, then OpenMP's default.
struct mp_thread_scope mp_thread_scope_begin(int num_threads);
void mp_thread_scope_end(struct mp_thread_scope scope);

#endif
