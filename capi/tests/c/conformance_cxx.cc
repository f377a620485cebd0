// The C++ operators' edge cases: plain, array, sized, aligned and nothrow
// new/delete, std::bad_alloc and the new_handler loop on failure, and
// thread_local destructors that allocate at thread exit. Run with and
// without the preload; prints "N passed, M failed".
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <new>
#include <string>
#include <thread>
#include <vector>

static int passed, failed;
#define CHECK(cond, what)                                                      \
    do {                                                                       \
        if (cond) passed++;                                                    \
        else { failed++; std::printf("FAIL %s:%d: %s\n", __FILE__, __LINE__, what); } \
    } while (0)

struct alignas(64) Line { char b[64]; };
struct alignas(4096) Page { char b[100]; };
struct alignas(65536) Big { char b[10]; };

static volatile size_t huge = SIZE_MAX / 4;

static int handler_calls;
static void *reserve;
static void handler() {
    handler_calls++;
    if (reserve) { std::free(reserve); reserve = nullptr; return; }
    std::set_new_handler(nullptr);  // next failure throws
}

struct Tracked {
    std::string *s;
    Tracked() : s(new std::string(500, 'x')) {}
    ~Tracked() {  // runs at thread exit, allocates and frees
        std::vector<int> v(1000, 1);
        delete s;
        s = nullptr;
    }
};
thread_local Tracked tracked;

int main() {
    std::setvbuf(stdout, nullptr, _IONBF, 0);
    // plain, array, sized
    int bad = 0;
    for (size_t n = 1; n < 200000; n = n * 3 / 2 + 1) {
        char *p = new char[n];
        std::memset(p, 1, n);
        if (reinterpret_cast<uintptr_t>(p) % (n >= 16 ? 16 : 8)) bad++;
        delete[] p;
        void *q = ::operator new(n);
        ::operator delete(q, n);  // sized
        int *r = new int(5);
        delete r;
    }
    CHECK(bad == 0, "new/delete and sized delete over many sizes");
    // zero-size new is unique
    void *z1 = ::operator new(0), *z2 = ::operator new(0);
    CHECK(z1 && z2 && z1 != z2, "operator new(0) unique");
    ::operator delete(z1);
    ::operator delete(z2, size_t(0));
    // aligned
    Line *l = new Line[10];
    Page *pg = new Page;
    Big *bg = new Big;
    CHECK(reinterpret_cast<uintptr_t>(l) % 64 == 0, "aligned new[] 64");
    CHECK(reinterpret_cast<uintptr_t>(pg) % 4096 == 0, "aligned new 4096");
    CHECK(reinterpret_cast<uintptr_t>(bg) % 65536 == 0, "aligned new 65536");
    delete[] l;
    delete pg;  // sized aligned delete
    delete bg;
    for (size_t a = 32; a <= (1u << 20); a *= 2) {
        void *p = ::operator new(100, std::align_val_t(a));
        if (reinterpret_cast<uintptr_t>(p) % a) bad++;
        ::operator delete(p, 100, std::align_val_t(a));
        p = ::operator new[](a * 3, std::align_val_t(a), std::nothrow);
        if (!p || reinterpret_cast<uintptr_t>(p) % a) bad++;
        ::operator delete[](p, std::align_val_t(a), std::nothrow);
        p = ::operator new(a + 1, std::align_val_t(a));
        ::operator delete(p, std::align_val_t(a));
    }
    CHECK(bad == 0, "aligned new/delete up to 1 MiB, all forms");
    // nothrow failure
    void *nt = ::operator new(huge, std::nothrow);
    CHECK(nt == nullptr, "nothrow new of a huge size returns null");
    nt = ::operator new[](huge, std::align_val_t(64), std::nothrow);
    CHECK(nt == nullptr, "aligned nothrow new[] of a huge size returns null");
    // throwing failure
    bool threw = false;
    try { char *p = new char[huge]; p[0] = 1; } catch (const std::bad_alloc &) { threw = true; }
    CHECK(threw, "new of a huge size throws std::bad_alloc");
    threw = false;
    try { void *p = ::operator new(huge, std::align_val_t(256)); std::free(p); } catch (const std::bad_alloc &) { threw = true; }
    CHECK(threw, "aligned new of a huge size throws std::bad_alloc");
    // new_handler loop: called until it gives up, then bad_alloc
    reserve = std::malloc(100);
    std::set_new_handler(handler);
    threw = false;
    try { void *p = ::operator new(huge); std::free(p); } catch (const std::bad_alloc &) { threw = true; }
    CHECK(threw && handler_calls == 2, "new_handler called in a loop before bad_alloc");
    // containers
    std::map<std::string, std::vector<int>> m;
    for (int i = 0; i < 20000; i++) m[std::to_string(i * 7919)].push_back(i);
    size_t total = 0;
    for (auto &kv : m) total += kv.second.size();
    CHECK(total == 20000, "std::map of strings and vectors");
    // thread_local destructors that allocate, in many threads
    std::vector<std::thread> ts;
    for (int i = 0; i < 8; i++)
        ts.emplace_back([] {
            tracked.s->append("y");
            std::vector<std::string> v(100, std::string(100, 'z'));
        });
    for (auto &t : ts) t.join();
    passed++;
    std::printf("%d passed, %d failed\n", passed, failed);
    return failed != 0;
}
