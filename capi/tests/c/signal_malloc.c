/* malloc from a signal handler while the interrupted thread may itself be
   inside malloc/free/realloc. glibc's malloc is not async-signal-safe (its
   arena lock is not recursive), so this runs under libspanalloc.so only.
   Two threads churn; a profiling timer interrupts them every 50 us and the
   handler allocates, writes, reallocates and frees; then the main thread
   forks 200 times while the timer still fires. Prints
   "signal_malloc: ok" and the number of handler runs. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t runs, bad;

static void handler(int sig) {
    (void)sig;
    static __thread unsigned x = 7;
    x = x * 1103515245u + 12345u;
    size_t n = 1 + (x >> 10) % 3000;
    unsigned char *p = malloc(n);
    if (!p) { bad = 1; return; }
    memset(p, 0x5a, n);
    p = realloc(p, n * 2);
    if (!p || p[n - 1] != 0x5a) { bad = 1; return; }
    free(p);
    void *c = calloc(4, 100);
    free(c);
    runs++;
}

static volatile int stop;
static void *churn(void *arg) {
    (void)arg;
    unsigned x = 99;
    void *keep[64] = {0};
    while (!stop) {
        x = x * 1103515245u + 12345u;
        int k = (x >> 8) % 64;
        free(keep[k]);
        size_t n = 1 + (x >> 14) % (k == 0 ? 100000 : 2000);
        keep[k] = (x & 1) ? malloc(n) : calloc(1, n);
        if (k == 1 && keep[k]) keep[k] = realloc(keep[k], n * 3);
    }
    for (int k = 0; k < 64; k++) free(keep[k]);
    return NULL;
}

int main(int argc, char **argv) {
    double seconds = argc > 1 ? atof(argv[1]) : 2.0;
    alarm(300);                             /* a hang fails as SIGALRM */
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = handler;
    sa.sa_flags = SA_RESTART;
    sigaction(SIGPROF, &sa, NULL);
    struct itimerval it = {{0, 50}, {0, 50}};
    setitimer(ITIMER_PROF, &it, NULL);
    pthread_t t;
    pthread_create(&t, NULL, churn, NULL);
    struct timespec start, now;
    clock_gettime(CLOCK_MONOTONIC, &start);
    do {
        unsigned char *p = malloc(100);
        p[0] = 1;
        p = realloc(p, 5000);
        free(p);
        clock_gettime(CLOCK_MONOTONIC, &now);
    } while ((now.tv_sec - start.tv_sec) + (now.tv_nsec - start.tv_nsec) / 1e9 < seconds);
    /* fork while the timer fires: the allocator holds its locks during
       fork, and a handler that allocates then must not wait for them. */
    int forks_bad = 0;
    for (int i = 0; i < 200; i++) {
        pid_t pid = fork();
        if (pid == 0) {
            alarm(10);                          /* a deadlock ends as SIGALRM */
            for (int k = 0; k < 100; k++) free(malloc(k * 50 + 1));
            _exit(0);
        }
        int st = 0;
        if (pid < 0 || waitpid(pid, &st, 0) != pid || !WIFEXITED(st) || WEXITSTATUS(st) != 0) forks_bad++;
    }
    printf("forks failed: %d\n", forks_bad);
    if (forks_bad) bad = 1;
    struct itimerval off = {{0, 0}, {0, 0}};
    setitimer(ITIMER_PROF, &off, NULL);
    stop = 1;
    pthread_join(t, NULL);
    size_t (*nested)(void) = (size_t (*)(void))dlsym(RTLD_DEFAULT, "spanalloc_nested_calls");
    printf("handler runs: %d\n", (int)runs);
    if (nested) printf("nested calls: %zu\n", nested());
    if (bad || runs == 0) { printf("signal_malloc: FAILED\n"); return 1; }
    printf("signal_malloc: ok\n");
    return 0;
}
