"""The ae/vae training methods on real faces: training lowers the reconstruction loss, grids, head, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fvtool.data.transforms import Normalisation
from fvtool.errors import InputError
from fvtool.training.autoencoder import METHOD_OPTIONS, AutoencoderMethod, image_grid, step_generator
from fvtool.training.config import TrainConfig
from fvtool.training.methods import Batch, MethodContext, build_method, method_specs, resolve_method

SIZE = 32


def _faces(root: Path, n_ids: int = 4, per_id: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Real LFW faces: central 120 px of the 250 px deep-funneled images, resized to SIZE; uint8 NHWC."""
    ids = sorted(p for p in root.iterdir() if p.is_dir())[:n_ids]
    pics, labels = [], []
    for label, d in enumerate(ids):
        for f in sorted(d.glob("*.jpg"))[:per_id]:
            im = Image.open(f).convert("RGB").crop((65, 65, 185, 185)).resize((SIZE, SIZE), Image.BILINEAR)
            pics.append(np.asarray(im))
            labels.append(label)
    return torch.from_numpy(np.stack(pics)), torch.tensor(labels)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def faces(embedded_data: Path) -> tuple[torch.Tensor, torch.Tensor]:
    return _faces(embedded_data)


def _ctx(loss: str = "vae", normalisation: str = "pm1", **cfg: object) -> MethodContext:
    opts = {"grid": 4, "samples": 6, **cfg.pop("method_options", {})}  # type: ignore[dict-item]
    config = TrainConfig(loss=loss, input_size=SIZE, embedding_size=16, method_options=opts,
                         backbone_options={"width": 32}, **cfg)
    return MethodContext(config, num_classes=4, normalisation=Normalisation.named(normalisation))


def _batch(u8: torch.Tensor, labels: torch.Tensor, norm: str = "pm1", step: int = 0) -> Batch:
    x = Normalisation.named(norm).apply(u8.permute(0, 3, 1, 2).float() / 255)
    return Batch(images=x, labels=labels, step=step, steps_per_epoch=4)


def test_methods_are_registered_under_their_loss_names() -> None:
    specs = method_specs()
    assert resolve_method(TrainConfig(loss="vae", recon="mse", beta=4.0, kl_warmup=2)).name == "vae"
    assert resolve_method(TrainConfig(loss="ae", recon="bce")).name == "ae"
    assert set(specs["vae"].uses) == {"recon", "beta", "kl_warmup"}
    with pytest.raises(InputError, match="--beta does not apply"):
        resolve_method(TrainConfig(loss="ae", beta=1.0))


@pytest.mark.parametrize(("loss", "recon", "reduction"), [("vae", "bce", "sum"), ("ae", "mse", "mean")])
def test_short_run_lowers_the_reconstruction_loss(faces, loss: str, recon: str, reduction: str) -> None:
    torch.manual_seed(0)
    u8, labels = faces
    method = build_method(_ctx(loss, recon=recon, loss_options={"reduction": reduction}))
    opt = torch.optim.Adam(method.parameters(), lr=2e-3)
    batch = _batch(u8, labels)

    def recon_error() -> float:  # deterministic: eval mode decodes mu
        method.eval()
        with torch.no_grad():
            out = method.model(batch.images)
            return float((torch.sigmoid(out.logits) - method.to_pixels(batch.images)).square().mean())

    def bce_floor() -> float:  # BCE of the targets with themselves: their binary entropy, the minimum
        t = method.to_pixels(batch.images).double().clamp(1e-12, 1 - 1e-12)
        return float(-(t * t.log() + (1 - t) * (1 - t).log()).flatten(1).sum(1).mean())

    floor = bce_floor() if recon == "bce" else 0.0
    before = recon_error()
    history = []
    for step in range(40):
        method.train()
        batch.step = step
        out = method.training_step(batch)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        history.append(out.components["recon"])
    after = recon_error()
    assert np.mean(history[-5:]) - floor < 0.7 * (np.mean(history[:5]) - floor), (floor, history)
    assert after < 0.7 * before, (before, after)
    assert ("kl" in out.components) == (loss == "vae")


def test_bce_range_check_fires_when_the_normalisation_is_misdeclared(faces) -> None:
    u8, labels = faces
    method = build_method(_ctx("vae", normalisation="unit", recon="bce"))  # told [0, 1] ...
    with pytest.raises(InputError, match=r"BCE reconstruction needs targets in \[0, 1\]"):
        method.training_step(_batch(u8, labels, norm="pm1"))  # ... but fed [-1, 1]
    # with the right declaration the same pm1 batch is de-normalised to valid targets
    out = build_method(_ctx("vae", recon="bce")).training_step(_batch(u8, labels, norm="pm1"))
    assert np.isfinite(float(out.loss.detach()))


