"""The worker threads gptkit's C kernels share: kept spinning between the calls of a decode step.

`gemv` and `decode_attention` split each call between threads. Through OpenMP
(libgomp, the runtime PyTorch loads) that costs a few microseconds a call on the
thread that started Python, but a decode loop running on any other thread — the
server's batch thread — pays far more: libgomp gives every such thread a thread
pool of its own, and once it manages more threads than there are CPUs it lets
its workers spin only briefly before they sleep, so that each call waits for a
worker to be woken. On this project's 2-core Sapphire Rapids VM a 768 x 768
float32 product took 29 µs on the main thread and 150-200 µs on another one, and
the server's one-row GPT-2 124M steps took 41 ms against `generate`'s 21.

This pool is one set of workers for every thread but the first (which keeps
OpenMP, whose workers PyTorch's own ops share there): a call hands the workers its
body and runs its own share, and the workers spin for `SPIN_MICROSECONDS` after
each call, then sleep on a futex. One call runs at a time; a call from a second
thread meanwhile runs on its caller's thread alone. A forked child starts with no
workers and makes its own. Where this cannot be built, the kernels use OpenMP.
"""

from __future__ import annotations

import ctypes
import os

from gptkit.kernels import native

# Past the gaps between a decode step's calls (tens of microseconds), short of the sampling between steps: the
# batch thread's own PyTorch ops (OpenMP) then find the core free.
SPIN_MICROSECONDS = 300

SOURCE = r"""
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
#include <linux/futex.h>

#define MAX_WORKERS 63
typedef void (*body_fn)(void *arg, int thread, int threads);

static pthread_mutex_t calling = PTHREAD_MUTEX_INITIALIZER;  /* one call at a time */
static int workers = 0;                                      /* started so far; guarded by `calling` */
static atomic_uint generation = 0;                           /* bumped by each call: the workers' signal */
static atomic_int unfinished = 0;                            /* workers still inside the current call */
static atomic_int sleeping = 0;
static unsigned first_seen[MAX_WORKERS + 1];              /* the generation each worker was started at */
static body_fn job;
static void *job_arg;
static int job_threads;

static long long now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (long long)t.tv_sec * 1000000000LL + t.tv_nsec;
}

static void pause_briefly(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

static void *work(void *index_as_pointer) {
    const int index = (int)(intptr_t)index_as_pointer;
    unsigned seen = first_seen[index];  /* not the generation now: the call that started it may have moved it on */
    for (;;) {
        unsigned now;
        long long since = now_ns();
        int spins = 0;
        while ((now = atomic_load(&generation)) == seen) {
            pause_briefly();
            if (++spins % 128 == 0 && now_ns() - since > SPIN_NS) {
                atomic_fetch_add(&sleeping, 1);
                /* returns at once where the generation moved on since it was read */
                syscall(SYS_futex, &generation, FUTEX_WAIT_PRIVATE, seen, NULL, NULL, 0);
                atomic_fetch_sub(&sleeping, 1);
                since = now_ns();
            }
        }
        seen = now;
        if (index < job_threads) job(job_arg, index, job_threads);
        atomic_fetch_sub(&unfinished, 1);
    }
    return NULL;
}

static void forget_workers(void) {  /* in a forked child: the parent's workers do not exist there */
    pthread_mutex_init(&calling, NULL);
    workers = 0;
    atomic_store(&unfinished, 0);
    atomic_store(&sleeping, 0);
}

static int registered = 0;

/* The CPUs this process may run on (set from Python, which reads the affinity mask): the pool never has more
   threads, since each call waits for every worker to check in and a worker waiting for a core would hold it up. */
static int cpus = 1;
void set_cpus(int n) { cpus = n > 0 ? n : 1; }

/* body(arg, t, threads) for t in [0, threads): t = 0 on the caller's thread, the others on workers; threads at
   most the CPUs there are. Returns the number of threads it ran on (1 where another call was running, or no
   worker could be started). */
int run_parallel(body_fn body, void *arg, int threads) {
    if (threads > MAX_WORKERS + 1) threads = MAX_WORKERS + 1;
    if (threads > cpus) threads = cpus;
    if (threads < 2 || pthread_mutex_trylock(&calling) != 0) {
        body(arg, 0, 1);
        return 1;
    }
    if (!registered) { pthread_atfork(NULL, NULL, forget_workers); registered = 1; }
    while (workers < threads - 1) {
        pthread_t id;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        first_seen[workers + 1] = atomic_load(&generation);
        int failed = pthread_create(&id, &attr, work, (void *)(intptr_t)(workers + 1));
        pthread_attr_destroy(&attr);
        if (failed) break;
        workers++;
    }
    if (threads > workers + 1) threads = workers + 1;
    if (threads < 2) {
        pthread_mutex_unlock(&calling);
        body(arg, 0, 1);
        return 1;
    }
    job = body; job_arg = arg; job_threads = threads;
    atomic_store(&unfinished, workers);  /* every worker wakes; those past `threads` only check in */
    atomic_fetch_add(&generation, 1);
    if (atomic_load(&sleeping) > 0) syscall(SYS_futex, &generation, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
    body(arg, 0, threads);
    while (atomic_load(&unfinished) > 0) pause_briefly();
    pthread_mutex_unlock(&calling);
    return threads;
}

/* How many workers have been started (for tests and the curious). */
int started_workers(void) { return workers; }

/* The address kernels call through (see `native.PRELUDE`'s `parallel`). */
void *run_parallel_address(void) { return (void *)run_parallel; }
"""


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _build() -> ctypes.CDLL | None:
    lib = native.build("thread_pool", f"#define SPIN_NS {SPIN_MICROSECONDS * 1000}LL\n" + SOURCE, openmp=False)
    if lib is None:
        return None
    lib.run_parallel_address.restype = ctypes.c_void_p
    lib.run_parallel_address.argtypes = []
    lib.started_workers.restype = ctypes.c_int
    lib.started_workers.argtypes = []
    lib.set_cpus.argtypes = [ctypes.c_int]
    lib.set_cpus.restype = None
    lib.set_cpus(_cpus())
    return lib


_LIBRARY = native.Library(_build)


def available() -> bool:
    return _LIBRARY.get() is not None


def started_workers() -> int:
    """How many worker threads the pool has started in this process (0 where it is not built)."""
    pool = _LIBRARY.get()
    return 0 if pool is None else int(pool.started_workers())


def connect(kernel: ctypes.CDLL) -> bool:
    """Have `kernel` (built from `native.PRELUDE`) split its calls on this pool; False where it cannot be built."""
    pool = _LIBRARY.get()
    if pool is None:
        return False
    kernel.set_run_parallel.argtypes = [ctypes.c_void_p]
    kernel.set_run_parallel.restype = None
    kernel.set_run_parallel(pool.run_parallel_address())
    return True
