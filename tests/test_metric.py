"""The competition metric against independent computations: IoU from `pycocotools.mask.iou` on COCO RLEs made
from dense masks + a brute-force (augmenting path) maximum matching written here; `cellpose.metrics`."""
import itertools
import numpy as np
import pandas as pd
import pytest
from pycocotools import mask as mask_util
from cellseg_nb.instances import Instances, pairwise_iou
from cellseg_nb.metric import (THRESHOLDS, precision_at, score_image, true_positives, max_matching_size, evaluate,
                               summarize, coco_ap, COCO_STATS)


# ---------------------------------------------------------------- independent reference
def kuhn_matching(adj, n_rows, n_cols):
    "Maximum bipartite matching by augmenting paths (Kuhn); adj: bool (n_rows, n_cols)."
    match_col = [-1] * n_cols
    def augment(r, seen):
        for c in range(n_cols):
            if adj[r, c] and not seen[c]:
                seen[c] = True
                if match_col[c] < 0 or augment(match_col[c], seen):
                    match_col[c] = r
                    return True
        return False
    return sum(augment(r, [False] * n_cols) for r in range(n_rows))


def ref_precision(gt_masks, pred_masks, thresholds=THRESHOLDS):
    "Reference: pycocotools.mask.iou on dense-encoded masks, IoU > t, maximum matching, TP/(TP+FP+FN); 0/0 -> 1."
    ng, npred = len(gt_masks), len(pred_masks)
    enc = lambda ms: [mask_util.encode(np.asfortranarray(m.astype(np.uint8))) for m in ms]
    if ng and npred:
        iou = np.asarray(mask_util.iou(enc(pred_masks), enc(gt_masks), [0] * ng)).reshape(npred, ng)
    else:
        iou = np.zeros((npred, ng))
    out = []
    for t in thresholds:
        tp = kuhn_matching(iou > t, npred, ng)
        d = ng + npred - tp
        out.append(tp / d if d else 1.0)
    return np.array(out)


def random_masks(rng, n, shape, kind='mixed'):
    "n random masks (bool (n, H, W)): rectangles, ellipses or noise blobs; overlaps and duplicates allowed."
    h, w = shape
    out = np.zeros((n, h, w), bool)
    yy, xx = np.mgrid[:h, :w]
    for i in range(n):
        k = rng.integers(3) if kind == 'mixed' else kind
        if k == 0:
            y0, x0 = rng.integers(0, h), rng.integers(0, w)
            out[i, y0:y0 + rng.integers(1, 9), x0:x0 + rng.integers(1, 9)] = True
        elif k == 1:
            cy, cx, a, b = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(1, 6), rng.uniform(1, 6)
            out[i] = ((yy - cy) / a) ** 2 + ((xx - cx) / b) ** 2 <= 1
        else:
            out[i] = rng.random((h, w)) < 0.1
    if n > 1 and rng.random() < 0.3: out[rng.integers(n)] = out[rng.integers(n)]     # duplicate
    return out


def perturb(rng, masks):
    "A prediction: each mask shifted by up to 1 px, some dropped, some random extras."
    h, w = masks.shape[1:]
    keep = masks[rng.random(len(masks)) < 0.8]
    shifted = np.array([np.roll(m, tuple(rng.integers(-1, 2, 2)), (0, 1)) for m in keep]).reshape(-1, h, w)
    return np.concatenate([shifted, random_masks(rng, rng.integers(0, 3), (h, w))]).astype(bool)


# ---------------------------------------------------------------- exactness
def test_equals_pycocotools_and_bruteforce_matching_on_random_sets():
    rng = np.random.default_rng(0)
    for trial in range(150):
        shape = tuple(rng.integers(4, 30, 2))
        g = random_masks(rng, rng.integers(0, 9), shape)
        p = perturb(rng, g) if rng.random() < 0.7 else random_masks(rng, rng.integers(0, 9), shape)
        G, P = Instances.from_masks(g), Instances.from_masks(p)
        thr = THRESHOLDS if trial % 2 else np.round(rng.uniform(0, 1, 5), 3)
        ref = ref_precision(list(g), list(p), thr)
        got = precision_at(G, P, thr)
        assert np.abs(got - ref).max() <= 1e-12, (trial, got, ref)
        assert score_image(G, P) == pytest.approx(ref_precision(list(g), list(p)).mean(), abs=1e-12)


def test_overlapping_gt_needs_maximum_matching():
    "Hand case where a first-come matching loses a pair and the maximum matching does not."
    z = lambda c0, c1: np.pad(np.ones((2, c1 - c0), bool), ((0, 0), (c0, 12 - c1)))
    A, B, P1, P2 = z(0, 10), z(2, 12), z(1, 11), z(0, 9)
    G, P = Instances.from_masks(np.stack([A, B])), Instances.from_masks(np.stack([P1, P2]))
    assert true_positives(G, P, [0.6]).tolist() == [2]
    assert precision_at(G, P, [0.6]).tolist() == [1.0]
    assert np.allclose(precision_at(G, P), ref_precision([A, B], [P1, P2]), atol=1e-12)
    # brute force over all one-to-one assignments agrees with scipy's Hopcroft-Karp and with Kuhn's algorithm
    rng = np.random.default_rng(3)
    for _ in range(100):
        adj = rng.random((rng.integers(1, 5), rng.integers(1, 5))) < 0.4
        n, m = adj.shape
        best = max(sum(1 for i, j in enumerate(perm) if j < m and adj[i, j])      # row i -> column perm[i]
                   for perm in itertools.permutations(range(m + n), n))         # (j >= m: row unmatched)
        r, c = np.nonzero(adj)
        assert max_matching_size(r * 7 + 3, c * 5 + 11) == best == kuhn_matching(adj, n, m)


