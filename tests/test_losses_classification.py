"""Classification-family losses: each against an independent re-computation of its formula (numpy,
float64), ArcFace/CosFace/SphereFace against pytorch-metric-learning, the ArcFace safeguard near pi,
center loss's update rule, and the registry's context/option handling."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fvtool.errors import InputError
from fvtool.losses import registry
from fvtool.losses.registry import build_loss, loss_specs

D, C, B = 8, 5, 12
CLASSIFICATION = ("softmax", "normface", "sphereface", "cosface", "arcface", "combined_margin", "center")


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


pytestmark = pytest.mark.usefixtures("one_thread")


def batch(b: int = B, d: int = D, c: int = C, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, d, generator=g) * 3
    y = torch.randint(0, c, (b,), generator=g)
    y[:c] = torch.arange(c)  # every class present
    return x, y


def np_ce(logits: np.ndarray, y: np.ndarray, eps: float = 0.0) -> float:
    """Mean cross-entropy with torch's label smoothing: (1 - eps) * nll + eps * mean_j(-log p_j)."""
    m = logits.max(1, keepdims=True)
    logp = logits - m - np.log(np.exp(logits - m).sum(1, keepdims=True))
    nll = -logp[np.arange(len(y)), y]
    return float(((1 - eps) * nll + eps * (-logp.mean(1))).mean())


def np_cos(x: torch.Tensor, w: torch.Tensor) -> np.ndarray:
    xn = x.double().numpy()
    wn = w.detach().double().numpy()
    xn = xn / np.linalg.norm(xn, axis=1, keepdims=True)
    wn = wn / np.linalg.norm(wn, axis=1, keepdims=True)
    return xn @ wn.T


def np_margin_loss(cos: np.ndarray, y: np.ndarray, s: float, m1: float, m2: float, m3: float,
                   fallback: str = "th-mm") -> float:
    """Combined margin written out independently, per sample, with the insightface safeguard."""
    logits = s * cos.copy()
    for i, t in enumerate(y):
        c = float(np.clip(cos[i, t], -1.0, 1.0))
        theta = math.acos(c)
        psi = math.cos(m1 * theta + m2) - m3
        theta_max = (math.pi - m2) / m1
        if fallback == "th-mm" and theta > theta_max:
            psi = c - m3 - ((m1 - 1) * theta_max + m2) * math.sin(theta_max)
        if fallback == "easy" and c <= 0:
            psi = c
        logits[i, t] = s * psi
    return np_ce(logits, y)


def build(name: str, **opts: object) -> torch.nn.Module:
    return build_loss(name, embedding_size=D, num_classes=C, **opts)


# ---- registry -----------------------------------------------------------------------------------

def test_registered_with_family_and_summary() -> None:
    specs = loss_specs()
    for name in CLASSIFICATION:
        assert specs[name].family == "classification"
        assert specs[name].summary


def test_context_kwargs_dropped_where_not_taken_but_user_options_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    loss_specs()

    def no_context(margin: float = 1.0) -> torch.nn.Module:
        """A loss that needs neither embedding_size nor num_classes."""
        m = torch.nn.Identity()
        m.margin = margin
        return m

    monkeypatch.setitem(registry.LOSSES._table, "_test_no_context",
                        registry.LossSpec("_test_no_context", "metric", no_context, "test"))
    built = build_loss("_test_no_context", embedding_size=16, num_classes=3, margin=0.3)
    assert built.margin == 0.3
    with pytest.raises(InputError, match=r"does not take option\(s\) scale; it takes margin"):
        build_loss("_test_no_context", embedding_size=16, scale=2.0)


def test_unknown_option_missing_context_and_bad_values_are_input_errors() -> None:
    with pytest.raises(InputError, match="unknown loss 'arcfase'"):
        build_loss("arcfase")
    with pytest.raises(InputError, match=r"does not take option\(s\) m2"):
        build("arcface", m2=0.3)
    with pytest.raises(InputError, match="needs num_classes"):
        build_loss("arcface", embedding_size=D, num_classes=None)
    with pytest.raises(InputError, match="option margin must be >= 0"):
        build("cosface", margin=-0.1)
    with pytest.raises(InputError, match="fallback must be one of"):
        build("arcface", fallback="clip")
    with pytest.raises(InputError, match="fallback 'easy' needs"):
        build("combined_margin", m1=4.0, m2=0.0, fallback="easy")
    with pytest.raises(InputError, match="option margin must be an integer"):
        build("sphereface", margin=1.5)


