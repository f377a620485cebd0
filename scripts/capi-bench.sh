#!/usr/bin/env bash
# libspanalloc.so against glibc, mimalloc, jemalloc, tcmalloc and snmalloc,
# each by LD_PRELOAD, on mimalloc-bench's programs and on Debian programs.
# Runs are interleaved (every allocator once, then again, RUNS times); the
# table gives the median wall time and median peak RSS (/usr/bin/time -v),
# spanalloc's ratio to the best peer, and geometric means; then the result
# of mimalloc-bench's security suite per allocator. Markdown on stdout.
#
#   MIMALLOC_BENCH=/path/to/mimalloc-bench     # a checkout (sources, inputs)
#   MIMALLOC_BENCH_BUILD=/path/to/build        # its bench/ built with cmake
#   SNMALLOC_SO=/path/to/libsnmallocshim.so    # snmalloc's shim, built locally
#   RUNS=3 BENCHES="cfrac espresso ..." PROGRAMS="sqlite gcc python git"
#   scripts/capi-bench.sh > results.md
#
# mimalloc-bench and snmalloc are built outside this repository; neither is
# part of it. Peers missing on the machine are left out. Debian packages:
# libmimalloc2.0 libjemalloc2 libtcmalloc-minimal4 time.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
RUNS=${RUNS:-3}
MB=${MIMALLOC_BENCH:?set MIMALLOC_BENCH to a mimalloc-bench checkout}
MBB=${MIMALLOC_BENCH_BUILD:-$MB/out/bench}
nice -n 10 cargo build --release -p spanalloc-c >&2
libdir=/usr/lib/x86_64-linux-gnu
declare -A LIB=([glibc]="" [spanalloc]="$root/target/release/libspanalloc.so")
allocs=(glibc spanalloc)
for pair in "mimalloc:$libdir/libmimalloc.so.2" "jemalloc:$libdir/libjemalloc.so.2" \
  "tcmalloc:$libdir/libtcmalloc_minimal.so.4" "snmalloc:${SNMALLOC_SO:-}"; do
  name=${pair%%:*} path=${pair#*:}
  if [ -n "$path" ] && [ -f "$path" ]; then LIB[$name]=$path; allocs+=("$name"); else echo "skipping $name" >&2; fi
done
procs=$(nproc)
work=$(mktemp -d "${TMPDIR:-/tmp}/capi-bench.XXXXXX")
trap 'rm -rf "$work"' EXIT

# Workloads: name, then the command (run in $MBB). Arguments are bench.sh's
# where they finish in seconds here; larger ones are cut down (noted).
declare -A CMD=(
  [cfrac]="./cfrac 17545186520507317056371138836327483792789528"
  [espresso]="./espresso $MB/bench/espresso/largest.espresso"
  [barnes]="./barnes < $MB/bench/barnes/input"
  [larsonN]="./larson 2 8 1000 5000 100 4141 $procs"                       # 2 s, not 5 s
  [larsonN-sized]="./larson-sized 2 8 1000 5000 100 4141 $procs"
  [mstressN]="./mstress $procs 50 25"
  [rptestN]="./rptest $procs 0 1 2 500 1000 100 8 16000"
  [xmalloc-testN]="./xmalloc-test -w $procs -t 2 -s 64"                    # 2 s, not 5 s
  [cache-scratch1]="./cache-scratch 1 1000 1 2000000 $procs"
  [cache-scratchN]="./cache-scratch $procs 1000 1 2000000 $procs"
  [cache-thrashN]="./cache-thrash $procs 1000 1 2000000 $procs"
  [glibc-simple]="./glibc-simple"
  [glibc-thread]="./glibc-thread $procs"
  [malloc-large]="./malloc-large"
  [mleak10]="./mleak 5"
  [alloc-test1]="./alloc-test 1"
)
BENCHES=${BENCHES:-"cfrac espresso barnes larsonN larsonN-sized mstressN rptestN xmalloc-testN cache-scratch1 cache-scratchN cache-thrashN glibc-simple glibc-thread malloc-large mleak10 alloc-test1"}

# Debian programs, sized for seconds per run.
python3 - "$work/big.c" <<'EOF'
import sys
with open(sys.argv[1], "w") as f:
    f.write("struct s { int a[16]; double d; };\n")
    for i in range(400):
        f.write(f"int f{i}(struct s *p, int x) {{ int acc = {i}; for (int j = 0; j < 16; j++) acc += p->a[j] * (x ^ j);"
                f" if (acc & 1) p->d += acc / 3.0; switch (x % 3) {{ case 0: acc += {i}; break; case 1: acc *= 3; break;"
                f" default: acc ^= {i * 31}; }} return acc + (x > 0 ? f{max(i - 1, 0)}(p, x - 1) : 0); }}\n")
EOF
cat >"$work/rows.sql" <<'EOF'
CREATE TABLE t(id INTEGER PRIMARY KEY, k INTEGER, s TEXT);
WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 1000000)
INSERT INTO t(k, s) SELECT (x * 7919) % 1000003, printf('row-%08d-%s', x, hex(x * x)) FROM c;
CREATE INDEX t_k ON t(k);
SELECT sum(length(s)) FROM (SELECT s FROM t ORDER BY s DESC);
EOF
cat >"$work/git.sh" <<'EOF'
set -e
export GIT_AUTHOR_NAME=a GIT_AUTHOR_EMAIL=a@example.com GIT_COMMITTER_NAME=a GIT_COMMITTER_EMAIL=a@example.com
export GIT_AUTHOR_DATE="2020-01-01T00:00:00Z" GIT_COMMITTER_DATE="2020-01-01T00:00:00Z" GIT_CONFIG_NOSYSTEM=1 HOME=$1
repo=$1/repo; rm -rf "$repo"; mkdir -p "$repo"; cd "$repo"
git init -q -b main
for c in $(seq 1 40); do
  for f in $(seq 1 15); do seq "$c" $((c + f * 50)) > "f$((f * c % 53)).txt"; done
  git add -A; git commit -q -m "commit $c"
