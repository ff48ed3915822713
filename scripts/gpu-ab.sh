#!/usr/bin/env bash
# A/B runs of source variants on a GPU machine, in one go: each variant is a
# copy of the tree with sed edits applied, built beside the others (sm_90
# only), and every bench line runs once per variant in turn, REPS times, so
# that drift of the machine falls on all variants alike. Results in
# $OUT/ab.txt: one line per (bench line, variant, repetition) with decode
# tok/s, then the median per (line, variant) and its ratio to "base".
#
#   AB_SPEC   file of variant edits, one per line: NAME<TAB>FILE<TAB>SED-SCRIPT
#             (several lines with one NAME apply in order; "base" is the
#             tree as it is and needs no line); FILE "@patch" makes the third
#             field a diff (repository-relative path) applied with patch -p1
#   AB_BENCH  file of `peregrine bench` argument lists, one per line; a line
#             that starts with @v1,v2 runs only on those variants and base;
#             then %8 (say) reports the row's field 8 (prefill tok/s) instead
#             of field 10 (decode tok/s)
#   REPS      repetitions (default 2)
#   AB_TESTS  optional GPU test suites (e.g. "kernels_cuda engine_cuda") built
#             and run for every variant but base after the bench lines (a
#             suite written suite@v1,v2 runs only for those variants); one
#             line per (variant, suite) in ab.txt, failed assertions below it
# Needs scripts/gpu-deps.sh's .deps/root carried to the GPU machine; run
# from the repository root with OUT set. A variant whose sed script changes
# nothing is reported and dropped (a stale pattern must not pass as a result).
set -u
export PEREGRINE_CONFIGS=$PWD/configs LD_LIBRARY_PATH=$PWD/.deps/root/usr/lib/x86_64-linux-gnu
R=$OUT/ab.txt; T=/tmp/peregrine-ab; rm -rf $T; mkdir -p $T
names="base $(cut -f1 "$AB_SPEC" | awk 'NF && !seen[$1]++' | tr '\n' ' ')"
nv=$(echo $names | wc -w); jobs=$(( 16 / nv )); [ $jobs -lt 2 ] && jobs=2
for v in $names; do
  mkdir -p $T/$v && tar -cf - --exclude='./build*' --exclude=./.git . | tar -xf - -C $T/$v
done
ok=""
for v in $names; do
  bad=0
  while IFS=$'\t' read -r n f s; do
    [ "$n" = "$v" ] || continue
    if [ "$f" = @patch ]; then
      (cd $T/$v && patch -p1 -s < "$s") || { echo "variant $v: patch $s does not apply; dropped" | tee -a $R; bad=1; }
      grep '^+++ ' "$T/$v/$s" | awk '{sub(/^b\//, "", $2); print $2}' >> $T/$v.changed
      continue
    fi
    cp $T/$v/$f $T/$v/$f.orig; sed -i "$s" $T/$v/$f; echo $f >> $T/$v.changed
    if cmp -s $T/$v/$f $T/$v/$f.orig; then echo "variant $v: '$s' changes nothing in $f; dropped" | tee -a $R; bad=1; fi
  done < "$AB_SPEC"
  [ $bad = 0 ] && ok="$ok $v"
done
# base is built first with every core; each variant starts from a copy of its
# objects with the edited files touched, so only what they change recompiles.
make -C $T/base -j16 SM=90 BUILD=b DEPS_ROOT=.deps/root WARN=-Wall b/peregrine > $T/base.build.log 2>&1 ||
  { echo "base: build failed"; tail -15 $T/base.build.log; }
for v in $ok; do
  [ $v = base ] && continue
  cp -a $T/base/b $T/$v/b && (cd $T/$v && touch $(sort -u $T/$v.changed))
  ( make -C $T/$v -j$jobs SM=90 BUILD=b DEPS_ROOT=.deps/root WARN=-Wall b/peregrine > $T/$v.build.log 2>&1 ||
    { echo "variant $v: build failed"; tail -15 $T/$v.build.log; } ) &
done
wait
echo "built at $(date -u +%T)" >> $R
built=""; for v in $ok; do [ -x $T/$v/b/peregrine ] && built="$built $v"; done
echo "variants: $built ($(nvidia-smi --query-gpu=name --format=csv,noheader), $(date -u +%FT%TZ))" | tee -a $R
i=0
while IFS= read -r line; do
  [ -n "$line" ] || continue; i=$((i + 1))
  only=""; case $line in @*) only=",${line%% *},"; only=${only/@/}; line=${line#* };; esac
  fld=10; case $line in %*) fld=${line%% *}; fld=${fld#%}; line=${line#* };; esac
  for r in $(seq ${REPS:-2}); do
    for v in $built; do
      [ -z "$only" ] || [ $v = base ] || [[ $only == *",$v,"* ]] || continue
      tok=$(timeout 120 $T/$v/b/peregrine bench $line 2>&1 | tail -1 | awk -F'|' -v f=$fld '{print $f}')
      echo "L$i rep$r $v ${tok:-FAIL} :: $line" | tee -a $R
    done
  done
done < "$AB_BENCH"
echo "benched at $(date -u +%T)" >> $R
for v in $built; do
  [ $v = base ] && continue
  for t in ${AB_TESTS:-}; do
    case $t in *@*) [[ ",${t#*@}," == *",$v,"* ]] || continue; t=${t%@*};; esac
    make -C $T/$v -j16 SM=90 BUILD=b DEPS_ROOT=.deps/root WARN=-Wall b/tests/test_$t > $T/$v.t_$t.build.log 2>&1 ||
      { echo "variant $v: test_$t build failed" | tee -a $R; continue; }
    ( cd $T/$v && PEREGRINE_GPU_GGUF=$PWD/.deps/gpu/smollm2-4l.gguf timeout 300 b/tests/test_$t --verbose=1 \
        > $T/$v.t_$t.log 2>&1 )
    echo "variant $v: $t rc=$? $(grep Synthesis $T/$v.t_$t.log)" | tee -a $R
    grep -h -A2 "Assertion Failed" $T/$v.t_$t.log | grep -v "^\[----\] *$\|^--$" | tee -a $R
  done
done
echo "== medians (tok/s) and ratio to base" | tee -a $R
grep '^L[0-9]* rep' $R | awk '{k = $1 " " $3; n[k]++; v[k, n[k]] = $4; line[$1] = $0; sub(/^.*:: /, "", line[$1]); order[$1] = 1; vs[$3] = 1}
  END { for (k in n) { m = n[k]; for (a = 1; a <= m; a++) for (b = a + 1; b <= m; b++) if (v[k, b] < v[k, a]) { t = v[k, a]; v[k, a] = v[k, b]; v[k, b] = t }
          med[k] = m % 2 ? v[k, (m + 1) / 2] : (v[k, m / 2] + v[k, m / 2 + 1]) / 2 }
        for (l in order) { printf "%s %s\n", l, line[l]; for (x in vs) if ((l " " x) in med)
          printf "   %-14s %8.1f  %6.3f\n", x, med[l " " x], ((l " base") in med && med[l " base"] > 0) ? med[l " " x] / med[l " base"] : 0 } }' | tee -a $R
