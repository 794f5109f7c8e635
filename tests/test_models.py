"""Backbone, HSPP, visual words, classifier heads and weight loading, on tiny inputs (CPU)."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from vwe.config import Config, ModelConfig
from vwe.errors import ConfigError, DataError
from vwe.losses import classifier_loss
from vwe.models.weights import check_weights
from vwe.models import (
    VARIANTS,
    FrozenBatchNorm2d,
    VisualWords,
    build_backbone,
    build_classifier,
    gap,
    hspp,
    load_backbone,
)

TINY = 64  # image side for tiny-model tests -> 4 x 4 feature maps


def tiny_classifier(variant: str, **overrides: object) -> torch.nn.Module:
    cfg = ModelConfig(variant=variant, backbone="resnet-tiny", num_words=16)
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return build_classifier(cfg, num_classes=5)


def random_labels(n: int, classes: int = 5) -> torch.Tensor:
    labels = torch.zeros(n, classes)
    labels[torch.arange(n), torch.randint(classes, (n,))] = 1.0
    return labels


# --- HSPP ---


def test_hspp_on_4x4_by_hand() -> None:
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    # GAP = 7.5; r=1: max 15; r=2: cell maxima 5, 7, 13, 15 -> 10; r=4: every pixel is a cell -> 7.5
    expected = (2 * 7.5 + 15 + 10 + 7.5) / (2 + 3)
    assert hspp(x).item() == pytest.approx(expected)
    assert hspp(x).shape == (1, 1, 1, 1)


def test_hspp_non_divisible_size_uses_floor_kernels() -> None:
    x = torch.arange(20.0).reshape(1, 1, 4, 5)
    # GAP = 9.5; r=1: kernel 4x5 -> 19; r=2: kernel 2x2, the last column is dropped: maxima 6, 8, 16, 18 -> 12;
    # r=4: kernel 1x1 -> 4x5 cells -> the plain mean 9.5
    expected = (2 * 9.5 + 19 + 12 + 9.5) / 5
    assert hspp(x).item() == pytest.approx(expected)


def test_hspp_weights_channels_independently_and_limits() -> None:
    torch.manual_seed(0)
    x = torch.randn(3, 4, 8, 8)
    per_channel = torch.cat([hspp(x[:, c : c + 1]) for c in range(4)], dim=1)
    torch.testing.assert_close(hspp(x), per_channel)
    torch.testing.assert_close(hspp(x, gamma=0.0, levels=(1,)), x.amax(dim=(2, 3), keepdim=True))  # GMP
    torch.testing.assert_close(hspp(x, gamma=2.0, levels=(8,)), gap(x))  # 1x1 cells: every term is the mean
    with pytest.raises(ValueError, match="at least"):
        hspp(torch.randn(1, 1, 3, 3), levels=(1, 2, 4))


# --- visual words ---


def two_word_case() -> tuple[VisualWords, torch.Tensor]:
    words = VisualWords(num_words=2, dim=2)
    with torch.no_grad():
        words.codebook.copy_(torch.tensor([[5.0, 0.0], [0.0, 0.5]]))  # norms differ: only directions matter
    # image 0: locations (3, 0) and (1, 2); image 1: (2, 0) and (2, 1); layout N x d x h x w with h=1, w=2
    features = torch.tensor([[[[3.0, 1.0]], [[0.0, 2.0]]], [[[2.0, 2.0]], [[0.0, 1.0]]]])
    return words, features


def test_visual_words_by_hand() -> None:
    words, features = two_word_case()
    out = words(features)
    assert out.assignments.shape == (2, 2, 1, 2)
    assert out.histogram.shape == (2, 2) and out.word_labels.shape == (2, 2)

    def soft(cos0: float, cos1: float) -> list[float]:
        e0, e1 = math.exp(cos0), math.exp(cos1)
        return [e0 / (e0 + e1), e1 / (e0 + e1)]

    p00 = soft(1.0, 0.0)  # (3, 0): cosines 1 and 0
    p01 = soft(1 / math.sqrt(5), 2 / math.sqrt(5))  # (1, 2)
    p10 = soft(1.0, 0.0)
    p11 = soft(2 / math.sqrt(5), 1 / math.sqrt(5))  # (2, 1)
    expected = torch.tensor([[p00, p01], [p10, p11]]).permute(0, 2, 1)[:, :, None, :]
    torch.testing.assert_close(out.assignments, expected)
    torch.testing.assert_close(out.histogram, expected.sum(dim=(2, 3)))
    # image 0: nearest words 0 then 1 -> both present; image 1: word 0 twice -> only word 0
    torch.testing.assert_close(out.word_labels, torch.tensor([[1.0, 1.0], [1.0, 0.0]]))


def test_histogram_is_a_spatial_sum() -> None:
    torch.manual_seed(0)
    words = VisualWords(num_words=8, dim=6)
    features = torch.randn(2, 6, 3, 3)
    single = words(features).histogram
    doubled = words(torch.cat([features, features], dim=3)).histogram  # same locations twice
    torch.testing.assert_close(doubled, 2 * single)
    torch.testing.assert_close(single.sum(dim=1), torch.full((2,), 9.0))  # each location adds a distribution


def test_visual_words_gradient_reaches_codebook_not_features() -> None:
    torch.manual_seed(0)
    words = VisualWords(num_words=4, dim=3)
    features = torch.randn(2, 3, 2, 2, requires_grad=True)
    out = words(features)
    (out.histogram * torch.randn(2, 4)).sum().backward()
    assert features.grad is None
    assert words.codebook.grad is not None and words.codebook.grad.abs().sum() > 0
    assert not out.word_labels.requires_grad


def test_codebook_init_matches_kaiming_a_sqrt5() -> None:
    torch.manual_seed(0)
    codebook = VisualWords(num_words=256, dim=2048).codebook
    assert codebook.std().item() == pytest.approx(1 / math.sqrt(3 * 2048), rel=0.02)  # 0.01276, METHOD §1.3
    assert isinstance(codebook, torch.nn.Parameter)
    assert not isinstance(VisualWords(4, 3, learnable=False).codebook, torch.nn.Parameter)


# --- memory bank (single process; the two-process case is in test_memory_bank_dist.py) ---


def test_memory_bank_first_update_samples_features_then_moves_towards_means() -> None:
    words = VisualWords(num_words=3, dim=2, learnable=False)
    first = torch.tensor([[[[1.0, 0.0]], [[0.0, 1.0]]]])  # one image, locations (1, 0) and (0, 1)
    torch.manual_seed(3)
    words.update_memory(first, momentum=0.1)
    rows = {tuple(r) for r in words.codebook.tolist()}
    assert rows <= {(1.0, 0.0), (0.0, 1.0)}
    assert bool(words.initialised)

    with torch.no_grad():
        words.codebook.copy_(torch.tensor([[1.0, 0.1], [0.1, 1.0], [-1.0, -1.0]]))
    # raw (un-normalised) features: (4, 1) and (2, 0) go to word 0, (1, 3) to word 1, nothing to word 2
    batch = torch.tensor([[[[4.0, 2.0, 1.0]], [[1.0, 0.0, 3.0]]]])
    words.update_memory(batch, momentum=0.1)
    mean0 = torch.tensor([6.0, 1.0]) / (2 + 1e-4)
    mean1 = torch.tensor([1.0, 3.0]) / (1 + 1e-4)
    expected = torch.stack(
        [
            0.1 * mean0 + 0.9 * torch.tensor([1.0, 0.1]),
            0.1 * mean1 + 0.9 * torch.tensor([0.1, 1.0]),
            0.9 * torch.tensor([-1.0, -1.0]),  # unused: shrinks by (1 - momentum)
        ]
    )
    torch.testing.assert_close(words.codebook, expected)


def test_memory_bank_state_survives_a_reload() -> None:
    torch.manual_seed(0)
    model = tiny_classifier("vwl-m")
    features = model.forward_features(torch.randn(2, 3, TINY, TINY))
    model.update_memory_bank(features)
    fresh = tiny_classifier("vwl-m")
    fresh.load_state_dict(model.state_dict())
    fresh.update_memory_bank(features)  # an EMA step, not a second initialisation
    model.update_memory_bank(features)
    torch.testing.assert_close(fresh.words.codebook, model.words.codebook)


def test_update_memory_bank_needs_the_memory_variant() -> None:
    model = tiny_classifier("vwe+hspp")
    assert not model.uses_memory_bank and tiny_classifier("vwl-m").uses_memory_bank
    with pytest.raises(RuntimeError, match="memory-bank"):
        model.update_memory_bank(torch.randn(1, 256, 4, 4))


# --- backbone ---


@pytest.mark.parametrize("name, params", [("resnet50", 23_508_032), ("resnet101", 42_500_160)])
def test_backbone_matches_torchvision_layout(name: str, params: int) -> None:
    backbone = build_backbone(name)
    # torchvision's published totals (25,557,032 / 44,549,160) minus fc (2048 * 1000 + 1000)
    assert sum(p.numel() for p in backbone.parameters()) == params
    keys = set(backbone.state_dict())
    for key in ["conv1.weight", "bn1.running_var", "layer1.0.downsample.0.weight", "layer1.0.downsample.1.bias",
                "layer4.2.bn3.running_mean", "layer3.5.conv2.weight"]:
        assert key in keys
    assert not any(key.startswith("fc.") or key.endswith("num_batches_tracked") for key in keys)
    assert backbone.layer2[0].conv2.stride == (2, 2) and backbone.layer2[0].conv1.stride == (1, 1)
    assert backbone.layer4[0].conv2.stride == (1, 1)
    assert all(m.dilation == (1, 1) for m in backbone.modules() if isinstance(m, torch.nn.Conv2d))


@pytest.mark.parametrize("size, features", [((64, 64), (4, 4)), ((375, 500), (24, 32)), ((65, 47), (5, 3))])
def test_backbone_output_stride_16(size: tuple[int, int], features: tuple[int, int]) -> None:
    backbone = build_backbone("resnet-tiny")
    out = backbone(torch.randn(1, 3, *size))
    assert out.shape == (1, backbone.out_channels, *features)


def test_frozen_bn_same_in_train_and_eval_and_matches_batchnorm_eval() -> None:
    torch.manual_seed(0)
    frozen = FrozenBatchNorm2d(4)
    reference = torch.nn.BatchNorm2d(4).eval()
    stats = {"running_mean": torch.randn(4), "running_var": torch.rand(4) + 0.5,
             "weight": torch.randn(4), "bias": torch.randn(4)}
    reference.load_state_dict({**stats, "num_batches_tracked": torch.tensor(7)})
    frozen.load_state_dict({**stats, "num_batches_tracked": torch.tensor(7)})  # torchvision checkpoints carry it
    x = torch.randn(3, 4, 5, 5)
    train_out = frozen.train()(x)
    eval_out = frozen.eval()(x)
    torch.testing.assert_close(train_out, eval_out)
    torch.testing.assert_close(eval_out, reference(x))


def test_train_step_leaves_bn_statistics_alone() -> None:
    torch.manual_seed(0)
    model = tiny_classifier("vwl-m").train()
    before = {k: v.clone() for k, v in model.state_dict().items() if "running_" in k}
    optimizer = torch.optim.SGD([p for group in model.param_groups() for p in group], lr=0.1)
    images = torch.randn(2, 3, TINY, TINY)
    loss, _ = classifier_loss(model(images), random_labels(2), ModelConfig(variant="vwl-m"))
    loss.backward()
    optimizer.step()
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert any(p.grad is not None for p in model.backbone.layer1.parameters())  # it did train below layer3


# --- classifier ---


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_classifier_shapes(variant: str) -> None:
    torch.manual_seed(0)
    model = tiny_classifier(variant)
    images = torch.randn(2, 3, TINY, TINY)
    out = model(images)
    assert out.img_logits.shape == (2, 5)
    assert out.features.shape == (2, 256, 4, 4)
    if VARIANTS[variant].codebook is None:
        assert out.w2i_logits is None and out.word_logits is None and out.word_labels is None
    else:
        assert out.w2i_logits.shape == (2, 5)
        assert out.word_logits.shape == (2, 16) and out.word_labels.shape == (2, 16)
        assert set(out.word_labels.unique().tolist()) <= {0.0, 1.0}
        assert (out.word_labels.sum(dim=1) >= 1).all()
    cams = model.cam(images)
    assert cams.shape == (2, 5, 4, 4) and (cams >= 0).all()
    assert torch.isfinite(out.img_logits).all()


def test_cam_is_the_image_classifier_per_location() -> None:
    torch.manual_seed(0)
    model = tiny_classifier("baseline")
    features = model.forward_features(torch.randn(2, 3, TINY, TINY))
    weight = model.classifier.weight[:, :, 0, 0]
    per_pixel = torch.einsum("cd,ndhw->nchw", weight, features)
    torch.testing.assert_close(model.cam_from_features(features), per_pixel.clamp(min=0))
    # with GAP pooling the image logits are the spatial mean of the un-rectified CAM
    torch.testing.assert_close(model.forward_heads(features).img_logits, per_pixel.mean(dim=(2, 3)))


def grads_after(model: torch.nn.Module, loss_fn) -> dict[str, torch.Tensor | None]:  # type: ignore[no-untyped-def]
    model.zero_grad(set_to_none=True)
    torch.manual_seed(1)
    out = model(torch.randn(2, 3, TINY, TINY))
    loss_fn(out).backward()
    return {name: p.grad for name, p in model.named_parameters()}


def has_grad(grads: dict[str, torch.Tensor | None], prefix: str) -> bool:
    selected = [g for name, g in grads.items() if name.startswith(prefix)]
    assert selected, prefix
    return any(g is not None and g.abs().sum() > 0 for g in selected)


def test_codebook_learns_only_from_the_word_to_image_loss() -> None:
    torch.manual_seed(0)
    model = tiny_classifier("vwe+hspp")
    labels = random_labels(2)
    w2i = grads_after(model, lambda out: F.multilabel_soft_margin_loss(out.w2i_logits, labels))
    assert has_grad(w2i, "words.codebook") and has_grad(w2i, "fc_a")
    assert not has_grad(w2i, "backbone.") and not has_grad(w2i, "classifier") and not has_grad(w2i, "fc_b")
    others = grads_after(
        model,
        lambda out: F.multilabel_soft_margin_loss(out.img_logits, labels)
        + F.multilabel_soft_margin_loss(out.word_logits, out.word_labels),
    )
    assert not has_grad(others, "words.codebook") and not has_grad(others, "fc_a")
    assert has_grad(others, "backbone.layer4") and has_grad(others, "fc_b") and has_grad(others, "classifier")


@pytest.mark.parametrize("variant", ["vwe+hspp", "vwl-l", "vwl-m"])
def test_which_backbone_stages_train(variant: str) -> None:
    torch.manual_seed(0)
    model = tiny_classifier(variant)
    labels = random_labels(2)
    cfg = ModelConfig(variant=variant)
    grads = grads_after(model, lambda out: classifier_loss(out, labels, cfg, model.codebook_for_loss())[0])
    assert not has_grad(grads, "backbone.conv1") and not has_grad(grads, "backbone.bn1")
    assert has_grad(grads, "backbone.layer3") and has_grad(grads, "backbone.layer4")
    trains_low = variant == "vwl-m"
    assert has_grad(grads, "backbone.layer1") == trains_low and has_grad(grads, "backbone.layer2") == trains_low
    if variant == "vwl-m":
        assert not has_grad(grads, "fc_a")  # computed, never trained (METHOD §1.5)


def test_detach_override() -> None:
    assert not any(p.requires_grad for p in tiny_classifier("vwl-m", detach_layer2=True).backbone.layer2.parameters())
    assert all(p.requires_grad for p in tiny_classifier("vwe", detach_layer2=False).backbone.layer1.parameters())


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_param_groups_cover_trainable_parameters_once(variant: str) -> None:
    model = tiny_classifier(variant)
    backbone, new = model.param_groups()
    ids = [id(p) for p in backbone + new]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in model.parameters() if p.requires_grad}
    assert {id(p) for p in backbone} <= {id(p) for p in model.backbone.parameters()}
    expected_new = {"classifier.weight"}
    if VARIANTS[variant].codebook == "learned":
        expected_new |= {"words.codebook", "fc_a.weight", "fc_b.weight"}
    elif VARIANTS[variant].codebook == "memory":
        expected_new |= {"fc_b.weight"}
    named = dict(model.named_parameters())
    assert {id(p) for p in new} == {id(named[n]) for n in expected_new}


def test_build_classifier_reads_config_and_the_loader_rejects_bad_values() -> None:
    cfg = Config()
    cfg.model.backbone = "resnet-tiny"
    cfg.data.num_classes = 7
    assert build_classifier(cfg).classifier.out_channels == 7
    assert build_classifier(cfg.model).classifier.out_channels == 20
    for key, value in [("variant", "vwe++"), ("backbone", "resnet18"), ("num_words", 0), ("hspp_levels", [])]:
        with pytest.raises(ConfigError, match=f"model.{key}"):
            Config.from_dict({"model": {"backbone": "resnet-tiny", key: value}})


# --- weights ---


def randomised_state(backbone: torch.nn.Module) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in backbone.state_dict().items()}


def test_torchvision_checkpoint_round_trip(tmp_path: Path) -> None:
    # our resnet50 uses torchvision's names, so its own keys are the torchvision checkpoint's keys minus fc / counters
    state = randomised_state(build_backbone("resnet50"))
    checkpoint = dict(state)
    checkpoint["fc.weight"] = torch.randn(1000, 2048)
    checkpoint["fc.bias"] = torch.randn(1000)
    checkpoint["bn1.num_batches_tracked"] = torch.tensor(0)
    path = tmp_path / "resnet50.pth"
    torch.save(checkpoint, path)
    target = build_backbone("resnet50")
    load_backbone(target, str(path))
    loaded = target.state_dict()
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[k], state[k]) for k in state)


def test_wrapper_prefixes_are_stripped(tmp_path: Path) -> None:
    state = randomised_state(build_backbone("resnet-tiny"))
    path = tmp_path / "wrapped.pth"
    torch.save({f"module._orig_mod.{k}": v for k, v in state.items()}, path)
    model = build_classifier(ModelConfig(backbone="resnet-tiny", pretrained=str(path)))
    assert all(torch.equal(model.backbone.state_dict()[k], state[k]) for k in state)


def test_missing_extra_and_misshaped_keys_are_named(tmp_path: Path) -> None:
    state = randomised_state(build_backbone("resnet-tiny"))
    cases = {
        "missing": ({k: v for k, v in state.items() if k != "layer2.0.conv3.weight"}, "layer2.0.conv3.weight"),
        "extra": ({**state, "layer5.0.conv1.weight": torch.zeros(1)}, "layer5.0.conv1.weight"),
        "shape": ({**state, "conv1.weight": torch.zeros(64, 3, 7, 7)}, "conv1.weight"),
    }
    for name, (checkpoint, key) in cases.items():
        path = tmp_path / f"{name}.pth"
        torch.save(checkpoint, path)
        with pytest.raises(DataError, match=key.replace(".", r"\.")) as err:
            load_backbone(build_backbone("resnet-tiny"), str(path))
        assert str(path) in str(err.value)


def _touch(path: str) -> None:
    Path(path).touch()


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return _touch, (str(self.marker),)


def test_loading_refuses_pickled_objects(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pth"
    torch.save({"conv1.weight": _Payload(marker)}, path)
    with pytest.raises(DataError, match="evil.pth"):
        load_backbone(build_backbone("resnet-tiny"), str(path))
    assert not marker.exists()


def test_missing_file_names_the_config_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="model.pretrained"):
        check_weights(str(tmp_path / "nope.pth"), key="model.pretrained")


def test_url_loads_from_the_hub_cache_and_offline_download_fails_clearly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    state = randomised_state(build_backbone("resnet-tiny"))
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(state, cache / "tiny.pth")
    target = build_backbone("resnet-tiny")
    load_backbone(target, "https://example.invalid/models/tiny.pth")  # cached: no network needed
    assert torch.equal(target.state_dict()["layer4.0.conv3.weight"], state["layer4.0.conv3.weight"])
    with pytest.raises(ConfigError, match="cannot download"):
        load_backbone(target, "http://127.0.0.1:9/models/other.pth")


@pytest.mark.parametrize("variant", ["baseline", "vwe", "hspp", "vwe+hspp", "vwl-l", "vwl-m"])
def test_the_classifier_runs_in_fp64_for_numerical_checks(variant: str) -> None:
    cfg = Config.from_dict({"model": {"backbone": "resnet-tiny", "variant": variant}})
    model = build_classifier(cfg).double()
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    output = model(x)
    if model.uses_memory_bank:
        model.update_memory_bank(output.features.detach())
        model.update_memory_bank(output.features.detach())
        assert model.words.codebook.dtype == torch.float64
    loss, _ = classifier_loss(output, torch.ones(2, 20, dtype=torch.float64), cfg.model, model.codebook_for_loss())
    loss.backward()
    assert output.img_logits.dtype == loss.dtype == model.cam(x).dtype == torch.float64
    for head in (output.w2i_logits, output.word_logits):
        assert head is None or head.dtype == torch.float64
    # fp64 and fp32 agree to fp32 rounding: the fp64 path is the same computation
    single = model.float()(x.float())
    torch.testing.assert_close(single.img_logits.double(), output.img_logits.detach(), rtol=1e-3, atol=1e-4)
