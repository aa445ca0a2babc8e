"""Overlap removal + minimum area at 1000 candidate cells on a 520 x 704 image: cellseg_nb vs the public-notebook loop.

The peer is the loop of the public Sartorius detectron2 inference notebooks: dense (N, H, W) bool masks from the
model, sorted by score, a full-size `used` mask, `mask = mask * (1 - used)`, kept when `mask.sum() >= MIN_PIXELS`,
then `used += mask`. Ours: `cellseg_nb.postprocess.remove_overlaps` on the sparse `Instances`.
Same inputs, one run; the kept cells (indices and pixels) are asserted identical, the ratio printed.
Usage: python bench/bench_postprocess.py [n_candidates] [min_area]
"""
import sys, time
import numpy as np
from cellseg_nb.instances import Instances
from cellseg_nb.postprocess import random_candidates, remove_overlaps, score_order


def public_loop(pred_masks, min_pixels):
    "The public-notebook loop on dense masks already in score order; returns the kept masks and their indices."
    used = np.zeros(pred_masks.shape[1:], dtype=int)
    res, kept = [], []
    for i, mask in enumerate(pred_masks):
        mask = mask * (1 - used)
        if mask.sum() >= min_pixels:
            used += mask
            res.append(mask.astype(bool)); kept.append(i)
    return res, kept


def main(n=1000, min_area=75, seed=0):
    cand = random_candidates(n, (520, 704), seed=seed)
    print(f"{len(cand)} candidates, mean area {cand.areas.mean():.0f} px, max cover {cand.overlap_count().max()}")
    order = score_order(cand)
    dense = cand.select(order).to_masks()            # the model's output as the public notebook gets it

    t0 = time.perf_counter(); res, kept = public_loop(dense, min_area); t_loop = time.perf_counter() - t0
    remove_overlaps(cand, 0.0, min_area)              # warm-up (first-call imports and allocations)
    reps = 5
    t0 = time.perf_counter()
    for _ in range(reps): ours, idx = remove_overlaps(cand, min_kept=0.0, min_area=min_area, return_index=True)
    t_ours = (time.perf_counter() - t0) / reps

    ref = Instances.from_masks(np.stack(res)) if res else Instances.empty()
    assert np.array_equal(idx, order[kept]), "kept cells differ"
    assert ours.to_rles() == ref.to_rles(), "kept pixels differ"
    print(f"kept {len(ours)} cells; identical outputs")
    print(f"public loop: {t_loop:.3f} s   remove_overlaps: {t_ours*1000:.1f} ms   ratio: {t_loop / t_ours:.0f}x")
    return t_loop / t_ours


if __name__ == '__main__':
    main(*(int(a) for a in sys.argv[1:]))