def test_edge_cases():
    sq = lambda r0, r1, c0, c1: np.pad(np.ones((r1 - r0, c1 - c0), bool), ((r0, 10 - r1), (c0, 12 - c1)))
    a, b = sq(0, 4, 0, 4), sq(0, 4, 4, 8)
    E = Instances.empty((10, 12))
    M = lambda *ms: Instances.from_masks(np.array(ms, bool).reshape(-1, 10, 12))
    assert precision_at(E, E).tolist() == [1.0] * 10          # neither: perfect by convention
    assert score_image(M(a), E) == 0.0 and score_image(E, M(a)) == 0.0
    assert precision_at(M(a, b), M(a | b)).tolist() == [0.0] * 10    # one prediction over two cells: IoU 0.5 each
    assert precision_at(M(a, a), M(a)).tolist() == [0.5] * 10         # duplicated ground truth
    assert precision_at(M(a, a), M(a, a)).tolist() == [1.0] * 10
    # IoU exactly on a threshold does not count (strict >): 15/20 = 0.75, 11/20 = 0.55, 1/2
    for inter, t in [(15, 0.75), (11, 0.55), (10, 0.5), (19, 0.95)]:
        g = np.zeros((10, 12), bool); g.ravel()[:20] = True
        p = np.zeros((10, 12), bool); p.ravel()[:inter] = True       # IoU = inter / 20
        k = list(THRESHOLDS).index(t)
        prec = precision_at(M(g), M(p))
        assert prec[k] == 0.0 and (k == 0 or prec[k - 1] == 1.0), (inter, prec)
    with pytest.raises(ValueError, match='shapes differ'):
        precision_at(M(a), Instances.empty((5, 5)))


def test_label_ids_not_1_to_n_and_properties():
    rng = np.random.default_rng(5)
    for _ in range(30):
        shape = (int(rng.integers(10, 40)), int(rng.integers(10, 40)))
        g = random_masks(rng, rng.integers(1, 12), shape, kind=1)
        p = perturb(rng, g)
        lab_g = np.zeros(shape, np.int64); lab_p = np.zeros(shape, np.int64)
        for i, m in enumerate(g): lab_g[m & (lab_g == 0)] = 1000 + 7 * i          # ids far from 1..N
        for i, m in enumerate(p): lab_p[m & (lab_p == 0)] = 3 * i + 2
        G, P = Instances.from_label_image(lab_g), Instances.from_label_image(lab_p)
        ref = ref_precision([lab_g == i for i in np.unique(lab_g[lab_g > 0])],
                           [lab_p == i for i in np.unique(lab_p[lab_p > 0])])
        prec = precision_at(G, P)
        assert np.abs(prec - ref).max() <= 1e-12
        assert (np.diff(prec) <= 1e-15).all() and (prec >= 0).all() and (prec <= 1).all()   # non-increasing in t
        # invariant to the order of cells, to swapping the roles' order, and to flipping both images
        perm_g, perm_p = rng.permutation(len(G)), rng.permutation(len(P))
        assert np.array_equal(precision_at(G.select(perm_g), P.select(perm_p)), prec)
        assert np.array_equal(precision_at(G.flip(1), P.flip(1)), prec)
        assert np.array_equal(true_positives(P, G), true_positives(G, P))


def test_agrees_with_cellpose_where_no_iou_sits_on_a_threshold():
    from cellpose.metrics import average_precision
    rng = np.random.default_rng(7)
    checked = 0
    for _ in range(40):
        shape = (48, 64)
        g = random_masks(rng, rng.integers(1, 25), shape, kind=1)
        p = perturb(rng, g)
        lab_g = np.zeros(shape, np.int32); lab_p = np.zeros(shape, np.int32)
        for i, m in enumerate(g): lab_g[m & (lab_g == 0)] = i + 1
        for i, m in enumerate(p): lab_p[m & (lab_p == 0)] = i + 1
        # cellpose needs consecutive ids 1..N
        lab_g = np.unique(lab_g, return_inverse=True)[1].reshape(shape)
        lab_p = np.unique(lab_p, return_inverse=True)[1].reshape(shape)
        G, P = Instances.from_label_image(lab_g), Instances.from_label_image(lab_p)
        if len(P) == 0 or np.isin(pairwise_iou(G, P)[2], THRESHOLDS).any(): continue
        ap = average_precision(lab_g, lab_p, threshold=list(THRESHOLDS))[0]
        assert np.abs(precision_at(G, P) - ap).max() <= 1e-6          # cellpose returns float32
        checked += 1
    assert checked >= 20


