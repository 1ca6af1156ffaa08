"""Backbones: output shapes and parameter counts at every documented input size (built on the meta
device: shapes without compute), size limits, channels_last, determinism under a seed, and the
InceptionResnetV1 weights file (weights_only; a code-running pickle is refused)."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from fvtool.errors import InputError
from fvtool.models.registry import backbone_names, backbone_specs, build_backbone

pytestmark = pytest.mark.usefixtures("one_thread")


# name -> {input size: parameter count with embedding_size=512}. Pinned: a change is a deliberate
# architecture change (update docs/models.md with it). Cross-checks against torchvision and
# facenet-pytorch's own counts are in the tests below.
PARAMS = {
    "resnet_small": {64: 985_376, 96: 985_376, 112: 985_376},
    "resnet18": {64: 11_432_000, 112: 11_432_000},
    "resnet34": {64: 21_540_160, 112: 21_540_160},
    "resnet50": {64: 24_549_952, 112: 24_549_952},
    "resnet18_fc2": {64: 15_627_328, 112: 24_278_080},
    "resnet21": {64: 16_812_928, 112: 25_463_680},
    "resnet13": {64: 10_540_288, 112: 19_191_040},
    "iresnet18": {64: 15_374_848, 112: 24_025_600},
    "iresnet34": {64: 25_488_576, 112: 34_139_328},
    "iresnet50": {64: 34_940_096, 112: 43_590_848},
    "iresnet100": {112: 65_156_160},
    "inception_resnet_v1": {112: 23_482_624, 160: 23_482_624},
}

# cheap real-compute configurations, one per family (name, input size, options)
CHEAP = [
    ("resnet_small", 64, {}),
    ("resnet18", 32, {"stem": "imagenet"}),
    ("resnet18_fc2", 32, {}),
    ("resnet21", 32, {"widths": (8, 16, 16, 32)}),
    ("resnet13", 32, {"widths": (8, 16, 16, 32), "fc_hidden": 64}),
    ("iresnet18", 32, {"stem_stride": 2}),
]  # inception_resnet_v1: in the weights-file test below (it is the slowest to build)


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def assert_same_embeddings(out: torch.Tensor, ref: torch.Tensor) -> None:
    """Equal up to float reassociation (eval-mode activations of an untrained net can be large)."""
    assert out.shape == ref.shape
    assert float((out - ref).norm() / ref.norm()) < 1e-4


def meta_build(name: str, size: int, **opts: object) -> nn.Module:
    with torch.device("meta"):
        return build_backbone(name, input_size=size, **opts)


def meta_forward(m: nn.Module, size: int) -> torch.Tensor:
    return m(torch.empty(2, 3, size, size, device="meta"))


def test_registry_lists_every_family() -> None:
    assert set(PARAMS) <= set(backbone_names())
    for name in PARAMS:
        spec = backbone_specs()[name]
        assert spec.summary and set(spec.input_sizes) == set(PARAMS[name]), name


@pytest.mark.parametrize(("name", "size"), [(n, s) for n, sizes in PARAMS.items() for s in sizes])
def test_shape_and_params_at_documented_sizes(name: str, size: int) -> None:
    m = meta_build(name, size)
    assert meta_forward(m, size).shape == (2, 512)
    assert n_params(m) == PARAMS[name][size]


@pytest.mark.parametrize("name", ["resnet_small", "resnet18_fc2", "resnet21", "iresnet18", "inception_resnet_v1"])
def test_embedding_size_is_configurable(name: str) -> None:
    size = 112
    assert meta_forward(meta_build(name, size, embedding_size=128), size).shape == (2, 128)


def test_resnet_small_is_about_one_million_parameters() -> None:
    assert 0.9e6 < PARAMS["resnet_small"][64] < 1.1e6


def test_torchvision_counts_follow_from_torchvision() -> None:
    """resnet18 = torchvision's count - fc - 7x7 stem + 3x3 stem + head (FC 512x512 no bias, BN1d)."""
    import torchvision

    with torch.device("meta"):
        tv = torchvision.models.resnet18()
    expected = n_params(tv) - (512 * 1000 + 1000) - 64 * 3 * 7 * 7 + 64 * 3 * 3 * 3 + 512 * 512 + 2 * 512
    assert PARAMS["resnet18"][112] == expected


