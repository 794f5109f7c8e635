"""vwe.storage on a local folder and on S3 (moto's server on loopback, reached through pyarrow's S3 client):
basic file operations, atomic writes, the stage outputs (CAMs, pseudo labels, manifests, reports, the exported
classifier) written to and read back from an s3:// run folder, a dataset root in the bucket, and the whole
pipeline with its run folder in the bucket."""
import json
import uuid
from pathlib import Path

import numpy as np
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from moto.server import ThreadedMotoServer

from vwe import storage
from vwe.cam import CamResult, cam_is_complete, load_cam, save_cam
from vwe.config import load_config
from vwe.data.datasets import ClassificationDataset, SegmentationDataset
from vwe.data.synth import generate
from vwe.data.voc import VOCDataset, labels_cache, read_image, read_mask, write_mask
from vwe.errors import ConfigError, DataError
from vwe.io import atomic_path, update_manifest, write_json
from vwe.models import build_classifier
from vwe.models.deeplab import build_deeplab
from vwe.run_folder import RunFolder
from vwe.data.voc import label_is_complete
from vwe.stages.make_pseudo import label_batch
from vwe.checkpoint import export_model
from vwe.stages.train_cam import load_trained_classifier

REPO = Path(__file__).resolve().parents[1]
BUCKET = "vwe-test"


