"Post-processing against independent dense loop references on random overlapping candidates."
import numpy as np
import pytest
from scipy.ndimage import binary_fill_holes
from cellseg_nb.instances import Instances
from cellseg_nb.postprocess import (random_candidates, score_order, filter_scores, min_area, mask_nms, remove_overlaps,
                                    fill_holes, image_cell_type, postprocess, PostprocessConfig, PostprocessConfigs)


def dense_remove_overlaps(masks, scores, min_kept, min_area_):
    "Public-notebook loop on a dense (N, H, W) stack: returns kept indices and kept masks."
    order = np.argsort(-np.asarray(scores, np.float64), kind='stable') if scores is not None else np.arange(len(masks))
    used = np.zeros(masks.shape[1:], int)
    kept, out = [], []
    for i in order:
        area = int(masks[i].sum())
        m = masks[i] * (1 - used)
        k = int(m.sum())
        if k >= max(min_area_, 1) and k >= min_kept * area:
            used += m; kept.append(i); out.append(m.astype(bool))
    return np.array(kept, np.int64), (np.stack(out) if out else np.zeros((0,) + masks.shape[1:], bool))


def dense_nms(masks, scores, thr):
    order = np.argsort(-np.asarray(scores, np.float64), kind='stable')
    kept = []
    for i in order:
        if all(np.logical_and(masks[i], masks[j]).sum() / np.logical_or(masks[i], masks[j]).sum() <= thr for j in kept):
            kept.append(i)
    return np.array(kept, np.int64)


def random_set(seed, n=50, shape=(48, 64)):
    rng = np.random.default_rng(seed)
    c = random_candidates(n, shape, seed=seed, area=(10, 300), dup_frac=0.5)
    if seed % 3 == 0:   # ties in scores
        c = c.with_(scores=np.round(c.scores * 4) / 4)
    return c


@pytest.mark.parametrize('seed', range(12))
def test_remove_overlaps_equals_loop(seed):
    c = random_set(seed)
    masks = c.to_masks()
    for mk, ma in [(0.0, 0), (0.5, 0), (0.0, 30), (0.25, 15), (0.75, 60), (1.0, 0)]:
        out, idx = remove_overlaps(c, mk, ma, return_index=True)
        ref_idx, ref_masks = dense_remove_overlaps(masks, c.scores, mk, ma)
        assert np.array_equal(idx, ref_idx), (seed, mk, ma)
        assert np.array_equal(out.to_masks(), ref_masks)
        assert out.overlap_count().max(initial=0) <= 1
        assert np.array_equal(out.scores, c.scores[idx]) and np.array_equal(out.labels, c.labels[idx])


def test_remove_overlaps_edge_cases():
    e = Instances.empty((10, 12), scores=True)
    assert len(remove_overlaps(e)) == 0
    # no scores: index order; identical duplicates: only the first survives; an empty mask never survives
    m = np.zeros((4, 10, 12), bool); m[0, 2:5, 2:6] = True; m[1] = m[0]; m[3, 0, :] = True
    x = Instances.from_masks(m)
    out, idx = remove_overlaps(x, 0.0, 0, return_index=True)
    assert idx.tolist() == [0, 3]
    ref_idx, ref_masks = dense_remove_overlaps(m, None, 0.0, 0)
    assert np.array_equal(idx, ref_idx) and np.array_equal(out.to_masks(), ref_masks)
    # a chain: dropping the middle cell frees pixels for the last one
    m = np.zeros((3, 1, 10), bool); m[0, 0, 0:5] = True; m[1, 0, 2:8] = True; m[2, 0, 5:10] = True
    x = Instances.from_masks(m, scores=[0.9, 0.8, 0.7])
    out, idx = remove_overlaps(x, 0.0, 5, return_index=True)
    assert idx.tolist() == [0, 2] and out.to_rles() == ['1 5', '6 5']


@pytest.mark.parametrize('seed', range(8))
def test_mask_nms_equals_loop(seed):
    c = random_set(seed, n=35)
    masks = c.to_masks()
    for thr in (0.0, 0.2, 0.5, 0.7, 0.95):
        out, idx = mask_nms(c, thr, return_index=True)
        assert np.array_equal(idx, dense_nms(masks, c.scores, thr)), (seed, thr)
        assert np.array_equal(out.to_masks(), masks[idx])
        assert np.array_equal(mask_nms(c, thr, return_index=True, work_budget=0)[1], idx)


