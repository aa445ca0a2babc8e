"Tuning: known best settings on constructed cases, and every grid score equal to postprocess + score_image."
import numpy as np
import pandas as pd
import pytest
from cellseg_nb.instances import Instances
from cellseg_nb.metric import score_image, evaluate
from cellseg_nb.postprocess import PostprocessConfigs, postprocess, remove_overlaps, random_candidates
from cellseg_nb.tune import tune, threshold_scores, image_grid_scores, simulate_dataset, simulate_predictions

SHAPE = (64, 96)


def squares(cells, shape=SHAPE):
    "Instances of squares given as (y, x, size)."
    m = np.zeros((len(cells),) + shape, bool)
    for i, (y, x, s) in enumerate(cells): m[i, y:y + s, x:x + s] = True
    return Instances.from_masks(m)


def constructed(true_scores, fp_score, seed, label):
    "Exact true cells (6x6) scored `true_scores`, big FPs (6x6) scored `fp_score`, tiny FPs (3x3) scored 0.9."
    rng = np.random.default_rng(seed)
    slots = [(y, x) for y in range(2, 58, 9) for x in range(2, 90, 9)]
    pick = rng.permutation(len(slots))
    nt = len(true_scores)
    t = [(*slots[i], 6) for i in pick[:nt]]
    big = [(*slots[i], 6) for i in pick[nt:nt + 4]]
    tiny = [(*slots[i], 3) for i in pick[nt + 4:nt + 8]]
    gt = squares(t)
    pred = squares(t + big + tiny)
    sc = np.concatenate([true_scores, [fp_score] * 4, [0.9] * 4]).astype(np.float32)
    return gt, pred.with_(scores=sc, labels=np.full(len(pred), label))


def test_finds_known_best_settings():
    gt, preds, types = {}, {}, {}
    for i in range(3):
        gt[f'c{i}'], preds[f'c{i}'] = constructed([0.8] * 5 + [0.45] * 5, 0.3, i, 3); types[f'c{i}'] = 'cort'
        gt[f'a{i}'], preds[f'a{i}'] = constructed([0.95] * 5 + [0.65] * 5, 0.55, 10 + i, 2); types[f'a{i}'] = 'astro'
    ts = np.round(np.arange(0.1, 0.91, 0.1), 2)
    res = tune(preds, gt, types, score_thresholds=ts, min_areas=(0, 5, 10, 20, 30, 40), progress=False)
    assert res.best['cort'].score_threshold == 0.4 and res.best['cort'].min_area == 10
    assert res.best['astro'].score_threshold == 0.6 and res.best['astro'].min_area == 10
    assert res.best['shsy5y'] == PostprocessConfigs()['shsy5y']          # untouched: no shsy5y images
    assert res.summary.loc['cort', 'after'] == 1.0 and res.summary.loc['astro', 'after'] == 1.0
    tab = res.table.set_index(['cell_type', 'score_threshold', 'min_area'])['score']
    assert tab[('cort', 0.3, 10)] < 1.0 and tab[('cort', 0.5, 10)] < 1.0 and tab[('cort', 0.4, 0)] < 1.0
    assert tab[('cort', 0.4, 40)] == 0.0                                     # every true cell below the area
    # "before" is the default config, scored the direct way
    direct = evaluate(gt, {k: postprocess(preds[k], types[k]) for k in gt}, types).per_image.set_index('id')['score']
    assert np.allclose(res.per_image.set_index('id')['before'], direct[res.per_image['id']], rtol=0, atol=1e-15)


@pytest.mark.parametrize('seed', range(3))
def test_grid_scores_equal_direct_postprocess(seed):
    rng = np.random.default_rng(seed)
    gt = remove_overlaps(random_candidates(40, SHAPE, seed=seed, area=(20, 250), dup_frac=0), 0.0, 10)
    gt = gt.with_(scores=None, labels=None)
    if seed == 1:                       # duplicated true cells (as the cort labels have): matching conflicts
        gt = Instances.concat([gt, gt.select([0, 1, 2])])
    pred = simulate_predictions(gt, 2, seed=seed, max_shift=2, fp_area=(5, 60))
    if seed == 2: pred = pred.with_(scores=np.round(pred.scores * 5) / 5)      # many ties
    ts, mas, nms, mks = (0.0, 0.2, 0.35, 0.6, 0.8, 1.0), (0, 30, 60), (None, 0.3, 0.6), (0.0, 0.5)
    for fill in (False, True):
        base = PostprocessConfigs()['astro'].replace(fill_holes=fill)
        g = image_grid_scores(gt, pred, base, ts, mas, nms, mks)
        for a, n in enumerate(nms):
            for b, mk in enumerate(mks):
                for c, ma in enumerate(mas):
                    for d, t in enumerate(ts):
                        cfg = base.replace(score_threshold=t, min_area=ma, nms_iou=n, min_kept=mk)
                        assert g[a, b, c, d] == score_image(gt, postprocess(pred, config=cfg)), (seed, fill, n, mk, ma, t)