@pytest.fixture(scope="module")
def s3_bucket():
    """A moto S3 server on 127.0.0.1 with one bucket; pyarrow finds it through AWS_ENDPOINT_URL_S3."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    with pytest.MonkeyPatch.context() as env:
        for key, value in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION":
                           "us-east-1", "AWS_ENDPOINT_URL_S3": endpoint, "AWS_EC2_METADATA_DISABLED": "true"}.items():
            env.setenv(key, value)
        pafs.S3FileSystem(endpoint_override=endpoint, scheme="http", allow_bucket_creation=True).create_dir(BUCKET)
        storage._filesystem.cache_clear()
        yield f"s3://{BUCKET}"
        storage._filesystem.cache_clear()
    server.stop()


@pytest.fixture(scope="module")
def ray_s3(s3_bucket):
    """A local Ray started after the bucket's AWS_* variables are set: its worker processes, which read and write
    the run folder, take this process's environment when Ray starts. Stopped afterwards, so that later modules
    start a Ray without them."""
    import ray

    ray.shutdown()
    ray.init(address="local", num_cpus=2, num_gpus=0, include_dashboard=False, log_to_driver=False,
             object_store_memory=256 * 1024**2)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def s3_voc(s3_bucket, synth_root) -> str:
    """The synthetic VOC folder uploaded to the bucket, without a labels cache (reading it makes one there)."""
    uri = f"{s3_bucket}/datasets/VOC2012"
    pafs.copy_files(str(synth_root), uri)
    storage.delete(f"{uri}/{labels_cache('xml')}")
    return uri


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path):
    """A fresh run folder: a local path, or a prefix in the S3 bucket."""
    if request.param == "local":
        return tmp_path / "out"
    return f"{request.getfixturevalue('s3_bucket')}/{uuid.uuid4().hex[:8]}"


def test_join_keeps_local_paths_and_uris():
    assert storage.join("/a/b", "c", "d.png") == Path("/a/b/c/d.png")
    assert storage.join("s3://bucket/run/", "cams", "x.npz") == "s3://bucket/run/cams/x.npz"
    assert storage.parent("s3://bucket/run/cams") == "s3://bucket/run" and storage.name("s3://b/x/y.png") == "y.png"
    assert storage.is_uri("gs://b/x") and not storage.is_uri("/data/x") and not storage.is_uri("file:///data/x")
    assert storage.join("file:///data", "x") == Path("/data/x")


def test_files_list_and_delete(root):
    storage.makedirs(storage.join(root, "sub"))
    storage.write_bytes(storage.join(root, "sub", "a.bin"), b"abc")
    storage.write_bytes(storage.join(root, "b.txt"), "héllo".encode())
    assert storage.read_bytes(storage.join(root, "sub", "a.bin")) == b"abc"
    assert storage.read_text(storage.join(root, "b.txt")) == "héllo"
    assert storage.listdir(root) == ["b.txt", "sub"] and storage.listdir(storage.join(root, "none")) == []
    assert storage.walk_files(root) == ["b.txt", "sub/a.bin"] and storage.walk_files(storage.join(root, "none")) == []
    assert storage.is_dir(storage.join(root, "sub")) and not storage.is_file(storage.join(root, "sub"))
    assert storage.exists(storage.join(root, "b.txt")) and not storage.exists(storage.join(root, "c.txt"))
    with pytest.raises(FileNotFoundError):
        storage.read_bytes(storage.join(root, "c.txt"))
    storage.delete(storage.join(root, "sub"))
    storage.delete(storage.join(root, "never-written"))
    assert storage.listdir(root) == ["b.txt"]


def test_failed_write_keeps_the_old_content(root):
    path = storage.join(root, "report.json")
    write_json(path, {"v": 1})
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_text('{"v": 2, "trunc')
        raise RuntimeError("crash while writing")
    assert storage.read_text(path) == '{\n  "v": 1\n}\n'
    assert storage.listdir(root) == ["report.json"]  # no temporary left behind


def test_local_copy_and_upload(root, tmp_path):
    source = tmp_path / "weights.bin"
    source.write_bytes(bytes(range(256)) * 100)
    target = storage.join(root, "w", "weights.bin")
    storage.upload(source, target)
    with storage.local_copy(target) as copy:
        assert copy.read_bytes() == source.read_bytes() and copy.name == "weights.bin"


def test_cam_and_pseudo_label_round_trip(root, tmp_path):
    cfg = load_config("tiny", [f"out_dir={root}", f"data.root={tmp_path / 'VOC2012'}",
                                                       "pseudo.method=threshold"]).resolved()
    assert cfg.out_dir == str(root if storage.is_uri(root) else Path(root).resolve())
    generate(cfg.data.root, {"train_aug": 2, "train": 2}, 24, 32, num_classes=20, seed=1)
    voc = VOCDataset(cfg.data.root)
    image_id = voc.split_ids("train")[0]
    keys = np.flatnonzero(voc.image_labels()[image_id])
    rng = np.random.default_rng(0)
    high_res = rng.random((len(keys), 24, 32), dtype=np.float32)
    saved = CamResult(keys, high_res[:, ::4, ::4].copy(), high_res)
    path = RunFolder(cfg.out_dir).cam(image_id)
    assert not cam_is_complete(path)
    save_cam(path, saved, np.float32)
    assert cam_is_complete(path)
    loaded = load_cam(path)
    np.testing.assert_array_equal(loaded.keys, keys)
    np.testing.assert_array_equal(loaded.high_res, high_res)

    storage.write_bytes(RunFolder(cfg.out_dir).cam("halfway"), storage.read_bytes(path)[:200])
    storage.write_bytes(RunFolder(cfg.out_dir).cam("stub"), b"PK")
    run = RunFolder(cfg.out_dir)
    assert not cam_is_complete(run.cam("halfway")) and not cam_is_complete(run.cam("stub"))

    # the CRF task body of make-pseudo: CAM from the run folder, image from data.root, label PNG to the run folder
    rows = label_batch({"id": np.array([image_id], object), "path": np.array([str(voc.image_path(image_id))], object)},
                       cfg)
    assert rows["error"].tolist() == [""]
    label_file = RunFolder(cfg.out_dir).pseudo_label(image_id)
    assert label_is_complete(label_file)
    label = read_mask(label_file)
    assert label.shape == read_image(voc.image_path(image_id)).shape[:2]
    assert set(np.unique(label)) <= {0, *(keys + 1)}
    storage.write_bytes(RunFolder(cfg.out_dir).pseudo_label("halfway"), storage.read_bytes(label_file)[:-6])
    storage.write_bytes(RunFolder(cfg.out_dir).pseudo_label("stub"), b"\x89PNG")
    assert not label_is_complete(RunFolder(cfg.out_dir).pseudo_label("halfway"))
    assert not label_is_complete(RunFolder(cfg.out_dir).pseudo_label("stub"))
    write_mask(RunFolder(cfg.out_dir).pseudo_label("copy"), label)
    np.testing.assert_array_equal(read_mask(RunFolder(cfg.out_dir).pseudo_label("copy")), label)


def test_manifest_merges_rows(root):
    manifest = storage.join(root, "cams", "manifest.parquet")
    assert update_manifest(manifest, [{"id": "b", "seconds": 1.0}, {"id": "a", "seconds": 2.0}]) == 2
    assert update_manifest(manifest, [{"id": "a", "seconds": 3.0}, {"id": "c", "seconds": 4.0}]) == 3
    with storage.open_input(manifest) as f:
        rows = pq.read_table(f).to_pylist()
    assert rows == [{"id": "a", "seconds": 3.0}, {"id": "b", "seconds": 1.0}, {"id": "c", "seconds": 4.0}]


def test_exported_classifier_round_trip(root):
    cfg = load_config("tiny", [f"out_dir={root}"])
    torch.manual_seed(0)
    model = build_classifier(cfg)
    weights = export_model(model, cfg, storage.join(root, "classifier"))
    assert storage.is_file(weights)
    loaded, loaded_cfg = load_trained_classifier(storage.join(root, "classifier"))
    assert loaded_cfg.model == cfg.model
    for key, value in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value, rtol=0, atol=0, msg=key)
    # DeepLab starts from that export wherever it lies (seg.init: classifier, the demo's setting)
    seg_cfg = cfg.with_overrides({"seg.backbone": cfg.model.backbone, "seg.init": "classifier",
                                  "seg.pretrained": "{out_dir}/classifier/model.pth"}).resolved()
    deeplab = build_deeplab(seg_cfg.seg, cfg.data.num_classes + 1)
    for key, value in model.backbone.state_dict().items():
        torch.testing.assert_close(deeplab.backbone.state_dict()[key], value, rtol=0, atol=0, msg=key)


def test_a_dataset_root_in_an_object_store_reads_like_the_local_one(s3_bucket, s3_voc, synth_root, tmp_path):
    from vwe.pipeline import run

    local, remote = VOCDataset(synth_root), VOCDataset(s3_voc)
    assert remote.splits() == local.splits() == ["train", "val", "test", "train_aug"]
    assert all(remote.split_ids(split) == local.split_ids(split) for split in local.splits())
    image_id, test_id = local.split_ids("val")[0], local.split_ids("test")[0]
    assert remote.image_path(image_id) == f"{s3_voc}/JPEGImages/{image_id}.jpg"
    np.testing.assert_array_equal(read_image(remote.image_path(image_id)), read_image(local.image_path(image_id)))
    assert remote.mask_path(image_id) == f"{s3_voc}/SegmentationClassAug/{image_id}.png"
    np.testing.assert_array_equal(read_mask(remote.mask_path(image_id)), read_mask(local.mask_path(image_id)))
    assert remote.mask_path(test_id) is None
    np.testing.assert_array_equal(remote.labels(test_id), local.labels(test_id))  # from the annotation XML
    labels, expected = remote.image_labels(), local.image_labels()
    assert storage.is_file(f"{s3_voc}/{labels_cache('xml')}")  # the cache is written beside the data, as locally
    assert labels.keys() == expected.keys() and all(np.array_equal(labels[i], expected[i]) for i in expected)
    with pytest.raises(DataError, match=f"{s3_voc}/JPEGImages/2199_000001.jpg: image file missing"):
        read_image(remote.image_path("2199_000001"))

    # the training datasets read it as they read the local folder: same ids, same augmented items
    remote_item = ClassificationDataset(s3_voc, "train", crop_size=32, resize_long=(48, 80), seed=0)[0]
    local_item = ClassificationDataset(synth_root, "train", crop_size=32, resize_long=(48, 80), seed=0)[0]
    assert remote_item["id"] == local_item["id"]
    assert torch.equal(remote_item["image"], local_item["image"]) and torch.equal(remote_item["labels"],
                                                                                  local_item["labels"])
    # DeepLab's dataset with its labels folder in the bucket too (the masks stand in for pseudo labels)
    remote_seg = SegmentationDataset(s3_voc, "train", f"{s3_voc}/SegmentationClassAug", crop_size=32, seed=0)
    local_seg = SegmentationDataset(synth_root, "train", synth_root / "SegmentationClassAug", crop_size=32, seed=0)
    assert all(torch.equal(remote_seg[0][key], local_seg[0][key]) for key in ("image", "label"))
    with pytest.raises(DataError, match=f"{s3_voc}/JPEGImages: .* no label file"):
        SegmentationDataset(s3_voc, "train", f"{s3_voc}/JPEGImages")

    # the data stage of `vwe run` checks every file of the bucket's copy
    cfg = load_config("tiny", [f"out_dir={tmp_path / 'run'}", f"data.root={s3_voc}",
                                                       "synth.enabled=false"])
    assert cfg.resolved().data.root == s3_voc
    assert run(cfg, until="data")["data"]["result"]["counts"] == local.check().counts
    # the synthetic generator writes local folders only, and says so
    with pytest.raises(ConfigError, match=f"{s3_bucket}/synth: .*local or NFS"):
        generate(f"{s3_bucket}/synth", {"train_aug": 2, "train": 2}, 24, 32)
    assert storage.listdir(f"{s3_bucket}/synth") == []


def test_the_whole_pipeline_runs_in_an_object_store(ray_s3, s3_bucket, synth_root):
    from vwe.pipeline import run
    from vwe.stages import stages_of

    out = f"{s3_bucket}/pipeline-{uuid.uuid4().hex[:8]}"
    cfg = load_config("tiny", [f"out_dir={out}", f"data.root={synth_root}",
                                                       "synth.enabled=false"])
    first = run(cfg)
    assert list(first) == [stage.name for stage in stages_of(cfg)] and not any(r["skipped"] for r in first.values())

    def ids(folder: str, suffix: str) -> set[str]:
        return {n.removesuffix(suffix) for n in storage.listdir(f"{out}/{folder}") if n.endswith(suffix)}

    voc = VOCDataset(synth_root)
    train_aug, val = set(voc.split_ids("train_aug")), set(voc.split_ids("val"))
    assert storage.is_file(f"{out}/classifier/model.pth") and storage.is_file(f"{out}/deeplab/model.pth")
    assert ids("cams", ".npz") == train_aug | val and ids("pseudo_labels", ".png") == train_aug
    assert ids("seg/val", ".png") == val and storage.is_file(f"{out}/seg/val/manifest.parquet")
    for report in ("eval_cam/train.json", "eval_labels/pseudo_train.json", "eval_seg/val.json"):
        scores = json.loads(storage.read_text(f"{out}/{report}"))
        assert 0 <= scores.get("best_miou", scores.get("miou")) <= 1
    assert json.loads(storage.read_text(f"{out}/eval_seg/val.json"))["predictions"] == f"{out}/seg/val"
    assert {"train_cam", "train_seg"} <= set(storage.listdir(f"{out}/ray"))  # Ray Train's checkpoints
    page = storage.read_text(f"{out}/report.html")
    assert "DeepLab on val" in page and page.count("data:image/png;base64,") == len(ids("report", ".png")) >= 3
    assert yaml.safe_load(storage.read_text(f"{out}/config.yaml"))["out_dir"] == out

    second = run(cfg)
    assert all(record["skipped"] for record in second.values())
