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

import pickle
from pathlib import Path

import torch
import torch.nn as nn

from fvtool import optcheck
from fvtool.errors import InputError
from fvtool.models.registry import register_backbone

MIN_INPUT_SIZE = 75


def _facenet_class() -> type[nn.Module]:
    try:
        from facenet_pytorch.models.inception_resnet_v1 import InceptionResnetV1
    except ImportError as e:  # pragma: no cover - environment problem, explained to the user
        raise InputError("backbone inception_resnet_v1 needs facenet-pytorch (scripts/setup.sh installs it "
                         f"with --no-deps): {e}") from e
    return InceptionResnetV1


def load_state_dict_file(path: str | Path, owner: str) -> dict[str, torch.Tensor]:
    """Read a state dict with weights_only=True; accept a bare dict or one under 'state_dict'."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{owner}: weights file {p} does not exist")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise InputError(f"{owner}: refused to load {p}: it is not a plain tensor state dict "
                         f"(torch.load weights_only=True rejected it: {str(e).splitlines()[0]})") from e
    except Exception as e:
        raise InputError(f"{owner}: cannot read weights file {p}: {e}") from e
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        raise InputError(f"{owner}: {p} does not hold a state dict (name -> tensor)")
    return obj


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
    if weights is not None:
        state = {k: v for k, v in load_state_dict_file(weights, owner).items() if not k.startswith("logits.")}
        try:
            net.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise InputError(f"{owner}: weights file {weights} does not fit (embedding_size={embedding_size}): "
                             f"{str(e)[:600]}") from e
    # facenet's classify path without a classifier = the embedding before L2 normalisation
    net.classify = True
    net.logits = nn.Identity()
    return net
