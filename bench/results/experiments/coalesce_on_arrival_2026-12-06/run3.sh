#!/bin/bash
# usage: AB=<directory of checkouts> PYTHON=<the project's .venv/bin/python> \
#        ./run3.sh ROUNDS STEPS OUT VARIANT...
# Each round runs every variant (a checkout $AB/<variant>) once, in an order rotated by one
# each round; pair.py's rows go to OUT, prefixed with the variant.
HERE=$(cd "$(dirname "$0")" && pwd)
N=$1; STEPS=$2; OUT=$3; shift 3; V=("$@")
for i in $(seq 0 $((N-1))); do
  for j in $(seq 0 $((${#V[@]}-1))); do
    v=${V[$(( (i + j) % ${#V[@]} ))]}
    "${PYTHON:-python}" "$HERE/pair.py" "$AB/$v" "$STEPS" 2>>"$OUT.err" | grep '^ROW' | sed "s/^ROW /$v /" >> "$OUT"
  done
done