done
git repack -adfq --window=50; git gc -q --aggressive; git log -p > /dev/null
EOF
declare -A PCMD=(
  [sqlite]="sqlite3 $work/db < $work/rows.sql; rm -f $work/db"
  [gcc]="gcc -O2 -c -o $work/big.o $work/big.c"
  [python]="PYTHONMALLOC=malloc /usr/bin/python3 -m test test_json test_re test_set"
  [git]="bash $work/git.sh $work"
)
PROGRAMS=${PROGRAMS:-"sqlite gcc python git"}

# measure ALLOC COMMAND NAME: "<seconds> <peak KiB>", or "fail".
measure() {
  local lib=${LIB[$1]} t=$work/time
  # The preload reaches every process of the command (shell included), as
  # it would in mimalloc-bench's bench.sh.
  if (cd "$MBB" && /usr/bin/time -v -o "$t" env ${lib:+LD_PRELOAD=$lib} bash -c "$2" >"$work/out" 2>&1); then
    local e m
    e=$(awk -F': ' '/Elapsed \(wall clock\)/ {n = split($2, a, ":"); s = 0; for (i = 1; i <= n; i++) s = s * 60 + a[i]; print s}' "$t")
    m=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$t")
    # Time-limited benchmarks report a rate: their "time" is the relative
    # time mimalloc-bench's bench.sh derives from it.
    case $3 in
      larson*) e=$(sed -n 's/.* time: \([0-9.]*\).*/\1/p' "$work/out") ;;
      xmalloc*) e=$(sed -n 's/^rtime: \([0-9.]*\).*/\1/p' "$work/out") ;;
      rptest*) e=$(sed -n 's/.*\.\.\.\([0-9]*\) memory ops.*/\1/p' "$work/out" | awk '{printf "%.3f", 2e6 / $1}') ;;
      glibc-thread) e=$(awk 'NR == 1 {printf "%.3f", 1e9 / $1}' "$work/out") ;;
    esac
    echo "$e $m"
  else
    echo fail
  fi
}

