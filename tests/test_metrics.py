import numpy as np
import pytest

from vwe.cam import cam_to_label
from vwe.metrics import ConfusionMatrix, confusion, sweep_confusions

# 4 classes; GT 255 and GT 7 (>= num_classes) are dropped. Class 3 is predicted once but absent from the GT.
GT = np.array([[0, 0, 1, 1, 255],
               [2, 2, 1, 1, 7]], dtype=np.uint8)
PRED = np.array([[0, 1, 1, 1, 3],
                 [2, 0, 3, 2, 1]], dtype=np.uint8)


def test_confusion_by_hand():
    # valid (gt, pred) pairs: (0,0) (0,1) (1,1) (1,1) (2,2) (2,0) (1,3) (1,2)
    expected = np.array([[1, 1, 0, 0],
                         [0, 2, 1, 1],
                         [1, 0, 1, 0],
                         [0, 0, 0, 0]])
    matrix = confusion(GT, PRED, num_classes=4)
    assert matrix.dtype == np.int64
    np.testing.assert_array_equal(matrix, expected)


def test_scores_by_hand():
    cm = ConfusionMatrix(num_classes=4)
    cm.update(GT, PRED)
    scores = cm.compute()
    # GT counts 2 4 2 0, prediction counts 2 3 2 1, TP 1 2 1 0
    # IoU0 = 1/(2+2-1) = 1/3, IoU1 = 2/(4+3-2) = 2/5, IoU2 = 1/(2+2-1) = 1/3, class 3 absent from GT -> nan
    np.testing.assert_allclose(scores.iou[:3], [1 / 3, 2 / 5, 1 / 3])
    assert np.isnan(scores.iou[3])
    assert scores.miou == pytest.approx((1 / 3 + 2 / 5 + 1 / 3) / 3)  # 16/45; counting class 3 as 0 would give 4/15
    assert scores.pixel_accuracy == pytest.approx(4 / 8)


def test_adding_parts_equals_one_update():
    whole = ConfusionMatrix(4)
    whole.update(GT, PRED)
    top, bottom = ConfusionMatrix(4), ConfusionMatrix(4)
    top.update(GT[:1], PRED[:1])
    bottom.update(GT[1:], PRED[1:])
    np.testing.assert_array_equal(ConfusionMatrix(4, top.matrix).add(bottom.matrix).matrix, whole.matrix)
    np.testing.assert_array_equal(top.add(bottom).matrix, whole.matrix)
    with pytest.raises(ValueError, match="confusion matrix"):
        whole.add(np.zeros((21, 21)))


def test_empty_matrix_scores_are_nan():
    scores = ConfusionMatrix(3).compute()
    assert np.isnan(scores.miou) and np.isnan(scores.pixel_accuracy) and np.isnan(scores.iou).all()


def test_prediction_out_of_range_is_rejected():
    with pytest.raises(ValueError, match="0..3"):
        confusion(GT, np.full_like(PRED, 255), num_classes=4)


def _loop_sweep(high_res, keys, gt, thresholds):
    return np.stack([confusion(gt, cam_to_label(high_res, keys, t), 21) for t in thresholds])


def test_sweep_equals_cam_to_label_per_threshold_including_ties():
    rng = np.random.default_rng(0)
    keys = np.array([2, 9, 14])
    high_res = (rng.integers(0, 40, (3, 30, 40)) / 100).astype(np.float32)  # scores on the 0.01 grid: exact ties
    gt = rng.choice([0, 3, 10, 15, 255], size=(30, 40)).astype(np.uint8)
    thresholds = [0.3, 0.05, 0.15, 0.14, 0.2, 0.39, 0.0]  # unsorted on purpose
    sweep = sweep_confusions(high_res, keys, gt, thresholds)
    assert sweep.shape == (7, 21, 21) and sweep.dtype == np.int64
    np.testing.assert_array_equal(sweep, _loop_sweep(high_res, keys, gt, thresholds))


def test_sweep_without_classes_is_all_background():
    gt = np.array([[0, 5, 255]], dtype=np.uint8)
    sweep = sweep_confusions(np.zeros((0, 1, 3), np.float32), np.zeros(0, np.int64), gt, [0.1, 0.2])
    np.testing.assert_array_equal(sweep, _loop_sweep(np.zeros((0, 1, 3), np.float32), np.zeros(0), gt, [0.1, 0.2]))
    assert sweep[:, 0, 0].tolist() == [1, 1] and sweep[:, 5, 0].tolist() == [1, 1]
