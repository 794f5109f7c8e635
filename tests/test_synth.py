"""The synthetic VOC-format benchmark: layout, determinism, the promised properties, and the `vwe data` commands."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

import vwe.cli
from vwe.data import synth
from vwe.data.voc import CLASSES, IGNORE, VOCDataset, image_labels_from_mask, labels_from_annotation, read_mask
from vwe.errors import ConfigError, DataError

SPLITS = {"train_aug": 96, "train": 32, "val": 32, "test": 8}  # the conftest `synth_root` fixture


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_layout_and_splits(synth_root):
    dataset = VOCDataset(synth_root)
    report = dataset.check()
    assert report.counts == SPLITS and report.bad == []
    train_aug, train = dataset.split_ids("train_aug"), dataset.split_ids("train")
    val, test = dataset.split_ids("val"), dataset.split_ids("test")
    assert train == train_aug[:32] and set(train) <= set(train_aug)
    assert not set(val) & set(train_aug) and not set(test) & (set(train_aug) | set(val))
    assert train_aug[0] == "2100_000001" and val[0] == "2101_000001" and test[0] == "2102_000001"
    for image_id in test:
        assert dataset.mask_path(image_id) is None
        assert dataset.image_path(image_id).is_file() and dataset.annotation_path(image_id).is_file()
    for image_id in train_aug + val:
        aug = (synth_root / "SegmentationClassAug" / f"{image_id}.png").read_bytes()
        assert aug == (synth_root / "SegmentationClass" / f"{image_id}.png").read_bytes()


def test_masks_match_annotations_and_have_a_boundary_band(synth_root):
    dataset = VOCDataset(synth_root)
    per_image = []
    for image_id in dataset.split_ids("train_aug") + dataset.split_ids("val"):
        mask_labels = image_labels_from_mask(dataset.mask_path(image_id))
        assert np.array_equal(mask_labels, labels_from_annotation(dataset.annotation_path(image_id)))
        mask = read_mask(dataset.mask_path(image_id))
        assert (mask == IGNORE).any() and (mask == 0).any()
        per_image.append(mask_labels)
    per_image = np.stack(per_image)
    assert (per_image.sum(1) >= 2).mean() > 0.2  # multi-label images are common
    assert per_image[:96].sum(0).min() >= 1  # every class appears in train_aug


def test_band_surrounds_every_object():
    sample = synth.render(np.random.default_rng(5), 64, 80, num_classes=4)
    inside, outside = sample.mask[sample.instances > 0], sample.mask[sample.instances == 0]
    assert set(np.unique(inside)) <= {IGNORE} | {o.class_index + 1 for o in sample.objects}
    assert set(np.unique(outside)) <= {0, IGNORE} and (outside == IGNORE).any() and (inside == IGNORE).any()
    # Any two 4-neighbours with different labels are separated by the band.
    for a, b in ((sample.mask[1:], sample.mask[:-1]), (sample.mask[:, 1:], sample.mask[:, :-1])):
        assert not ((a != b) & (a != IGNORE) & (b != IGNORE)).any()


def test_generation_is_deterministic(tmp_path):
    splits = {"train_aug": 12, "train": 4, "val": 4, "test": 2}
    synth.generate(tmp_path / "a", splits, 48, 64, num_classes=6, seed=3)
    synth.generate(tmp_path / "b", splits, 48, 64, num_classes=6, seed=3, workers=2)
    synth.generate(tmp_path / "c", splits, 48, 64, num_classes=6, seed=4)
    a, b, c = _files(tmp_path / "a"), _files(tmp_path / "b"), _files(tmp_path / "c")
    assert len(a) == 1 + 4 + 4 * 16 + 2 + 18  # marker, 4 lists, jpg + 3 png (mask x 2, parts) for 16 masked ids,
    #                                          2 test jpg, 18 xml
    assert a == b
    assert a.keys() == c.keys() and a["JPEGImages/2100_000001.jpg"] != c["JPEGImages/2100_000001.jpg"]


def test_regeneration_reuses_or_replaces_and_refuses_foreign_folders(tmp_path):
    root = tmp_path / "VOC2012"
    first = synth.generate(root, {"train_aug": 6, "val": 2}, 32, 32, num_classes=3)
    assert not first["reused"] and first["images"] == 8
    stamp = (root / "JPEGImages" / "2100_000006.jpg").stat().st_mtime_ns
    assert synth.generate(root, {"train_aug": 6, "val": 2}, 32, 32, num_classes=3)["reused"]
    assert (root / "JPEGImages" / "2100_000006.jpg").stat().st_mtime_ns == stamp
    VOCDataset(root).image_labels()  # a labels cache of the old benchmark must not survive
    synth.generate(root, {"train_aug": 4, "val": 2}, 32, 32, num_classes=3, seed=1)
    assert not (root / "JPEGImages" / "2100_000006.jpg").exists()
    assert not (root / "vwe_cls_labels_xml.json").exists()
    assert VOCDataset(root).check().counts == {"val": 2, "train_aug": 4}

    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(DataError, match=f"{foreign}: folder is not empty"):
        synth.generate(foreign, {"train_aug": 2}, 32, 32)
    assert (foreign / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize("splits, message", [
    ({"train_aug": 2, "train": 3}, "must not exceed train_aug"), ({"trian": 2}, "unknown split 'trian'"),
    ({"val": -1}, ">= 0"), ({}, "every split is empty"),
])
def test_bad_split_sizes(tmp_path, splits, message):
    with pytest.raises(ConfigError, match=message):
        synth.generate(tmp_path / "x", splits, 32, 32)


def _renders(count: int, num_classes: int = 20) -> list[synth.SynthImage]:
    return [synth.render(np.random.default_rng((11, i)), 48, 64, num_classes) for i in range(count)]


def test_background_bias():
    samples = _renders(400)
    for context in ("sky", "water", "grass"):
        biased = {CLASSES.index(n) for n, c in synth.CONTEXT_OF.items() if c == context}
        with_class = [s for s in samples if biased & {o.class_index for o in s.objects}]
        without_any = [s for s in samples if not {o.class_index for o in s.objects} & set(synth.design(20).context_of)]
        rate = np.mean([context in s.contexts for s in with_class])
        stray = np.mean([context in s.contexts for s in without_any])
        assert rate > 0.6 and stray < 0.2, (context, rate, stray)


def test_partial_discrimination():
    """Within a group the bodies look alike and only the small parts differ; across groups the bodies differ."""
    samples = _renders(300)
    body, part, areas = {}, {}, []
    for s in samples:
        for i, obj in enumerate(s.objects, 1):
            visible = (s.instances == i) & (s.mask != IGNORE)
            body.setdefault(obj.class_index, []).append(s.image[visible & (s.parts != i)].astype(float))
            part.setdefault(obj.class_index, []).append(s.image[visible & (s.parts == i)].astype(float))
            if obj.area:
                areas.append(obj.part_area / obj.area)
    assert 0.03 < np.mean(areas) < 0.25  # the class-unique part is small
    body_mean = {c: np.concatenate(v).mean(0) for c, v in body.items()}
    part_mean = {c: np.concatenate(v).mean(0) for c, v in part.items()}
    group_of = synth.design(20).group_of
    pairs = [(a, b) for a in range(20) for b in range(a + 1, 20)]
    same = [(a, b) for a, b in pairs if group_of[a] == group_of[b]]
    other = [(a, b) for a, b in pairs if group_of[a] != group_of[b]]
    distance = lambda means, a, b: np.linalg.norm(means[a] - means[b])  # noqa: E731
    body_same = np.mean([distance(body_mean, a, b) for a, b in same])
    assert body_same < 0.5 * np.mean([distance(body_mean, a, b) for a, b in other])
    assert np.mean([distance(part_mean, a, b) for a, b in same]) > 3 * body_same


def test_cli_synth_check_prepare(tmp_path, capsys):
    root = tmp_path / "VOC2012"
    assert vwe.cli.main(["data", "synth", "--root", str(root), "--num", "20", "--size", "32x40", "--seed", "2",
                         "--num-classes", "5", "--workers", "1", "--check"]) == 0
    out = capsys.readouterr().out
    assert "wrote 25 images" in out and "check: ok" in out
    assert read_mask(root / "SegmentationClass" / "2100_000001.png").shape == (32, 40)
    assert vwe.cli.main(["data", "check", "--root", str(root)]) == 0
    out = capsys.readouterr().out
    assert "train_aug" in out and "20" in out and "standard VOC 2012" in out
    assert vwe.cli.main(["data", "prepare", "--root", str(root)]) == 0
    assert (root / "ImageSets" / "Segmentation" / "train_aug.txt").read_text().split() == [
        f"2100_{i:06d}" for i in range(1, 21)]


def test_cli_synth_takes_the_config(tmp_path):
    root = tmp_path / "VOC2012"
    config = tmp_path / "c.yaml"
    config.write_text(f"data:\n  root: {root}\nsynth:\n  height: 24\n  width: 36\n  num_classes: 3\n"
                      "  splits: {train_aug: 5, train: 2, val: 2}\n")
    assert vwe.cli.main(["data", "synth", "--config", str(config), "--set", "synth.seed=7", "--workers", "1"]) == 0
    assert VOCDataset(root).check().counts == {"train": 2, "val": 2, "train_aug": 5}
    assert read_mask(root / "SegmentationClass" / "2101_000001.png").shape == (24, 36)


def test_cli_reports_a_broken_root(tmp_path, capsys):
    root = tmp_path / "VOC2012"
    synth.generate(root, {"train_aug": 4, "val": 2}, 32, 32, num_classes=3)
    broken = root / "JPEGImages" / "2101_000002.jpg"
    broken.write_bytes(b"garbage")
    assert vwe.cli.main(["data", "check", "--root", str(root)]) == 2
    err = capsys.readouterr().err
    assert str(broken) in err and "cannot decode image" in err and len(err.strip().splitlines()) == 1
    assert vwe.cli.main(["data", "check", "--root", str(root), "--skip-bad"]) == 0
    assert "1 bad ids recorded" in capsys.readouterr().out


def test_the_knobs_change_the_parts_and_the_context_and_their_defaults_change_nothing():
    def areas(part_scale: float) -> float:
        samples = [synth.render(np.random.default_rng((12, i)), 48, 64, part_scale=part_scale) for i in range(80)]
        return np.mean([o.part_area / o.area for s in samples for o in s.objects if o.area])

    assert areas(0.5) < 0.5 * areas(1.0) and areas(1.6) > 1.8 * areas(1.0)
    for bias, expected in ((0.0, 0.0), (1.0, 1.0)):
        samples = [synth.render(np.random.default_rng((13, i)), 48, 64, top_class=CLASSES.index("boat"),
                                context_bias=bias) for i in range(30)]
        assert np.mean(["water" in s.contexts or "grass" in s.contexts for s in samples]) == expected
    # the defaults draw the images of the benchmark as it was before the knobs (this hash is of that code's image)
    image = synth.render(np.random.default_rng((0, 0, 1)), 64, 64, 20, top_class=5).image
    assert hashlib.sha256(image.tobytes()).hexdigest()[:16] == "d5951182369785d1"


def test_part_masks_mark_each_visible_part_with_its_class(synth_root):
    sample = synth.render(np.random.default_rng((14, 2)), 64, 64, 20)
    for i, obj in enumerate(sample.objects, 1):
        assert np.array_equal(sample.part_mask == obj.class_index + 1, np.isin(sample.parts, [
            j for j, other in enumerate(sample.objects, 1) if other.class_index == obj.class_index]))
    assert set(np.unique(sample.part_mask[sample.parts == 0])) == {0}
    voc = VOCDataset(synth_root)
    for image_id in voc.split_ids("val")[:8]:
        parts, mask = read_mask(voc.part_path(image_id)), read_mask(voc.mask_path(image_id))
        on_part = parts > 0
        assert on_part.any() and np.all((mask[on_part] == parts[on_part]) | (mask[on_part] == IGNORE))
    assert voc.part_path(voc.split_ids("test")[0]) is None  # no masks, no parts
