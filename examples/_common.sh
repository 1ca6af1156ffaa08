# Shared set-up of the example studies (sourced, not run). Each study chains fvtool stages.
#   QUICK=1   minutes-long run on the embedded LFW subset (identity split 70/10/20, 4-fold pairs)
#   default   the full study: all of LFW, trained on identities outside View 2 fold 10
#             ("unrestricted, no outside data"), evaluated on fold 10 (pairs) and on all pairs of
#             fold 10's images (FRR at FAR 1e-4 / 1e-5).
# Override: FVTOOL (command), WS (workspace), LFW (full data), ALIGNED (reuse an aligned LFW),
#           SIZE (align size), IN (training input size), EPOCHS, THREADS, BATCH (--batch-size),
#           BOOTSTRAP and REPORT_ARGS (report replicates, extra `fvtool report` options, e.g.
#           "--formats none --examples 0"). QUICK=1 only: SRC (folder to align instead of data/lfw-subset),
#           FOLDS and NPAIRS (folds and same-person pairs per fold of the test protocol),
#           RANDOM_PAIRS (study 1's random pair split pool). DETECTIONS: an earlier `fvtool align`
#           output of the same source whose MTCNN detections align reuses (another mode or size
#           then aligns in seconds). PREALIGNED: an already aligned identity folder (with or
#           without manifest.csv) used as is: no `fvtool align` runs (SRC, LFW, SIZE and DETECTIONS
#           are then unused), e.g. on a machine without MTCNN. DEVICE: --device of train and embed
#           (auto, cpu or cuda; unset = their default, auto). ONLY: run names (space-separated)
#           that run_loss trains; the others are skipped (redo part of a study; the report then
#           shows every run whose verify outputs are in WS). Small values make a smoke test
#           (tests/test_examples.py); the defaults are the documented runs.
#   RECIPE=faithful (default) | tuned: the runs that have shipped recipes (`fvtool train --list-recipes`,
#           docs/recipes.md) train with `--recipe STUDY-MODEL-$RECIPE` plus this script's scale options
#           (input size IN, epochs, batch); the others keep the script's own options. QUICK=1 selects
#           on the validation EER where a recipe selects on an FRR at a FAR (the tiny validation part
#           cannot measure FAR 1e-4); other selection metrics (val_loss, loss, eer) are kept.
#   DATA=<path> (unset: the LFW stand-in above, unchanged): train on the study's own dataset as its
#           publisher ships it (docs/datasets.md: insightface .rec / its folder, VGGFace2 train/ or test/,
#           CASIA-WebFace, MEDS-II, the course's cls_data/train, any identity folder). Pre-aligned data
#           (a .rec, an `fvtool align` output with manifest.csv, or any folder with DATA_AS_IS=1) is
#           used as is; anything else is aligned first (`fvtool align DATA`, the study's mode and SIZE,
#           into DATA_ALIGNED, default $WS/aligned/data-<name>-<mode><size>). Every identity of DATA
#           trains (split $WS/splits/data-all.json: fractions 1,0,0, plus the study's SPLIT_OPTS), so
#           there is no val part, as in the full LFW runs; the evaluation is the LFW one above
#           (fold 10 pairs + all pairs, or QUICK=1's subset test part) and does not change. Study 1
#           trains on LFW itself: there DATA is the LFW copy (LFW=, or SRC= with QUICK=1). A DATA
#           that does not exist or that fvtool cannot read stops the script (exit 2 / the stage's
#           code) with a message naming DATA.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
FVTOOL="${FVTOOL:-$root/.venv/bin/fvtool}"
QUICK="${QUICK:-0}"
STUDY="${STUDY:-$(basename "$0" .sh)}"
WS="${WS:-$PWD/fvwork-$STUDY}"
export FVTOOL_WORKSPACE="$WS"
THREADS_OPT=()
[ -n "${THREADS:-}" ] && THREADS_OPT=(--threads "$THREADS")
DETECT_OPT=()
[ -n "${DETECTIONS:-}" ] && DETECT_OPT=(--reuse-detections "$DETECTIONS")
BATCH_OPT=()
[ -n "${BATCH:-}" ] && BATCH_OPT=(--batch-size "$BATCH")
DEVICE_OPT=()
[ -n "${DEVICE:-}" ] && DEVICE_OPT=(--device "$DEVICE")
RECIPE="${RECIPE:-faithful}"
case "$RECIPE" in
  faithful|tuned) ;;
  *) echo "RECIPE=$RECIPE: choose faithful or tuned" >&2; exit 2 ;;
