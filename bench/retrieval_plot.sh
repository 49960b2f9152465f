#!/usr/bin/env bash
# Plots fwp-retrieval results (the CSV of --csv): final eval loss against the
# number of stored pairs S, one line per memory, one panel per setting.
#   bench/retrieval_plot.sh runs/retrieval/results.csv bench/retrieval.png
set -euo pipefail
csv="$1"; png="$2"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
tail -n +2 "$csv" | sort -t, -k1,1 -k2,2n -k3,3n | while IFS=, read -r memory setting s steps loss rest; do
  echo "$s $loss" >> "$tmp/${setting}_${memory}.dat"
done
plots() {
  local setting="$1" first=1
  for f in "$tmp/${setting}_"*.dat; do
    [ -e "$f" ] || continue
    local name
    name=$(basename "$f" .dat)
    name=${name#"${setting}_"}
    [ $first -eq 1 ] || printf ', '
    printf "'%s' using 1:2 with linespoints title '%s'" "$f" "$name"
    first=0
  done
}
gnuplot <<GP
set terminal png size 1400,450
set output '$png'
set multiplot layout 1,2
set logscale y
set grid
set xlabel 'S (key-value pairs stored)'
set ylabel 'final eval loss'
set key outside right top
set title 'setting 1: distinct keys (capacity)'
plot $(plots 1)
set title 'setting 2: keys re-assigned (updates)'
plot $(plots 2)
unset multiplot
GP
