/* The malloc family's edge cases, as glibc 2.36 answers them. Run it with
   and without LD_PRELOAD=libspanalloc.so: both must pass. Prints one line
   per failed check and "N passed, M failed"; exits 1 on any failure.

   Checks that glibc cannot pass (symbols it lacks: free_sized, cfree) run
   only where the symbol is found. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <malloc.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>
#include <linux/futex.h>

static int passed, failed;

#define CHECK(cond, ...)                                   \
    do {                                                   \
        if (cond) passed++;                                \
        else {                                             \
            failed++;                                      \
            printf("FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond); \
            printf(__VA_ARGS__);                           \
            printf("\n");                                  \
        }                                                  \
    } while (0)

/* Keeps the compiler from folding malloc/free pairs away. */
static void *volatile sink;
static void *(*volatile opaque_malloc)(size_t) = malloc;

static size_t page;

/* -- before main ---------------------------------------------------------- */

static void *early[3];
static void preinit(int argc, char **argv, char **envp) {
    (void)argc; (void)argv; (void)envp;
    early[0] = malloc(100);
    if (early[0]) memset(early[0], 1, 100);
}
__attribute__((section(".preinit_array"), used)) static void (*preinit_p)(int, char **, char **) = preinit;
__attribute__((constructor(101))) static void ctor(void) {
    early[1] = calloc(10, 10);
    early[2] = realloc(early[0], 5000);
}

static void test_before_main(void) {
    CHECK(early[1] != NULL && early[2] != NULL, "allocations from preinit and constructors");
    unsigned char *p = early[2];
    int ok = 1;
    for (int i = 0; i < 100; i++) ok &= p[i] == 1;
    CHECK(ok, "realloc kept the bytes of a preinit allocation");
    free(early[1]);
    free(early[2]);
}

/* -- single-threaded edge cases ------------------------------------------ */

static void test_malloc_zero(void) {
    void *a = malloc(0), *b = malloc(0);
    CHECK(a != NULL && b != NULL && a != b, "malloc(0) gives unique pointers: %p %p", a, b);
    free(a);
    free(b);
    free(NULL);
    passed++;
}

static void test_alignment(void) {
    int bad = 0;
    for (size_t n = 1; n <= 70000; n += (n < 512 ? 1 : n / 7)) {
        void *p[4];
        for (int k = 0; k < 4; k++) {
            p[k] = malloc(n);
            size_t want = n >= 16 ? 16 : 8;
            if (!p[k] || (uintptr_t)p[k] % want) { bad++; printf("  malloc(%zu) = %p\n", n, p[k]); }
        }
        for (int k = 0; k < 4; k++) free(p[k]);
    }
    CHECK(bad == 0, "malloc alignment: 16 for >= 16 bytes, 8 below (%d bad)", bad);
}

static void test_usable_size(void) {
    int bad = 0;
    for (size_t n = 0; n <= 300000; n += (n < 1024 ? 1 : n / 5)) {
        unsigned char *p = malloc(n);
        size_t u = malloc_usable_size(p);
        if (!p || u < n || malloc_usable_size(p) != u) { bad++; continue; }
        memset(p, 0xab, u);             /* the whole slack is writable */
        if (malloc_usable_size(p) != u) bad++;
        free(p);
    }
    CHECK(bad == 0, "malloc_usable_size >= request, constant, slack writable (%d bad)", bad);
    CHECK(malloc_usable_size(NULL) == 0, "malloc_usable_size(NULL)");
}

static void test_calloc(void) {
    errno = 0;
    void *p = calloc(SIZE_MAX / 2, 3);
    CHECK(p == NULL && errno == ENOMEM, "calloc overflow: %p errno %d", p, errno);
    errno = 0;
    p = calloc((size_t)1 << 33, (size_t)1 << 33);
    CHECK(p == NULL && errno == ENOMEM, "calloc overflow 2^66: %p errno %d", p, errno);
    void *z = calloc(0, 5), *z2 = calloc(5, 0);
    CHECK(z != NULL && z2 != NULL && z != z2, "calloc with a zero count or size");
    free(z);
    free(z2);
    int bad = 0;
    for (int round = 0; round < 3; round++)
        for (size_t n = 1; n < 200000; n = n * 3 / 2 + 1) {
            unsigned char *d = malloc(n);
            memset(d, 0xff, n);
            free(d);
            unsigned char *c = calloc(1, n);
            for (size_t i = 0; i < n; i++)
                if (c[i]) { bad++; break; }
            free(c);
        }
    CHECK(bad == 0, "calloc memory is zero even when recycled (%d bad)", bad);
}

