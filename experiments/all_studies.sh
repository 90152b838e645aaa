#!/usr/bin/env bash
# Runs the five studies one after another, sharing the fixed and the mixed zoo that the first
# one builds; a study already in its folder is continued (--resume), so the script can be run
# again after an interruption. Extra arguments go to every study (e.g. --scale=paper).
#   experiments/all_studies.sh workdirs/studies [--scale=tiny ...]
set -euo pipefail
out=${1:?usage: experiments/all_studies.sh OUT_DIR [flags for every study]}
shift
here=$(dirname "$0")
run() {  # run NAME FOLDER [flags]
  local name=$1 dir=$out/$2
  shift 2
  local again=()
  [[ -f $dir/study.json ]] && again=(--resume)
  python "$here/$name.py" --workdir="$dir" "${again[@]}" "$@"
}
run property_table table "$@"
zoo=(--fixed_zoo="$out/table/zoo_fixed")
run when when "${zoo[@]}" "$@"
run where where "${zoo[@]}" "$@"
run slice_length slice_length "${zoo[@]}" "$@"
run ensembles ensembles "${zoo[@]}" "$@"
echo "all studies done: $out/*/summary.md"
