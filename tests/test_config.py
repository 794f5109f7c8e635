"""The config is the one gate: every enum, range and cross-field rule is refused when the config loads, by the CLI
with exit status 2 and one line naming the key, before Ray starts or anything is written."""
from __future__ import annotations

import dataclasses
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from vwe.cli import main
from vwe.config import Config, Range, load_config, packaged_configs
from vwe.errors import ConfigError
from vwe.models import BACKBONES, VARIANTS

# (overrides, the key the message must name): one row per rule of vwe/config.py
BAD = [
    (["model.variant=vwe++"], "model.variant"),
    (["model.backbone=resnet18"], "model.backbone"),
    (["seg.backbone=resnet18"], "seg.backbone"),
    (["train.optimizer=adam"], "train.optimizer"),
    (["seg.optimizer=adam"], "seg.optimizer"),
    (["pseudo.method=crf"], "pseudo.method"),
    (["seg.init=voc"], "seg.init"),
    (["cam.dtype=int8"], "cam.dtype"),
    (["ray.placement_strategy=FILL"], "ray.placement_strategy"),
    (["train.batch_size=-8"], "train.batch_size"),
    (["train.batch_size=0"], "train.batch_size"),
    (["seg.batch_size=0"], "seg.batch_size"),
    (["train.epochs=0"], "train.epochs"),
    (["seg.iterations=0"], "seg.iterations"),
    (["model.num_words=0"], "model.num_words"),
    (["cam.batch_size=0"], "cam.batch_size"),
    (["seg.infer_batch_size=0"], "seg.infer_batch_size"),
    (["ray.num_workers=0"], "ray.num_workers"),
    (["ray.cpus_per_worker=0"], "ray.cpus_per_worker"),
    (["ray.max_failures=-2"], "ray.max_failures"),
    (["train.loader_workers=-1"], "train.loader_workers"),
    (["cam.num_actors=-1"], "cam.num_actors"),
    (["train.log_every=0"], "train.log_every"),
    (["seg.checkpoint_every=0"], "seg.checkpoint_every"),
    (["train.max_steps=-1"], "train.max_steps"),
    (["ray.num_workers=4", "train.batch_size=6"], "train.batch_size"),
    (["ray.num_workers=4", "train.batch_size=8", "seg.batch_size=10"], "seg.batch_size"),
    (["cam.background_score=1.5"], "cam.background_score"),
    (["pseudo.bg_background_score=-0.1"], "pseudo.bg_background_score"),
    (["pseudo.fg_background_score=0.01"], "pseudo.fg_background_score"),  # below the confident-bg score
    (["cam.sweep=[0.1, 2.0]"], "cam.sweep"),
    (["cam.sweep=[]"], "cam.sweep"),
    (["cam.scales=[0.5, 1.0]"], "cam.scales"),
    (["cam.scales=[1.0, -1.0]"], "cam.scales"),
    (["seg.test_scales=[0.5, 1.0]"], "seg.test_scales"),
    (["seg.scales=[]"], "seg.scales"),
    (["seg.train_msc_scales=[0.0]"], "seg.train_msc_scales"),
    (["train.lr=0"], "train.lr"),
    (["seg.lr=-0.1"], "seg.lr"),
    (["train.momentum=1.0"], "train.momentum"),
    (["train.weight_decay=-1e-4"], "train.weight_decay"),
    (["model.memory_momentum=0"], "model.memory_momentum"),
    (["model.hspp_gamma=-1"], "model.hspp_gamma"),
    (["model.hspp_levels=[]"], "model.hspp_levels"),
    (["model.hspp_levels=[0, 1]"], "model.hspp_levels"),
    (["seg.aspp_rates=[6, 12]"], "seg.aspp_rates"),
    (["seg.aspp_rates=[0, 6, 12, 18]"], "seg.aspp_rates"),
    (["train.resize_long=[640, 320]"], "train.resize_long"),
    (["train.crop_size=0"], "train.crop_size"),
    (["seg.init=coco", "seg.pretrained="], "seg.pretrained"),
    (["seg.init=coco", "seg.pretrained=coco.pth", "seg.backbone=resnet50"], "seg.backbone"),
    (["seg.init=classifier", "seg.pretrained="], "seg.pretrained"),
    (["data.num_classes=21"], "data.num_classes"),  # beyond VOC's 20
    (["data.num_classes=81"], "data.num_classes"),
    (["data.num_classes=0"], "data.num_classes"),
    (["data.dataset=ade20k"], "data.dataset"),
    (["data.dataset=coco", "data.num_classes=80"], "data.train_split"),  # COCO has train and val, no train_aug
    (["data.dataset=coco", "data.train_split=train", "seg.init=coco", "seg.pretrained=x.pth"], "seg.init"),
    (["synth.num_classes=0"], "synth.num_classes"),
    (["synth.height=4"], "synth.height"),
    (["synth.splits={train_aug: -1}"], "synth.splits"),
    (["synth.enabled=true", "synth.splits={val: 4}"], "synth.splits"),
    (["pseudo.crf.iterations=0"], "pseudo.crf.iterations"),
    (["pseudo.crf.gt_prob=1.0"], "pseudo.crf.gt_prob"),
    (["seg.crf.bilateral_srgb=0"], "seg.crf.bilateral_srgb"),
    (["seg.crf.gaussian_compat=-1"], "seg.crf.gaussian_compat"),
    (["model.decov_loss_weight=-1"], "model.decov_loss_weight"),
    (["model.img_loss_weight=-1"], "model.img_loss_weight"),
    (["model.w2i_loss_weight=-1"], "model.w2i_loss_weight"),
    (["model.word_loss_weight=-0.5"], "model.word_loss_weight"),
    (["pseudo.crf.bilateral_compat=-1"], "pseudo.crf.bilateral_compat"),
    (["pseudo.crf.bilateral_srgb=0"], "pseudo.crf.bilateral_srgb"),
    (["pseudo.crf.bilateral_sxy=0"], "pseudo.crf.bilateral_sxy"),
    (["pseudo.crf.gaussian_compat=-3"], "pseudo.crf.gaussian_compat"),
    (["pseudo.crf.gaussian_sxy=0"], "pseudo.crf.gaussian_sxy"),
    (["seg.aspp_bias_lr_mult=0"], "seg.aspp_bias_lr_mult"),
    (["seg.aspp_weight_lr_mult=-10"], "seg.aspp_weight_lr_mult"),
    (["seg.crf.bilateral_compat=-4"], "seg.crf.bilateral_compat"),
    (["seg.crf.bilateral_sxy=0"], "seg.crf.bilateral_sxy"),
    (["seg.crf.gaussian_sxy=-1"], "seg.crf.gaussian_sxy"),
    (["seg.crf.gt_prob=0"], "seg.crf.gt_prob"),
    (["seg.crf.iterations=0"], "seg.crf.iterations"),
    (["seg.crop_size=0"], "seg.crop_size"),
    (["seg.loader_workers=-1"], "seg.loader_workers"),
    (["seg.log_every=0"], "seg.log_every"),
    (["seg.max_steps=-5"], "seg.max_steps"),
    (["seg.momentum=1.5"], "seg.momentum"),
    (["seg.num_actors=-2"], "seg.num_actors"),
    (["seg.poly_power=-0.9"], "seg.poly_power"),
    (["seg.seed=-1"], "seg.seed"),
    (["seg.weight_decay=-5e-4"], "seg.weight_decay"),
    (["synth.seed=-1"], "synth.seed"),
    (["synth.width=8"], "synth.width"),
    (["train.checkpoint_every=0"], "train.checkpoint_every"),
    (["train.eval_images=-1"], "train.eval_images"),
    (["train.new_layer_lr_mult=0"], "train.new_layer_lr_mult"),
    (["train.poly_power=-1"], "train.poly_power"),
    (["train.seed=-3"], "train.seed"),
    (["data.labels_from=json"], "data.labels_from"),
    (["train.augment=gpu"], "train.augment"),
    (["cam.resize=gpu"], "cam.resize"),
    (["seg.accumulation=0"], "seg.accumulation"),
    (["seg.accumulation=3", "seg.batch_size=8"], "seg.batch_size"),  # 8 images do not split into 3 sub-batches
    (["seg.lr_every=0"], "seg.lr_every"),
    (["seg.num_workers=-1"], "seg.num_workers"),
    (["ray.num_workers=8", "seg.batch_size=8", "seg.num_workers=3"], "seg.batch_size"),
    (["cam.classifier_epoch=-1"], "cam.classifier_epoch"),
    (["cam.classifier_epoch=3", "train.epochs=2"], "cam.classifier_epoch"),
    (["out_dir="], "out_dir"),
    (["train.batch_size=eight"], "train.batch_size"),  # a type, not a range
    (["cam.bg_threshold=0.1"], "renamed to 'cam.background_score'"),
    (["pseudo.crf_iterations=5"], "renamed to 'pseudo.crf.iterations'"),
    (["train.batch_sise=8"], "train.batch_sise"),
    (["synth.part_scale=0"], "synth.part_scale"),
    (["pseudo.crf.backend=gpu"], "pseudo.crf.backend"),
    (["seg.crf.backend=cuda"], "seg.crf.backend"),
    (["pseudo.batch_size=0"], "pseudo.batch_size"),
    (["pseudo.num_actors=-1"], "pseudo.num_actors"),
    (["synth.context_bias=1.5"], "synth.context_bias"),
    (["irn.backbone=resnet18"], "irn.backbone"),
    (["irn.init=coco"], "irn.init"),
    (["irn.init=classifier", "irn.pretrained="], "irn.pretrained"),
    (["irn.optimizer=adam"], "irn.optimizer"),
    (["irn.num_workers=-1"], "irn.num_workers"),
    (["irn.batch_size=0"], "irn.batch_size"),
    (["irn.num_workers=3", "irn.batch_size=32"], "irn.batch_size"),
    (["irn.epochs=0"], "irn.epochs"),
    (["irn.lr=0"], "irn.lr"),
    (["irn.momentum=1"], "irn.momentum"),
    (["irn.weight_decay=-1"], "irn.weight_decay"),
    (["irn.poly_power=-1"], "irn.poly_power"),
    (["irn.crop_size=2"], "irn.crop_size"),
    (["irn.crop_size=510"], "irn.crop_size"),  # the labels are taken at stride 4
    (["irn.scale_range=[1.5, 0.5]"], "irn.scale_range"),
    (["irn.scale_range=[0, 1.5]"], "irn.scale_range"),
    (["irn.train_radius=1"], "irn.train_radius"),
    (["irn.radius=1"], "irn.radius"),
    (["irn.beta=0"], "irn.beta"),
    (["irn.exp_times=-1"], "irn.exp_times"),
    (["irn.exp_times=13"], "irn.exp_times"),
    (["irn.background_score=1.5"], "irn.background_score"),
    (["irn.num_actors=-1"], "irn.num_actors"),
    (["irn.infer_batch_size=0"], "irn.infer_batch_size"),
    (["irn.loader_workers=-1"], "irn.loader_workers"),
    (["irn.seed=-1"], "irn.seed"),
    (["irn.log_every=0"], "irn.log_every"),
    (["irn.checkpoint_every=0"], "irn.checkpoint_every"),
    (["irn.max_steps=-1"], "irn.max_steps"),
]