def test_targets_are_the_pixels_whatever_the_normalisation(faces) -> None:
    u8, labels = faces
    pixels = u8.permute(0, 3, 1, 2).float() / 255
    for norm in ("pm1", "unit", "imagenet"):
        method = build_method(_ctx("ae", normalisation=norm))
        assert torch.allclose(method.to_pixels(_batch(u8, labels, norm=norm).images), pixels, atol=1e-5)


def test_embedder_is_mu_and_deterministic_in_eval_mode(faces) -> None:
    u8, labels = faces
    method = build_method(_ctx("vae"))
    batch = _batch(u8, labels)
    method.train()
    method.training_step(batch)
    emb = method.embedder.eval()
    a, b = emb(batch.images), emb(batch.images)
    assert a.shape == (16, 16) and torch.equal(a, b)
    assert torch.equal(a, method.model.encoder.encode(batch.images)[0])


def test_sampling_noise_is_a_function_of_seed_and_step(faces) -> None:
    u8, labels = faces
    torch.manual_seed(1)
    m1 = build_method(_ctx("vae"))
    torch.manual_seed(1)
    m2 = build_method(_ctx("vae"))
    b = _batch(u8, labels, step=5)
    assert torch.equal(m1.training_step(b).loss, m2.training_step(b).loss)
    draw = [torch.randn(3, generator=step_generator(0, s)) for s in (5, 6, 5)]
    assert not torch.equal(draw[0], draw[1]) and torch.equal(draw[0], draw[2])


def test_epoch_end_writes_recon_and_sample_grids(faces, tmp_path: Path) -> None:
    u8, labels = faces
    method = build_method(_ctx("vae"))
    method.training_step(_batch(u8, labels))
    method.on_epoch_end(2, tmp_path)
    recon = np.asarray(Image.open(tmp_path / "images" / "recon_epoch003.png"))
    samples = np.asarray(Image.open(tmp_path / "images" / "samples_epoch003.png"))
    pad = 2
    assert recon.shape == (pad + 2 * (SIZE + pad), pad + 4 * (SIZE + pad), 3)
    assert samples.shape == (pad + 2 * (SIZE + pad), pad + 3 * (SIZE + pad), 3)
    # top row = the first 4 training images, exactly (pixels survive the de-normalisation round trip)
    for j in range(4):
        tile = recon[pad:pad + SIZE, pad + j * (SIZE + pad):pad + j * (SIZE + pad) + SIZE]
        assert np.abs(tile.astype(int) - u8[j].numpy().astype(int)).max() <= 1
    # same prior samples every time (fixed z), no temporaries left behind
    method.on_epoch_end(3, tmp_path)
    again = np.asarray(Image.open(tmp_path / "images" / "samples_epoch004.png"))
    assert np.array_equal(samples, again)
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == [
        "recon_epoch003.png", "recon_epoch004.png", "samples_epoch003.png", "samples_epoch004.png"]
    # the AE has no prior: no samples
    ae = build_method(_ctx("ae"))
    ae.training_step(_batch(u8, labels))
    ae.on_epoch_end(0, tmp_path / "ae")
    assert [p.name for p in (tmp_path / "ae" / "images").iterdir()] == ["recon_epoch001.png"]


def test_grid_images_survive_a_checkpoint_round_trip(faces) -> None:
    u8, labels = faces
    m1 = build_method(_ctx("vae"))
    m1.training_step(_batch(u8, labels))
    m2 = build_method(_ctx("vae"))
    m2.load_state_dict(m1.state_dict())
    assert int(m2.grid_count) == 4 and torch.equal(m2.grid_images, m1.grid_images)
    assert np.array_equal(m1.epoch_images()["recon"], m2.epoch_images()["recon"])


def test_supervised_head_on_mu(faces) -> None:
    u8, labels = faces
    torch.manual_seed(0)
    method = build_method(_ctx("vae", method_options={"head": "arcface", "head_weight": 10.0},
                               margin=0.3, scale=16.0, loss_options={"reduction": "sum"}))
    assert isinstance(method, AutoencoderMethod) and method.head is not None
    assert (method.head.m2, method.head.scale, tuple(method.head.weight.shape)) == (0.3, 16.0, (4, 16))
    out = method.training_step(_batch(u8, labels))
    assert out.logits is not None and out.logits.shape == (16, 4)
    total = float(out.loss.detach())
    assert total == pytest.approx(out.components["loss"], rel=1e-5)
    assert total == pytest.approx(out.components["recon"] + out.components["kl_weight"] * out.components["kl"]
                                            + 10.0 * out.components["head"], rel=1e-4)
    out.loss.backward()
    assert method.model.encoder.fc_mu.weight.grad is not None
    assert any(p.grad is not None for p in method.head.parameters())
    names = {id(p) for g in method.param_groups(5e-4) for p in g["params"]}
    assert names == {id(p) for p in method.parameters()}