static void test_realloc(void) {
    void *p = realloc(NULL, 100);
    CHECK(p != NULL, "realloc(NULL, 100)");
    free(p);
    void *a = realloc(NULL, 0), *b = realloc(NULL, 0);
    CHECK(a != NULL && b != NULL && a != b, "realloc(NULL, 0) gives unique pointers");
    free(a);
    free(b);
    p = malloc(50);
    errno = 1234;
    void *r = realloc(p, 0);
    CHECK(r == NULL && errno == 1234, "realloc(p, 0) frees and returns NULL, errno kept: %p %d", r, errno);

    /* contents survive growth and shrinking, in and across classes */
    unsigned char *q = malloc(1);
    q[0] = 0;
    size_t n = 1;
    int bad = 0;
    for (size_t m = 2; m < (4u << 20); m = m * 5 / 3 + 1) {
        q = realloc(q, m);
        if (!q) { bad++; break; }
        for (size_t i = 0; i < n; i++)
            if (q[i] != (unsigned char)(i * 7)) { bad++; break; }
        for (size_t i = 0; i < m; i++) q[i] = (unsigned char)(i * 7);
        n = m;
    }
    for (size_t m = n; m > 1; m = m / 3) {
        q = realloc(q, m);
        for (size_t i = 0; i < m; i++)
            if (q[i] != (unsigned char)(i * 7)) { bad++; break; }
    }
    free(q);
    CHECK(bad == 0, "realloc keeps contents while growing and shrinking");

    /* failure: NULL + ENOMEM, the block intact */
    char *k = malloc(64);
    strcpy(k, "intact");
    errno = 0;
    void *f = realloc(k, SIZE_MAX / 2);
    CHECK(f == NULL && errno == ENOMEM && strcmp(k, "intact") == 0, "failed realloc: %p errno %d", f, errno);
    errno = 0;
    f = realloc(k, SIZE_MAX - 100);
    CHECK(f == NULL && errno == ENOMEM, "realloc to SIZE_MAX - 100: %p errno %d", f, errno);
    free(k);
}

static void test_reallocarray(void) {
    char *p = malloc(10);
    strcpy(p, "abc");
    errno = 0;
    void *r = reallocarray(p, SIZE_MAX / 2, 4);
    CHECK(r == NULL && errno == ENOMEM && strcmp(p, "abc") == 0, "reallocarray overflow: %p %d", r, errno);
    p = reallocarray(p, 100, 10);
    CHECK(p != NULL && strcmp(p, "abc") == 0, "reallocarray(p, 100, 10)");
    free(p);
}

static void test_posix_memalign(void) {
    void *p = (void *)0x1234;
    size_t bad_aligns[] = {0, 1, 2, 4, 3, 24, 48, 100, sizeof(void *) + 1};
    for (size_t i = 0; i < sizeof bad_aligns / sizeof *bad_aligns; i++) {
        int rc = posix_memalign(&p, bad_aligns[i], 16);
        CHECK(rc == EINVAL && p == (void *)0x1234, "posix_memalign(align %zu) = %d, p %p", bad_aligns[i], rc, p);
    }
    int bad = 0;
    for (size_t a = sizeof(void *); a <= (1u << 20); a *= 2)
        for (size_t n = 0; n < 3 * a + 100; n = n * 2 + 1) {
            void *q = NULL;
            int rc = posix_memalign(&q, a, n);
            if (rc || !q || (uintptr_t)q % a) { bad++; continue; }
            memset(q, 1, n);
            if (malloc_usable_size(q) < n) bad++;
            free(q);
        }
    CHECK(bad == 0, "posix_memalign alignments up to 1 MiB (%d bad)", bad);
    p = (void *)0x1234;
    int rc = posix_memalign(&p, 64, SIZE_MAX - 10);
    CHECK(rc == ENOMEM && p == (void *)0x1234, "posix_memalign huge: %d", rc);
}