esac
DATA="${DATA:-}"
if [ -n "$DATA" ]; then  # checked before anything runs; fvtool's readers check the rest (data_fail)
  if [ ! -e "$DATA" ]; then
    echo "DATA=$DATA: no such file or folder (the study's training set as shipped: docs/datasets.md)" >&2; exit 2
  fi
  if [ -f "$DATA" ] && [[ "$DATA" != *.rec ]]; then
    echo "DATA=$DATA: not a dataset fvtool reads (a file must be an insightface .rec; otherwise give a folder:" \
         "docs/datasets.md)" >&2; exit 2
  fi
  if [ -d "$DATA" ] && [ -z "$(ls -A "$DATA")" ]; then
    echo "DATA=$DATA: an empty folder, not a dataset fvtool reads (docs/datasets.md)" >&2; exit 2
  fi
fi

# Additive-margin losses (ArcFace, CosFace, combined) on LFW's few thousand training identities: s = 16
# with a one-epoch warm-up. The papers' s = 64 (for 10 k+ identities) left them at 5-25 % training
# accuracy after 20 epochs here (study 3, docs/results.md section 4). fvtool's defaults are now close
# to this (a one-epoch warm-up and AdaCos's s = sqrt(2) ln(C - 1): 10.3-12.1 for LFW's 1,500-5,300 training
# identities, docs/losses.md); the studies keep s = 16 explicit because their measured numbers used it.
MARGIN_OPT=(--scale 16 --warmup-epochs 1)

fv() { echo "+ fvtool $*" >&2; "$FVTOOL" "$@"; }

# align_or_use SRC DST MODE SIZE: `fvtool align` SRC into DST, unless PREALIGNED names a folder to use
align_or_use() {
  if [ -n "${PREALIGNED:-}" ]; then
    [ -d "$PREALIGNED" ] || { echo "PREALIGNED=$PREALIGNED is not a folder" >&2; return 3; }
    echo "+ using the aligned folder $PREALIGNED as is (PREALIGNED; no fvtool align)" >&2
    return 0
  fi
  fv align "$1" -o "$2" --mode "$3" --size "$4" "${THREADS_OPT[@]}" "${DETECT_OPT[@]}" -q
}

# prepare_data ALIGN_MODE SIZE: align, split, protocols; sets ALIGNED SPLIT PAIRS ALLPAIRS. A study sets
# SPLIT_OPTS (extra `fvtool pairs split` options, e.g. study 4's --heldout-images 2) before calling it.
SPLIT_OPTS=()
prepare_data() {
  local mode="$1" size="$2"
  [ -n "${PREALIGNED:-}" ] && ALIGNED="$PREALIGNED"
  if [ "$QUICK" = 1 ]; then
    SRC="${SRC:-$root/data/lfw-subset}"
    ALIGNED="${ALIGNED:-$WS/aligned/$(basename "$SRC")-$mode$size}"
    align_or_use "$SRC" "$ALIGNED" "$mode" "$size"
    SPLIT="$WS/splits/quick.json"
    fv pairs split "$ALIGNED" --fractions 0.7,0.1,0.2 --seed 0 --name quick -o "$SPLIT" "${SPLIT_OPTS[@]}"
    PAIRS="$WS/protocols/quick-kfold.json"
    fv pairs generate "$ALIGNED" --split "$SPLIT" --part test --folds "${FOLDS:-4}" --n "${NPAIRS:-100}" --seed 0 \
       -o "$PAIRS"
  else
    LFW="${LFW:-$root/../shared/data/lfw-deepfunneled}"
    ALIGNED="${ALIGNED:-$WS/aligned/lfw-$mode$size}"
    align_or_use "$LFW" "$ALIGNED" "$mode" "$size"
    SPLIT="$WS/splits/lfw-unrestricted-fold10.json"
    fv pairs split "$ALIGNED" --lfw-fold 10 -o "$SPLIT" "${SPLIT_OPTS[@]}"
    PAIRS="$WS/protocols/lfw-fold10.json"
    fv pairs lfw --data "$ALIGNED" --fold 10 --name lfw-fold10 -o "$PAIRS"
  fi
  ALLPAIRS="$WS/protocols/allpairs-test.json"
  if [ "$QUICK" = 1 ]; then
    fv pairs allpairs "$ALIGNED" --split "$SPLIT" --part test --name allpairs-test -o "$ALLPAIRS"
  else
    fv pairs allpairs "$ALIGNED" --split "$SPLIT" --part test --name allpairs-fold10 -o "$ALLPAIRS"
  fi
  TRAIN_DATA="$ALIGNED" TRAIN_SPLIT="$SPLIT"
  if [ -n "$DATA" ]; then prepare_train_data "$mode" "$size"; fi
}

# data_fail CODE WHAT: stop with a message naming DATA (a stage could not read it)
data_fail() {
  echo "DATA=$DATA: $2 failed (exit $1): not a dataset fvtool reads, or a bad one; see the messages above" \
       "and docs/datasets.md" >&2
  exit "$1"
}