@pytest.mark.parametrize(("kw", "match"), [
    ({"method_options": {"colour": 1}}, "unknown method option"),
    ({"method_options": {"head": "vae"}}, "classification loss"),
    ({"backbone": "iresnet50"}, "does not apply"),
    ({"margin": 0.5}, "applies to a margin loss"),
    ({"input_size": 100}, "not supported"),
    ({"backbone_options": {"dropout": 0.1}}, "takes width"),
])
def test_bad_options_are_refused(kw: dict, match: str) -> None:
    cfg = {"loss": "vae", "input_size": SIZE, "embedding_size": 16, **kw}
    cfg["backbone_options"] = {"width": 32, **cfg.get("backbone_options", {})}
    ctx = MethodContext(TrainConfig(**cfg), num_classes=4, normalisation=Normalisation.named("pm1"))
    with pytest.raises(InputError, match=match):
        build_method(ctx)


def test_image_grid_layout() -> None:
    a = torch.zeros(3, 3, 4, 5)
    b = torch.ones(2, 1, 4, 5)
    g = image_grid([a, b], pad=1)
    assert g.shape == (1 + 2 * 5, 1 + 3 * 6, 3)
    assert (g[1:5, 1:6] == 0).all() and (g[6:10, 1:6] == 255).all()
    assert (g[0] == 255).all() and (g[6:10, 13:18] == 255).all()  # padding and the missing tile are white
    assert set(METHOD_OPTIONS) == {"head", "head_weight", "head_options", "grid", "samples"}


def test_engine_runs_the_vae_resumably_and_embed_gets_mu(embedded_data: Path, tmp_path: Path) -> None:
    """Through the real engine: components per epoch, images in the run folder, exact resume, mu as embedder."""
    import json

    from fvtool.training.checkpoint import load_trained_method
    from fvtool.training.engine import train

    cfg = dict(data=str(embedded_data), loss="vae", recon="bce", beta=1.0, kl_warmup=1, input_size=SIZE,
               crop=0.5, embedding_size=8, epochs=2, batch_size=64, cap=1, backbone_options={"width": 16},
               method_options={"grid": 3, "samples": 4}, threads=1)  # the default optimiser: SGD, lr 0.1
    cache = tmp_path / "cache"
    full = train(TrainConfig(**cfg), tmp_path / "full", show_progress=False, cache_dir=cache)
    assert full.stopped == "completed" and full.steps == 4  # 158 identities x 1 image / 64 = 2 batches per epoch
    records = [json.loads(line) for line in (tmp_path / "full" / "history.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    assert set(records[0]["components"]) == {"recon", "mse_pixel", "kl", "kl_weight", "loss"}
    assert records[0]["components"]["kl_weight"] == pytest.approx((0 + 0.5) / 2)  # warm-up over 1 epoch = 2 steps
    assert records[1]["components"]["kl_weight"] == 1.0
    assert sorted(p.name for p in (tmp_path / "full" / "images").iterdir()) == [
        "recon_epoch001.png", "recon_epoch002.png", "samples_epoch001.png", "samples_epoch002.png"]

    part = train(TrainConfig(**cfg), tmp_path / "part", show_progress=False, cache_dir=cache, stop_after_steps=3)
    assert part.stopped == "step limit"
    train(TrainConfig(**cfg), tmp_path / "part", resume=True, show_progress=False, cache_dir=cache)
    losses = [[json.loads(x)["components"] for x in (tmp_path / run / "history.jsonl").read_text().splitlines()]
              for run in ("full", "part")]
    assert losses[0] == losses[1]  # bit-exact: the sampling noise is a function of (seed, step)
    for name in ("recon_epoch002.png", "samples_epoch002.png"):
        assert (tmp_path / "full" / "images" / name).read_bytes() == (tmp_path / "part" / "images" / name).read_bytes()

    method, config, _, _ = load_trained_method(tmp_path / "full", prefer="last")
    assert config.loss == "vae" and config.backbone == "conv-encoder" and isinstance(method, AutoencoderMethod)
    run_config = json.loads((tmp_path / "full" / "config.json").read_text())["config"]
    assert run_config["backbone"] == "conv-encoder" and run_config["backbone_options"] == {"width": 16}
    x = torch.rand(2, 3, SIZE, SIZE)
    emb = method.embedder.eval()
    assert torch.equal(emb(x), method.model.encoder.encode(x)[0]) and emb(x).shape == (2, 8)
