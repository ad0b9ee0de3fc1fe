"""Instance-segmentation accuracy: IoU matching, F1 and average precision.

Shared by the tests and ``benchmarks/`` so that every number is computed the same way.

Definitions (as in the 2018 Data Science Bowl and the cellpose / StarDist papers):

* objects are matched **one to one**; a pair with IoU > 0.5 is always unique, and for lower or
  higher thresholds the matching maximises the number of pairs above the threshold (Hungarian
  assignment on the IoU matrix restricted to pairs above the threshold);
* ``precision = TP / (TP + FP)``, ``recall = TP / (TP + FN)``, ``F1 = 2 TP / (2 TP + FP + FN)``;
* ``AP`` (average precision, DSB definition) ``= TP / (TP + FP + FN)``;
* ``mean AP`` is AP averaged over IoU thresholds 0.5, 0.55, ..., 0.9.

Examples
--------
>>> import numpy as np
>>> t = np.zeros((4, 4), np.uint32); t[:2, :2] = 1; t[2:, 2:] = 2
>>> p = np.zeros((4, 4), np.uint32); p[:2, :2] = 5
>>> s = match_scores(t, p, thresholds=(0.5,))
>>> int(s["tp"][0]), int(s["fn"][0]), float(s["f1"][0])
(1, 1, 0.6666666666666666)
"""

from __future__ import annotations

import numpy as np

__all__ = ["iou_matrix", "match_scores", "matched_iou", "segmentation_report", "DEFAULT_THRESHOLDS"]

DEFAULT_THRESHOLDS = tuple(np.round(np.arange(0.5, 0.901, 0.05), 2))


def _validate_pair(true: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    true = np.asarray(true)
    pred = np.asarray(pred)
    if true.shape != pred.shape:
        raise ValueError(f"true and pred labels must have the same shape, got {true.shape} and {pred.shape}")
    for name, a in (("true", true), ("pred", pred)):
        if not np.issubdtype(a.dtype, np.integer):
            raise ValueError(f"{name} labels must be an integer array, got dtype {a.dtype}")
    return true, pred


def iou_matrix(true: np.ndarray, pred: np.ndarray):
    """Pairwise IoU between the objects of two label images.

    Parameters
    ----------
    true, pred : ndarray of int, shape (Y, X)
        Label images (0 = background).

    Returns
    -------
    iou : ndarray of float, shape (n_true, n_pred)
        Dense IoU between every true object (rows, in increasing label order) and every predicted
        object (columns); objects that overlap nothing have all-zero rows/columns.
    true_ids, pred_ids : ndarray
        The label values of the rows and columns.
    """
    true, pred = _validate_pair(true, pred)
    t = true.ravel()
    p = pred.ravel()
    true_ids, t_inv = np.unique(t, return_inverse=True)
    pred_ids, p_inv = np.unique(p, return_inverse=True)
    nt, npd = len(true_ids), len(pred_ids)
    # contingency of (true index, pred index) over all pixels, sparse via bincount of pair codes
    codes = t_inv.astype(np.int64) * npd + p_inv
    pair_codes, inter = np.unique(codes, return_counts=True)
    ti, pi = np.divmod(pair_codes, npd)
    t_area = np.bincount(t_inv, minlength=nt)
    p_area = np.bincount(p_inv, minlength=npd)
    t0 = 1 if true_ids[0] == 0 else 0
    p0 = 1 if pred_ids[0] == 0 else 0
    keep = (ti >= t0) & (pi >= p0)
    ti, pi, inter = ti[keep], pi[keep], inter[keep]
    iou = np.zeros((nt - t0, npd - p0), dtype=np.float64)
    union = t_area[ti] + p_area[pi] - inter
    iou[ti - t0, pi - p0] = inter / union
    return iou, true_ids[t0:], pred_ids[p0:]


def _n_matches(iou: np.ndarray, thr: float) -> int:
    if iou.size == 0:
        return 0
    if thr >= 0.5:  # matches above 0.5 are unique: count pairs directly
        return int(np.count_nonzero(iou > thr))
    from scipy.optimize import linear_sum_assignment

    cost = -(iou > thr).astype(np.float64)
    r, c = linear_sum_assignment(cost)
    return int(np.count_nonzero(iou[r, c] > thr))


def match_scores(true: np.ndarray, pred: np.ndarray, *, thresholds=DEFAULT_THRESHOLDS) -> dict[str, np.ndarray]:
    """One-to-one matching scores at each IoU threshold.

    Parameters
    ----------
    true, pred : ndarray of int, shape (Y, X)
        Ground-truth and predicted label images.
    thresholds : sequence of float
        IoU thresholds; a pair matches when IoU > threshold.

    Returns
    -------
    dict of ndarray, each shape (len(thresholds),)
        ``thresholds, tp, fp, fn, precision, recall, f1, ap`` (AP = TP / (TP + FP + FN)).
    """
    iou, tids, pids = iou_matrix(true, pred)
    thr = np.asarray(thresholds, dtype=float)
    tp = np.array([_n_matches(iou, t) for t in thr], dtype=np.int64)
    n_true, n_pred = len(tids), len(pids)
    fp = n_pred - tp
    fn = n_true - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(n_pred > 0, tp / max(n_pred, 1), 1.0 if n_true == 0 else 0.0)
        recall = np.where(n_true > 0, tp / max(n_true, 1), 1.0 if n_pred == 0 else 0.0)
        denom_f1 = 2 * tp + fp + fn
        f1 = np.where(denom_f1 > 0, 2 * tp / np.maximum(denom_f1, 1), 1.0)
        denom_ap = tp + fp + fn
        ap = np.where(denom_ap > 0, tp / np.maximum(denom_ap, 1), 1.0)
    return {"thresholds": thr, "tp": tp, "fp": fp, "fn": fn, "precision": precision.astype(float),
            "recall": recall.astype(float), "f1": f1.astype(float), "ap": ap.astype(float)}


def matched_iou(true: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """IoU of each true object with its best one-to-one match (0 when unmatched).

    Returns
    -------
    ndarray of float, shape (n_true,)
        Use ``.mean()`` for the mean IoU of the true objects (e.g. cell bodies).
    """
    from scipy.optimize import linear_sum_assignment

    iou, tids, _ = iou_matrix(true, pred)
    out = np.zeros(len(tids))
    if iou.size:
        r, c = linear_sum_assignment(-iou)
        out[r] = iou[r, c]
    return out


def segmentation_report(true: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """Headline numbers: ``f1_50``, ``ap_50``, ``mean_ap`` (0.5-0.9), ``precision_50``, ``recall_50``,
    ``n_true``, ``n_pred``."""
    s = match_scores(true, pred, thresholds=DEFAULT_THRESHOLDS)
    return {
        "f1_50": float(s["f1"][0]),
        "ap_50": float(s["ap"][0]),
        "mean_ap": float(np.mean(s["ap"])),
        "precision_50": float(s["precision"][0]),
        "recall_50": float(s["recall"][0]),
        "n_true": int(s["tp"][0] + s["fn"][0]),
        "n_pred": int(s["tp"][0] + s["fp"][0]),
    }
