"""`inception_resnet_v1`: facenet-pytorch's InceptionResnetV1, random init or weights from a file.

Why a thin subclass rather than a copy: the architecture (and its state-dict keys) stay facenet-pytorch's,
so a facenet-pytorch state dict (e.g. the VGGFace2 file `20180402-114759-vggface2.pt`, fetched by the user,
never by fvtool) loads unchanged, and our checkpoints load back into facenet-pytorch.
Two deliberate differences from `InceptionResnetV1(classify=False)`:
- the forward returns the BN output *before* L2 normalisation (fvtool's contract: losses and `embed`
  normalise), via facenet's own classify path with an identity classifier;
- `embedding_size` other than 512 replaces `last_linear`/`last_bn` (then a 512-d weights file is refused).
Weights files are read with `torch.load(weights_only=True)`: plain tensors only, a pickle that would run
code is refused. facenet's classifier (`logits.*`, 8631/10575 classes) is dropped; everything else must match.
Input: any square side >= 75 (the valid convolutions and three stride-2 reductions leave a 1x1 map
at 75); facenet's own size is 160, 112 works well.
"""

from __future__ import annotations

import torch.nn as nn

from fvtool import optcheck
from fvtool.errors import InputError
from fvtool.models.registry import register_backbone
from fvtool.models.weights import load_weights

MIN_INPUT_SIZE = 75


def _facenet_class() -> type[nn.Module]:
    try:
        from facenet_pytorch.models.inception_resnet_v1 import InceptionResnetV1
    except ImportError as e:  # pragma: no cover - environment problem, explained to the user
        raise InputError("backbone inception_resnet_v1 needs facenet-pytorch (scripts/setup.sh installs it "
                         f"with --no-deps): {e}") from e
    return InceptionResnetV1


@register_backbone("inception_resnet_v1", min_input_size=MIN_INPUT_SIZE, input_sizes=(112, 160))
def inception_resnet_v1(*, embedding_size: int, input_size: int, dropout: float = 0.6,
                        weights: str | None = None) -> nn.Module:
    """facenet-pytorch InceptionResnetV1 (23M): random init or a user-supplied state-dict file."""
    owner = "backbone inception_resnet_v1"
    p = optcheck.number(owner, "dropout", dropout, low=0.0, high=1.0, high_open=True)
    net = _facenet_class()(pretrained=None, classify=False, dropout_prob=p)
    if embedding_size != 512:
        net.last_linear = nn.Linear(1792, embedding_size, bias=False)
        net.last_bn = nn.BatchNorm1d(embedding_size, eps=0.001, momentum=0.1, affine=True)
    if weights is not None:  # facenet's classifier (`logits.*`) is not part of the embedder
        load_weights(net, weights, owner, rename=lambda k: None if k.startswith("logits.") else k)
    # facenet's classify path without a classifier = the embedding before L2 normalisation
    net.classify = True
    net.logits = nn.Identity()
    return net