def test_thesis_resnets_have_21_and_13_weight_layers() -> None:
    """Our reading: 3x3/stem convolutions + fully connected layers (1x1 shortcuts not counted)."""
    for name, layers in (("resnet21", 21), ("resnet13", 13)):
        m = meta_build(name, 64)
        convs = [c for c in m.modules() if isinstance(c, nn.Conv2d) and c.kernel_size != (1, 1)]
        fcs = [f for f in m.modules() if isinstance(f, nn.Linear)]
        assert (len(convs) + len(fcs), len(fcs)) == (layers, 2)
        assert any(isinstance(a, nn.PReLU) for a in m.modules())
        assert not any(isinstance(p, nn.MaxPool2d | nn.AvgPool2d | nn.AdaptiveAvgPool2d) for p in m.modules())
        assert any(isinstance(d, nn.Dropout) and d.p == 0.5 for d in m.modules())


def test_thesis_resnets_source_layout_has_the_thesis_convolution_counts() -> None:
    """layout=source (fvtool/models/thesis_resnet.py): "The ResNet21 network has 25 convolutional layers
    with an effective depth of 21 layers ... due to pointwise convolutions with one by one kernels in skip
    connections of residual blocks with spatial dimension reduction. In addition, it has two fully
    connected layers"; ResNet13 "has 17 convolutional layers with an effective depth of 13 layers"."""
    for name, (total, effective, params64, params112) in {"resnet21": (25, 21, 17_112_832, 25_763_584),
                                                          "resnet13": (17, 13, 10_840_192, 19_490_944)}.items():
        m = meta_build(name, 64, layout="source")
        convs = [c for c in m.modules() if isinstance(c, nn.Conv2d)]
        pointwise = [c for c in convs if c.kernel_size == (1, 1)]
        assert (len(convs), len(convs) - len(pointwise), len(pointwise)) == (total, effective, 4), name
        assert len([f for f in m.modules() if isinstance(f, nn.Linear)]) == 2
        assert n_params(m) == params64 and n_params(meta_build(name, 112, layout="source")) == params112
    out = build_backbone("resnet21", embedding_size=8, input_size=32, layout="source", widths=(8, 8, 16, 16))
    assert out(torch.randn(2, 3, 32, 32)).shape == (2, 8)  # total stride 16: a 2x2 map at 32 px
    with pytest.raises(InputError, match="layout must be one of"):
        build_backbone("resnet21", embedding_size=8, input_size=32, layout="paper")


def test_iresnet_follows_insightface_conventions() -> None:
    m = build_backbone("iresnet18", input_size=32)
    features = m.head[-1]
    assert isinstance(features, nn.BatchNorm1d) and not features.weight.requires_grad
    assert torch.all(features.weight == 1)
    stem = m.trunk[0]
    assert stem.stride == (1, 1) and 0.08 < float(stem.weight.std()) < 0.12  # N(0, 0.1) init


def insightface_keys(layers: tuple[int, ...]) -> set[str]:
    """The state-dict keys of insightface's arcface_torch IResNet, written out from its module names."""
    bn = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    keys = {"conv1.weight", "prelu.weight", "fc.weight", "fc.bias"}
    keys |= {f"{m}.{b}" for m in ("bn1", "bn2", "features") for b in bn}
    for stage, n in enumerate(layers, start=1):
        for i in range(n):
            p = f"layer{stage}.{i}."
            keys |= {p + "conv1.weight", p + "conv2.weight", p + "prelu.weight"}
            keys |= {f"{p}{m}.{b}" for m in ("bn1", "bn2", "bn3") for b in bn}
        keys |= {f"layer{stage}.0.downsample.0.weight"} | {f"layer{stage}.0.downsample.1.{b}" for b in bn}
    return keys


