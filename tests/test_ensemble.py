"""cellseg_nb.ensemble: matching and weighted pixel-vote merging against dense computations, non-overlapping output,
and the per cell type choice on out-of-fold predictions."""
import numpy as np
import pytest
from cellseg_nb.instances import Instances, iou_matrix
from cellseg_nb.postprocess import random_candidates
from cellseg_nb.tune import simulate_predictions
from cellseg_nb.ensemble import (match_groups, merge_models, ensemble, tune_ensemble, compare_models, EnsembleSettings,
                                 image_type)


def _scored(inst, seed, label=1):
    rng = np.random.default_rng(seed)
    return inst.with_(scores=rng.uniform(0.05, 1, len(inst)).astype(np.float32), labels=np.full(len(inst), label))


@pytest.mark.parametrize('seed', range(4))
def test_match_groups_properties(seed):
    rng = np.random.default_rng(seed)
    k = int(rng.integers(2, 4))
    base = random_candidates(30, (48, 64), seed=seed)
    preds = [_scored(Instances.concat([random_candidates(20, (48, 64), seed=100 * seed + j),
                                       base.select(rng.permutation(len(base))[:15])]), seed + j) for j in range(k)]
    w = rng.uniform(0.5, 2, k)
    allc, src, group = match_groups(preds, w, 0.5)
    iou = iou_matrix(allc, allc)
    ws = allc.scores * w[src]
    for g in range(group.max() + 1):
        mem = np.flatnonzero(group == g)
        assert len(set(src[mem])) == len(mem)                            # one cell per model
        lead = mem[np.argmax(ws[mem])]
        assert all(iou[lead, j] > 0.5 for j in mem if j != lead)
    assert (group >= 0).all()


@pytest.mark.parametrize('vote', [0.3, 0.5, 0.8])
def test_merge_models_matches_dense_vote(vote):
    p = [_scored(random_candidates(25, (40, 56), seed=s), s) for s in (1, 2)]
    p.append(_scored(Instances.concat([p[0].select(np.arange(0, 25, 2)), p[1].select(np.arange(1, 25, 3))]), 9))
    w = np.array([0.5, 0.3, 0.2])
    allc, src, group = match_groups(p, w, 0.5)
    m = merge_models(p, w, 0.5, vote)
    dense = allc.to_masks()
    exp, scores = [], []
    for g in range(group.max() + 1):
        mem = np.flatnonzero(group == g)
        cover = np.tensordot(w[src[mem]], dense[mem], 1)
        km = cover >= vote * w[src[mem]].sum() - 1e-9
        if km.any(): exp.append(km); scores.append((w[src[mem]] * allc.scores[mem]).sum())
    assert np.array_equal(m.to_masks(), np.stack(exp))
    np.testing.assert_allclose(m.scores, scores, rtol=1e-5)


def test_ensemble_is_non_overlapping_and_votes_type():
    g = random_candidates(60, (96, 128), seed=4, dup_frac=0)
    a = simulate_predictions(g, label=2, seed=1); b = simulate_predictions(g, label=2, seed=2)
    b = b.with_(labels=np.where(np.arange(len(b)) % 5 == 0, 3, 2))
    s = EnsembleSettings(['cellpose', 'maskrcnn'], {'shsy5y': 'both', 'astro': 'both', 'cort': 'maskrcnn'})
    assert image_type({'cellpose': a, 'maskrcnn': b}) == 'astro'
    out = ensemble({'cellpose': a, 'maskrcnn': b}, s)
    assert out.meta['cell_type'] == 'astro' and out.meta['source'] == 'both'
    assert out.overlap_count().max() <= 1 and len(out) > 0
    assert np.all(np.diff(out.scores) <= 0)


def _dataset(n=4, shape=(96, 128)):
    gt, types = {}, {}
    from cellseg_nb.postprocess import remove_overlaps
    for j, (ct, area) in enumerate((('shsy5y', (120, 300)), ('astro', (300, 900)))):
        for i in range(n):
            k = f'{ct}{i}'
            g = random_candidates(40 if ct == 'shsy5y' else 12, shape, seed=100 * j + i, area=area, dup_frac=0)
            gt[k] = remove_overlaps(g, 0, 20).with_(scores=None, labels=None)
            types[k] = ct
    return gt, types