def test_tune_table_matches_direct_and_parallel():
    gt, preds, types = simulate_dataset({'shsy5y': 1, 'astro': 1, 'cort': 2}, shape=(128, 160), seed=3)
    kw = dict(score_thresholds=(0.1, 0.3, 0.5), min_areas=(0, 50, 120), nms_ious=(None, 0.5), min_gain_se=0, progress=False)
    res = tune(preds, gt, types, **kw)
    assert len(res.table) == 3 * 3 * 3 * 2 and res.table.groupby('cell_type')['best'].sum().eq(1).all()
    for _, r in res.table.iterrows():
        cfgs = PostprocessConfigs().replace(r.cell_type, score_threshold=r.score_threshold, min_area=int(r.min_area),
                                            nms_iou=None if pd.isna(r.nms_iou) else r.nms_iou, min_kept=r.min_kept)
        kk = [k for k in gt if types[k] == r.cell_type]
        direct = np.mean([score_image(gt[k], postprocess(preds[k], r.cell_type, cfgs)) for k in kk])
        assert abs(direct - r.score) < 1e-12
    best = res.table[res.table.best].set_index('cell_type')
    for ct, r in best.iterrows():
        assert r.score == res.table[res.table.cell_type == ct].score.max()
        assert res.best[ct].min_area == r.min_area and res.best[ct].score_threshold == r.score_threshold
    par = tune(preds, gt, types, n_jobs=2, **kw)
    pd.testing.assert_frame_equal(par.table, res.table)
    assert par.best == res.best


@pytest.mark.parametrize('z', [0.0, 0.5, 1.0, 2.0, 1e9])
def test_min_gain_se_rule_against_direct_statistics(z):
    "The chosen setting per type, recomputed from postprocess + score_image per image and the statistics module."
    import statistics
    gt, preds, types = simulate_dataset({'shsy5y': 3, 'astro': 2, 'cort': 4}, shape=(128, 160), seed=5)
    ts, mas = (0.15, 0.35, 0.55, 0.75), (0, 75, 150)                   # every type's default is a grid point
    res = tune(preds, gt, types, score_thresholds=ts, min_areas=mas, min_gain_se=z, progress=False)
    start = PostprocessConfigs()
    for ct in ('shsy5y', 'astro', 'cort'):
        kk = [k for k in gt if types[k] == ct]
        before = [score_image(gt[k], postprocess(preds[k], ct, start)) for k in kk]
        best, best_mean = start[ct], None
        for ma in mas:                                                   # tune's grid order: min area, then threshold
            for t in ts:
                cfgs = start.replace(ct, score_threshold=t, min_area=ma)
                gains = [score_image(gt[k], postprocess(preds[k], ct, cfgs)) - b for k, b in zip(kk, before)]
                mean = statistics.fmean(gains)
                ok = mean > 0 and mean >= z * statistics.stdev(gains) / len(kk) ** 0.5 if z else True
                if ok and (best_mean is None or mean > best_mean + 1e-12): best, best_mean = cfgs[ct], mean
        assert res.best[ct] == best, (ct, z, res.best[ct], best)
        after = res.summary.loc[ct, 'after']
        assert after >= res.summary.loc[ct, 'before'] - 1e-12 or z == 0
        assert abs(after - statistics.fmean(before) - (best_mean if best != start[ct] else 0.0)) < 1e-9
        assert res.table[res.table.cell_type == ct].best.sum() == 1      # the start is a grid point: always marked
    if z >= 1e9: assert res.best == start and (res.summary['after'] == res.summary['before']).all()


def test_threshold_scores_and_errors():
    gt, pred = constructed([0.8] * 3, 0.3, 0, 1)
    proc = remove_overlaps(pred)
    s = threshold_scores(gt, proc, [0.0, 0.5, 0.95])
    assert s[1] == score_image(gt, proc.select(proc.scores >= 0.5))
    assert s[2] == 0.0 and threshold_scores(Instances.empty(SHAPE), proc, [0.95])[0] == 1.0
    with pytest.raises(ValueError, match='sorted by descending score'): threshold_scores(gt, proc.select(np.arange(len(proc))[::-1]), [0.5])
    with pytest.raises(ValueError, match='have no predictions'): tune({}, {'a': gt}, {'a': 'cort'}, progress=False)
    with pytest.raises(ValueError, match='have no cell type'): tune({'a': pred}, {'a': gt}, {}, progress=False)
    with pytest.raises(ValueError, match='no scores'): tune({'a': pred.with_(scores=None)}, {'a': gt}, {'a': 'cort'}, progress=False)
