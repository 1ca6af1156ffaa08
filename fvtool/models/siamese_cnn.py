"""`siamese_cnn`: study 1's shared embedding network (~190 K parameters at 128 x 128 x 3).

Why this network: study 1's source (../shared/sources/000_*.txt) trains its BCE, contrastive and
triplet verifiers on "a shared embedding network followed by a distance-based comparison and a
binary output layer, totaling approximately 190K trainable parameters", on 128 x 128 x 3 images in
[0, 1]. It names no layer. The reading that reproduces that count is the embedding network of
keras.io's siamese example ("Image similarity estimation using a Siamese Network with a contrastive
loss"), whose merge is exactly "Euclidean distance -> BatchNorm -> Dense(1, sigmoid)", built for
128 x 128 x 3 inputs:

    BN2d(3) -> conv 5x5 (4) -> tanh -> avg-pool 2 -> conv 5x5 (16) -> tanh -> avg-pool 2
      -> flatten (16 x 29 x 29 = 13,456 at 128 px) -> BN1d -> FC(13,456 -> D = 10) -> tanh

Keras' `model.summary()` counts BatchNorm's moving mean and variance as (non-trainable)
parameters: this network has 163,408 trainable parameters and 26,918 moving statistics, 190,326 in
all; with the merge (BN(1): 2 + 2, Dense(1): 2) the siamese model totals 190,332, the "190K" of the
source (tests/test_pairs_training.py asserts both counts; docs/recipes.md "Readings").

BatchNorm uses Keras' defaults (momentum 0.99, i.e. PyTorch momentum 0.01; epsilon 1e-3). The
embedding ends in tanh (bounded to [-1, 1]^D) and is not L2-normalised, as the registry's contract
says; the source's losses work on the raw Euclidean distance.
"""

from __future__ import annotations

import torch.nn as nn

from fvtool import optcheck
from fvtool.errors import InputError
from fvtool.models.registry import register_backbone

#: Keras' BatchNormalization defaults in PyTorch terms (Keras momentum 0.99 = PyTorch momentum 0.01)
_BN = {"momentum": 0.01, "eps": 1e-3}


def feature_side(input_size: int, kernel: int = 5) -> int:
    """Side of the last feature map: two (valid conv `kernel`, avg-pool 2) stages."""
    side = input_size
    for _ in range(2):
        side = (side - kernel + 1) // 2
    return side


@register_backbone("siamese_cnn", min_input_size=16, input_sizes=(64, 128))
def siamese_cnn(*, embedding_size: int, input_size: int, widths: tuple[int, ...] = (4, 16),
                kernel: int = 5) -> nn.Module:
    """Study 1's ~190K-parameter siamese CNN (keras.io example, 128 px): BN, 2 x (conv5, tanh, avg-pool), BN, FC tanh"""
    owner = "backbone siamese_cnn"
    widths = optcheck.int_tuple(owner, "widths", widths, length=2)
    kernel = optcheck.integer(owner, "kernel", kernel, low=1)
    side = feature_side(input_size, kernel)
    if side < 1:
        raise InputError(f"{owner}: a {input_size}x{input_size} input leaves no feature map after two "
                         f"{kernel}x{kernel} convolutions and pools; use >= {2 * (kernel + 1) + kernel - 1} px")
    return nn.Sequential(
        nn.BatchNorm2d(3, **_BN),
        nn.Conv2d(3, widths[0], kernel), nn.Tanh(), nn.AvgPool2d(2),
        nn.Conv2d(widths[0], widths[1], kernel), nn.Tanh(), nn.AvgPool2d(2),
        nn.Flatten(),
        nn.BatchNorm1d(widths[1] * side * side, **_BN),
        nn.Linear(widths[1] * side * side, embedding_size), nn.Tanh(),
    )