# prepare_train_data MODE SIZE: DATA -> TRAIN_DATA (as is when pre-aligned, else `fvtool align`) and
# TRAIN_SPLIT (all of DATA's identities train; SPLIT_OPTS apply, e.g. study 4's held-out images)
prepare_train_data() {
  local mode="$1" size="$2" rc=0
  if [[ "$DATA" == *.rec ]] || [ -f "$DATA/train.rec" ] || [ -f "$DATA/manifest.csv" ] || [ "${DATA_AS_IS:-0}" = 1 ]; then
    TRAIN_DATA="$DATA"
    echo "+ training on DATA=$DATA as is (pre-aligned: no fvtool align)" >&2
  else
    TRAIN_DATA="${DATA_ALIGNED:-$WS/aligned/data-$(basename "$DATA")-$mode$size}"
    fv align "$DATA" -o "$TRAIN_DATA" --mode "$mode" --size "$size" "${THREADS_OPT[@]}" -q || rc=$?
    if [ "$rc" = 4 ]; then  # some images unreadable: listed in the manifest; a shipped set may hold a few
      echo "DATA=$DATA: some images could not be read (listed in $TRAIN_DATA/manifest.csv); training without them" >&2
      rc=0
    fi
    [ "$rc" = 0 ] || data_fail "$rc" "fvtool align"
  fi
  TRAIN_SPLIT="$WS/splits/data-all.json"
  fv pairs split "$TRAIN_DATA" --fractions 1,0,0 --seed 0 --name data-all -o "$TRAIN_SPLIT" "${SPLIT_OPTS[@]}" || rc=$?
  [ "$rc" = 0 ] || data_fail "$rc" "fvtool pairs split"
}

# run_loss NAME [train options...]: train -> embed -> verify on PAIRS and ALLPAIRS
run_loss() {
  local name="$1"; shift
  local run="$WS/runs/$name"
  if [ -n "${ONLY:-}" ] && [[ " $ONLY " != *" $name "* ]]; then echo "skipping $name (ONLY=$ONLY)" >&2; return 0; fi
  if [ -f "$run/checkpoints/last.pt" ]; then  # resume: the run's own config; only runtime options may change
    fv train -o "$run" --resume "${THREADS_OPT[@]}" "${DEVICE_OPT[@]}"
  else
    fv train --data "$TRAIN_DATA" --split "$TRAIN_SPLIT" -o "$run" --seed 0 "${THREADS_OPT[@]}" "${BATCH_OPT[@]}" \
       "${DEVICE_OPT[@]}" "$@"
  fi
  # only the (LFW) test identities' images: both protocols (and identify) score nothing else
  fv embed "$run" --data "$ALIGNED" --split "$SPLIT" --part test -o "$WS/embeddings/$name.h5" "${THREADS_OPT[@]}" \
     "${DEVICE_OPT[@]}" -q
  verify_emb "$name"
}

# verify_emb NAME [verify options...]: score an embeddings file on both protocols
verify_emb() {
  local name="$1"; shift
  fv verify "$WS/embeddings/$name.h5" --protocol "$PAIRS" -o "$WS/verify/$name-pairs" -q "$@"
  fv verify "$WS/embeddings/$name.h5" --protocol "$ALLPAIRS" --far 1e-3 --far 1e-4 --far 1e-5 \
     -o "$WS/verify/$name-allpairs" -q "$@"
}

# recipe_opts BASE: the train options of run BASE's recipe (BASE-$RECIPE) at this script's scale
recipe_opts() {
  RECIPE_OPTS=(--recipe "$1-$RECIPE")
  if [ "$QUICK" = 1 ] && grep -q '^select_metric = "frr@far' "$root/fvtool/recipes/$1-$RECIPE.toml"; then
    RECIPE_OPTS+=(--select-metric eer)
  fi
  return 0
}

epochs() {  # epochs DEFAULT_FULL -> the epoch count for this mode
  if [ -n "${EPOCHS:-}" ]; then echo "$EPOCHS"; elif [ "$QUICK" = 1 ]; then echo 1; else echo "$1"; fi
}

report() {
  local extra=() dirs=()
  read -ra extra <<< "${REPORT_ARGS:-}"
  # the verify outputs present (ONLY= may have skipped every run scored on one of the protocols)
  mapfile -t dirs < <(compgen -G "$WS/verify/*-pairs"; compgen -G "$WS/verify/*-allpairs")
  [ "${#dirs[@]}" -gt 0 ] || { echo "no verify outputs in $WS/verify: no report" >&2; return 0; }
  fv report "${dirs[@]}" -o "$WS/report" --fars 1e-2,1e-3,1e-4,1e-5 \
     --bootstrap "${BOOTSTRAP:-200}" "${extra[@]}" "$@"
  echo "report: $WS/report/report.html" >&2
}