median() { sort -g | awk '{a[NR] = $1} END {if (NR == 0) print "nan"; else if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }

all=()
for b in $BENCHES; do all+=("mb:$b"); done
for p in $PROGRAMS; do all+=("deb:$p"); done
for item in "${all[@]}"; do
  kind=${item%%:*} name=${item#*:}
  if [ "$kind" = mb ]; then cmd=${CMD[$name]}; else cmd=${PCMD[$name]}; fi
  for r in $(seq 1 "$RUNS"); do
    for a in "${allocs[@]}"; do
      res=$(measure "$a" "$cmd" "$name")
      echo "$name $a run $r: $res" >&2
      echo "$res" >>"$work/res.$name.$a"
      if [ "$r" = 1 ]; then cp "$work/out" "$work/out.$name.$a"; fi
    done
  done
done

# The table.
echo "| program | $(printf '%s | ' "${allocs[@]}")spanalloc / best peer |"
echo "|---|$(printf -- '---|%.0s' "${allocs[@]}")---|"
declare -A LOGSUM LOGN
for item in "${all[@]}"; do
  name=${item#*:}
  line="| $name |"
  best=""
  declare -A T M
  for a in "${allocs[@]}"; do
    if grep -q fail "$work/res.$name.$a"; then T[$a]=fail; M[$a]=fail; line+=" failed |"; continue; fi
    T[$a]=$(awk '{print $1}' "$work/res.$name.$a" | median)
    M[$a]=$(awk '{print $2 / 1024}' "$work/res.$name.$a" | median)
    line+=" $(printf '%.2f s, %.0f MiB' "${T[$a]}" "${M[$a]}") |"
    if [ "$a" != spanalloc ] && [ "$a" != glibc ]; then
      if [ -z "$best" ] || awk -v x="${T[$a]}" -v y="${T[$best]}" 'BEGIN {exit !(x < y)}'; then best=$a; fi
    fi
    LOGSUM[$a]=$(awk -v s="${LOGSUM[$a]:-0}" -v t="${T[$a]}" 'BEGIN {print s + log(t)}')
    LOGN[$a]=$(( ${LOGN[$a]:-0} + 1 ))
  done
  if [ -n "$best" ] && [ "${T[spanalloc]}" != fail ]; then
    line+=" $(awk -v x="${T[spanalloc]}" -v y="${T[$best]}" 'BEGIN {printf "%.2f", x / y}') ($best) |"
  else
    line+=" - |"
  fi
  echo "$line"
  unset T M
done
line="| geomean (time) |"
for a in "${allocs[@]}"; do
  line+=" $(awk -v s="${LOGSUM[$a]:-0}" -v n="${LOGN[$a]:-1}" 'BEGIN {printf "%.3f", exp(s / n)}') |"
done
echo "$line - |"
echo
echo "Times are medians of $RUNS interleaved runs; for the time-limited larson, rptest, xmalloc-test and glibc-thread, the relative time bench.sh derives from their rates. Memory is the median peak RSS."

# Outputs: spanalloc's first run of each program against glibc's, the
# numbers masked except for the programs whose numbers are their result
# (the others print times and rates).
same=() differ=()
for item in "${all[@]}"; do
  name=${item#*:}
  case $name in
    cfrac | sqlite) norm() { cat "$1"; } ;;
    *) norm() { sed -E 's/[0-9]+([.,:][0-9]+)*(e[-+]?[0-9]+)?/N/g' "$1"; } ;;
  esac
  if cmp -s <(norm "$work/out.$name.glibc") <(norm "$work/out.$name.spanalloc"); then
    same+=("$name")
  else
    differ+=("$name")
    diff <(norm "$work/out.$name.glibc") <(norm "$work/out.$name.spanalloc") | head -20 >&2 || true
  fi
done
echo
echo "Output as glibc's (numbers masked but for cfrac and sqlite): ${#same[@]} of $((${#same[@]} + ${#differ[@]}))${differ[*]:+; differs: ${differ[*]}}."

# The security suite: a test is caught when the program dies (or hangs past
# a second) before it prints NOT_CAUGHT.
if [ -d "$MBB/security" ]; then
  echo
  echo "| security suite | $(printf '%s | ' "${allocs[@]}")"
  echo "|---|$(printf -- '---|%.0s' "${allocs[@]}")"
  declare -A CAUGHT
  total=0
  caught_list=$work/caught
  for bin in "$MBB"/security/*; do
    [ -x "$bin" ] && [ -f "$bin" ] || continue
    total=$((total + 1))
    for a in "${allocs[@]}"; do
      lib=${LIB[$a]}
      out=$( (timeout 1s env ${lib:+LD_PRELOAD=$lib} "$bin" 2>/dev/null || true) | tr -d '\0')
      if ! grep -q NOT_CAUGHT <<<"$out"; then
        CAUGHT[$a]=$(( ${CAUGHT[$a]:-0} + 1 ))
        echo "$a $(basename "$bin")" >>"$caught_list"
      fi
    done
  done
  line="| caught of $total |"
  for a in "${allocs[@]}"; do line+=" ${CAUGHT[$a]:-0} |"; done
  echo "$line"
  echo
  echo "Caught by spanalloc: $(awk '$1 == "spanalloc" {print $2}' "$caught_list" 2>/dev/null | tr '\n' ' ')"
fi