def test_batch_checks() -> None:
    loss = build("arcface")
    x, y = batch()
    with pytest.raises(InputError, match=r"labels must lie in \[0, 5\)"):
        loss(x, torch.full_like(y, C))
    with pytest.raises(InputError, match=r"expected \[B, 8\] embeddings"):
        loss(torch.randn(B, D + 1), y)
    with pytest.raises(InputError, match="11 labels for 12 embeddings"):
        loss(x, y[:-1])
    with pytest.raises(InputError, match="integer class indices"):
        loss(x, y.float())


# ---- formulas --------------------------------------------------------------------------------------

@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_softmax_matches_formula(eps: float) -> None:
    loss = build("softmax", label_smoothing=eps)
    x, y = batch()
    out = loss(x, y)
    w = loss.classifier.weight.detach().double().numpy()
    b = loss.classifier.bias.detach().double().numpy()
    logits = x.double().numpy() @ w.T + b
    assert out.loss.item() == pytest.approx(np_ce(logits, y.numpy(), eps), rel=1e-5)
    assert out.components["ce"] == pytest.approx(out.loss.item())
    np.testing.assert_allclose(out.logits.numpy(), logits, rtol=1e-5, atol=1e-5)


def test_normface_matches_formula() -> None:
    loss = build("normface", scale=16.0)
    x, y = batch()
    cos = np_cos(x, loss.weight)
    assert loss(x, y).loss.item() == pytest.approx(np_ce(16.0 * cos, y.numpy()), rel=1e-5)


@pytest.mark.parametrize(("name", "opts", "m"), [
    ("cosface", {"margin": 0.35, "scale": 30.0}, (1.0, 0.0, 0.35)),
    ("arcface", {"margin": 0.5, "scale": 30.0}, (1.0, 0.5, 0.0)),
    ("arcface", {"margin": 0.3, "scale": 10.0, "fallback": "easy"}, (1.0, 0.3, 0.0)),
    ("combined_margin", {"m1": 1.2, "m2": 0.3, "m3": 0.1, "scale": 20.0}, (1.2, 0.3, 0.1)),
    ("combined_margin", {"m1": 2.0, "m2": 0.0, "m3": 0.0, "scale": 5.0}, (2.0, 0.0, 0.0)),
])
def test_margin_losses_match_formula(name: str, opts: dict, m: tuple[float, float, float]) -> None:
    loss = build(name, **opts)
    with torch.no_grad():  # spread the angles over [0, pi] so every branch is exercised
        loss.weight.copy_(torch.randn(C, D))
    x, y = batch(b=64)
    x[:C] = -loss.weight.detach()[:C] + 0.05 * torch.randn(C, D)  # targets near theta = pi
    out = loss(x, y)
    cos = np_cos(x, loss.weight)
    expected = np_margin_loss(cos, y.numpy(), opts["scale"], *m, fallback=opts.get("fallback", "th-mm"))
    assert out.loss.item() == pytest.approx(expected, rel=1e-5)
    np.testing.assert_allclose(out.logits.numpy(), opts["scale"] * cos, rtol=1e-5, atol=1e-4)  # no margin
    assert 0.0 <= out.stats["target_angle_deg"] <= 180.0


def np_sphereface(x: torch.Tensor, w: torch.Tensor, y: np.ndarray, m: int, lam: float, s: float = 1.0) -> float:
    cos = np_cos(x, w)
    norm = np.linalg.norm(x.double().numpy(), axis=1)
    logits = s * norm[:, None] * cos
    for i, t in enumerate(y):
        theta = math.acos(cos[i, t])
        k = min(math.floor(theta * m / math.pi), m - 1)
        psi = (-1) ** k * math.cos(m * theta) - 2 * k
        logits[i, t] = s * norm[i] * (lam * cos[i, t] + psi) / (1 + lam)
    return np_ce(logits, y)


