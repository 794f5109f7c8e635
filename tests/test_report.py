"""The run report: a self-contained report.html whose numbers match the run's files, whose pictures are PNG data
URIs, and which Chromium displays in full."""
import base64
import dataclasses
import html
import io
import json
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from vwe.cam import cam_to_label, multiscale_cam, normalize_image, save_cam
from vwe.cli import main as cli_main
from vwe.config import load_config
from vwe.data.synth import generate
from vwe.data.voc import VOCDataset, read_image, read_mask, write_mask
from vwe.io import MetricsLog, write_json
from vwe.models import build_classifier
from vwe.report import build_report, example_cells, example_columns, load_run, page as report_page, visual_word_patches
from vwe.report.plots import loss_terms
from vwe import evaluation
from vwe.evaluation import cam_confusions, cam_scores, gt_mask, write_report
from vwe.run_folder import RunFolder
from vwe.checkpoint import export_model
from vwe.stages.train_cam import load_trained_classifier

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
STAGES = {
    "data": {"seconds": 0.4, "skipped": True},
    "train_cam": {"seconds": 12.5, "skipped": False, "result": {"images": 64}, "images_per_s": 5.12},
    "make_cam": {"seconds": 3.25, "skipped": False, "result": {"images": 8}, "images_per_s": 2.46},
}


# the classifier's reports as train_cam writes them: the loss terms every 4 steps, the CAM mIoU at each epoch end
CLASSIFIER_METRICS = [
    {"step": step, "epoch": (step - 1) // 12, "lr": 0.1 * (1 - step / 25) ** 0.9, "loss": 1.5 - step / 30,
     "img": 0.7 - step / 60, "w2i": 0.5 - step / 90, "word": 0.3 - step / 180, "images_per_s": 40.0 + step,
     **({"cam_miou": 0.02 * step, "cam_best_miou": 0.021 * step, "cam_best_threshold": 0.15} if step % 12 == 0
        else {})}
    for step in range(4, 25, 4)]
SYNTH_REFERENCE = {"headline-cam": "44.4", "headline-cam-val": "44.5", "headline-pseudo": "53.5",
                   "headline-cam-best": "&ndash;", "headline-cam-best-val": "&ndash;",
                   "headline-baseline-train": "&ndash;"}


class _Images(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.images: list[dict[str, str]] = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs))


def images_of(page: str) -> list[dict[str, str]]:
    parser = _Images()
    parser.feed(page)
    return parser.images


def cell(page: str, element_id: str) -> str:
    """Text of the first cell of the element with this id (or of the element itself)."""
    match = re.search(rf'id="{re.escape(element_id)}"[^>]*>(?:<td>[^<]*</td>)?(?:<td[^>]*>)?([^<]*)<', page)
    assert match, f"no element {element_id!r} in the report"
    return match.group(1)


def iou_table(page: str, split: str) -> tuple[list[str], dict[str, list[str]]]:
    """The headings of the per-class table of `split`, and each row's cells (by the row's name)."""
    table = re.search(rf'<table class="iou" id="iou-{split}">(.*?)</table>', page, re.DOTALL).group(1)
    headings = re.findall(r"<th>([^<]*)</th>", table)
    rows = {name: re.findall(r'<td class="num"[^>]*>([^<]*)</td>', row)
            for name, row in re.findall(rf'<tr id="iou-{split}-([^"]+)">(.*?)</tr>', table)}
    return headings, rows


def percent(value: float | None) -> str:
    return f"{100 * value:.1f}" if value is not None else "&ndash;"


