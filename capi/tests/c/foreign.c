/* Pointers from glibc's own malloc (reached through libc.so.6's handle, so
   the preload does not intercept them) handed to free, realloc and
   malloc_usable_size. Under libspanalloc.so the default is a named abort;
   with SPANALLOC_FOREIGN_FREE=glibc they go back to glibc.

   usage: foreign free|realloc|usable|all */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv) {
    const char *what = argc > 1 ? argv[1] : "all";
    void *libc = dlopen("libc.so.6", RTLD_NOW | RTLD_NOLOAD);
    void *(*glibc_malloc)(size_t) = libc ? (void *(*)(size_t))dlsym(libc, "malloc") : NULL;
    if (!glibc_malloc) { printf("foreign: no glibc malloc\n"); return 2; }
    int all = strcmp(what, "all") == 0, bad = 0;
    if (all || strcmp(what, "free") == 0) {
        char *p = glibc_malloc(100);
        strcpy(p, "glibc");
        free(p);
    }
    if (all || strcmp(what, "realloc") == 0) {
        char *p = glibc_malloc(100);
        strcpy(p, "moved out");
        p = realloc(p, 100000);
        if (!p || strcmp(p, "moved out") != 0) bad++;
        free(p);
        p = glibc_malloc(10);
        if (realloc(p, 0) != NULL) bad++;
    }
    if (all || strcmp(what, "usable") == 0) {
        char *p = glibc_malloc(100);
        if (malloc_usable_size(p) < 100) bad++;
        free(p);
    }
    /* the allocator's own blocks are unaffected */
    for (int i = 0; i < 1000; i++) free(realloc(malloc(i), i * 2 + 1));
    printf(bad ? "foreign: FAILED\n" : "foreign: ok\n");
    return bad != 0;
}
