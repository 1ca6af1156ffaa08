#!/usr/bin/env bash
# Study 3: classification -> verification. One backbone trained with cross-entropy, ArcFace,
# CosFace, SphereFace, combined margins, triplet, N-pair, circle and SupCon; cosine scoring; EER.
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
run_loss combined --loss combined_margin --loss-opt m1=1.0 --loss-opt m2=0.3 --loss-opt m3=0.2 "${MARGIN_OPT[@]}" \
  "${common[@]}"
run_loss triplet --loss triplet --mining semihard "${common[@]}" --lr 0.05
run_loss npair --loss npair "${common[@]}" --lr 0.05
run_loss circle --loss circle "${common[@]}" --lr 0.05
run_loss supcon --loss supcon "${common[@]}" --lr 0.05
report