@pytest.fixture(scope="module")
def words_run(tmp_path_factory) -> Path:
    """A run folder as `vwe run` leaves it after the pseudo labels, made directly: a random-init vwe+hspp classifier,
    its CAMs, threshold pseudo labels, the CAM sweep and pseudo-label scores, and stage records."""
    out = tmp_path_factory.mktemp("run")
    cfg = load_config("tiny", [f"out_dir={out}", "model.variant=vwe+hspp"]).resolved()
    generate(cfg.data.root, {"train_aug": 8, "train": 8, "val": 2, "test": 1}, 48, 64, seed=0)
    cfg.dump(out / "config.yaml")
    torch.manual_seed(0)
    model = build_classifier(cfg).eval()
    export_model(model, cfg, out / "classifier")
    voc = VOCDataset(cfg.data.root)
    labels = voc.image_labels()
    for image_id in voc.split_ids("train_aug") + voc.split_ids("val"):
        result = multiscale_cam(model, read_image(voc.image_path(image_id)), labels[image_id], cfg.cam.scales)
        save_cam(RunFolder(out).cam(image_id), result)
        if image_id in voc.split_ids("train_aug"):
            write_mask(RunFolder(out).pseudo_label(image_id),
                       cam_to_label(result.high_res, result.keys, cfg.cam.background_score))
    train = voc.split_ids("train")
    scores = [cfg.cam.background_score, *cfg.cam.sweep]
    for split in ("train", "val"):
        sweep = sum(cam_confusions(RunFolder(out).cam(i), gt_mask(voc, i), scores) for i in voc.split_ids(split))
        write_report(out / "eval_cam", split,
                     {"split": split, **cam_scores(sweep, cfg.cam.background_score, cfg.cam.sweep)})
    matrix = sum(evaluation.image_confusion(RunFolder(out).pseudo_label(i), voc.mask_path(i), 21,
                                            unsure_as_background=True)
                 for i in train)
    write_report(out / "eval_labels", "pseudo_train", {"split": "train", **evaluation.summarize(matrix)})
    write_json(out / "stages.json", STAGES)
    metrics = MetricsLog(RunFolder(out).metrics("train_cam"))
    for row in CLASSIFIER_METRICS:
        metrics.add(row)
    build_report(out, num_examples=3, num_words=4, patches_per_word=3, word_images=6)
    return out


def test_every_picture_is_an_embedded_png_also_kept_as_a_file(words_run):
    page = (words_run / "report.html").read_text()
    assert "<script" not in page and "http://" not in page and "https://" not in page
    images = images_of(page)
    files = {p.name: p.read_bytes() for p in (words_run / "report").glob("*.png")}
    assert set(files) == {"stage_timings.png", "loss_train_cam.png", "cam_threshold_curve.png", "examples_train.png",
                          "visual_words.png"}
    assert [image.get("id") for image in images] == ["stage-timings", "loss-train_cam", "cam-curve", None, None]
    embedded = []
    for image in images:
        prefix, _, data = image["src"].partition(",")
        assert prefix == "data:image/png;base64"
        raw = base64.b64decode(data, validate=True)
        with Image.open(io.BytesIO(raw)) as png:
            png.verify()
        with Image.open(io.BytesIO(raw)) as png:
            assert png.format == "PNG" and png.size == (int(image["width"]), int(image["height"]))
        embedded.append(raw)
    assert sorted(embedded) == sorted(files.values())
    # seeded sampling: a rebuild draws the same pictures
    build_report(words_run, num_examples=3, num_words=4, patches_per_word=3, word_images=6)
    assert {p.name: p.read_bytes() for p in (words_run / "report").glob("*.png")} == files


def test_numbers_and_tables_match_the_run_files(words_run):
    page = (words_run / "report.html").read_text()
    cam = json.loads((words_run / "eval_cam" / "train.json").read_text())
    pseudo = json.loads((words_run / "eval_labels" / "pseudo_train.json").read_text())
    assert cam["background_score"] == 0.14  # tiny.yaml keeps the default cam.background_score
    assert cell(page, "headline-cam") == f"{100 * cam['miou']:.1f}"
    assert cell(page, "headline-pseudo") == f"{100 * pseudo['miou']:.1f}"
    at = cam["sweep"]["miou"][cam["sweep"]["thresholds"].index(0.14)]  # the sweep passes the fixed score too
    assert cam["miou"] == pytest.approx(at)
    assert cell(page, "headline-cam-best") == f"{100 * cam['best_miou']:.1f}" and "optimistic" in page
    # all background: IoU(background) = background pixels / valid pixels, every other present class 0
    voc = VOCDataset(words_run / "data" / "VOC2012")
    masks = [read_mask(voc.mask_path(i)) for i in voc.split_ids("train")]
    valid = np.concatenate([m[m != 255] for m in masks])
    expected = np.mean(valid == 0) / len(np.unique(valid))
    assert cell(page, "headline-baseline-train") == f"{100 * expected:.1f}"
    # one per-class table per split, each of one split's images: train (CAMs, pseudo labels) and val (CAMs)
    val_cam = json.loads((words_run / "eval_cam" / "val.json").read_text())
    assert cell(page, "headline-cam-val") == f"{100 * val_cam['miou']:.1f}"
    assert cell(page, "headline-cam-best-val") == f"{100 * val_cam['best_miou']:.1f}"
    assert re.findall(r'<table class="iou" id="iou-([^"]+)">', page) == ["train", "val"]
    headings, rows = iou_table(page, "train")
    assert headings == ["class", "CAM (background score 0.14)", "CRF pseudo labels"]
    assert list(rows) == [*cam["iou"], "mIoU"]
    for name in ("background", "cat", "mIoU"):
        cam_value = cam["miou"] if name == "mIoU" else cam["iou"][name]
        pseudo_value = pseudo["miou"] if name == "mIoU" else pseudo["iou"][name]
        assert rows[name] == [percent(cam_value), percent(pseudo_value)]
    headings, rows = iou_table(page, "val")
    assert headings == ["class", "CAM (background score 0.14)"]
    assert rows == {**{n: [percent(v)] for n, v in val_cam["iou"].items()}, "mIoU": [percent(val_cam["miou"])]}
    # the reference column of a synthetic run: the README demo's 3-seed means, their spread in the cell's title
    assert "README demo" in cell(page, "reference-title")
    for element_id, expected in SYNTH_REFERENCE.items():
        assert cell(page, f"{element_id}-reference") == expected, element_id
    assert 'id="headline-cam-reference" class="num reference" title="44.4 ± 1.6: README' in page
    assert "± 4.7" in cell(page, "reference-note") and "± 6.2" in cell(page, "reference-note")
    stage = re.search(r'<tr id="stage-train_cam">(.*?)</tr>', page).group(1)
    assert ">12.5<" in stage and ">64<" in stage and ">5.1<" in stage
    assert "skipped" in re.search(r'<tr id="stage-data">(.*?)</tr>', page).group(1)
    assert html.escape((words_run / "config.yaml").read_text()) in page