# ---------------------------------------------------------------- tables
def test_evaluate_tables():
    rng = np.random.default_rng(11)
    gt, pred, types, ref = {}, {}, {}, {}
    for k in range(9):
        g = random_masks(rng, rng.integers(0, 6), (20, 24)); p = perturb(rng, g)
        key = f"img{k}" if k % 3 else k                      # ids of any hashable type
        gt[key] = Instances.from_masks(g, meta={'cell_type': ['cort', 'astro', 'shsy5y'][k % 3]})
        if k != 4: pred[key] = Instances.from_masks(p)
        ref[key] = ref_precision(list(g), list(p) if k != 4 else [])
    ev = evaluate(gt, pred)
    pi = ev.per_image
    assert list(pi.columns) == ['id', 'cell_type', 'n_true', 'n_pred'] + [f"p@{t:.2f}" for t in THRESHOLDS] + ['score']
    assert pi['id'].tolist() == list(gt)
    for _, row in pi.iterrows():
        r = ref[row['id']]
        assert np.abs(row[[f"p@{t:.2f}" for t in THRESHOLDS]].to_numpy(float) - r).max() <= 1e-12
        assert abs(row['score'] - r.mean()) <= 1e-12
    assert pi.loc[4, 'n_pred'] == 0
    s = ev.summary
    assert list(s.index) == ['overall', 'astro', 'cort', 'shsy5y']
    assert list(s.columns) == ['n_images', 'AP@0.5', 'AP@0.75', 'AP@0.9', 'mAP']
    scores = np.array([ref[k].mean() for k in gt])
    assert abs(s.loc['overall', 'mAP'] - scores.mean()) <= 1e-12                  # macro mean over images
    assert abs(s.loc['overall', 'AP@0.75'] - np.mean([ref[k][5] for k in gt])) <= 1e-12
    for ct, grp in pi.groupby('cell_type'):
        assert s.loc[ct, 'n_images'] == len(grp) and abs(s.loc[ct, 'mAP'] - grp['score'].mean()) <= 1e-12
    # cell_types argument overrides meta; summarize is what evaluate uses
    ev2 = evaluate(gt, pred, cell_types=pd.Series({k: 'x' for k in gt}))
    assert list(ev2.summary.index) == ['overall', 'x']
    pd.testing.assert_frame_equal(summarize(ev.per_image), ev.summary)
    with pytest.raises(ValueError, match='not in the ground truth'):
        evaluate(gt, {'zzz': Instances.empty((20, 24))})
    with pytest.raises(ValueError, match="image id 'img1'"):
        evaluate(gt, {'img1': Instances.empty((5, 5))})


# ---------------------------------------------------------------- COCO AP
def test_coco_ap_equals_direct_pycocotools():
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    import contextlib, io
    rng = np.random.default_rng(13)
    shape = (40, 50)
    gt, pred, gms, pms = {}, {}, {}, {}
    for k in range(4):
        g = random_masks(rng, rng.integers(1, 10), shape, kind=1); g = g[g.any((1, 2))]
        p = perturb(rng, g); p = p[p.any((1, 2))]
        s = rng.random(len(p)).astype(np.float32)
        gt[k], pred[k] = Instances.from_masks(g), Instances.from_masks(p, scores=s)
        gms[k], pms[k] = (g, None), (p, s)
    # direct pycocotools from dense masks (independent of our codec)
    images = [{'id': k + 1, 'height': shape[0], 'width': shape[1]} for k in gt]
    anns, dets = [], []
    for k in gt:
        for m in gms[k][0]:
            r = mask_util.encode(np.asfortranarray(m.astype(np.uint8)))
            anns.append({'id': len(anns) + 1, 'image_id': k + 1, 'category_id': 1, 'segmentation': r,
                         'area': float(mask_util.area(r)), 'bbox': list(mask_util.toBbox(r)), 'iscrowd': 0})
        for m, sc in zip(*pms[k]):
            r = mask_util.encode(np.asfortranarray(m.astype(np.uint8)))
            dets.append({'image_id': k + 1, 'category_id': 1, 'segmentation': r, 'score': float(sc)})
    with contextlib.redirect_stdout(io.StringIO()):
        cg = COCO(); cg.dataset = {'images': images, 'annotations': anns, 'categories': [{'id': 1}]}; cg.createIndex()
        cd = cg.loadRes(dets)
        E = COCOeval(cg, cd, 'segm'); E.params.maxDets = [100, 500, 2000]
        E.evaluate(); E.accumulate(); E.summarize()
    got = coco_ap(gt, pred)
    assert list(got) == COCO_STATS
    assert np.allclose([got[k] for k in COCO_STATS], E.stats, atol=1e-12, rtol=0)
    perfect = coco_ap(gt, gt)
    assert perfect['AP'] == pytest.approx(1.0, abs=1e-12) and perfect['AP50'] == pytest.approx(1.0, abs=1e-12)
    assert coco_ap(gt, {})['AP'] == 0.0