@pytest.mark.parametrize("overrides, key", BAD, ids=[" ".join(o) for o, _ in BAD])
def test_every_rule_is_refused_by_the_loader(overrides, key, tmp_path, capsys, monkeypatch):
    import vwe.stages.train_cam

    def no_work(*args, **kwargs):
        raise AssertionError("the stage started for a config that should have been refused")

    monkeypatch.setattr(vwe.stages.train_cam, "train_classifier", no_work)
    out = tmp_path / "run"
    assert main(["train-cam", "--config", "tiny", "--set", f"out_dir={out}", *overrides]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("vwe train-cam: error: ") and key in err, err
    assert not out.exists()  # refused before any work


def test_every_field_with_a_choice_or_a_range_has_a_row_in_the_table():
    """A new Literal or Range field in the schema needs its row above."""
    fields = []

    def walk(cls: type, prefix: str) -> None:
        for name, kind in typing.get_type_hints(cls, include_extras=True).items():
            if dataclasses.is_dataclass(kind):
                walk(kind, f"{prefix}{name}.")
            elif typing.get_origin(kind) in (typing.Literal, typing.Annotated) or \
                    any(typing.get_origin(a) is typing.Annotated for a in typing.get_args(kind)):
                fields.append(prefix + name)

    walk(Config, "")
    assert sorted(set(fields) - {key for _, key in BAD}) == []


def test_the_choices_match_the_models():
    hints = typing.get_type_hints(Config, include_extras=True)
    model = typing.get_type_hints(hints["model"], include_extras=True)
    assert set(typing.get_args(model["variant"])) == set(VARIANTS)
    assert set(typing.get_args(model["backbone"])) == set(BACKBONES)


def test_range_text_reads_like_maths():
    assert Range(0, 1).text() == "in [0, 1]" and Range(0, low_open=True).text() == "> 0"
    assert Range(0, 1, low_open=True, high_open=True).check(1.0) == "in (0, 1)"
    assert Range(1).check(3) is None


def test_a_partial_crf_section_keeps_its_sections_defaults():
    cfg = Config.from_dict({"seg": {"crf": {"enabled": True}}, "pseudo": {"crf": {"iterations": 5}}})
    assert cfg.seg.crf.enabled and cfg.seg.crf.bilateral_sxy == 67.0 and cfg.seg.crf.gaussian_sxy == 1.0
    assert cfg.pseudo.crf.iterations == 5 and cfg.pseudo.crf.bilateral_sxy == 50.0 and cfg.pseudo.crf.gt_prob == 0.7


def test_load_config_resolves_once_and_idempotently(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config("synthetic", ["out_dir=runs/x"])
    assert cfg.out_dir == str(tmp_path / "runs" / "x")
    assert cfg.data.root == str(tmp_path / "runs" / "x" / "data" / "VOC2012")
    assert cfg.seg.pretrained == str(tmp_path / "runs" / "x" / "classifier" / "model.pth")
    assert cfg.resolved() == cfg


def test_packaged_configs_load_by_name_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert packaged_configs() == ["coco", "synthetic", "tiny", "voc", "voc-fast", "vwl-l", "vwl-l-fast", "vwl-m",
                                  "vwl-m-fast"]
    for name in packaged_configs():
        assert load_config(name).out_dir.startswith(str(tmp_path))
    with pytest.raises(ConfigError, match="no such config file .*packaged configs: coco, synthetic, tiny, voc"):
        load_config("nope")


def test_vwe_run_with_the_packaged_config_works_from_another_folder(tmp_path):
    """A fresh process in a folder without configs/: `--help` names the default, and the data stage runs."""
    vwe = [sys.executable, "-m", "vwe.cli"]
    shown = subprocess.run([*vwe, "run", "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0 and "the packaged 'synthetic'" in " ".join(shown.stdout.split())
    done = subprocess.run([*vwe, "run", "--config", "synthetic", "--out", "demo", "--until", "data", "--set",
                           "synth.splits={train_aug: 8, train: 4, val: 4, test: 2}"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "demo" / "data_check.json").is_file()
    assert len(list((tmp_path / "demo" / "data" / "VOC2012" / "JPEGImages").glob("*.jpg"))) == 14


def test_a_bad_value_from_the_command_line_is_one_line_and_exit_2(tmp_path):
    done = subprocess.run([sys.executable, "-m", "vwe.cli", "train-cam", "--set", "train.batch_size=-8",
                           f"out_dir={tmp_path / 'run'}"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "vwe train-cam: error: overrides: key 'train.batch_size' must be >= 1, got -8"]
    assert not (tmp_path / "run").exists()


def test_the_run_command_lists_every_stage():
    from vwe.cli.run import STAGE_LIST
    from vwe.stages import STAGE_NAMES

    assert STAGE_LIST.split(", ") == STAGE_NAMES


def test_renamed_keys_in_a_yaml_file_are_named(tmp_path: Path):
    path = tmp_path / "old.yaml"
    path.write_text("pseudo:\n  fg_threshold: 0.3\n")
    with pytest.raises(ConfigError, match=r"old.yaml: unknown key 'pseudo.fg_threshold' \(renamed to "
                                          r"'pseudo.fg_background_score'\)"):
        load_config(path)