@pytest.mark.parametrize('seed', range(6))
def test_fill_holes_equals_dense(seed):
    rng = np.random.default_rng(seed)
    m = rng.random((10, 25, 33)) < rng.uniform(0.4, 0.8)
    x = Instances.from_masks(m, scores=rng.random(10))
    f = fill_holes(x)
    assert np.array_equal(f.to_masks(), np.stack([binary_fill_holes(k) for k in m]))
    assert np.array_equal(f.scores, x.scores)
    solid = Instances.from_masks(np.stack([binary_fill_holes(k) for k in m]))
    assert fill_holes(solid).to_rles() == solid.to_rles()


def test_filters_and_vote():
    c = random_set(5)
    assert np.array_equal(filter_scores(c, 0.4).scores, c.scores[c.scores >= np.float32(0.4)])
    assert np.array_equal(min_area(c, 50).areas, c.areas[c.areas >= 50])
    for seed in range(5):
        rng = np.random.default_rng(seed)
        lab, sc = rng.integers(1, 4, 20), rng.random(20)
        x = Instances.from_masks(np.ones((20, 2, 2), bool), scores=sc, labels=lab)
        votes = {k: sc[lab == k].astype(np.float32).astype(np.float64).sum() for k in (1, 2, 3)}
        assert image_cell_type(x) == {1: 'shsy5y', 2: 'astro', 3: 'cort'}[max(votes, key=votes.get)]


@pytest.mark.parametrize('seed', range(4))
def test_postprocess_equals_reference_chain(seed):
    c = random_set(seed, n=60)
    cfg = PostprocessConfig(score_threshold=0.3, min_area=20, nms_iou=0.4, min_kept=0.4, fill_holes=True)
    out, idx = postprocess(c, config=cfg, return_index=True)
    sel = np.flatnonzero(c.scores >= np.float32(0.3))
    masks = np.stack([binary_fill_holes(k) for k in c.to_masks()[sel]]) if len(sel) else np.zeros((0,) + c.shape, bool)
    nms_idx = dense_nms(masks, c.scores[sel], 0.4)
    ro_idx, ro_masks = dense_remove_overlaps(masks[nms_idx], c.scores[sel][nms_idx], 0.4, 20)
    assert np.array_equal(idx, sel[nms_idx][ro_idx])
    assert np.array_equal(out.to_masks(), ro_masks)


def test_config_yaml_roundtrip_and_errors(tmp_path):
    cfgs = PostprocessConfigs()
    assert (cfgs['shsy5y'].score_threshold, cfgs['astro'].score_threshold, cfgs['cort'].score_threshold) == (0.15, 0.35, 0.55)
    assert (cfgs['shsy5y'].min_area, cfgs['astro'].min_area, cfgs['cort'].min_area) == (75, 150, 75)
    c2 = cfgs.replace('astro', nms_iou=None, min_kept=0.25, fill_holes=True)
    p = c2.save(tmp_path / 'pp.yaml')
    assert PostprocessConfigs.load(p) == c2 and PostprocessConfigs.load(p) != cfgs
    assert list(tmp_path.iterdir()) == [p]          # no temp file left
    for text, msg in [("cort:\n  scor_threshold: 0.3\n", "unknown key(s) ['scor_threshold']"),
                      ("huh7:\n  min_area: 3\n", "unknown cell type 'huh7'"),
                      ("cort:\n  min_area: -1\n", "min_area=-1"),
                      ("cort:\n  min_area: 2.5\n", "min_area=2.5"),
                      ("cort: [1, 2]\n", "must be a mapping"),
                      ("- 1\n", "expected a mapping"),
                      ("cort: {fill_holes: 3}\n", "fill_holes=3")]:
        p.write_text(text)
        with pytest.raises(ValueError, match=None) as e: PostprocessConfigs.load(p)
        assert msg in str(e.value) and str(p) in str(e.value), str(e.value)
    with pytest.raises(ValueError, match='no such config file'): PostprocessConfigs.load(tmp_path / 'nope.yaml')
    p.write_text("huh7: {min_area: 3}\n")
    assert PostprocessConfigs.load(p, cell_types=None)['huh7'].min_area == 3


# ---- bounded paths (issue 9, section 4): pruned / chunked / walk paths equal the dense computations exactly ----
from cellseg_nb.postprocess import candidate_pairs, ious_with, run_keys


def piled_set(seed, n=45, shape=(40, 56)):
    "Large candidates piled on each other (a half-trained model's output), some covering most of the image."
    rng = np.random.default_rng(seed)
    c = random_candidates(n, shape, seed=seed, area=(100, int(0.8 * shape[0] * shape[1])), dup_frac=0.6)
    if seed % 2: c = c.with_(scores=np.round(c.scores * 3) / 3)     # ties
    return c


