#!/usr/bin/env bash
# Study 3: classification -> verification. One backbone trained with cross-entropy, ArcFace,
# CosFace, SphereFace, combined margins, triplet, N-pair, circle and SupCon; cosine scoring; EER.
# DATA=<the course's cls_data/train (112-px crops as distributed: add DATA_AS_IS=1) or a VGGFace2 train/ folder>
# (examples/_common.sh): all of its identities train; verification stays on LFW (the course's own ver_data
# pairs are not scored by this script).
source "$(dirname "$0")/_common.sh"
SIZE="${SIZE:-$([ "$QUICK" = 1 ] && echo 64 || echo 112)}"
prepare_data similarity "$SIZE"
E=$(epochs 20)
IN="${IN:-$([ "$QUICK" = 1 ] && echo 32 || echo 64)}"
common=(--backbone resnet_small --input-size "$IN" --epochs "$E")
run_loss softmax --loss softmax "${common[@]}"
run_loss arcface --loss arcface "${MARGIN_OPT[@]}" "${common[@]}"
run_loss cosface --loss cosface "${MARGIN_OPT[@]}" "${common[@]}"
run_loss sphereface --loss sphereface "${common[@]}"
# combined margin and circle from the recipes study3-{combined,circle}-$RECIPE (docs/recipes.md): faithful =
# the source's notation on timm SE-ResNet18, and cross-entropy jointly with the simple circle loss on ConvNeXt
recipe_opts study3-combined
run_loss combined "${RECIPE_OPTS[@]}" --input-size "$IN" --epochs "$E"
run_loss triplet --loss triplet --mining semihard "${common[@]}" --lr 0.05
run_loss npair --loss npair "${common[@]}" --lr 0.05
QUICK_PK=()
[ "$QUICK" = 1 ] && QUICK_PK=(--pk 8 4)
recipe_opts study3-circle
run_loss circle "${RECIPE_OPTS[@]}" --input-size "$IN" --epochs "$E" "${QUICK_PK[@]}"
run_loss supcon --loss supcon "${common[@]}" --lr 0.05
report