def test_example_columns_follow_what_the_run_holds(words_run, tmp_path):
    run = load_run(words_run)
    voc = VOCDataset(run.cfg.data.root)
    ids = voc.split_ids("train")[:2]
    titles, cells = example_cells(voc, ids, example_columns(run, voc, None))
    assert [t for t, _ in titles] == ["image", "CAM", "CRF pseudo label", "ground truth"]
    image = read_image(voc.image_path(ids[0]))
    assert all(c.shape == image.shape for c in cells[0])
    assert not np.array_equal(cells[0][1], image)  # the CAM heat map is blended in
    # DeepLab outputs, as infer-seg / eval-seg write them, add a prediction column and a final score
    copy = tmp_path / "run"
    shutil.copytree(words_run, copy)
    predictions = _mkdir(copy / "predictions" / "train")
    for image_id in voc.split_ids("train"):
        shutil.copy(RunFolder(copy).pseudo_label(image_id), predictions / f"{image_id}.png")
    write_json(copy / "eval_seg" / "train.json", {"split": "train", "crf": False, "miou": 0.5,
                                                  "iou": {"background": 0.75, "cat": 0.25},
                                                  "predictions": str(predictions)})
    assert [(s.name, s.split, s.predictions) for s in load_run(copy).segmentation] == [("train", "train", predictions)]
    build_report(copy, num_examples=2, num_words=2, patches_per_word=2, word_images=4)
    page = (copy / "report.html").read_text()
    assert cell(page, "headline-seg-train") == "50.0"
    assert cell(page, "headline-seg-train-reference") == "&ndash;"  # neither source has DeepLab on train
    headings, rows = iou_table(page, "train")
    assert headings[-1] == "DeepLab on train" and rows["cat"][-1] == "25.0" and rows["mIoU"][-1] == "50.0"
    assert iou_table(page, "val")[0] == ["class", "CAM (background score 0.14)"]
    run = load_run(copy)
    titles, _ = example_cells(voc, ids, example_columns(run, voc, run.segmentation[0].predictions))
    assert [t for t, _ in titles] == ["image", "CAM", "CRF pseudo label", "prediction", "ground truth"]


def figure_caption(page: str, element_id: str) -> str:
    return re.search(rf'<img id="{element_id}"[^>]*><figcaption>([^<]*)</figcaption>', page).group(1)