def test_sphereface_matches_formula_and_anneals_lambda() -> None:
    loss = build("sphereface")  # m = 4, lambda = max(5, 1000 / (1 + 0.12 t))
    with torch.no_grad():
        loss.weight.copy_(torch.randn(C, D))
    x, y = batch(b=40)
    for t in range(3):
        lam = max(5.0, 1000.0 / (1 + 0.12 * t))
        out = loss(x, y)
        assert out.components["lambda"] == pytest.approx(lam)
        assert out.loss.item() == pytest.approx(np_sphereface(x, loss.weight, y.numpy(), 4, lam), rel=1e-5)
    assert int(loss.iteration) == 3 and "iteration" in loss.state_dict()
    loss.eval()
    loss(x, y)
    assert int(loss.iteration) == 3  # evaluation does not advance the schedule
    late = build("sphereface", margin=3.0, scale=0.5)  # an integral float (--margin 3) is an integer
    late.iteration.fill_(10**6)  # long after the annealing: lambda_min
    out = late(x, y)
    assert out.components["lambda"] == 5.0
    assert out.loss.item() == pytest.approx(np_sphereface(x, late.weight, y.numpy(), 3, 5.0, 0.5), rel=1e-5)


def test_center_loss_value_gradients_and_paper_update() -> None:
    lam, alpha = 0.1, 0.5
    loss = build("center", center_weight=lam, center_lr=alpha)
    with torch.no_grad():
        loss.centers.copy_(torch.randn(C, D))
    x, y = batch()
    x.requires_grad_(True)
    out = loss(x, y)
    xd, cd, yn = x.detach().double().numpy(), loss.centers.detach().double().numpy(), y.numpy()
    w = loss.softmax.classifier.weight.detach().double().numpy()
    b = loss.softmax.classifier.bias.detach().double().numpy()
    center_term = 0.5 * ((xd - cd[yn]) ** 2).sum(1).mean()
    assert out.components["center"] == pytest.approx(center_term, rel=1e-5)
    assert out.loss.item() == pytest.approx(np_ce(xd @ w.T + b, yn) + lam * center_term, rel=1e-5)
    out.loss.backward()
    # embeddings: true gradient of CE + lambda/2 mean |x - c|^2
    xr = x.detach().clone().requires_grad_(True)
    ref = torch.nn.functional.cross_entropy(loss.softmax.classifier(xr), y) + \
        lam * 0.5 * (xr - loss.centers.detach()[y]).square().sum(1).mean()
    ref.backward()
    torch.testing.assert_close(x.grad, xr.grad)
    # centers: Wen et al. eq. 4, delta c_j = sum_{y_i=j} (c_j - x_i) / (1 + n_j)
    delta = np.zeros_like(cd)
    for j in range(C):
        sel = yn == j
        delta[j] = (cd[j] - xd[sel]).sum(0) / (1 + sel.sum())
    np.testing.assert_allclose(loss.centers.grad.double().numpy(), delta, rtol=1e-5, atol=1e-6)
    # the centers' own group: SGD with lr alpha applies exactly c <- c - alpha * delta
    (group,) = loss.param_groups(weight_decay=5e-4)
    assert group["params"] == [loss.centers] and group["lr"] == alpha and group["weight_decay"] == 0.0
    opt = torch.optim.SGD([{"params": list(loss.softmax.parameters())}, group], lr=0.1, momentum=0.9,
                          nesterov=True, weight_decay=5e-4)
    opt.step()
    np.testing.assert_allclose(loss.centers.detach().double().numpy(), cd - alpha * delta, rtol=1e-5, atol=1e-6)


# ---- against pytorch-metric-learning ---------------------------------------------------------------

def _pml(name: str):
    pml = pytest.importorskip("pytorch_metric_learning.losses")
    if name == "arcface":  # pml: margin in degrees
        return build("arcface", margin=0.5, scale=30.0), pml.ArcFaceLoss(C, D, margin=math.degrees(0.5), scale=30.0)
    if name == "cosface":
        return build("cosface", margin=0.35, scale=30.0), pml.CosFaceLoss(C, D, margin=0.35, scale=30.0)
    # pml's SphereFaceLoss is A-Softmax without annealing: lambda = 0
    return (build("sphereface", margin=4, lambda_base=0.0, lambda_min=0.0), pml.SphereFaceLoss(C, D, margin=4))


