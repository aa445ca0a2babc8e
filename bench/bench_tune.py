"""Tuning a 10 x 10 grid (score threshold x minimum area) per cell type over 600 images: cellseg_nb.tune vs the
straightforward search (postprocess + score_image at every grid point).

Data: `cellseg_nb.tune.simulate_dataset` at the competition's size (shsy5y 155, astro 131, cort 320 images at the
real per-type cell counts), raw detector-like candidates. The straightforward search is timed on a stratified
subset of images (all 100 grid points each) and extrapolated to 600 images; on that subset both give identical
scores (asserted). Usage: python bench/bench_tune.py [n_jobs] [subset_per_type]  (writes bench/results/bench_tune.json)
`--check`: 24 images (shsy5y 6, astro 6, cort 12, about 30 s), the straightforward search timed on all of them, every
image's grid of scores and each type's best score asserted identical, and tune >= 3x faster in CPU time (measured about 6x at full size).
"""
import sys, time
from pathlib import Path
import numpy as np
sys.path.insert(0, str(Path(__file__).parent))
from _inputs import save_results, check_bound
from cellseg_nb.tune import simulate_dataset, tune, SCORE_THRESHOLDS, MIN_AREAS
from cellseg_nb.postprocess import PostprocessConfigs, postprocess
from cellseg_nb.metric import score_image


def naive(preds, gt, types, ids):
    "Score of every image in `ids` at every grid point, the direct way: {id: (len(MIN_AREAS), len(SCORE_THRESHOLDS))}."
    out = {}
    for k in ids:
        ct = types[k]
        g = np.zeros((len(MIN_AREAS), len(SCORE_THRESHOLDS)))
        for i, ma in enumerate(MIN_AREAS):
            for j, t in enumerate(SCORE_THRESHOLDS):
                cfg = PostprocessConfigs()[ct].replace(min_area=ma, score_threshold=t)
                g[i, j] = score_image(gt[k], postprocess(preds[k], ct, cfg))
        out[k] = g
    return out


def check():
    "Small dataset, both searches timed in CPU time on all images, grids identical, ratio bound asserted."
    from cellseg_nb.tune import image_grid_scores
    gt, preds, types = simulate_dataset({'shsy5y': 6, 'astro': 6, 'cort': 12}, seed=0)
    # min_gain_se=0: the plain best grid point, which the straightforward search below finds (the timing is the grid
    # search's either way; the default rule then may keep a type's start, see tune's docstring)
    tune(preds, gt, types, n_jobs=1, min_gain_se=0, progress=False)                 # warm-up
    t0 = time.process_time(); res = tune(preds, gt, types, n_jobs=1, min_gain_se=0, progress=False); t_tune = time.process_time() - t0
    t0 = time.process_time(); ref = naive(preds, gt, types, list(gt)); t_naive = time.process_time() - t0
    for k in gt:
        c = PostprocessConfigs()[types[k]]
        g = image_grid_scores(gt[k], preds[k], c, SCORE_THRESHOLDS, MIN_AREAS, (c.nms_iou,), (c.min_kept,))
        assert np.array_equal(g[0, 0], ref[k]), f"image {k}: grid scores differ"
    for ct in ('shsy5y', 'astro', 'cort'):                          # the best mean score per type is the same
        best = np.mean([ref[k] for k in gt if types[k] == ct], 0).max()
        assert np.isclose(res.summary.loc[ct, 'after'], best, rtol=0, atol=1e-12), (ct, res.summary.loc[ct, 'after'], best)
    print(f"{len(gt)} images: tune {t_tune:.2f} s CPU, straightforward search {t_naive:.2f} s CPU; identical grids")
    check_bound(f"tuning {len(gt)} images, tune vs straightforward search (CPU)", t_naive / t_tune, 3)


def main(n_jobs=1, subset_per_type=3):
    t0 = time.perf_counter()
    gt, preds, types = simulate_dataset({'shsy5y': 155, 'astro': 131, 'cort': 320}, seed=0)
    n_cells = sum(len(g) for g in gt.values()); n_raw = sum(len(p) for p in preds.values())
    print(f"{len(gt)} images, {n_cells} true cells, {n_raw} raw candidates (generated in {time.perf_counter() - t0:.0f} s)")

    t0 = time.perf_counter()
    res = tune(preds, gt, types, n_jobs=n_jobs, progress=False)
    t_tune = time.perf_counter() - t0
    print(res.summary.round(4).to_string())
    print(f"tune: {len(SCORE_THRESHOLDS)} x {len(MIN_AREAS)} grid per cell type ({len(res.table)} rows), "
          f"{len(gt)} images, in {t_tune:.1f} s (n_jobs={n_jobs})")

    sub = [k for ct in ('shsy5y', 'astro', 'cort') for k in [k for k in gt if types[k] == ct][:subset_per_type]]
    t0 = time.perf_counter(); ref = naive(preds, gt, types, sub); t_sub = time.perf_counter() - t0
    # extrapolate per cell type (images of different types cost differently)
    t_type = {}
    for ct in ('shsy5y', 'astro', 'cort'):
        kk = [k for k in sub if types[k] == ct]
        t1 = time.perf_counter(); naive(preds, gt, types, kk[:1]); t_type[ct] = time.perf_counter() - t1
    est = sum(t_type[ct] * sum(1 for k in gt if types[k] == ct) for ct in t_type)
    from cellseg_nb.tune import image_grid_scores
    for k in sub:
        g = image_grid_scores(gt[k], preds[k], PostprocessConfigs()[types[k]], SCORE_THRESHOLDS, MIN_AREAS,
                              (PostprocessConfigs()[types[k]].nms_iou,), (PostprocessConfigs()[types[k]].min_kept,))
        assert np.array_equal(g[0, 0], ref[k]), k
    print(f"straightforward search: {t_sub:.1f} s for {len(sub)} images; estimated {est:.0f} s for all {len(gt)} "
          f"(per image: " + ', '.join(f"{ct} {v:.1f} s" for ct, v in t_type.items()) + ")")
    print(f"identical scores on the subset; ratio (estimated straightforward / tune): {est / t_tune:.0f}x")
    save_results('bench_tune', [dict(images=len(gt), tune_s=t_tune, straightforward_est_s=est, ratio=est / t_tune,
                                     n_jobs=n_jobs)])


if __name__ == '__main__':
    if '--check' in sys.argv[1:]: check()
    else: main(*(int(a) for a in sys.argv[1:]))