def test_tune_ensemble_picks_the_right_source():
    gt, types = _dataset()
    lab = {'shsy5y': 1, 'astro': 2}
    perfect = lambda k: gt[k].with_(scores=np.full(len(gt[k]), 0.9, np.float32), labels=np.full(len(gt[k]), lab[types[k]]))
    junk = lambda k, s: random_candidates(len(gt[k]), gt[k].shape, seed=s, dup_frac=0).with_(labels=np.full(len(gt[k]), lab[types[k]]))
    preds = {'cellpose': {k: perfect(k) if types[k] == 'shsy5y' else junk(k, i) for i, k in enumerate(gt)},
             'maskrcnn': {k: perfect(k) if types[k] == 'astro' else junk(k, 50 + i) for i, k in enumerate(gt)}}
    r = tune_ensemble(preds, gt, types, weights=(0.5,), min_areas=(0, 50), score_thresholds=(0.05, 0.55))
    assert r.settings.choice == {'shsy5y': 'cellpose', 'astro': 'maskrcnn'}
    assert r.summary.loc['shsy5y', 'ensemble'] == pytest.approx(1.0) and r.summary.loc['astro', 'ensemble'] == pytest.approx(1.0)


def test_tune_ensemble_prefers_both_for_complementary_models():
    "Each model misses a different half of the cells: only the merge finds them all."
    gt, types = _dataset()
    preds = {'cellpose': {}, 'maskrcnn': {}}
    for k, g in gt.items():
        half = np.arange(len(g)) % 2 == 0
        preds['cellpose'][k] = g.select(half).with_(scores=np.full(half.sum(), 0.8, np.float32), labels=np.ones(half.sum(), int))
        preds['maskrcnn'][k] = g.select(~half).with_(scores=np.full((~half).sum(), 0.8, np.float32), labels=np.ones((~half).sum(), int))
    r = tune_ensemble(preds, gt, types, weights=(0.5,), min_areas=(0,), score_thresholds=(0.05,))
    assert set(r.settings.choice.values()) == {'both'}
    table = compare_models(preds, gt, types, r.settings)
    ens = table.xs('ensemble')['mAP']['overall']
    assert ens == pytest.approx(1.0) and ens > table.xs('cellpose')['mAP']['overall'] + 0.3
    assert list(table.columns) == ['n_images', 'AP@0.5', 'AP@0.75', 'AP@0.9', 'mAP']    # the metric's summary layout


def test_settings_roundtrip_and_errors(tmp_path):
    s = EnsembleSettings(['cellpose', 'maskrcnn'], {'shsy5y': 'both'}, {'shsy5y': {'cellpose': 0.7, 'maskrcnn': 0.3}},
                         {'shsy5y': 0.5})
    p = s.save(tmp_path / 'e.json')
    assert EnsembleSettings.load(p).to_dict() == s.to_dict()
    with pytest.raises(ValueError, match='no such ensemble settings'): EnsembleSettings.load(tmp_path / 'nope.json')
    g = random_candidates(5, (32, 32), seed=0)
    with pytest.raises(ValueError, match="no predictions of model"): ensemble({'cellpose': g}, s, 'shsy5y')
    with pytest.raises(ValueError, match='expected 2'): merge_models([g, g], weights=[1, 2, 3])


# ---- bounded matching and vote (issue 9, section 4): equal to a dense computation exactly ----
def dense_match_groups(preds, w, thr):
    "The grouping rule on a dense IoU matrix: leaders by weighted score, partners by falling IoU, one per model."
    allc = Instances.concat([p if p.scores is not None else p.with_(scores=np.ones(len(p), np.float32)) for p in preds])
    src = np.repeat(np.arange(len(preds)), [len(p) for p in preds])
    m = allc.to_masks().reshape(len(allc), -1).astype(np.int64)
    inter = m @ m.T; a = m.sum(1)
    with np.errstate(invalid='ignore', divide='ignore'): iou = inter / (a[:, None] + a[None, :] - inter)
    group = np.full(len(allc), -1)
    g = 0
    for i in np.argsort(-(allc.scores * np.asarray(w)[src]), kind='stable'):
        if group[i] >= 0: continue
        group[i] = g; taken = {src[i]}
        for j in sorted(range(len(allc)), key=lambda j: (-iou[i, j], j)):
            if j != i and iou[i, j] > thr and group[j] < 0 and src[j] not in taken: group[j] = g; taken.add(src[j])
        g += 1
    return group


@pytest.mark.parametrize('seed', range(5))
def test_match_and_merge_equal_dense_on_piled_candidates(seed):
    "Three passes of large candidates piled on each other (flip TTA of a half-trained model)."
    rng = np.random.default_rng(seed)
    shape = (36, 48)
    base = random_candidates(20, shape, seed=seed, area=(60, 1200), dup_frac=0.5)
    preds = [_scored(Instances.concat([random_candidates(10, shape, seed=50 + 7 * seed + j, area=(60, 1400)),
                                       base.select(rng.permutation(len(base))[:14])]), 3 * seed + j) for j in range(3)]
    w = rng.uniform(0.5, 2, 3)
    for thr in (0.3, 0.5, 0.7):
        allc, src, group = match_groups(preds, w, thr)
        assert np.array_equal(group, dense_match_groups(preds, w, thr)), (seed, thr)
    vote = 0.5
    wn = w / w.sum()
    allc, src, group = match_groups(preds, wn, 0.5)
    m = merge_models(preds, w, 0.5, vote)
    dense = allc.to_masks()
    exp = []
    for g in range(group.max() + 1):
        mem = np.flatnonzero(group == g)
        cover = np.zeros(shape)
        for j in mem: cover = cover + wn[src[j]] * dense[j]          # in model order, as the merge sums
        km = cover >= vote * np.bincount(group, weights=wn[src])[g] - 1e-9
        if km.any(): exp.append(km)
    assert np.array_equal(m.to_masks(), np.stack(exp))