static void test_memalign(void) {
    int bad = 0;
    /* many live blocks with a large alignment */
    void *keep[64];
    for (int i = 0; i < 64; i++) {
        keep[i] = memalign(1 << 20, 1000);
        if (!keep[i] || (uintptr_t)keep[i] % (1 << 20)) bad++;
    }
    for (int i = 0; i < 64; i++) free(keep[i]);
    for (size_t a = 1; a <= (1u << 20); a *= 2) {
        void *p = aligned_alloc(a, 3 * a + 5);  /* size not a multiple: glibc accepts */
        void *q = memalign(a, 10);
        if (!p || (uintptr_t)p % a || !q || (uintptr_t)q % a) bad++;
        if ((uintptr_t)q % 16) bad++;          /* never less than malloc's */
        free(p);
        free(q);
    }
    CHECK(bad == 0, "aligned_alloc and memalign alignments up to 1 MiB (%d bad)", bad);
    void *p = memalign(48, 100);                /* rounded up to 64 */
    CHECK(p && (uintptr_t)p % 64 == 0, "memalign(48) rounds up to 64: %p", p);
    free(p);
    p = aligned_alloc(24, 100);
    CHECK(p && (uintptr_t)p % 32 == 0, "aligned_alloc(24) rounds up to 32: %p", p);
    free(p);
    errno = 0;
    p = memalign(64, SIZE_MAX - 1000);
    CHECK(p == NULL && errno == ENOMEM, "memalign huge: %p %d", p, errno);
    errno = 0;
    p = aligned_alloc(4096, SIZE_MAX / 2);
    CHECK(p == NULL && errno == ENOMEM, "aligned_alloc huge: %p %d", p, errno);
}

static void test_valloc(void) {
    int bad = 0;
    for (size_t n = 1; n < 5 * page; n += page / 3) {
        unsigned char *v = valloc(n), *pv = pvalloc(n);
        size_t rounded = (n + page - 1) / page * page;
        if (!v || (uintptr_t)v % page || malloc_usable_size(v) < n) bad++;
        if (!pv || (uintptr_t)pv % page || malloc_usable_size(pv) < rounded) bad++;
        else memset(pv, 1, rounded);
        free(v);
        free(pv);
    }
    CHECK(bad == 0, "valloc and pvalloc are page-aligned, pvalloc rounds up to pages (%d bad)", bad);
    void *z = pvalloc(0);
    CHECK(z != NULL && (uintptr_t)z % page == 0, "pvalloc(0)");
    free(z);
    errno = 0;
    void *p = pvalloc(SIZE_MAX - 10);
    CHECK(p == NULL && errno == ENOMEM, "pvalloc rounding overflow: %p %d", p, errno);
    errno = 0;
    p = valloc(SIZE_MAX - 10);
    CHECK(p == NULL && errno == ENOMEM, "valloc huge: %p %d", p, errno);
}

static void test_huge(void) {
    size_t sizes[] = {SIZE_MAX, SIZE_MAX - 4096, (size_t)PTRDIFF_MAX + 1, (size_t)PTRDIFF_MAX, (size_t)1 << 62};
    for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) {
        errno = 0;
        void *p = opaque_malloc(sizes[i]);
        CHECK(p == NULL && errno == ENOMEM, "malloc(%zu): %p errno %d", sizes[i], p, errno);
    }
}

static void test_free_keeps_errno(void) {
    size_t sizes[] = {8, 100, 5000, 40000, 1 << 20, 20 << 20, 100 << 20};
    int bad = 0;
    for (int round = 0; round < 4; round++)
        for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) {
            char *p = malloc(sizes[i]);
            memset(p, 1, sizes[i]);
            errno = 4242;
            free(p);
            if (errno != 4242) bad++;
        }
    errno = 4343;
    malloc_trim(0);
    void *p = malloc(10);
    errno = 4444;
    free(p);
    CHECK(bad == 0 && errno == 4444, "free keeps errno (%d bad)", bad);
}

static void test_trim(void) {
    void *big[16];
    for (int i = 0; i < 16; i++) { big[i] = malloc(1 << 20); memset(big[i], 1, 1 << 20); }
    for (int i = 0; i < 16; i++) free(big[i]);
    int r = malloc_trim(0);
    CHECK(r == 0 || r == 1, "malloc_trim returns 0 or 1: %d", r);
}

/* Symbols glibc 2.36 lacks (or keeps only for old binaries): tested where
   the process has them, i.e. under the preload. */
