/* dlopen under the preload: threads that exist before many modules with TLS
   are loaded, then touch those modules' TLS and allocate. glibc's
   __tls_get_addr then grows their DTVs (malloc/realloc) and allocates each
   module's TLS block (malloc) from inside whatever TLS access comes first,
   including the allocator's own. The modules are unloaded and loaded again
   so that stale DTV entries are freed from the same slow path.

   usage: tls_dlopen MODULE.so DIR [modules] [threads] [rounds]
   Prints "tls_dlopen: ok" and exits 0 when every access worked. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int nmods, nthreads, rounds;
static void *handles[256];
static long (*touch[256])(void);
static pthread_barrier_t start, loaded, done;
static char paths[256][512];

static void load_all(void) {
    for (int i = 0; i < nmods; i++) {
        handles[i] = dlopen(paths[i], RTLD_NOW | RTLD_LOCAL);
        if (!handles[i]) { fprintf(stderr, "dlopen %s: %s\n", paths[i], dlerror()); exit(2); }
        touch[i] = (long (*)(void))dlsym(handles[i], "tlsmod_touch");
        if (!touch[i]) { fprintf(stderr, "dlsym: %s\n", dlerror()); exit(2); }
    }
}

static void unload_all(void) {
    for (int i = 0; i < nmods; i++) dlclose(handles[i]);
}

static void *worker(void *arg) {
    (void)arg;
    for (int r = 0; r < rounds; r++) {
        void *warm = malloc(100);           /* the allocator's TLS is warm */
        free(warm);
        pthread_barrier_wait(&start);       /* main loads modules now */
        pthread_barrier_wait(&loaded);
        for (int k = 0; k < 200; k++) {     /* stale DTV: first access is slow */
            void *p = malloc(16 + k);
            if (!p) { fprintf(stderr, "malloc failed\n"); exit(3); }
            for (int i = 0; i < nmods; i++)
                if (touch[i]() < 0) { fprintf(stderr, "touch failed\n"); exit(3); }
            free(p);
        }
        pthread_barrier_wait(&done);        /* main unloads modules */
    }
    return NULL;
}

int main(int argc, char **argv) {
    if (argc < 3) { fprintf(stderr, "usage: %s MODULE.so DIR [modules] [threads] [rounds]\n", argv[0]); return 2; }
    nmods = argc > 3 ? atoi(argv[3]) : 64;
    alarm(300);                             /* a hang fails as SIGALRM */
    nthreads = argc > 4 ? atoi(argv[4]) : 4;
    rounds = argc > 5 ? atoi(argv[5]) : 3;
    if (nmods > 256) nmods = 256;
    /* Copies of one module: ld.so loads a file once, so each needs its own. */
    FILE *in = fopen(argv[1], "rb");
    if (!in) { perror(argv[1]); return 2; }
    static char image[1 << 20];
    size_t len = fread(image, 1, sizeof image, in);
    fclose(in);
    for (int i = 0; i < nmods; i++) {
        snprintf(paths[i], sizeof paths[i], "%s/tlsmod%d.so", argv[2], i);
        FILE *out = fopen(paths[i], "wb");
        if (!out || fwrite(image, 1, len, out) != len) { perror(paths[i]); return 2; }
        fclose(out);
    }
    pthread_barrier_init(&start, NULL, nthreads + 1);
    pthread_barrier_init(&loaded, NULL, nthreads + 1);
    pthread_barrier_init(&done, NULL, nthreads + 1);
    pthread_t t[64];
    for (int i = 0; i < nthreads; i++) pthread_create(&t[i], NULL, worker, NULL);
    for (int r = 0; r < rounds; r++) {
        pthread_barrier_wait(&start);
        load_all();
        pthread_barrier_wait(&loaded);
        for (int i = 0; i < nmods; i++) touch[i]();
        pthread_barrier_wait(&done);
        unload_all();
    }
    for (int i = 0; i < nthreads; i++) pthread_join(t[i], NULL);
    for (int i = 0; i < nmods; i++) unlink(paths[i]);
    /* Under libspanalloc.so: how many calls came while their thread was
       already inside the allocator (glibc's DTV updates among them). */
    size_t (*nested)(void) = (size_t (*)(void))dlsym(RTLD_DEFAULT, "spanalloc_nested_calls");
    if (nested) printf("nested calls: %zu\n", nested());
    printf("tls_dlopen: ok (%d modules, %d threads, %d rounds)\n", nmods, nthreads, rounds);
    return 0;
}
