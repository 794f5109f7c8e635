"""DeepLab v2 (METHOD §5): output stride 8, summed ASPP, MSC, frozen BN, parameter groups, loss, weight loading,
and the training dataset's augmentation."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from vwe.config import Config, SegConfig, load_config
from vwe.data.datasets import SegmentationDataset, deeplab_input
from vwe.data.synth import generate
from vwe.data.voc import write_mask
from vwe.errors import ConfigError, DataError
from vwe.models.classifier import build_classifier
from vwe.models.deeplab import ASPP, MultiScaleDeepLab, build_deeplab, coco_to_backbone_names, max_fusion
from vwe.models.resnet import FrozenBatchNorm2d, build_backbone
from vwe.stages.train_seg import build_optimizer, msc_loss, resize_labels
from vwe.training import set_lr



pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_deeplab(**overrides) -> torch.nn.Module:
    torch.manual_seed(0)
    seg = SegConfig(backbone="resnet-tiny", **overrides)
    return build_deeplab(seg, num_classes=21)


def randomised(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    return {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in state.items()}


# --- network ---


@pytest.mark.parametrize("style, size, features", [
    ("torchvision", (65, 65), (9, 9)), ("torchvision", (48, 64), (6, 8)), ("torchvision", (321, 321), (41, 41)),
    ("caffe", (65, 65), (9, 9)), ("caffe", (48, 64), (7, 9)), ("caffe", (321, 321), (41, 41)),  # ceil-mode pool
])
def test_backbone_output_stride_8(style: str, size: tuple[int, int], features: tuple[int, int]) -> None:
    backbone = build_backbone("resnet-tiny", detach_layer2=False, output_stride=8, style=style)
    assert backbone(torch.zeros(1, 3, *size)).shape == (1, backbone.out_channels, *features)


def test_output_stride_8_dilates_layer3_and_layer4_in_every_block() -> None:
    backbone = build_backbone("resnet101", detach_layer2=False, output_stride=8)
    for layer, dilation in [(backbone.layer1, 1), (backbone.layer2, 1), (backbone.layer3, 2), (backbone.layer4, 4)]:
        for block in layer:
            assert block.conv2.dilation == (dilation, dilation) and block.conv2.padding == (dilation, dilation)
    assert backbone.layer2[0].conv2.stride == (2, 2)
    assert all(block.conv2.stride == (1, 1) and block.conv1.stride == (1, 1)
               for layer in (backbone.layer3, backbone.layer4) for block in layer)
    assert len(backbone.layer3) == 23
    # the same parameters as the stride-16 network, so ImageNet checkpoints load unchanged
    assert sum(p.numel() for p in backbone.parameters()) == 42_500_160


def test_caffe_style_strides_the_first_1x1_and_ceils_the_pool() -> None:
    backbone = build_backbone("resnet-tiny", output_stride=8, style="caffe")
    assert backbone.layer2[0].conv1.stride == (2, 2) and backbone.layer2[0].conv2.stride == (1, 1)
    assert backbone.layer2[0].downsample[0].stride == (2, 2)
    assert backbone.maxpool.ceil_mode
    assert not build_backbone("resnet-tiny", output_stride=8).maxpool.ceil_mode
    with pytest.raises(ValueError, match="output_stride"):
        build_backbone("resnet-tiny", output_stride=4)


def test_aspp_sums_four_dilated_branches_initialised_as_deeplab() -> None:
    torch.manual_seed(0)
    aspp = ASPP(256, 21, (6, 12, 18, 24))
    assert [b.dilation for b in aspp.branches] == [(r, r) for r in (6, 12, 18, 24)]
    assert [b.padding for b in aspp.branches] == [(r, r) for r in (6, 12, 18, 24)]
    weights = torch.cat([b.weight.flatten() for b in aspp.branches])
    assert abs(weights.std().item() - 0.01) < 0.0005 and abs(weights.mean().item()) < 0.0005
    assert all(torch.equal(b.bias, torch.zeros(21)) for b in aspp.branches)
    for branch in aspp.branches:
        torch.nn.init.normal_(branch.bias)
    x = torch.randn(2, 256, 9, 11)
    expected = sum(F.conv2d(x, b.weight, b.bias, padding=b.padding, dilation=b.dilation) for b in aspp.branches)
    torch.testing.assert_close(aspp(x), expected)
    assert aspp(x).shape == (2, 21, 9, 11)


def test_msc_returns_each_scale_and_their_max() -> None:
    model = MultiScaleDeepLab(tiny_deeplab(), (0.5, 0.75)).eval()
    x = torch.randn(2, 3, 65, 65)
    outputs = model(x)
    assert [tuple(o.shape[-2:]) for o in outputs] == [(9, 9), (4, 4), (6, 6), (9, 9)]
    half = model.base(F.interpolate(x, scale_factor=0.5, mode="bilinear", align_corners=False))
    torch.testing.assert_close(outputs[1], half)
    upsampled = [F.interpolate(o, size=(9, 9), mode="bilinear", align_corners=False) for o in outputs[1:3]]
    torch.testing.assert_close(outputs[3], torch.maximum(outputs[0], torch.maximum(*upsampled)))
    torch.testing.assert_close(max_fusion(outputs[:3]), outputs[3])
    single = MultiScaleDeepLab(model.base, ())(x)  # no extra scales: the plain logits, counted once by the loss
    assert len(single) == 1
    torch.testing.assert_close(single[0], outputs[0])


def test_param_groups_lr_multipliers_and_weight_decay() -> None:
    model = tiny_deeplab()
    optimizer = build_optimizer(model, SegConfig(backbone="resnet-tiny"))
    groups = optimizer.param_groups
    assert [g["lr_mult"] for g in groups] == [1.0, 10.0, 20.0]
    assert [g["weight_decay"] for g in groups] == [5e-4, 5e-4, 0.0]
    assert [g["lr"] for g in groups] == pytest.approx([2.5e-4, 2.5e-3, 5e-3])
    assert all(g["momentum"] == 0.9 for g in groups)
    assert {id(p) for p in groups[1]["params"]} == {id(b.weight) for b in model.aspp.branches}
    assert {id(p) for p in groups[2]["params"]} == {id(b.bias) for b in model.aspp.branches}
    grouped = [id(p) for g in groups for p in g["params"]]
    trainable = [id(p) for p in model.parameters() if p.requires_grad]
    assert len(grouped) == len(set(grouped)) and set(grouped) == set(trainable)
    assert id(model.backbone.conv1.weight) in {id(p) for p in groups[0]["params"]}  # the stem trains here
    bn_params = [p for m in model.modules() if isinstance(m, FrozenBatchNorm2d) for p in m.parameters()]
    assert bn_params and not any(p.requires_grad for p in bn_params)
    set_lr(optimizer, 2.5e-4, 0.5)
    assert [g["lr"] for g in groups] == pytest.approx([1.25e-4, 1.25e-3, 2.5e-3])


def test_bn_stays_frozen_through_a_training_step() -> None:
    model = tiny_deeplab()
    bn_state = {k: v.clone() for k, v in model.state_dict().items() if ".bn" in k or "downsample.1" in k}
    assert any(k.endswith("running_mean") for k in bn_state) and any(k.endswith("weight") for k in bn_state)
    x = torch.randn(2, 3, 48, 48)
    model.train()
    train_out = model(x)
    torch.testing.assert_close(train_out, model.eval()(x))
    optimizer = build_optimizer(model, SegConfig(backbone="resnet-tiny", lr=0.1))
    loss, _ = msc_loss(MultiScaleDeepLab(model).train()(x), torch.randint(0, 21, (2, 48, 48)))
    loss.backward()
    optimizer.step()
    after = model.state_dict()
    assert all(torch.equal(bn_state[k], after[k]) for k in bn_state)
    assert not torch.equal(model(x), train_out)  # the convs did move


# --- loss ---


def test_msc_loss_sums_cross_entropy_over_outputs_with_resized_labels() -> None:
    labels = torch.randint(0, 5, (2, 16, 16))
    labels[0, :4] = 255
    outputs = [torch.randn(2, 5, 16, 16), torch.randn(2, 5, 8, 8), torch.randn(2, 5, 12, 12), torch.zeros(2, 5, 16, 16)]
    loss, terms = msc_loss(outputs, labels)
    expected = [F.cross_entropy(o, resize_labels(labels, o.shape[-2:]), ignore_index=255) for o in outputs]
    torch.testing.assert_close(loss, sum(expected))
    assert set(terms) == {"loss_0", "loss_1", "loss_2", "loss_max"}
    torch.testing.assert_close(terms["loss_max"], torch.tensor(math.log(5)))
    ignored, _ = msc_loss(outputs, torch.full((2, 16, 16), 255))
    assert ignored.item() == 0.0  # a crop of ignored pixels only adds nothing (not NaN)


def test_label_resizing_matches_pil_nearest() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 21, (2, 41, 53)).astype(np.uint8)
    for size in [(21, 27), (31, 40), (41, 53), (60, 70)]:
        expected = np.stack([np.asarray(Image.fromarray(x).resize(size[::-1], Image.Resampling.NEAREST))
                             for x in labels])
        np.testing.assert_array_equal(resize_labels(torch.from_numpy(labels).long(), size).numpy(), expected)


# --- weights ---


def dlp_names(state: dict[str, torch.Tensor], blocks: tuple[int, ...]) -> dict[str, torch.Tensor]:
    """Our backbone state dict under deeplab-pytorch's names, written out by hand (the mapping under test runs the
    other way)."""
    units = {"conv1": "reduce.conv", "bn1": "reduce.bn", "conv2": "conv3x3.conv", "bn2": "conv3x3.bn",
             "conv3": "increase.conv", "bn3": "increase.bn", "downsample.0": "shortcut.conv",
             "downsample.1": "shortcut.bn"}
    out = {}
    for key, value in state.items():
        if key.startswith(("conv1.", "bn1.")):
            part, param = key.split(".")
            out[f"base.layer1.conv1.{'conv' if part == 'conv1' else 'bn'}.{param}"] = value
            continue
        layer, index, rest = key.split(".", 2)
        unit, param = rest.rsplit(".", 1)
        assert int(index) < blocks[int(layer[-1]) - 1]
        out[f"base.layer{int(layer[-1]) + 1}.block{int(index) + 1}.{units[unit]}.{param}"] = value
    return out


def test_coco_checkpoint_names_map_onto_the_caffe_backbone(tmp_path: Path) -> None:
    source = randomised(build_backbone("resnet-tiny", output_stride=8, style="caffe").state_dict())
    checkpoint = dlp_names(source, (1, 1, 1, 1))
    assert "base.layer5.block1.shortcut.bn.running_var" in checkpoint and "base.layer1.conv1.conv.weight" in checkpoint
    checkpoint["base.layer1.conv1.bn.num_batches_tracked"] = torch.tensor(3)
    checkpoint["base.aspp.c0.weight"] = torch.randn(91, 256, 3, 3)  # COCO's classes: never loaded
    checkpoint["base.aspp.c0.bias"] = torch.randn(91)
    path = tmp_path / "deeplabv1_resnet101-coco.pth"
    torch.save(checkpoint, path)
    model = build_deeplab(SegConfig(backbone="resnet-tiny", init="coco", pretrained=str(path)), num_classes=21)
    loaded = model.backbone.state_dict()
    assert loaded.keys() == source.keys()
    assert all(torch.equal(loaded[k], source[k]) for k in source)
    assert model.backbone.layer2[0].conv1.stride == (2, 2)
    assert list(coco_to_backbone_names({"layer3.block2.conv3x3.bn.bias": torch.ones(1)})) == ["layer2.1.bn2.bias"]

    checkpoint["base.layer6.block1.reduce.conv.weight"] = torch.zeros(1)
    torch.save(checkpoint, path)
    with pytest.raises(DataError, match=r"layer6\.block1\.reduce\.conv\.weight"):
        build_deeplab(SegConfig(backbone="resnet-tiny", init="coco", pretrained=str(path)), num_classes=21)


def test_imagenet_checkpoint_loads_into_the_backbone(tmp_path: Path) -> None:
    source = randomised(build_backbone("resnet-tiny").state_dict())
    path = tmp_path / "resnet.pth"
    torch.save({**source, "fc.weight": torch.zeros(1000, 256), "fc.bias": torch.zeros(1000)}, path)
    model = build_deeplab(SegConfig(backbone="resnet-tiny", pretrained=str(path)), num_classes=21)
    assert all(torch.equal(model.backbone.state_dict()[k], source[k]) for k in source)
    with pytest.raises(ConfigError, match="none.pth"):
        build_deeplab(SegConfig(backbone="resnet-tiny", pretrained=str(tmp_path / "none.pth")))


def test_classifier_export_initialises_the_backbone(tmp_path: Path) -> None:
    classifier = build_classifier(load_config(None, ["model.backbone=resnet-tiny"]), load_pretrained=False)
    classifier.backbone.load_state_dict(randomised(classifier.backbone.state_dict()))
    path = tmp_path / "classifier" / "model.pth"
    path.parent.mkdir()
    torch.save(classifier.state_dict(), path)
    cfg = load_config(None, [f"out_dir={tmp_path}", "seg.backbone=resnet-tiny", "seg.init=classifier",
                             "seg.pretrained={out_dir}/classifier/model.pth"]).resolved()
    model = build_deeplab(cfg.seg, num_classes=21)
    source = classifier.backbone.state_dict()
    assert model.backbone.state_dict().keys() == source.keys()
    assert all(torch.equal(model.backbone.state_dict()[k], source[k]) for k in source)
    assert model.backbone.layer4[0].conv2.dilation == (4, 4)  # the classifier's weights at DeepLab's stride 8


def test_adamw_keeps_the_lr_multipliers() -> None:
    optimizer = build_optimizer(tiny_deeplab(), SegConfig(backbone="resnet-tiny", optimizer="adamw", lr=1e-3))
    assert isinstance(optimizer, torch.optim.AdamW)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([1e-3, 1e-2, 2e-2])
    with pytest.raises(ConfigError, match="seg.optimizer"):
        Config.from_dict({"seg": {"backbone": "resnet-tiny", "optimizer": "adam"}})


@pytest.mark.parametrize("key, value", [("init", "voc"), ("backbone", "resnet18"), ("test_scales", [0.5, 1.0]),
                                        ("aspp_rates", [])])
def test_bad_seg_config_names_the_key(key: str, value: object) -> None:
    with pytest.raises(ConfigError, match=f"seg.{key}"):
        Config.from_dict({"seg": {"backbone": "resnet-tiny", key: value}})


def test_resolved_config_makes_seg_paths_absolute(tmp_path: Path) -> None:
    cfg = load_config(None, [f"out_dir={tmp_path}", "seg.labels_dir={out_dir}/labels", "seg.pretrained=w/r101.pth"])
    resolved = cfg.resolved().seg
    assert resolved.labels_dir == str(tmp_path / "labels")
    assert resolved.pretrained == str(Path.cwd() / "w" / "r101.pth")  # Ray workers run in other directories
    url = "https://download.pytorch.org/models/resnet101-5d3b4d8f.pth"
    assert cfg.with_overrides({"seg.pretrained": url}).resolved().seg.pretrained == url


# --- training data ---


def test_caffe_input_is_bgr_minus_the_mean_and_imagenet_input_uses_mean_std() -> None:
    image = np.array([[[10, 20, 30]]], np.uint8)
    np.testing.assert_allclose(deeplab_input(image, caffe=True)[0, 0], [30 - 104.008, 20 - 116.669, 10 - 122.675],
                               rtol=1e-6)
    expected = (np.array([10, 20, 30]) / 255 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
    np.testing.assert_allclose(deeplab_input(image)[0, 0], expected, rtol=1e-5)


@pytest.fixture(scope="module")
def small_voc(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("voc") / "VOC2012"
    generate(root, {"train_aug": 6, "train": 2, "val": 2, "test": 1}, 48, 64, num_classes=4, seed=1)
    labels = root.parent / "labels"
    for path in (root / "SegmentationClassAug").glob("*.png"):
        (labels / path.name).parent.mkdir(exist_ok=True)
        (labels / path.name).write_bytes(path.read_bytes())
    return root, labels


def test_dataset_items_are_seeded_per_epoch_and_index(small_voc: tuple[Path, Path]) -> None:
    root, labels = small_voc
    dataset = SegmentationDataset(root, "train_aug", labels, crop_size=40, seed=3)
    item = dataset[2]
    assert item["image"].shape == (3, 40, 40) and item["image"].dtype == torch.float32
    assert item["label"].shape == (40, 40) and item["label"].dtype == torch.int64
    assert torch.equal(dataset[2]["image"], item["image"]) and torch.equal(dataset[2]["label"], item["label"])
    dataset.set_epoch(1)
    assert not all(torch.equal(dataset[i]["image"], SegmentationDataset(root, "train_aug", labels, crop_size=40,
                                                                        seed=3)[i]["image"]) for i in range(6))


def test_scale_is_one_of_the_discrete_factors_and_padding_is_ignored(small_voc: tuple[Path, Path]) -> None:
    root, labels = small_voc
    dataset = SegmentationDataset(root, "train_aug", labels, crop_size=100, flip=False, seed=0)
    seen = set()
    for epoch in range(8):
        dataset.set_epoch(epoch)
        for i in range(len(dataset)):
            item = dataset[i]
            valid_rows = int((item["label"] != 255).any(dim=1).sum())
            valid_cols = int((item["label"] != 255).any(dim=0).sum())
            seen.add((valid_rows, valid_cols))
            # bottom/right padding: image 0 (the mean after normalisation), label 255
            assert (item["label"][valid_rows:] == 255).all() and (item["image"][:, valid_rows:] == 0).all()
            assert (item["label"][:, valid_cols:] == 255).all() and (item["image"][:, :, valid_cols:] == 0).all()
    expected = {(int(48 * s), int(64 * s)) for s in (0.5, 0.75, 1.0, 1.25, 1.5)}
    assert seen <= expected and len(seen) >= 4


def test_augmentation_keeps_image_and_label_aligned(small_voc: tuple[Path, Path]) -> None:
    root, labels = small_voc
    dataset = SegmentationDataset(root, "train_aug", labels, crop_size=30, seed=0)
    label = np.zeros((48, 64), np.uint8)
    label[:, 20:44] = 1
    label[10:30, 44:] = 2
    image = np.repeat(label[..., None].astype(np.float32) * 50, 3, axis=2)  # the label, written into the pixels
    flips = 0
    for seed in range(20):
        out_image, out_label = dataset.augment(image, label, np.random.default_rng(seed))
        valid = out_label != 255
        agree = np.round(out_image[0] / 50)[valid] == out_label[valid]
        assert agree.mean() > 0.9  # bilinear image vs nearest label differ only along edges
        flips += bool((out_label[:, 0] == 1).any() or (out_label[:, -1] == 0).all())
    assert flips > 0


def test_missing_or_misfit_labels_are_named(small_voc: tuple[Path, Path], tmp_path: Path) -> None:
    root, labels = small_voc
    with pytest.raises(DataError, match="no label file") as err:
        SegmentationDataset(root, "train_aug", tmp_path)
    assert str(tmp_path) in str(err.value)
    partial = tmp_path / "labels"
    partial.mkdir()
    for path in labels.glob("*.png"):
        (partial / path.name).write_bytes(path.read_bytes())
    dataset = SegmentationDataset(root, "train_aug", partial)
    write_mask(partial / f"{dataset.ids[1]}.png", np.zeros((10, 10), np.uint8))
    with pytest.raises(DataError, match="differs from the image size") as err:
        dataset[1]
    assert dataset.ids[1] in str(err.value)


def _one_step(accumulation: int, images: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """The weights after one train_step (SGD, no momentum or weight decay) of a fixed MSC DeepLab."""
    from vwe.stages.train_seg import train_step

    cfg = load_config(None, ["seg.backbone=resnet-tiny", "seg.momentum=0", "seg.weight_decay=0",
                             f"seg.accumulation={accumulation}", "seg.batch_size=4", "seg.train_msc_scales=[0.5]"])
    model = MultiScaleDeepLab(tiny_deeplab(), cfg.seg.train_msc_scales)
    optimizer = build_optimizer(model.base, cfg.seg)
    terms = train_step(model, {"image": images, "label": labels}, optimizer, cfg)
    assert set(terms) == {"loss_0", "loss_1", "loss_max", "loss"}
    return {k: v.clone() for k, v in model.base.state_dict().items()}


def test_accumulation_2_equals_one_batch_without_ignored_pixels_and_weights_the_halves_like_the_authors():
    generator = torch.Generator().manual_seed(3)
    images = torch.randn(4, 3, 32, 32, generator=generator)
    labels = torch.randint(0, 21, (4, 32, 32), generator=generator)
    whole, halves = _one_step(1, images, labels), _one_step(2, images, labels)
    assert all(torch.allclose(whole[k], halves[k], atol=1e-6) for k in whole)

    # the second half ignores 90 % of its pixels: the authors' step averages each half over its own valid pixels,
    # so that half's few pixels weigh as much as the first half's many; one pass weighs every pixel alike
    masked = labels.clone()
    masked[2:, :, 3:] = 255
    whole, halves = _one_step(1, images, masked), _one_step(2, images, masked)
    assert any(not torch.allclose(whole[k], halves[k], atol=1e-6) for k in whole)
    first, second = _one_step(1, images[:2], masked[:2]), _one_step(1, images[2:], masked[2:])
    start = {k: v.clone() for k, v in tiny_deeplab().state_dict().items()}
    for k in halves:  # one SGD step is linear in the gradient: the mean of the halves' steps
        expected = start[k] + ((first[k] - start[k]) + (second[k] - start[k])) / 2
        torch.testing.assert_close(halves[k], expected, atol=1e-6, rtol=1e-5)


def test_the_poly_lr_is_held_for_lr_every_steps():
    from vwe.training import poly_lr_factor

    assert [poly_lr_factor(t, 100, 1.0, 10) for t in (0, 9, 10, 19, 95)] == pytest.approx([1.0, 1.0, 0.9, 0.9, 0.1])
    assert poly_lr_factor(15, 100, 0.9) == pytest.approx(0.85 ** 0.9)  # every step by default (the classifier)
