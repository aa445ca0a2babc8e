"""Instances: sparse intersections / IoU (run path and pixel path) against dense masks and pycocotools, with
overlapping masks; label-image, box and area views against independent computations."""
import numpy as np
import pytest
from pycocotools import mask as mask_util
from cellseg_nb.instances import Instances, intersections, pairwise_iou, iou_matrix, _pairs_by_runs
from cellseg_nb.rle import to_coco_rle


def coco(masks):
    return [mask_util.encode(np.asfortranarray(m.astype(np.uint8))) for m in masks]


def blobs(rng, n, shape, overlap=True):
    "n random ellipses and rectangles (bool (n, H, W)); overlapping unless `overlap=False`."
    h, w = shape
    yy, xx = np.mgrid[:h, :w]
    out = np.zeros((n, h, w), bool)
    taken = np.zeros(shape, bool)
    for i in range(n):
        if rng.random() < 0.5:
            cy, cx, a, b = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(1, 9), rng.uniform(1, 9)
            m = ((yy - cy) / a) ** 2 + ((xx - cx) / b) ** 2 <= 1
        else:
            m = np.zeros(shape, bool); y0, x0 = rng.integers(0, h), rng.integers(0, w)
            m[y0:y0 + rng.integers(1, 15), x0:x0 + rng.integers(1, w + 1)] = True    # rows may wrap-touch
        if not overlap: m &= ~taken; taken |= m
        out[i] = m
    return out


def dense_intersections(ma, mb):
    inter = (ma[:, None] & mb[None]).sum((2, 3))
    ia, ib = np.nonzero(inter)
    return ia, ib, inter[ia, ib]


@pytest.mark.parametrize('overlap', [True, False])
def test_intersections_runs_and_pixels_paths_equal_dense(overlap):
    rng = np.random.default_rng(0 if overlap else 1)
    for _ in range(60):
        shape = (int(rng.integers(1, 40)), int(rng.integers(1, 50)))
        ma, mb = blobs(rng, rng.integers(0, 12), shape, overlap), blobs(rng, rng.integers(0, 12), shape, overlap)
        A, B = Instances.from_masks(ma), Instances.from_masks(mb)
        ref = dense_intersections(ma, mb)
        for budget in (None, 0, 10**9):
            got = intersections(A, B, budget=budget)
            for g, r in zip(got, ref): assert np.array_equal(g, r)
            assert all(x.dtype == np.int64 for x in got)


def test_pairwise_iou_equals_pycocotools():
    rng = np.random.default_rng(2)
    for _ in range(40):
        shape = (int(rng.integers(5, 60)), int(rng.integers(5, 60)))
        ma, mb = blobs(rng, rng.integers(1, 15), shape), blobs(rng, rng.integers(1, 15), shape)
        A, B = Instances.from_masks(ma), Instances.from_masks(mb)
        ref = np.asarray(mask_util.iou(coco(ma), coco(mb), [0] * len(mb))).reshape(len(ma), len(mb))
        ref = np.nan_to_num(ref)          # pycocotools gives 0 for pairs of empty masks too
        assert np.abs(iou_matrix(A, B) - ref).max() <= 1e-12
        ia, ib, v = pairwise_iou(A, B)
        assert (v > 0).all() and np.array_equal(v, ref[ia, ib])


def test_huge_mask_falls_back_to_pixel_path_exactly():
    shape = (60, 80)
    rng = np.random.default_rng(3)
    m = np.concatenate([np.ones((1, *shape), bool), blobs(rng, 80, shape)])
    A, B = Instances.from_masks(m), Instances.from_masks(m[:, ::-1].copy())
    assert _pairs_by_runs(A, B, 8 * (len(A.starts) + len(B.starts)) + 4096) is None     # over the default budget
    ref = dense_intersections(m, m[:, ::-1])
    for g, r in zip(intersections(A, B), ref): assert np.array_equal(g, r)
    for g, r in zip(intersections(B, A), dense_intersections(m[:, ::-1], m)): assert np.array_equal(g, r)


def test_shape_mismatch_and_empty():
    a = Instances.from_masks(np.ones((1, 3, 3), bool))
    with pytest.raises(ValueError, match='shapes differ'): intersections(a, Instances.empty((3, 4)))
    for x in intersections(a, Instances.empty((3, 3))): assert len(x) == 0
    assert iou_matrix(Instances.empty((3, 3)), a).shape == (0, 1)


def test_views_against_pycocotools_and_dense():
    rng = np.random.default_rng(4)
    for _ in range(30):
        shape = (int(rng.integers(1, 40)), int(rng.integers(1, 40)))
        m = blobs(rng, rng.integers(0, 10), shape)
        inst = Instances.from_masks(m)
        c = coco(m)
        assert inst.areas.tolist() == [int(mask_util.area(r)) for r in c]
        nz = m.any((1, 2))
        if nz.any():
            bb = np.array([mask_util.toBbox(r) for r in c])[nz]           # x, y, w, h
            got = inst.boxes[nz]
            assert np.array_equal(np.c_[got[:, :2], got[:, 2:] - got[:, :2]], bb)
        lab = inst.to_label_image()
        first = np.where(m.any(0), m.argmax(0) + 1, 0) if len(m) else np.zeros(shape)  # lower index wins
        assert np.array_equal(lab, first)
        back = Instances.from_label_image(lab * 5 + 3 * (lab > 0))          # ids not 1..N: 8, 13, 18, ...
        vis = np.unique(lab[lab > 0])
        assert np.array_equal(back.meta['label_ids'], vis * 5 + 3)
        assert np.array_equal(back.to_masks(), np.array([lab == v for v in vis]).reshape(-1, *shape))
        assert np.array_equal(inst.overlap_count(), m.sum(0))


def test_from_label_image_any_ids_and_dtypes():
    rng = np.random.default_rng(6)
    for _ in range(100):
        shape = (int(rng.integers(1, 25)), int(rng.integers(1, 25)))
        lab = rng.integers(0, rng.integers(1, 9), shape) * int(rng.choice([1, 7, -3, 1000]))
        if rng.random() < 0.3 and lab.min() >= 0 and lab.max() < 256: lab = lab.astype(np.uint8)
        inst = Instances.from_label_image(lab)
        ids = np.unique(lab[lab != 0])
        assert np.array_equal(inst.meta['label_ids'], ids) and inst.meta['label_ids'].dtype == lab.dtype
        assert np.array_equal(inst.to_masks(), np.array([lab == i for i in ids], bool).reshape(-1, *shape))
        assert inst.to_rles() == Instances.from_masks(inst.to_masks()).to_rles()     # canonical runs


def test_to_coco_rles_batch_equals_pycocotools_encode():
    "Batched COCO RLE of all instances equals pycocotools' own encoder, cell by cell (empty, full, last pixel)."
    rng = np.random.default_rng(3)
    for _ in range(100):
        h, w = rng.integers(1, 25, 2)
        m = rng.random((rng.integers(1, 7), h, w)) < rng.uniform(0, 1)
        m[rng.integers(len(m))] = False
        m[rng.integers(len(m)), -1, -1] = True
        if rng.random() < 0.2: m[0] = True
        inst = Instances.from_masks(m)
        assert inst.to_coco_rles() == [mask_util.encode(np.asfortranarray(x.astype(np.uint8))) for x in m]
        assert inst.to_coco_rles() == [to_coco_rle(x) for x in m]   # the single-mask path agrees
