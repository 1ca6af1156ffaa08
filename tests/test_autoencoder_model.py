"""AE/VAE model and ELBO terms: formulas re-computed independently (numpy, float64), shapes, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fvtool.errors import InputError
from fvtool.losses.vae import ReconstructionLoss, kl_weight
from fvtool.models.autoencoder import (
    SUPPORTED_INPUT_SIZES,
    AutoencoderConfig,
    ConvAutoencoder,
    channel_widths,
    check_geometry,
    reparameterise,
)


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().numpy()


def _ref_bce_per_image(logits: np.ndarray, target: np.ndarray) -> np.ndarray:
    p = 1.0 / (1.0 + np.exp(-logits))
    ll = target * np.log(p) + (1 - target) * np.log(1 - p)
    return -ll.reshape(len(ll), -1).sum(1)


def _ref_mse_per_image(logits: np.ndarray, target: np.ndarray) -> np.ndarray:
    p = 1.0 / (1.0 + np.exp(-logits))
    return ((p - target) ** 2).reshape(len(p), -1).sum(1)


def _ref_kl_per_image(mu: np.ndarray, logvar: np.ndarray) -> np.ndarray:
    return -0.5 * np.sum(1 + logvar - mu**2 - np.exp(logvar), axis=1)


@pytest.fixture
def small_batch() -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(7)
    logits = torch.randn(4, 3, 5, 6, generator=g, dtype=torch.float64) * 2
    target = torch.rand(4, 3, 5, 6, generator=g, dtype=torch.float64)
    target[0, 0, 0, :3] = torch.tensor([0.0, 1.0, 0.5], dtype=torch.float64)  # the range's ends
    mu = torch.randn(4, 7, generator=g, dtype=torch.float64)
    logvar = torch.randn(4, 7, generator=g, dtype=torch.float64) * 0.5
    return logits, target, mu, logvar


@pytest.mark.parametrize("recon", ["bce", "mse"])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_elbo_terms_equal_their_formulas(small_batch, recon: str, reduction: str) -> None:
    logits, target, mu, logvar = small_batch
    beta, warm, step = 3.0, 8, 2
    out = ReconstructionLoss(recon, reduction, beta=beta, kl_warmup_steps=warm)(logits, target, mu, logvar, step=step)
    ref_rec = (_ref_bce_per_image if recon == "bce" else _ref_mse_per_image)(_np(logits), _np(target))
    ref_kl = _ref_kl_per_image(_np(mu), _np(logvar)).mean()
    p = 3 * 5 * 6
    scale = 1.0 if reduction == "sum" else 1.0 / p
    w = beta * step / warm
    if reduction == "mean":  # mean reduction == the per-pixel-value average of the elementwise loss
        assert out.components["recon"] == pytest.approx(ref_rec.sum() / (4 * p), rel=1e-9)
    assert out.components["recon"] == pytest.approx(ref_rec.mean() * scale, rel=1e-9)
    assert out.components["kl"] == pytest.approx(ref_kl, rel=1e-9)
    assert out.components["kl_weight"] == pytest.approx(w)
    assert float(out.loss) == pytest.approx(ref_rec.mean() * scale + w * ref_kl * scale, rel=1e-9)
    ref_mse_px = _ref_mse_per_image(_np(logits), _np(target)).sum() / (4 * p)
    assert out.components["mse_pixel"] == pytest.approx(ref_mse_px, rel=1e-6)


def test_kl_is_zero_at_the_prior_and_positive_elsewhere() -> None:
    mu, logvar = torch.zeros(3, 4), torch.zeros(3, 4)
    t = torch.full((3, 1, 2, 2), 0.5)
    out = ReconstructionLoss("mse")(torch.zeros_like(t), t, mu, logvar)
    assert out.components["kl"] == 0.0 and out.components["recon"] == 0.0
    out = ReconstructionLoss("mse")(torch.zeros_like(t), t, mu + 1, logvar)
    assert out.components["kl"] == pytest.approx(0.5 * 4)  # 0.5 * sum(mu^2)


def test_kl_warmup_is_linear_and_ae_has_no_kl(small_batch) -> None:
    assert [kl_weight(2.0, s, 4) for s in (0, 1, 2, 4, 10)] == [0.0, 0.5, 1.0, 2.0, 2.0]
    assert kl_weight(0.5, 0, 0) == 0.5
    logits, target, mu, _ = small_batch
    ae = ReconstructionLoss("bce", "sum", variational=False)(logits, target, mu, None)
    assert "kl" not in ae.components
    assert float(ae.loss) == pytest.approx(_ref_bce_per_image(_np(logits), _np(target)).mean(), rel=1e-9)


def test_loss_matches_torch_reference_and_backpropagates(small_batch) -> None:
    logits, target, mu, logvar = (t.float().requires_grad_(True) for t in small_batch)
    out = ReconstructionLoss("bce", "sum")(logits, target.detach(), mu, logvar)
    torch_bce = torch.nn.functional.binary_cross_entropy(torch.sigmoid(logits), target, reduction="sum") / 4
    assert out.components["recon"] == pytest.approx(float(torch_bce.detach()), rel=1e-5)
    out.loss.backward()
    assert logits.grad is not None and mu.grad is not None and logvar.grad is not None


@pytest.mark.parametrize("recon", ["bce", "mse"])
def test_range_check_fires_for_normalised_targets(recon: str) -> None:
    x = torch.rand(2, 3, 4, 4) * 2 - 1  # data normalised to [-1, 1]
    with pytest.raises(InputError, match=r"needs targets in \[0, 1\].*normalis"):
        ReconstructionLoss(recon)(torch.zeros_like(x), x, torch.zeros(2, 3), torch.zeros(2, 3))
    bad = torch.rand(2, 3, 4, 4)
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(InputError):
        ReconstructionLoss(recon)(torch.zeros_like(bad), bad, torch.zeros(2, 3), torch.zeros(2, 3))


def test_bad_loss_options_are_refused() -> None:
    for kw in ({"recon": "l1"}, {"reduction": "max"}, {"beta": -1.0}):
        with pytest.raises(InputError):
            ReconstructionLoss(**kw)


def test_losses_are_registered() -> None:
    from fvtool.losses.registry import build_loss, get_loss_spec

    assert get_loss_spec("vae").family == "reconstruction"
    assert build_loss("vae", recon="mse", beta=0.5).beta == 0.5
    assert not build_loss("ae", recon="bce").variational
    with pytest.raises(InputError, match="does not take"):
        build_loss("ae", beta=1.0)


@pytest.mark.parametrize("size", SUPPORTED_INPUT_SIZES)
@pytest.mark.parametrize("variational", [True, False])
def test_encode_decode_shapes(size: int, variational: bool) -> None:
    cfg = AutoencoderConfig(input_size=size, latent_dim=12, width=32, variational=variational)
    model = ConvAutoencoder(cfg)
    x = torch.rand(2, 3, size, size)
    out = model(x)
    assert out.logits.shape == x.shape
    assert out.mu.shape == (2, 12) and out.z.shape == (2, 12)
    assert (out.logvar is not None) == variational
    depth, side = check_geometry(size, None)
    assert side * 2**depth == size and 3 <= side <= 8
    assert model.encoder.features(x).shape == (2, 32, side, side)
    assert model.sample(3).shape == (3, 3, size, size)


def test_default_geometry_matches_the_docs() -> None:
    assert {s: check_geometry(s, None) for s in SUPPORTED_INPUT_SIZES} == {
        32: (3, 4), 64: (4, 4), 96: (5, 3), 112: (4, 7), 128: (5, 4)}
    assert channel_widths(4, 512) == [64, 128, 256, 512]
    assert channel_widths(5, 32) == [16, 16, 16, 16, 32]


@pytest.mark.parametrize(("size", "depth"), [(100, None), (250, None), (64, 6), (64, 0), (0, None)])
def test_unsupported_sizes_give_a_clear_error(size: int, depth: int | None) -> None:
    with pytest.raises(InputError, match=r"not supported|depth must be"):
        ConvAutoencoder(AutoencoderConfig(input_size=size, depth=depth))


def test_wrong_input_shape_is_refused() -> None:
    model = ConvAutoencoder(AutoencoderConfig(input_size=32, latent_dim=4, width=16))
    with pytest.raises(InputError, match="32x32"):
        model(torch.rand(1, 3, 64, 64))


def test_encoder_returns_mu_deterministically_in_eval_mode() -> None:
    torch.manual_seed(0)
    model = ConvAutoencoder(AutoencoderConfig(input_size=32, latent_dim=8, width=16))
    x = torch.rand(3, 3, 32, 32)
    model.train()
    model(x)  # update batch-norm statistics so eval differs from an untouched model
    model.eval()
    emb = model.encoder
    a, b = emb(x), emb(x)
    assert torch.equal(a, b)
    mu, logvar = emb.encode(x)
    assert torch.equal(a, mu) and logvar is not None
    out = model(x)
    assert torch.equal(out.z, mu)  # no sampling in eval mode
    # per image: independent of the batch, since batch norm uses its running statistics
    assert torch.allclose(emb(x[:1]), a[:1], atol=1e-6)


def test_reparameterisation_is_seeded_and_has_the_right_moments() -> None:
    mu = torch.full((20000, 2), 1.5)
    logvar = torch.log(torch.tensor([[0.25, 4.0]])).expand(20000, 2)
    z1 = reparameterise(mu, logvar, torch.Generator().manual_seed(3))
    z2 = reparameterise(mu, logvar, torch.Generator().manual_seed(3))
    assert torch.equal(z1, z2)
    assert torch.allclose(z1.mean(0), torch.tensor([1.5, 1.5]), atol=0.05)
    assert torch.allclose(z1.std(0), torch.tensor([0.5, 2.0]), rtol=0.03)


def test_encoder_is_the_conv_encoder_backbone() -> None:
    from fvtool.models.registry import build_backbone, get_backbone_spec

    assert get_backbone_spec("conv-encoder").options() == {"width": 512, "depth": None}
    net = build_backbone("conv-encoder", embedding_size=10, input_size=64, width=32)
    assert net(torch.rand(2, 3, 64, 64)).shape == (2, 10)
    ae = ConvAutoencoder(AutoencoderConfig(input_size=64, latent_dim=10, width=32, variational=False))
    net.load_state_dict(ae.encoder.state_dict())  # an AE's encoder loads into the backbone (e.g. --init-from)
    with pytest.raises(InputError, match="not supported"):
        build_backbone("conv-encoder", embedding_size=10, input_size=100)
