"""The benchmark commands run on CPU at test size and print their tables (speed is never asserted)."""
import json

from vwe.cli import main


def test_bench_all_measures_every_stage_in_one_process(ray_local, tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "all", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    assert report["quick"] is True and report["errors"] == {} and report["device"].startswith("CPU")
    assert list(report["sections"]) == ["train", "cam", "deeplab", "crf", "irn"] and "## deeplab" in printed
    train = report["sections"]["train"]
    assert [(r["settings"], r["compiled"], r["input"]) for r in train] == [
        ("fp32", False, "model"), ("fast", False, "model"), ("fast", False, "host"), ("fast", False, "device"),
        ("fast", True, "model"), ("fast", True, "device")]
    for section in ("train", "cam", "deeplab"):
        assert all(r["img_s"] > 0 and r["peak_mb"] > 0 and r["device"] == report["device"]
                   for r in report["sections"][section])
    cams = {r["settings"]: r for r in report["sections"]["cam"]}
    assert cams["batched"]["max_abs_diff"] < 1e-4 and cams["fast"]["max_abs_diff"] < 1e-2
    assert all(r["agreement"] >= 0.995 for r in report["sections"]["crf"])
    assert report["sections"]["irn"][0]["max_rel_diff"] < 1e-4


def test_bench_irn(tmp_path):
    assert main(["bench", "irn", "--sizes", "40x48", "96x128", "--batches", "1", "--exp-times", "4",
                 "--dense-max-nodes", "200", "--json", str(tmp_path / "irn.json")]) == 0
    small, large = json.loads((tmp_path / "irn.json").read_text())
    assert (small["cells"], large["cells"]) == (120, 768) and small["sparse_img_s"] > 0
    # the dense walk ran where it fits, and agrees; beyond the limit it is estimated, and says so
    assert small["dense_estimated"] is False and small["max_rel_diff"] < 1e-4
    assert large["dense_estimated"] is True and large["max_rel_diff"] is None and large["dense_img_s"] > 0
