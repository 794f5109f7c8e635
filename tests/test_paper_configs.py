"""The packaged paper configs compute what the authors computed: each one's values against a table written from
METHOD.md (§1.6 optimisation, §1.7 v1 vs VWL, §2 CAMs, §3 pseudo labels, §5 DeepLab, P1 momentum, P4 checkpoints),
and each `-fast` variant differs from its exact config only in the speed settings."""
from __future__ import annotations

import dataclasses

import pytest

from vwe.config import load_config

# METHOD §1.6, §2, §3, §5: what v1 and VWL share
SHARED = {
    "data.train_split": "train_aug", "data.cam_split": "train", "data.eval_split": "val", "data.labels_from": "xml",
    "model.num_words": 256, "model.hspp_gamma": 2.0, "model.hspp_levels": [1, 2, 4], "model.detach_layer2": None,
    "train.batch_size": 16, "train.epochs": 6, "train.lr": 0.01, "train.new_layer_lr_mult": 10.0,
    "train.optimizer": "sgd", "train.momentum": 1e-4, "train.weight_decay": 1e-4, "train.poly_power": 0.9,
    "train.crop_size": 512, "train.resize_long": [320, 640], "train.flip": True,
    "cam.scales": [1.0, 0.5, 1.5, 2.0],
    "pseudo.method": "irnet", "pseudo.fg_background_score": 0.30, "pseudo.bg_background_score": 0.05,
    "pseudo.crf.enabled": True, "pseudo.crf.iterations": 10, "pseudo.crf.gt_prob": 0.7,
    "pseudo.crf.gaussian_sxy": 3.0, "pseudo.crf.gaussian_compat": 3.0, "pseudo.crf.bilateral_sxy": 50.0,
    "pseudo.crf.bilateral_srgb": 5.0, "pseudo.crf.bilateral_compat": 10.0,
    # METHOD §3: IRNet's boundary network (ResNet-50, ImageNet) and its random walk
    "irn.backbone": "resnet50", "irn.init": "imagenet",
    "irn.pretrained": "https://download.pytorch.org/models/resnet50-19c8e357.pth", "irn.batch_size": 32,
    "irn.epochs": 3, "irn.lr": 0.1, "irn.optimizer": "sgd", "irn.momentum": 1e-4, "irn.weight_decay": 1e-4,
    "irn.poly_power": 0.9, "irn.crop_size": 512, "irn.scale_range": [0.5, 1.5], "irn.flip": True,
    "irn.train_radius": 10, "irn.radius": 5, "irn.beta": 10.0, "irn.exp_times": 8, "irn.background_score": 0.25,
    "seg.backbone": "resnet101", "seg.init": "coco", "seg.batch_size": 10, "seg.accumulation": 2,
    "seg.iterations": 20000, "seg.lr": 2.5e-4, "seg.lr_every": 10, "seg.optimizer": "sgd", "seg.momentum": 0.9,
    "seg.weight_decay": 5e-4, "seg.poly_power": 0.9, "seg.aspp_weight_lr_mult": 10.0, "seg.aspp_bias_lr_mult": 20.0,
    "seg.crop_size": 321, "seg.scales": [0.5, 0.75, 1.0, 1.25, 1.5], "seg.flip": True,
    "seg.train_msc_scales": [0.5, 0.75], "seg.aspp_rates": [6, 12, 18, 24], "seg.test_scales": [1.0, 0.5, 0.75],
    "seg.crf.enabled": True, "seg.crf.iterations": 10, "seg.crf.gaussian_sxy": 1.0, "seg.crf.gaussian_compat": 3.0,
    "seg.crf.bilateral_sxy": 67.0, "seg.crf.bilateral_srgb": 3.0, "seg.crf.bilateral_compat": 4.0,
    # fp32 everywhere, as the authors ran
    "train.amp": False, "train.channels_last": False, "train.compile": False, "cam.amp": False, "irn.amp": False,
    "seg.amp": False, "seg.channels_last": False, "seg.compile": False,
}
# METHOD §1.7 (v1 vs VWL-L vs VWL-M), D2 (background score), D3 (backbone), P4 (which weights make the CAMs)
PAPER = {
    "voc": {**SHARED, "model.variant": "vwe+hspp", "model.backbone": "resnet50",
            "model.pretrained": "https://download.pytorch.org/models/resnet50-19c8e357.pth",
            "cam.background_score": 0.14, "cam.classifier_epoch": 0},
    "vwl-l": {**SHARED, "model.variant": "vwl-l", "model.backbone": "resnet101",
              "model.pretrained": "https://download.pytorch.org/models/resnet101-5d3b4d8f.pth",
              "model.decov_loss_weight": 1.0, "cam.background_score": 0.13, "cam.classifier_epoch": 5},
    "vwl-m": {**SHARED, "model.variant": "vwl-m", "model.backbone": "resnet101",
              "model.pretrained": "https://download.pytorch.org/models/resnet101-5d3b4d8f.pth",
              "model.memory_momentum": 1e-3, "cam.background_score": 0.13, "cam.classifier_epoch": 0},
}
FAST = {"train.amp": True, "train.channels_last": True, "train.compile": True, "train.fuse_bn": True, "cam.amp": True,
        "cam.channels_last": True, "irn.amp": True, "seg.amp": True, "seg.channels_last": True, "seg.compile": True,
        "seg.fuse_bn": True}


def _value(cfg, key):
    value = cfg.get(key)
    return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value


@pytest.mark.parametrize("name", PAPER)
def test_the_paper_config_holds_the_authors_settings(name):
    cfg = load_config(name)
    wrong = {key: (_value(cfg, key), expected) for key, expected in PAPER[name].items() if _value(cfg, key) != expected}
    assert wrong == {}
    assert cfg.seg.pretrained.endswith("deeplabv1_resnet101-coco.pth")  # the COCO init deeplab-pytorch starts from


@pytest.mark.parametrize("name", PAPER)
def test_the_fast_variant_changes_only_the_speed_settings(name):
    exact, fast = load_config(name).to_dict(), load_config(f"{name}-fast").to_dict()
    for key, value in FAST.items():
        section, field = key.split(".")
        assert fast[section][field] == value and exact[section][field] != value
        exact[section][field] = value
    exact["out_dir"] = fast["out_dir"]
    assert fast == exact
