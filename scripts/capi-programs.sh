#!/usr/bin/env bash
# Real programs under LD_PRELOAD=libspanalloc.so, each run twice (glibc's
# malloc, then spanalloc's) and their outputs compared: Debian's python3
# running part of its own test suite (PYTHONMALLOC=malloc, so every object
# goes through malloc), sqlite3 inserting, indexing and sorting a million
# rows, gcc -O2 compiling a large generated C file, and git building and
# repacking a generated repository.
#
# The preload is set on each program's command line only: never exported,
# never seen by cargo or rustc.
#
#   scripts/capi-programs.sh            # all
#   scripts/capi-programs.sh sqlite gcc # some
#
# Needs: python3 with libpython3.11-testsuite, sqlite3, gcc, git (.ci/run
# installs them). Prints one line per program and "N passed, M failed".
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
nice -n 10 cargo build --release -p spanalloc-c
lib=$root/target/release/libspanalloc.so
work=$(mktemp -d "${TMPDIR:-/tmp}/spanalloc-programs.XXXXXX")
trap 'rm -rf "$work"' EXIT
programs=("$@")
[ ${#programs[@]} -gt 0 ] || programs=(python sqlite gcc git)
passed=0
failed=0

# run NAME OUTFILE CMD...: runs CMD with the allocator NAME (glibc or
# spanalloc), output to OUTFILE; fails the program on a non-zero exit.
run() {
  local name=$1 out=$2
  shift 2
  local pre=()
  [ "$name" = spanalloc ] && pre=(env LD_PRELOAD="$lib")
  if ! "${pre[@]}" "$@" >"$out" 2>&1; then
    echo "  $name: exit status $? ($*)"
    tail -20 "$out" | sed 's/^/    /'
    return 1
  fi
}

# check PROGRAM FUNCTION: runs FUNCTION glibc and FUNCTION spanalloc, each
# leaving $work/<allocator>.out, and compares the two.
check() {
  local prog=$1 fn=$2 t0 t1
  t0=$(date +%s)
  if "$fn" glibc && "$fn" spanalloc && cmp -s "$work/glibc.out" "$work/spanalloc.out"; then
    t1=$(date +%s)
    echo "ok   $prog ($((t1 - t0)) s, output identical to glibc's)"
    passed=$((passed + 1))
  else
    echo "FAIL $prog"
    [ -f "$work/spanalloc.out" ] && diff "$work/glibc.out" "$work/spanalloc.out" | head -20 | sed 's/^/    /'
    failed=$((failed + 1))
  fi
  rm -f "$work/glibc.out" "$work/spanalloc.out"
}

# -- python3: its own test suite, every object through malloc ---------------
python_tests="test_json test_dict test_set test_list test_unicode test_re test_threading test_collections test_pickle"
py() {
  # The suite's summary without its timings.
  run "$1" "$work/$1.raw" env PYTHONMALLOC=malloc /usr/bin/python3 -m test $python_tests || return 1
  grep -E '^(All [0-9]+ tests OK|Tests result|== Tests result|[0-9]+ tests? (failed|skipped))' "$work/$1.raw" >"$work/$1.out"
  grep -q '^Tests result: SUCCESS' "$work/$1.out"
}

# -- sqlite3: a million rows inserted, indexed, sorted ------------------------
cat >"$work/rows.sql" <<'EOF'
CREATE TABLE t(id INTEGER PRIMARY KEY, k INTEGER, s TEXT);
WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 1000000)
INSERT INTO t(k, s) SELECT (x * 7919) % 1000003, printf('row-%08d-%s', x, hex(x * x)) FROM c;
CREATE INDEX t_k ON t(k);
CREATE INDEX t_s ON t(s DESC);
SELECT count(*), sum(k), min(s), max(s) FROM t;
SELECT k, s FROM t ORDER BY s DESC LIMIT 5;
SELECT k % 97 AS g, count(*), group_concat(substr(s, 5, 4), '') IS NOT NULL FROM t GROUP BY g ORDER BY g LIMIT 5;
SELECT sum(length(s)) FROM (SELECT s FROM t ORDER BY k, s);
UPDATE t SET s = s || s WHERE k % 3 = 0;
DELETE FROM t WHERE k % 5 = 0;
VACUUM;
SELECT count(*), sum(length(s)) FROM t;
EOF
sq() { run "$1" "$work/$1.out" sqlite3 "$work/db-$1" <"$work/rows.sql"; rm -f "$work/db-$1"; }

# -- gcc: cc1 compiling a large generated file at -O2 -------------------------
python3 - "$work/big.c" <<'EOF'
import sys
n = 800
with open(sys.argv[1], "w") as f:
    f.write("#include <string.h>\nstruct s { int a[16]; double d; char name[32]; };\n")
    for i in range(n):
        f.write(f"""
static int helper{i}(struct s *p, int x) {{
    int acc = {i};
    for (int j = 0; j < 16; j++) acc += p->a[j] * (x ^ j) + {i % 17};
    if (acc & 1) p->d += acc / 3.0; else memcpy(p->name, "n{i}", 4);
    switch (x % 5) {{ case 0: acc += {i}; break; case 1: acc -= p->a[x & 15]; break;
                     case 2: acc *= 3; break; default: acc ^= {i * 31}; }}
    return acc;
}}
int f{i}(struct s *p, int x) {{ return helper{i}(p, x) + helper{i}(p, x + 1) + (x > 0 ? f{max(i - 1, 0)}(p, x - 1) : 0); }}
""")
    f.write("int main(void) { struct s v = {0}; return f%d(&v, 3) & 0x7f; }\n" % (n - 1))
EOF
cc1() {
  run "$1" "$work/$1.log" gcc -O2 -c -o "$work/big-$1.o" "$work/big.c" || return 1
  # The object file is the output; the two compilers must agree byte for byte.
  sha256sum <"$work/big-$1.o" >"$work/$1.out"
}

# -- git: a generated repository built, repacked and read ---------------------
gitrepo() {
  local repo=$work/repo-$1 pre=()
  [ "$1" = spanalloc ] && pre=(env LD_PRELOAD="$lib")
  (
    set -e
    export GIT_AUTHOR_NAME=a GIT_AUTHOR_EMAIL=a@example.com GIT_COMMITTER_NAME=a GIT_COMMITTER_EMAIL=a@example.com
    export GIT_AUTHOR_DATE="2020-01-01T00:00:00Z" GIT_COMMITTER_DATE="2020-01-01T00:00:00Z"
    export GIT_CONFIG_NOSYSTEM=1 HOME=$work
    g() { "${pre[@]}" /usr/bin/git -C "$repo" "$@"; }
    mkdir -p "$repo"
    g init -q -b main
    for c in $(seq 1 80); do
      for f in $(seq 1 15); do
        printf 'file %d commit %d\n%s\n' "$f" "$c" "$(seq "$c" $((c + f * 13)) | tr '\n' ' ')" >"$repo/f$((f * c % 97)).txt"
      done
      g add -A
      g commit -q -m "commit $c"
    done
    g repack -adfq --window=50
    g gc -q --aggressive
    g fsck --no-progress --full
    g log --stat --format='%H %s' | sha256sum
    g grep -c 'commit 7' | sha256sum
    g count-objects -v | grep -E '^(count|in-pack|packs)'
  ) >"$work/$1.out" 2>&1
}

for p in "${programs[@]}"; do
  case $p in
    python) check "python3 -m test ($python_tests)" py ;;
    sqlite) check "sqlite3 (1,000,000 rows: insert, index, sort, update, vacuum)" sq ;;
    gcc) check "gcc -O2 -c (generated file, 800 functions)" cc1 ;;
    git) check "git (80 commits, repack, gc --aggressive, fsck, log --stat)" gitrepo ;;
    *) echo "unknown program $p"; exit 2 ;;
  esac
done
echo "capi-programs: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