def test_loss_curves_follow_the_metrics_files(words_run, tmp_path):
    page = (words_run / "report.html").read_text()
    rows = MetricsLog(RunFolder(words_run).metrics("train_cam")).rows
    assert loss_terms(rows) == ["loss", "img", "w2i", "word"]
    caption = figure_caption(page, "loss-train_cam")
    assert "The 6 reports of metrics/train_cam.csv" in caption and "(img, w2i, word)" in caption
    assert "CAM mIoU on train at cam.background_score at 2 epoch ends" in caption
    assert cell(page, "loss-train_seg").startswith("No metrics/train_seg.csv in this run folder")
    # DeepLab's log (no epoch-end CAM mIoU) draws its figure; the classifier's gone, its figure goes too
    copy = tmp_path / "run"
    shutil.copytree(words_run, copy)
    (copy / "metrics" / "train_cam.csv").unlink()
    seg_log = MetricsLog(RunFolder(copy).metrics("train_seg"))
    for step in (4, 8, 12):
        seg_log.add({"step": step, "epoch": 0, "lr": 0.005, "loss": 3.0 / step, "loss_0": 1.2 / step,
                     "loss_1": 1.0 / step, "loss_max": 0.8 / step, "images_per_s": 20.0})
    build_report(copy, num_examples=2, num_words=2, patches_per_word=2, word_images=4)
    page = (copy / "report.html").read_text()
    caption = figure_caption(page, "loss-train_seg")
    assert "The 3 reports of metrics/train_seg.csv" in caption and "(loss_0, loss_1, loss_max)" in caption
    assert "epoch ends" not in caption
    assert cell(page, "loss-train_cam").startswith("No metrics/train_cam.csv in this run folder")
    assert (copy / "report" / "loss_train_seg.png").is_file() and not (copy / "report" / "loss_train_cam.png").exists()