def test_iresnet_loads_insightface_state_dicts(tmp_path: Path) -> None:
    from fvtool.models.iresnet import insightface_key

    torch.manual_seed(0)
    ours = build_backbone("iresnet18", input_size=16)
    theirs = insightface_keys((2, 2, 2, 2))
    mapped = {insightface_key(k): k for k in theirs}
    assert set(mapped) == set(ours.state_dict())  # a complete one-to-one renaming
    state = {k: torch.randn_like(v.float()).to(v.dtype) if v.is_floating_point() else v + 1
             for k, v in ours.state_dict().items()}
    torch.save({mapped[k]: v for k, v in state.items()}, tmp_path / "backbone.pth")
    loaded = build_backbone("iresnet18", input_size=16, weights=str(tmp_path / "backbone.pth")).state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())
    with pytest.raises(InputError, match="does not fit this network"):  # 112-px weights, 64-px network
        build_backbone("iresnet18", input_size=64, weights=str(tmp_path / "backbone.pth"))


# ---- sizes -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(PARAMS))
def test_too_small_inputs_are_refused_at_build(name: str) -> None:
    low = backbone_specs()[name].min_input_size
    with pytest.raises(InputError, match=rf"cannot take {low - 1}x{low - 1} inputs: it needs at least {low}"):
        build_backbone(name, input_size=low - 1)


@pytest.mark.parametrize("name", ["resnet_small", "resnet18", "resnet21", "iresnet18", "inception_resnet_v1"])
def test_smallest_accepted_size_runs(name: str) -> None:
    low = backbone_specs()[name].min_input_size
    assert meta_forward(meta_build(name, low), low).shape == (2, 512)


def test_inception_minimum_is_exact() -> None:
    """75 is the smallest side facenet's valid convolutions reduce to a non-empty map."""
    net = meta_build("inception_resnet_v1", 75)
    with pytest.raises(RuntimeError):
        net(torch.empty(2, 3, 74, 74, device="meta"))


@pytest.mark.parametrize("name", ["resnet18_fc2", "resnet21", "resnet13", "iresnet50"])
def test_flattening_heads_refuse_another_size_clearly(name: str) -> None:
    m = meta_build(name, 64)
    with pytest.raises(InputError, match="built for 64x64 inputs"):
        meta_forward(m, 112)


def test_pooling_heads_take_other_sizes() -> None:
    assert meta_forward(meta_build("resnet_small", 64), 96).shape == (2, 512)


def test_unknown_names_options_and_values() -> None:
    with pytest.raises(InputError, match="unknown backbone 'resnet19'; available:"):
        build_backbone("resnet19")
    with pytest.raises(InputError, match=r"does not take option\(s\) depth; it takes stem='small'"):
        build_backbone("resnet18", depth=3)
    with pytest.raises(InputError, match="option stem must be one of small, imagenet"):
        build_backbone("resnet18", stem="large")
    with pytest.raises(InputError, match=r"option dropout must be < 1\.0"):
        build_backbone("resnet21", input_size=64, dropout=1.0)
    with pytest.raises(InputError, match="option blocks needs 4 values"):
        build_backbone("resnet_small", blocks=(1, 1))
    with pytest.raises(InputError, match="embedding_size must be a positive integer"):
        build_backbone("resnet_small", embedding_size=0)


# ---- real compute on cheap configurations -------------------------------------------------------