def dense_iou(masks):
    m = masks.reshape(len(masks), -1).astype(np.int64)
    inter = m @ m.T
    a = m.sum(1)
    with np.errstate(invalid='ignore', divide='ignore'): return inter / (a[:, None] + a[None, :] - inter)


@pytest.mark.parametrize('seed', range(6))
def test_ious_with_and_candidate_pairs_equal_dense(seed):
    c = piled_set(seed)
    iou = dense_iou(c.to_masks())
    keys = run_keys(c)
    rng = np.random.default_rng(seed)
    for i in rng.choice(len(c), 6, replace=False):
        others = rng.permutation(len(c))[:20]
        assert np.array_equal(ious_with(c, int(i), others, keys), iou[i, others])     # exact, not close
        assert np.array_equal(ious_with(c, int(i), others), iou[i, others])
    for thr in (0.0, 0.3, 0.5, 0.8):
        for chunk in (1, 50, 10 ** 6):
            ia, ib = candidate_pairs(c, thr, chunk=chunk)
            assert (ia < ib).all() and np.all(np.diff(ia * len(c) + ib) > 0)      # sorted, unique
            want = set(zip(*np.nonzero(np.triu(iou > thr, 1))))
            assert want <= set(zip(ia.tolist(), ib.tolist())), (seed, thr, chunk)


@pytest.mark.parametrize('seed', range(6))
def test_bounded_paths_equal_dense_on_piled_candidates(seed):
    c = piled_set(seed)
    masks = c.to_masks()
    for thr in (0.1, 0.5, 0.9):
        for wb in (0, 10 ** 12):                   # the bounded greedy path, the all-pairs path
            idx = mask_nms(c, thr, return_index=True, work_budget=wb)[1]
            assert np.array_equal(idx, dense_nms(masks, c.scores, thr)), (seed, thr, wb)
    for mk, ma in [(0.0, 0), (0.5, 20), (0.9, 5)]:
        ref_idx, ref_masks = dense_remove_overlaps(masks, c.scores, mk, ma)
        for budget in (None, 0, 10 ** 9):          # default, the one-cell walk, the segment path always
            out, idx = remove_overlaps(c, mk, ma, return_index=True, budget=budget)
            assert np.array_equal(idx, ref_idx), (seed, mk, ma, budget)
            assert np.array_equal(out.to_masks(), ref_masks)
            assert np.array_equal(out.scores, c.scores[idx]) and np.array_equal(out.labels, c.labels[idx])


def test_remove_overlaps_switches_to_the_walk_when_piled_deep():
    "The segment path's (segment, owner) pairs are counted first; past the budget the walk runs instead."
    from cellseg_nb.postprocess import _segments
    c = piled_set(0, n=60)
    assert _segments(c) is not None and len(_segments(c)[1]) > 0
    assert _segments(c, budget=10) is None
    out_walk = remove_overlaps(c, 0.5, 10, budget=10)
    assert out_walk.to_rles() == remove_overlaps(c, 0.5, 10, budget=10 ** 9).to_rles()


def _squares(shape, cells, label=3):
    "Instances of axis-aligned rectangles `(y0, x0, h, w, score)` on `shape` (from dense masks: an independent build)."
    masks = np.zeros((len(cells),) + shape, bool)
    for k, (y, x, h, w, _) in enumerate(cells): masks[k, y:y + h, x:x + w] = True
    return Instances.from_masks(masks, scores=np.array([c[-1] for c in cells], np.float32),
                                labels=np.full(len(cells), label, np.int64))


# one cell for each step, its fate worked out by hand on the rectangles (IoUs in the comments)
STEPS = [(0, 0, 10, 10, 0.9),        # A: kept
         (0, 1, 10, 10, 0.8),        # B: A moved by 1 px, IoU 90 / 110 = 0.82 > 0.5: mask NMS
         (40, 40, 3, 3, 0.9),        # C: 9 px < min_area 20: minimum area
         (20, 20, 10, 10, 0.2),      # D: score 0.2 < 0.3: score threshold
         (0, 5, 10, 10, 0.7)]        # E: IoU with A 50 / 150 = 0.33, with B 60 / 140 = 0.43 (NMS keeps it), keeps
                                     #    50 of its 100 px after A: 0.5 < min_kept 0.6: overlap removal