static void test_optional_symbols(void) {
    void (*free_sized)(void *, size_t) = (void (*)(void *, size_t))dlsym(RTLD_DEFAULT, "free_sized");
    void (*free_aligned_sized)(void *, size_t, size_t) =
        (void (*)(void *, size_t, size_t))dlsym(RTLD_DEFAULT, "free_aligned_sized");
    void (*cfree_)(void *) = (void (*)(void *))dlsym(RTLD_DEFAULT, "cfree");
    if (free_sized && free_aligned_sized) {
        for (size_t n = 0; n < 100000; n = n * 2 + 1) {
            free_sized(malloc(n), n);
            free_sized(calloc(1, n), n);
            free_aligned_sized(aligned_alloc(64, n), 64, n);
            free_aligned_sized(aligned_alloc(4096, n), 4096, n);
        }
        void *p = malloc(100);
        p = realloc(p, 20);                    /* may shrink in place */
        free_sized(p, 20);
        free_sized(NULL, 10);
        passed++;
    }
    if (cfree_) {
        cfree_(malloc(10));
        cfree_(NULL);
        passed++;
    }
}

extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void __libc_free(void *);
extern void *__libc_memalign(size_t, size_t);
extern void *__libc_valloc(size_t);
extern void *__libc_pvalloc(size_t);

static void test_libc_aliases(void) {
    /* Blocks from the __libc_ names and the plain ones mix freely: under
       the preload both are spanalloc's, without it both glibc's. */
    char *a = __libc_malloc(100);
    strcpy(a, "x");
    a = __libc_realloc(a, 10000);
    char *b = __libc_calloc(10, 10);
    char *c = __libc_memalign(256, 10);
    char *d = __libc_valloc(10), *e = __libc_pvalloc(10);
    CHECK(a && strcmp(a, "x") == 0 && b && b[99] == 0 && c && (uintptr_t)c % 256 == 0 && d &&
              (uintptr_t)d % page == 0 && e && (uintptr_t)e % page == 0,
          "__libc_* aliases");
    free(a);
    __libc_free(b);
    free(c);
    __libc_free(d);
    __libc_free(e);
    int (*pm)(void **, size_t, size_t) = (int (*)(void **, size_t, size_t))dlsym(RTLD_DEFAULT, "__posix_memalign");
    if (pm) {
        void *p = NULL;
        CHECK(pm(&p, 128, 10) == 0 && (uintptr_t)p % 128 == 0, "__posix_memalign");
        free(p);
        CHECK(pm(&p, 3, 10) == EINVAL, "__posix_memalign EINVAL");
    }
}

/* -- threads --------------------------------------------------------------- */

#define NT 6
#define PER 60000
static pthread_mutex_t box_lock = PTHREAD_MUTEX_INITIALIZER;
static void *box[NT][64];
static int box_n[NT];
static int cross_bad;

static void *cross_worker(void *arg) {
    int me = (int)(intptr_t)arg;
    unsigned x = 12345u + me;
    for (int i = 0; i < PER; i++) {
        x = x * 1103515245u + 12345u;
        size_t n = 1 + (x >> 8) % (i % 100 == 0 ? 70000 : 600);
        unsigned char *p = malloc(n);
        if (!p) { __atomic_add_fetch(&cross_bad, 1, __ATOMIC_RELAXED); continue; }
        p[0] = (unsigned char)n;
        p[n - 1] = (unsigned char)me;
        int to = (me + 1 + (x >> 4) % (NT - 1)) % NT;
        pthread_mutex_lock(&box_lock);
        void *out = NULL;
        if (box_n[to] < 64) box[to][box_n[to]++] = p;
        else out = p;
        void *mine = box_n[me] ? box[me][--box_n[me]] : NULL;
        pthread_mutex_unlock(&box_lock);
        free(out);
        if (mine) {
            size_t u = malloc_usable_size(mine);
            if (u == 0) __atomic_add_fetch(&cross_bad, 1, __ATOMIC_RELAXED);
            free(mine);                          /* allocated by another thread */
        }
    }
    return NULL;
}

static void test_cross_thread_frees(void) {
    pthread_t t[NT];
    for (int i = 0; i < NT; i++) pthread_create(&t[i], NULL, cross_worker, (void *)(intptr_t)i);
    for (int i = 0; i < NT; i++) pthread_join(t[i], NULL);
    for (int i = 0; i < NT; i++)
        while (box_n[i]) free(box[i][--box_n[i]]);
    CHECK(cross_bad == 0, "%d threads free each other's blocks (%d bad)", NT, cross_bad);
}

