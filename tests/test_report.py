"""The run report: a self-contained report.html whose numbers match the run's files, whose pictures are PNG data
URIs, and which Chromium displays in full."""
import base64
import html
import io
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
from vwe.io import write_json
from vwe.models import build_classifier
from vwe.report import build_report, example_cells, example_columns, load_run, visual_word_patches
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
    for image_id in voc.split_ids("train_aug"):
        result = multiscale_cam(model, read_image(voc.image_path(image_id)), labels[image_id], cfg.cam.scales)
        save_cam(RunFolder(out).cam(image_id), result)
        write_mask(RunFolder(out).pseudo_label(image_id),
                   cam_to_label(result.high_res, result.keys, cfg.cam.background_score))
    train = voc.split_ids("train")
    scores = [cfg.cam.background_score, *cfg.cam.sweep]
    sweep = sum(cam_confusions(RunFolder(out).cam(i), gt_mask(voc, i), scores) for i in train)
    write_report(out / "eval_cam", "train",
                 {"split": "train", **cam_scores(sweep, cfg.cam.background_score, cfg.cam.sweep)})
    matrix = sum(evaluation.image_confusion(RunFolder(out).pseudo_label(i), voc.mask_path(i), 21,
                                            unsure_as_background=True)
                 for i in train)
    write_report(out / "eval_labels", "pseudo_train", {"split": "train", **evaluation.summarize(matrix)})
    write_json(out / "stages.json", STAGES)
    build_report(out, num_examples=3, num_words=4, patches_per_word=3, word_images=6)
    return out


def test_every_picture_is_an_embedded_png_also_kept_as_a_file(words_run):
    page = (words_run / "report.html").read_text()
    assert "<script" not in page and "http://" not in page and "https://" not in page
    images = images_of(page)
    files = {p.name: p.read_bytes() for p in (words_run / "report").glob("*.png")}
    assert set(files) == {"cam_threshold_curve.png", "examples_train.png", "visual_words.png"}
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
    import json

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
    for name in ("background", "cat", "mIoU"):
        row = re.search(rf'<tr id="iou-{name}">(.*?)</tr>', page).group(1)
        values = re.findall(r'<td class="num"[^>]*>([^<]*)</td>', row)
        cam_value = cam["miou"] if name == "mIoU" else cam["iou"][name]
        pseudo_value = pseudo["miou"] if name == "mIoU" else pseudo["iou"][name]
        assert values == [f"{100 * v:.1f}" if v is not None else "&ndash;" for v in (cam_value, pseudo_value)]
    stage = re.search(r'<tr id="stage-train_cam">(.*?)</tr>', page).group(1)
    assert ">12.5<" in stage and ">64<" in stage and ">5.1<" in stage
    assert "skipped" in re.search(r'<tr id="stage-data">(.*?)</tr>', page).group(1)
    assert html.escape((words_run / "config.yaml").read_text()) in page


def test_example_columns_follow_what_the_run_holds(words_run, tmp_path):
    run = load_run(words_run)
    voc = VOCDataset(run.cfg.data.root)
    ids = voc.split_ids("train")[:2]
    titles, cells = example_cells(voc, ids, example_columns(run, voc, None))
    assert [t for t, _ in titles] == ["image", "CAM", "pseudo label", "ground truth"]
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
    assert "<th>DeepLab on train</th>" in page
    run = load_run(copy)
    titles, _ = example_cells(voc, ids, example_columns(run, voc, run.segmentation[0].predictions))
    assert [t for t, _ in titles] == ["image", "CAM", "pseudo label", "prediction", "ground truth"]


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
    assert len(images_of(page)) == 2
    assert not (copy / "report" / "visual_words.png").exists()  # the stale figure of the words variant is gone
    assert cli_main(["report", str(tmp_path / "not-a-run")]) == 2


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium (apt-get install -y chromium)")
def test_headless_chromium_shows_every_picture(words_run, tmp_path):
    script = REPO / "scripts" / "check_report.py"
    shot = tmp_path / "shot.png"
    done = subprocess.run([sys.executable, str(script), str(words_run), "--screenshot", str(shot)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    with Image.open(shot) as image:
        assert image.size[0] > 600 and len(image.getcolors(1 << 24)) > 1000
    # the same page with its pictures hidden by CSS: the DOM still holds them, the screenshot does not
    hidden = tmp_path / "report.html"
    page = (words_run / "report.html").read_text()
    hidden.write_text(page.replace("</style>", "img { visibility: hidden; }</style>"))
    done = subprocess.run([sys.executable, str(script), str(hidden)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and "image 1 of 3" in done.stderr and "is not shown" in done.stderr