@pytest.mark.parametrize(("name", "size", "opts"), CHEAP, ids=[c[0] for c in CHEAP])
def test_deterministic_under_a_seed_and_channels_last(name: str, size: int, opts: dict) -> None:
    def make() -> nn.Module:
        torch.manual_seed(0)
        return build_backbone(name, input_size=size, **opts)

    a, b = make(), make()
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(7))
    torch.manual_seed(1)  # training mode: dropout draws from the global generator
    ya = a(x)
    torch.manual_seed(1)
    assert torch.equal(ya, b(x))
    # channels_last: same embeddings (eval), and a training step runs with finite gradients
    a.eval()
    with torch.no_grad():
        ref = a(x)
    a = a.to(memory_format=torch.channels_last)
    with torch.no_grad():
        out = a(x.to(memory_format=torch.channels_last))
    assert_same_embeddings(out, ref)
    a.train()
    a(torch.randn(3, 3, size, size).to(memory_format=torch.channels_last)).square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in a.parameters() if p.requires_grad)


def test_another_seed_gives_other_weights() -> None:
    torch.manual_seed(0)
    a = build_backbone("resnet_small", input_size=32).state_dict()
    torch.manual_seed(1)
    b = build_backbone("resnet_small", input_size=32).state_dict()
    assert any(not torch.equal(a[k], b[k]) for k in a if a[k].is_floating_point() and a[k].numel() > 1)


# ---- InceptionResnetV1 weights file ---------------------------------------------------------------

def test_inception_weights_file_facenet_equivalence_channels_last_and_seed(tmp_path: Path) -> None:
    from facenet_pytorch import InceptionResnetV1

    from fvtool.models.weights import load_state_dict_file

    torch.manual_seed(3)
    facenet = InceptionResnetV1(pretrained=None, classify=True, num_classes=10).eval()
    path = tmp_path / "facenet.pt"
    torch.save(facenet.state_dict(), path)  # facenet layout, with its classifier `logits.*`
    ours = build_backbone("inception_resnet_v1", input_size=75, weights=str(path)).eval()
    for k, v in ours.state_dict().items():
        assert torch.equal(v, facenet.state_dict()[k]), k
    x = torch.randn(2, 3, 75, 75)
    with torch.no_grad():
        facenet.classify = False  # facenet's embedding = our embedding, L2-normalised
        ref = ours(x)
        torch.testing.assert_close(F.normalize(ref, dim=1), facenet(x))
        ours = ours.to(memory_format=torch.channels_last)
        assert_same_embeddings(ours(x.to(memory_format=torch.channels_last)), ref)
    torch.save({"state_dict": facenet.state_dict()}, tmp_path / "wrapped.pt")
    wrapped = load_state_dict_file(tmp_path / "wrapped.pt", "test")
    assert wrapped.keys() == facenet.state_dict().keys()
    # random init is deterministic under the seed
    torch.manual_seed(5)
    a = build_backbone("inception_resnet_v1", input_size=75).state_dict()
    torch.manual_seed(5)
    b = build_backbone("inception_resnet_v1", input_size=75).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # unpickling would create the marker file
        return (open, (str(self.marker), "w"))


def test_inception_weights_refuse_code_running_pickles_and_misfits(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"conv2d_1a.conv.weight": torch.zeros(1), "x": _Evil(marker)}, evil)
    with pytest.raises(InputError, match=r"refused to load .*evil\.pt: it is not a plain tensor state dict"):
        build_backbone("inception_resnet_v1", weights=str(evil))
    assert not marker.exists()
    raw = tmp_path / "raw.pkl"
    raw.write_bytes(pickle.dumps(_Evil(marker)))
    with pytest.raises(InputError, match=r"raw\.pkl"):
        build_backbone("inception_resnet_v1", weights=str(raw))
    assert not marker.exists()
    with pytest.raises(InputError, match="does not exist"):
        build_backbone("inception_resnet_v1", weights=str(tmp_path / "missing.pt"))
    good = tmp_path / "good.pt"
    torch.save({"conv2d_1a.conv.weight": torch.zeros(1)}, good)
    with pytest.raises(InputError, match="does not fit"):
        build_backbone("inception_resnet_v1", weights=str(good))
