"""The benchmark commands run on CPU at test size and print their tables (speed is never asserted)."""
import json

from vwe.cli import main


def test_bench_train(tmp_path, capsys):
    assert main(["bench", "train", "--steps", "2", "--json", str(tmp_path / "train.json")]) == 0
    assert "full_step_img_s" in capsys.readouterr().out
    (row,) = json.loads((tmp_path / "train.json").read_text())
    assert row["backbone"] == "resnet-tiny" and row["model_step_img_s"] > 0 and row["full_step_img_s"] > 0


def test_bench_cam(tmp_path, capsys):
    assert main(["bench", "cam", "--images", "4", "--batch-size", "2", "--json", str(tmp_path / "cam.json")]) == 0
    (row,) = json.loads((tmp_path / "cam.json").read_text())
    assert row["max_abs_diff"] < 1e-2 and row["batched_img_s"] > 0


def test_bench_crf(ray_local, tmp_path):
    assert main(["bench", "crf", "--images", "2", "--size", "24x32", "--labels", "2", "3",
                 "--json", str(tmp_path / "crf.json")]) == 0
    rows = json.loads((tmp_path / "crf.json").read_text())
    assert [(r["crf"], r["labels"]) for r in rows] == [("label", 2), ("label", 3), ("softmax", 2), ("softmax", 3)]
    assert all(r["pydensecrf_s_1_core"] > 0 and r["torch_cpu_s"] > 0 for r in rows)
    assert all(r["agreement"] >= 0.995 for r in rows)  # the two backends give the same labels


def test_bench_irn(tmp_path):
    assert main(["bench", "irn", "--sizes", "40x48", "96x128", "--batches", "1", "--exp-times", "4",
                 "--dense-max-nodes", "200", "--json", str(tmp_path / "irn.json")]) == 0
    small, large = json.loads((tmp_path / "irn.json").read_text())
    assert (small["cells"], large["cells"]) == (120, 768) and small["sparse_img_s"] > 0
    # the dense walk ran where it fits, and agrees; beyond the limit it is estimated, and says so
    assert small["dense_estimated"] is False and small["max_rel_diff"] < 1e-4
    assert large["dense_estimated"] is True and large["max_rel_diff"] is None and large["dense_img_s"] > 0