static pthread_key_t key;
static int key_rounds;
static void *handed_back;
static void key_dtor(void *v) {
    /* runs at thread exit, after the allocator's own exit hook may have run */
    free(v);
    void *p = malloc(333);
    memset(p, 2, 333);
    if (__atomic_add_fetch(&key_rounds, 1, __ATOMIC_RELAXED) % 3 != 0)
        pthread_setspecific(key, p);           /* another destructor round */
    else
        __atomic_exchange_n(&handed_back, p, __ATOMIC_ACQ_REL) ? (void)0 : (void)0;
}
static void *exit_worker(void *arg) {
    (void)arg;
    for (int i = 0; i < 1000; i++) free(malloc(i));
    pthread_setspecific(key, malloc(77));
    return NULL;
}

static void test_thread_exit(void) {
    pthread_key_create(&key, key_dtor);
    for (int round = 0; round < 20; round++) {
        pthread_t t;
        pthread_create(&t, NULL, exit_worker, NULL);
        pthread_join(t, NULL);
        void *p = __atomic_exchange_n(&handed_back, NULL, __ATOMIC_ACQ_REL);
        free(p);                               /* from a dead thread's destructor */
    }
    CHECK(key_rounds >= 20, "key destructors that allocate at thread exit (%d rounds)", key_rounds);
}

/* A thread made with the raw clone syscall (no glibc thread set-up, the
   parent's TLS): it allocates while the parent waits without allocating. */
static volatile int clone_done;
static int clone_fn(void *arg) {
    (void)arg;
    int ok = 1;
    for (int i = 0; i < 2000; i++) {
        char *p = malloc(i + 1);
        if (!p) ok = 0;
        else { p[i] = 1; free(p); }
    }
    clone_done = ok ? 1 : 2;
    syscall(SYS_exit, 0);
    return 0;
}

static void test_raw_clone(void) {
    size_t sz = 256 << 10;
    char *stack = malloc(sz);
    pid_t tid = 0;
    int flags = CLONE_VM | CLONE_FS | CLONE_FILES | CLONE_SIGHAND | CLONE_THREAD | CLONE_SYSVSEM |
                CLONE_CHILD_CLEARTID | CLONE_PARENT_SETTID;
    static volatile pid_t ctid;
    ctid = 1;
    int r = clone(clone_fn, stack + sz, flags, NULL, &tid, NULL, &ctid);
    CHECK(r > 0, "clone");
    while (ctid != 0) syscall(SYS_futex, &ctid, FUTEX_WAIT, ctid, NULL, NULL, 0);
    CHECK(clone_done == 1, "a raw clone thread allocates (%d)", clone_done);
    free(stack);
}

/* -- fork in a multithreaded program --------------------------------------- */

static volatile int stop_churn;
static void *churn(void *arg) {
    (void)arg;
    unsigned x = 1;
    void *keep[32] = {0};
    while (!stop_churn) {
        x = x * 1103515245u + 12345u;
        int k = (x >> 8) % 32;
        free(keep[k]);
        keep[k] = malloc(1 + (x >> 12) % 5000);
    }
    for (int k = 0; k < 32; k++) free(keep[k]);
    return NULL;
}

static void test_fork(void) {
    pthread_t t[3];
    for (int i = 0; i < 3; i++) pthread_create(&t[i], NULL, churn, NULL);
    int bad = 0;
    for (int i = 0; i < 30; i++) {
        pid_t pid = fork();
        if (pid == 0) {
            alarm(20);                         /* a deadlock ends as SIGALRM */
            void *p[200];
            for (int k = 0; k < 200; k++) p[k] = malloc(k * 37 + 1);
            for (int k = 0; k < 200; k++) free(p[k]);
            char *s = malloc(1 << 20);
            memset(s, 1, 1 << 20);
            free(s);
            _exit(0);
        }
        int st = 0;
        waitpid(pid, &st, 0);
        if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) { bad++; printf("  child status %#x\n", st); }
    }
    stop_churn = 1;
    for (int i = 0; i < 3; i++) pthread_join(t[i], NULL);
    CHECK(bad == 0, "fork while threads allocate, then malloc in the child (%d bad)", bad);
}

int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    alarm(300);                             /* a hang fails as SIGALRM */
    page = (size_t)sysconf(_SC_PAGESIZE);
    test_before_main();
    test_malloc_zero();
    test_alignment();
    test_usable_size();
    test_calloc();
    test_realloc();
    test_reallocarray();
    test_posix_memalign();
    test_memalign();
    test_valloc();
    test_huge();
    test_free_keeps_errno();
    test_trim();
    test_optional_symbols();
    test_libc_aliases();
    test_cross_thread_frees();
    test_thread_exit();
    test_raw_clone();
    test_fork();
    printf("%d passed, %d failed\n", passed, failed);
    return failed != 0;
}