@pytest.mark.parametrize("name", ["arcface", "cosface", "sphereface"])
def test_against_pytorch_metric_learning(name: str) -> None:
    ours, ref = _pml(name)
    with torch.no_grad():
        ours.weight.copy_(torch.randn(C, D))
        ref.W.copy_(ours.weight.t())  # pml layout: [embedding_size, num_classes]
    x, y = batch(b=48, seed=3)
    x[:C] = -ours.weight.detach()[y[:C]] + 0.1 * torch.randn(C, D)  # some targets beyond pi - m
    x1, x2 = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    a, b = ours(x1, y).loss, ref(x2, y)
    a.backward()
    b.backward()
    assert a.item() == pytest.approx(b.item(), rel=1e-5)
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(ours.weight.grad, ref.W.grad.t(), rtol=1e-4, atol=1e-6)


# ---- the ArcFace safeguard ---------------------------------------------------------------------------

def embeddings_at_angles(w: torch.Tensor, thetas: torch.Tensor) -> torch.Tensor:
    """Unit vectors at exactly `thetas` from w (rotating w towards an orthogonal direction u)."""
    w = w / w.norm()
    u = torch.randn_like(w)
    u = u - (u @ w) * w
    u = u / u.norm()
    return torch.cos(thetas)[:, None] * w + torch.sin(thetas)[:, None] * u


def test_arcface_safeguard_near_pi() -> None:
    m = 0.5
    thetas = torch.linspace(0, math.pi, 721, dtype=torch.float64)
    cos = torch.cos(thetas)
    expected = torch.where(thetas <= math.pi - m, torch.cos(thetas + m), cos - m * math.sin(m))
    safe = build("arcface", margin=m)
    psi = safe.target_logit(cos.float()).double()
    torch.testing.assert_close(psi, expected, atol=2e-5, rtol=0)
    assert (psi.diff() <= 1e-6).all(), "th-mm keeps the target logit decreasing in theta"
    assert (psi <= cos + 1e-6).all(), "the margin never helps the target"
    raw = build("arcface", margin=m, fallback="none").target_logit(cos.float()).double()
    beyond = thetas > math.pi - m
    assert (raw[beyond].diff() > 0).all(), "without the safeguard the logit rises again past pi - m"
    easy = build("arcface", margin=m, fallback="easy").target_logit(cos.float()).double()
    torch.testing.assert_close(easy[cos <= 0], cos[cos <= 0].float().double())
    # through the whole loss, with the exact angles, including theta = 0 and theta = pi: finite gradients
    x = embeddings_at_angles(safe.weight.detach()[0], thetas.float()[::40]).requires_grad_(True)
    y = torch.zeros(len(x), dtype=torch.long)
    out = safe(x, y)
    out.loss.backward()
    assert torch.isfinite(out.loss) and torch.isfinite(x.grad).all() and torch.isfinite(safe.weight.grad).all()


def test_margin_losses_are_float32_under_autocast() -> None:
    loss = build("arcface")
    x, y = batch()
    ref = loss(x, y).loss
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = loss(x.bfloat16(), y)
    assert out.loss.dtype == torch.float32
    assert out.loss.item() == pytest.approx(ref.item(), rel=2e-2)


@pytest.mark.parametrize(("m1", "m2"), [(0.5, 0.0), (0.3, -0.2), (0.0, -0.35)])
def test_combined_margin_source_notation_matches_the_source_formula(m1: float, m2: float) -> None:
    """Study 3's eq. 11, target logit s * (cos(theta_y + m1) + m2), others s * cos(theta_j), recomputed
    with arccos and the 'th-mm' safeguard off (fallback none) so the formula is taken literally."""
    loss = build("combined_margin", notation="source", m1=m1, m2=m2, scale=16.0, fallback="none")
    x, y = batch()
    cos = np_cos(x, loss.weight)
    logits = 16.0 * cos.copy()
    rows = np.arange(len(y))
    theta = np.arccos(np.clip(cos[rows, y.numpy()], -1.0, 1.0))
    logits[rows, y.numpy()] = 16.0 * (np.cos(theta + m1) + m2)
    assert loss(x, y).loss.item() == pytest.approx(np_ce(logits, y.numpy()), rel=1e-5)


def test_combined_margin_source_notation_rejects_what_is_no_margin() -> None:
    with pytest.raises(InputError, match="m2 must be <= 0"):
        build("combined_margin", notation="source", m2=0.2)
    with pytest.raises(InputError, match="no m3"):
        build("combined_margin", notation="source", m3=0.1)
    with pytest.raises(InputError, match="notation must be one of"):
        build("combined_margin", notation="paper")