def test_reference_column_follows_the_data(words_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(words_run, copy)
    for name, crf in (("val", False), ("val_crf", True)):
        write_json(copy / "eval_seg" / f"{name}.json", {"split": "val", "crf": crf, "miou": 0.25,
                                                         "iou": {"background": 0.5, "cat": 0.0},
                                                         "predictions": str(copy / "seg" / name)})
    build_report(copy, num_examples=2, num_words=2, patches_per_word=2, word_images=4)
    page = (copy / "report.html").read_text()
    assert cell(page, "headline-seg-val_crf-reference") == "52.2"  # the README demo's DeepLab + CRF on val
    assert 'id="headline-seg-val_crf-reference" class="num reference" title="52.2 ± 6.2: README' in page
    assert cell(page, "headline-seg-val-reference") == "&ndash;"  # the demo measured DeepLab with its CRF only
    assert iou_table(page, "val")[0] == ["class", "CAM (background score 0.14)", "DeepLab on val",
                                         "DeepLab on val + CRF"]
    val_cam = json.loads((copy / "eval_cam" / "val.json").read_text())
    assert iou_table(page, "val")[1]["cat"] == [percent(val_cam["iou"]["cat"]), "0.0", "0.0"]
    # the same run on VOC data (not there): the paper's numbers of VWE v1, and a report without the data's parts
    cfg = load_config(copy / "config.yaml", ["synth.enabled=false", f"data.root={tmp_path / 'VOC2012'}"])
    cfg.dump(copy / "config.yaml")
    build_report(copy, num_examples=2, num_words=2, patches_per_word=2, word_images=4)
    page = (copy / "report.html").read_text()
    assert cell(page, "reference-title") == "reference: paper" and "VWE v1" in cell(page, "reference-note")
    paper = {"headline-cam": "52.9", "headline-cam-val": "52.0", "headline-pseudo": "&ndash;",  # 67.7 is IRNet's
             "headline-seg-val": "66.3", "headline-seg-val_crf": "67.2", "headline-cam-best": "&ndash;"}
    for element_id, expected in paper.items():
        assert cell(page, f"{element_id}-reference") == expected, element_id
    assert "headline-baseline" not in page and "The dataset is not readable" in page
    assert [image.get("id") for image in images_of(page)] == ["stage-timings", "loss-train_cam", "cam-curve"]
    # the paper's row is model.variant's; numbers the sources lack are "–"
    run = load_run(copy)
    for variant, expected in {"baseline": ["48.3", "47.0", None], "vwl-l": ["57.3", "56.9", None],
                              "vwl-m": ["56.9", "56.4", None]}.items():
        rows = report_page.headline(dataclasses.replace(run, cfg=run.cfg.with_overrides({"model.variant": variant})),
                                    {})["rows"]
        shown = {row["id"]: row["reference"] and row["reference"]["text"] for row in rows}
        assert [shown["headline-cam"], shown["headline-cam-val"], shown["headline-pseudo"]] == expected, variant
        assert shown["headline-seg-val_crf"] is None


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def test_visual_word_patches_are_the_most_similar_locations(words_run):
    model, _ = load_trained_classifier(words_run / "classifier")
    voc = VOCDataset(words_run / "data" / "VOC2012")
    ids = voc.split_ids("train")[:4]
    images = [read_image(voc.image_path(i)) for i in ids]
    words = visual_word_patches(model, images, [None] * len(images), num_words=3, patches_per_word=2, patch_size=20)
    # by hand: cosine of every feature vector to every codeword
    with torch.no_grad():
        sims = [torch.einsum("dhw,kd->khw", F.normalize(model.forward_features(normalize_image(im)[None])[0], dim=0),
                             F.normalize(model.words.codebook, dim=1)).numpy() for im in images]
    counts = sum(np.bincount(s.reshape(len(s), -1).argmax(0), minlength=len(s)) for s in sims)
    assert [w.word for w in words] == list(np.argsort(-counts, kind="stable")[:len(words)])
    assert [w.usage for w in words] == pytest.approx([counts[w.word] / counts.sum() for w in words])
    for w in words:
        per_image = [s[w.word].max() for s in sims]
        assert w.similarity == pytest.approx(sorted(per_image, reverse=True)[:2], abs=1e-5)
        best = int(np.argmax(per_image))
        row, col = np.unravel_index(sims[best][w.word].argmax(), sims[best][w.word].shape)
        y0 = min(max(round((row + 0.5) * 16 - 10), 0), 48 - 20)
        x0 = min(max(round((col + 0.5) * 16 - 10), 0), 64 - 20)
        np.testing.assert_array_equal(w.patches[0], images[best][y0:y0 + 20, x0:x0 + 20])


def test_variant_without_words_gets_a_note_and_the_cli_rebuilds(words_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(words_run, copy)
    cfg = load_config(copy / "classifier" / "config.yaml", ["model.variant=baseline"])
    export_model(build_classifier(cfg), cfg, copy / "classifier")
    assert cli_main(["report", str(copy), "--examples", "2", "--words", "2"]) == 0
    page = (copy / "report.html").read_text()
    assert "has no visual words" in cell(page, "no-words")
    assert [image.get("id") for image in images_of(page)] == ["stage-timings", "loss-train_cam", "cam-curve", None]
    assert not (copy / "report" / "visual_words.png").exists()  # the stale figure of the words variant is gone
    assert cli_main(["report", str(tmp_path / "not-a-run")]) == 2


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium (apt-get install -y chromium)")
def test_headless_chromium_shows_every_picture(words_run, tmp_path):
    script = REPO / "scripts" / "check_report.py"
    shot = tmp_path / "shot.png"
    done = subprocess.run([sys.executable, str(script), str(words_run), "--screenshot", str(shot)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    for line in ("figure stage-timings: an image", "figure loss-train_cam: an image", "figure cam-curve: an image",
                 "figure loss-train_seg: a note", "reference column: 8 cells shown"):
        assert f"check_report: {line}" in done.stdout
    with Image.open(shot) as image:
        assert image.size[0] > 600 and len(image.getcolors(1 << 24)) > 1000
    # the same page with its pictures and its reference column hidden by CSS: the DOM still holds them, the
    # screenshots do not
    hidden = tmp_path / "report.html"
    page = (words_run / "report.html").read_text()
    hidden.write_text(page.replace("</style>", "img { visibility: hidden; } .reference { display: none; }</style>"))
    done = subprocess.run([sys.executable, str(script), str(hidden)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and "image 1 of 5 (stage-timings)" in done.stderr and "is not shown" in done.stderr
    assert "the reference column is not shown: 0 of its 8 cells are visible" in done.stderr
    # a blank figure, and one whose stated size is not its own, fail before Chromium runs
    loss = next(i for i in images_of(page) if i.get("id") == "loss-train_cam")
    blank = io.BytesIO()
    Image.new("RGB", (int(loss["width"]), int(loss["height"])), "white").save(blank, format="PNG")
    broken = page.replace(loss["src"], "data:image/png;base64," + base64.b64encode(blank.getvalue()).decode())
    broken = re.sub(r'(<img id="cam-curve" src="[^"]*" width=")(\d+)"', r'\g<1>1"', broken)
    hidden.write_text(broken)
    done = subprocess.run([sys.executable, str(script), str(hidden)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and "image 2 of 5 (loss-train_cam): blank (one colour)" in done.stderr
    assert re.search(r"image 3 of 5 \(cam-curve\): \d+ x \d+ px, but the page states 1 x \d+", done.stderr)