STEP_CFG = PostprocessConfig(score_threshold=0.3, min_area=20, nms_iou=0.5, min_kept=0.6)


def test_postprocess_report_counts_each_step():
    from cellseg_nb.postprocess import postprocess_report, why_no_cells
    x = _squares((50, 50), STEPS)
    out, rep = postprocess_report(x, 'cort', STEP_CFG)
    assert (rep['raw'], rep['removed_score'], rep['removed_nms'], rep['removed_min_area'], rep['removed_overlap'],
            rep['kept']) == (5, 1, 1, 1, 1, 1)
    assert out.to_rles() == postprocess(x, 'cort', STEP_CFG).to_rles() == x.select([0]).to_rles()
    assert rep['max_score'] == pytest.approx(0.9) and rep['cell_type'] == 'cort' and rep['score_threshold'] == 0.3
    line = why_no_cells(rep, 'img7')
    assert line.startswith('image img7 (cort): 1 cells kept of 5 raw cells, best score 0.900: ')
    assert ('score threshold 0.3 for cort removed 1; mask NMS (IoU > 0.5) removed 1; minimum area 20 px removed 1; '
            'overlap removal (min_kept 0.6, min_area 20 px) removed 1') in line
    _, none = postprocess_report(x, 'cort', STEP_CFG.replace(score_threshold=0.95))
    assert (none['removed_score'], none['kept']) == (5, 0)
    assert why_no_cells(none, 'a').endswith('0 cells kept of 5 raw cells, best score 0.900: score threshold 0.95 for cort removed 5')
    _, empty = postprocess_report(Instances.empty((50, 50), scores=True, labels=True), 'astro', STEP_CFG)
    assert empty['raw'] == 0 and 'the model gave no raw cell' in why_no_cells(empty, 'b')


def test_postprocess_all_says_which_images_end_empty():
    """Images left with no cell are named, with their raw count and the step that removed them: one warning per
    image up to 5, one summary beyond; the submission table counts each step."""
    import warnings
    from cellseg_nb.inference import postprocess_all
    cfgs = PostprocessConfigs({'cort': STEP_CFG})
    low = _squares((50, 50), [(0, 0, 10, 10, 0.25), (20, 20, 8, 8, 0.1)])      # both under 0.3
    tiny = _squares((50, 50), [(0, 0, 3, 3, 0.9)])                             # 9 px < 20
    good = _squares((50, 50), STEPS)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        out = postprocess_all({'g': good, 'low': low, 'tiny': tiny}, cfgs, 'cort')
    msgs = [str(w.message) for w in caught]
    assert len(msgs) == 2, msgs
    assert msgs[0].startswith('image low (cort): 0 cells kept of 2 raw cells, best score 0.250: score threshold 0.3 '
                              'for cort removed 2')
    assert msgs[1].startswith('image tiny (cort): 0 cells kept of 1 raw cells') and 'minimum area 20 px removed 1' in msgs[1]
    assert [len(out[k]) for k in ('g', 'low', 'tiny')] == [1, 0, 0]
    assert out['g'].meta['postprocess']['removed_nms'] == 1
    many = {f'e{k}': low for k in range(7)}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        postprocess_all({**many, 'g': good}, cfgs, 'cort')
    msgs = [str(w.message) for w in caught]
    assert len(msgs) == 1 and msgs[0].startswith('7 of 8 images have no cell left after post-processing (e0, e1, e2')
    assert '14 raw cells in all (0 image(s) had none); score thresholds (cort 0.3) removed 14' in msgs[0]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        postprocess_all({'low': low}, cfgs, 'cort', warn_empty=False)
    assert caught == []


def test_empty_prediction_needs_no_cell_type(tmp_path):
    "An image predicted with no cells has no labels once saved and read back; post-processing it needs no type."
    import warnings
    from cellseg_nb.inference import save_predictions, load_predictions, postprocess_all
    save_predictions({'a': Instances.empty((20, 30), scores=True, labels=True)}, tmp_path / 'raw.csv')
    raw = load_predictions(tmp_path / 'raw.csv')
    assert raw['a'].labels is None and len(raw['a']) == 0
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        out = postprocess_all(raw)
    assert len(out['a']) == 0 and out['a'].shape == (20, 30)
    assert any('a' in str(x.message) for x in w)                                   # still reported as an empty image
    cells = Instances.from_label_image(np.pad(np.ones((4, 4), np.int32), 3))
    with pytest.raises(ValueError, match='no labels to vote'):
        postprocess_all({'b': cells.with_(scores=np.ones(1, np.float32))})
