/* A shared object with thread-local variables (general-dynamic TLS), for
   tls_dlopen.c: each copy loaded adds a module to every thread's DTV. */
#include <stdlib.h>
#include <string.h>

__thread char tls_buf[256];
__thread long tls_count;

/* Touches this module's TLS from the calling thread (its first touch in a
   thread makes glibc allocate the block) and allocates. */
long tlsmod_touch(void) {
    tls_count++;
    memset(tls_buf, (int)tls_count, sizeof tls_buf);
    char *p = malloc(32);
    if (!p) return -1;
    p[0] = tls_buf[0];
    long r = p[0] + tls_count;
    free(p);
    return r;
}
