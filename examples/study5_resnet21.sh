#!/usr/bin/env bash
# Study 5: ResNet21 / ResNet13 with cross-entropy, triplet (online hard mining) and ArcFace
# (m = 0.5); DET curves with the LFW EER point and FRR at FAR = 1e-4 and 1e-5 (all pairs);
# the cross-entropy and ArcFace models fine-tuned with triplet loss.
source "$(dirname "$0")/_common.sh"
SIZE="${SIZE:-$([ "$QUICK" = 1 ] && echo 64 || echo 112)}"
prepare_data similarity "$SIZE"
E=$(epochs 20)
IN="${IN:-$([ "$QUICK" = 1 ] && echo 32 || echo 112)}"
for net in resnet21 resnet13; do
  common=(--backbone "$net" --input-size "$IN" --epochs "$E")
  run_loss "$net-ce" --loss softmax "${common[@]}"
  run_loss "$net-triplet" --loss triplet --mining hard "${common[@]}" --lr 0.05
  run_loss "$net-arcface" --loss arcface --margin 0.5 "${MARGIN_OPT[@]}" "${common[@]}"
  for base in ce arcface; do   # fine-tune with triplet loss at a lower learning rate
    run_loss "$net-$base-ft-triplet" --loss triplet --mining hard --init-from "$WS/runs/$net-$base" \
      --backbone "$net" --input-size "$IN" --epochs "$(epochs 5)" --lr 0.005
  done
done
report