# --- the one fusion (merge_models) used by model ensembles and TTA: properties on random inputs ---

def _cells(p):
    "An Instances as a sorted list of (rle, score, label): equality up to order."
    return sorted(zip(p.to_rles(), np.round(p.scores.astype(np.float64), 5).tolist(), p.labels.tolist()))


@pytest.mark.parametrize('seed', range(3))
def test_fusing_identical_passes_returns_the_input(seed):
    p = _scored(random_candidates(30, (48, 64), seed=seed, dup_frac=0), seed)
    for n in (2, 3, 5):
        for fusion in (dict(), dict(vote_by='score'), dict(score_fusion='mean'), dict(score_fusion='max', min_members=n)):
            m = merge_models([p] * n, **fusion)
            assert _cells(m) == _cells(p), (n, fusion)
            assert (m.meta['n_models'] == n).all()


@pytest.mark.parametrize('seed', range(3))
def test_fusion_is_invariant_to_pass_order(seed):
    rng = np.random.default_rng(seed)
    base = random_candidates(25, (48, 64), seed=seed, dup_frac=0)
    passes = [_scored(Instances.concat([random_candidates(10, (48, 64), seed=50 + 7 * seed + j),
                                        base.select(rng.permutation(len(base))[:18])]), 10 * seed + j) for j in range(4)]
    w = rng.uniform(0.5, 2, 4)
    for fusion in (dict(), dict(vote_by='score', score_fusion='mean'), dict(score_fusion='max', min_members=2)):
        ref = _cells(merge_models(passes, w, **fusion))
        for _ in range(3):
            o = rng.permutation(4)
            assert _cells(merge_models([passes[i] for i in o], w[o], **fusion)) == ref


@pytest.mark.parametrize('seed', range(2))
def test_score_weighted_vote_and_score_fusions_match_dense(seed):
    p = [_scored(random_candidates(25, (40, 56), seed=s + 10 * seed), s) for s in (1, 2)]
    p.append(_scored(Instances.concat([p[0].select(np.arange(0, 25, 2)), p[1].select(np.arange(1, 25, 3))]), 9))
    w = np.array([0.5, 0.3, 0.2])
    allc, src, group = match_groups(p, w, 0.5)
    dense = allc.to_masks()
    for vote in (0.3, 0.5, 0.8):
        exp, s_sum, s_mean, s_max, n_mem = [], [], [], [], []
        for g in range(group.max() + 1):
            mem = np.flatnonzero(group == g)
            pw = w[src[mem]] * allc.scores[mem]                         # a member's pixel weight: weight x score
            km = np.tensordot(pw, dense[mem], 1) >= vote * pw.sum() - 1e-9
            if not km.any(): continue
            exp.append(km); n_mem.append(len(mem)); s_sum.append(pw.sum())
            s_mean.append(pw.sum() / w[src[mem]].sum()); s_max.append(allc.scores[mem].max())
        for fusion, scores in (('sum', s_sum), ('mean', s_mean), ('max', s_max)):
            m = merge_models(p, w, 0.5, vote, vote_by='score', score_fusion=fusion)
            assert np.array_equal(m.to_masks(), np.stack(exp))
            np.testing.assert_allclose(m.scores, scores, rtol=1e-5)
        n_mem = np.array(n_mem)
        m2 = merge_models(p, w, 0.5, vote, vote_by='score', min_members=2)
        assert np.array_equal(m2.to_masks(), np.stack(exp)[n_mem >= 2]) and (m2.meta['n_models'] >= 2).all()


def test_fused_then_postprocessed_has_no_overlaps():
    from cellseg_nb.postprocess import postprocess
    g = random_candidates(60, (96, 128), seed=4, dup_frac=0)
    passes = [simulate_predictions(g, label=1, seed=s) for s in range(3)]
    for fusion in (dict(), dict(vote_by='score', score_fusion='mean')):
        m = merge_models(passes, **fusion)
        assert len(m) and m.overlap_count().max() > 1                   # the fused candidates do overlap
        out = postprocess(m, 'shsy5y')
        assert len(out) and out.overlap_count().max() <= 1
    with pytest.raises(ValueError, match='vote_by'): merge_models(passes, vote_by='pixels')
    with pytest.raises(ValueError, match='score_fusion'): merge_models(passes, score_fusion='median')
    with pytest.raises(ValueError, match='min_members'): merge_models(passes, min_members=4)
