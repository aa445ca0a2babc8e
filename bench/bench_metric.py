"""Benchmark: the competition score of one image, cellseg_nb vs three peers, same inputs, one run.

Run: `python bench/bench_metric.py` (writes `bench/results/bench_metric.json`), or `--check` (about 15 s: asserts
the scores equal and the bounds below). Inputs: 520 x 704 images with 300 and 800 elliptical cells (shsy5y density);
the prediction shifts and rescales the cells, misses 10% and adds 10% (`_inputs.make_pair`).
Peers (written here from their description), each given its natural input, prepared outside the timed region:
- pycocotools: `pycocotools.mask.iou` on COCO RLEs, then the same one-to-one matching (IoU > t) per threshold;
- cellpose: `cellpose.metrics.average_precision` on label images (IoU >= t; float32 results);
- histogram2d: the public DSB-2018 style metric (`np.histogram2d` of the two label images, "exactly one match").
Ours: `cellseg_nb.metric.score_image` on two `Instances` (also timed including `Instances.from_label_image`).
Every peer's value is checked equal to ours before the table is printed.
Bounds (CPU time, asserted by `--check`): `score_image` >= 3x faster than pycocotools; our whole path from label
images (`Instances.from_label_image` of both images + `score_image`) >= 2x faster than cellpose's metric and than
the histogram2d metric, which also start from label images (measured 4x / 12x at 300 cells, more at 800).
"""
import sys, time
from pathlib import Path
sys.path.insert(0, str(Path(__file__).parent))
import numpy as np
import pandas as pd
from pycocotools import mask as mask_util
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import maximum_bipartite_matching
from _inputs import make_pair, race, save_results, check_bound
from cellseg_nb.instances import Instances, pairwise_iou
from cellseg_nb.metric import score_image, THRESHOLDS


def coco_rles(lab):
    "COCO RLEs of a label image's cells 1..N (the peer's input)."
    return [mask_util.encode(np.asfortranarray((lab == i).astype(np.uint8))) for i in range(1, lab.max() + 1)]


def pycocotools_score(gt_rles, pred_rles, thresholds=THRESHOLDS):
    "pycocotools.mask.iou on COCO RLEs, then a maximum one-to-one matching among pairs with IoU > t."
    if not gt_rles and not pred_rles: return 1.0
    iou = mask_util.iou(pred_rles, gt_rles, [0] * len(gt_rles)) if gt_rles and pred_rles else np.zeros((0, 0))
    iou = np.asarray(iou).reshape(len(pred_rles), len(gt_rles))
    prec = []
    for t in thresholds:
        m = iou > t
        if (m.sum(0) <= 1).all() and (m.sum(1) <= 1).all(): tp = int(m.sum())
        else: tp = int((maximum_bipartite_matching(csr_matrix(m), perm_type='column') >= 0).sum())
        prec.append(tp / (len(gt_rles) + len(pred_rles) - tp))
    return float(np.mean(prec))


def cellpose_score(gt_lab, pred_lab, thresholds=THRESHOLDS):
    from cellpose.metrics import average_precision
    return float(np.mean(average_precision(gt_lab, pred_lab, threshold=list(thresholds))[0]))


def histogram2d_score(labels, y_pred, thresholds=THRESHOLDS):
    "The public histogram2d metric (labels must be consecutive 1..N)."
    true_objects, pred_objects = len(np.unique(labels)), len(np.unique(y_pred))
    intersection = np.histogram2d(labels.flatten(), y_pred.flatten(), bins=(true_objects, pred_objects))[0]
    area_true = np.histogram(labels, bins=true_objects)[0]
    area_pred = np.histogram(y_pred, bins=pred_objects)[0]
    union = area_true[:, None] + area_pred[None, :] - intersection
    intersection, union = intersection[1:, 1:], union[1:, 1:]
    union[union == 0] = 1e-9
    iou = intersection / union
    prec = []
    for t in thresholds:
        matches = iou > t
        tp = np.sum(np.sum(matches, axis=1) == 1)
        fp = np.sum(np.sum(matches, axis=0) == 0)
        fn = np.sum(np.sum(matches, axis=1) == 0)
        prec.append(tp / (tp + fp + fn))
    return float(np.mean(prec))


BOUNDS = {('cellseg_nb score_image (Instances)', 'pycocotools mask.iou + matching'): 3.0,
          ('cellseg_nb incl. from_label_image', 'cellpose average_precision'): 2.0,
          ('cellseg_nb incl. from_label_image', 'public histogram2d'): 2.0}


def bench(n_cells, seed, rounds=5):
    gl, pl = make_pair(n_cells, seed)
    G, P = Instances.from_label_image(gl), Instances.from_label_image(pl)
    gr, pr = coco_rles(gl), coco_rles(pl)
    ours = score_image(G, P)
    iou = pairwise_iou(G, P)[2]
    # cellpose counts IoU >= t: give it t + 1e-9 (IoUs here are ratios of counts < 2^19, so a ratio above t is
    # above it by more than 1e-7) to get the strict competition rule; report how many IoUs sit exactly on a t
    on_t = int(np.isin(iou, THRESHOLDS).sum())
    vals = {'pycocotools': pycocotools_score(gr, pr), 'cellpose': cellpose_score(gl, pl, THRESHOLDS + 1e-9),
            'histogram2d': histogram2d_score(gl, pl)}
    assert abs(vals['pycocotools'] - ours) <= 1e-12, (vals, ours)
    assert abs(vals['histogram2d'] - ours) <= 1e-12, (vals, ours)
    assert abs(vals['cellpose'] - ours) <= 1e-6, (vals, ours)      # cellpose returns float32
    times = race({
        'cellseg_nb score_image (Instances)': lambda: score_image(G, P),
        'cellseg_nb incl. from_label_image':
            lambda: score_image(Instances.from_label_image(gl), Instances.from_label_image(pl)),
        'pycocotools mask.iou + matching': lambda: pycocotools_score(gr, pr),
        'cellpose average_precision': lambda: cellpose_score(gl, pl, THRESHOLDS + 1e-9),
        'public histogram2d': lambda: histogram2d_score(gl, pl),
    }, rounds=rounds, clock='both')
    ref = times['pycocotools mask.iou + matching']
    return pd.DataFrame([dict(cells=len(G), preds=len(P), impl=k, ms_wall=w * 1e3, ms_cpu=c * 1e3,
                              pyco_over_this_wall=ref[0] / w, pyco_over_this_cpu=ref[1] / c, score=ours,
                              iou_on_threshold=on_t) for k, (w, c) in times.items()])


def check_bounds(df):
    "Assert every bound in `BOUNDS` on CPU time, at every size."
    for cells, d in df.groupby('cells'):
        ms = dict(zip(d.impl, d.ms_cpu))
        for (ours, peer), bound in BOUNDS.items():
            check_bound(f"{cells} cells: {ours} vs {peer} (CPU)", ms[peer] / ms[ours], bound)


if __name__ == '__main__':
    import argparse
    ap = argparse.ArgumentParser(); ap.add_argument('--check', action='store_true', help='assert scores and bounds')
    a = ap.parse_args()
    pd.set_option('display.width', 140)
    df = pd.concat([bench(300, 0, 3 if a.check else 5), bench(800, 1, 3 if a.check else 5)], ignore_index=True)
    print(df.to_string(index=False, float_format=lambda x: f"{x:9.4f}"))
    print("all peers give our score on both images")
    if a.check: check_bounds(df)
    else: save_results('bench_metric', df.to_dict('records'))
