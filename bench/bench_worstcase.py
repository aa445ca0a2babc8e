"""The worst case of the prediction path's pairwise work: flip TTA of a half-trained model, i.e. 3 passes of 1000
large, piled-up candidate cells on one 520 x 704 image, merged (`merge_models`, as `tta_predict` does) and
post-processed (score threshold 0, mask NMS at IoU 0.5, overlap removal).

Ours: `cellseg_nb.ensemble.merge_models` and `cellseg_nb.postprocess.postprocess`, which intersect only the pairs
whose areas and boxes allow the threshold, on runs, and vote on run boundaries.
Peer: the previous algorithm, re-created below (`old_*`): every intersecting pair of all 3000 cells from
`pairwise_iou` (which falls back to a per-pixel, per-overlap-layer path when the runs pile up) and a per-pixel
`np.unique` vote. The algorithm is the same, so the outputs are asserted identical (every run, score, label).

The peer needs minutes and many GB at the full worst case (issue 9 measured 409 s and 13.4 GB for a real TTA run),
so it runs on the first `--peer-n` candidates of each pass (default 300); ours runs there too (for the ratios) and
at the full size. Peak memory: `tracemalloc` (numpy allocations are traced) around each call; time: CPU seconds.

    python bench/bench_worstcase.py                 # peer vs ours at --peer-n, then ours at the full worst case
    python bench/bench_worstcase.py --check         # < 1 min: ours at the full worst case, asserts the bounds
    python bench/bench_worstcase.py --model         # also an untrained R50-FPN (1000 detections): plain vs TTA
    python bench/bench_worstcase.py --kernel DIR    # the Kaggle kernel's predictors on 520 x 704 images, untrained
                                                    # models built in DIR (`build_fullsize`): s/image, TTA off/on

The same pile, unprocessed, is also what a submission check meets when a user writes raw predictions:
`write_submission` refuses overlapping cells and `validate_submission` lists them. Ours: `submission._overlaps`
(pairs cell by cell from one sort of the shared pixels; at most 100 listed per image by default). Peer: the previous
check, every intersecting pair from `intersections(inst, inst)`. Identical pairs and counts at --peer-n cells;
ours alone at the full pile (capped as the validator and the writer use it).
"""
import argparse, sys, time, tracemalloc
import numpy as np
from cellseg_nb.instances import Instances, pairwise_iou
from cellseg_nb.postprocess import random_candidates, postprocess, PostprocessConfig, score_order, remove_overlaps
from cellseg_nb.ensemble import merge_models
from cellseg_nb.instances import intersections
from cellseg_nb.submission import _overlaps

SHAPE = (520, 704)
CONFIG = PostprocessConfig(score_threshold=0.0, min_area=20, nms_iou=0.5, min_kept=0.5)
MAX_PEAK_GB = 2.0        # the bound of issue 9 for TTA merging + post-processing of any 1000 candidates per pass
MAX_CPU_S = 45.0         # the whole worst case (3 x 1000 large cells): merge + post-process, CPU seconds
MAX_OVERLAP_CPU_S = 10.0  # listing the first 100 overlapping pairs of one raw pass of 1000 large cells


def worst_case(n=1000, passes=3, area=(4000, 60000), seed=0) -> list:
    """`passes` flipped-back passes over one image: the same `n` large cells (areas log-uniform in `area` px, 60%
    near-duplicates of each other) jittered a little in each pass, with fresh scores. A list of `Instances`."""
    base = random_candidates(n, SHAPE, seed=seed, area=area, dup_frac=0.6)
    out = []
    for k in range(passes):
        rng = np.random.default_rng([seed, k])
        hw = SHAPE[0] * SHAPE[1]
        s = np.minimum(base.starts.astype(np.int64) + int(rng.integers(0, 4)), hw)      # shifted 0-3 px
        ln = np.maximum(np.minimum(base.lengths, hw - s), 0)                             # empty runs are dropped
        p = Instances(s, ln, base.run_offsets, SHAPE, rng.random(n).astype(np.float32), base.labels)
        out.append(p)
    return out


# ---- the peer: the previous algorithm, re-created -----------------------------------------------------------
def old_match_groups(preds, w, iou_threshold):
    allc = Instances.concat(preds)
    n = len(allc)
    src = np.repeat(np.arange(len(preds)), [len(p) for p in preds]).astype(np.int64)
    group = np.full(n, -1, np.int64)
    ia, ib, iou = pairwise_iou(allc, allc)                                  # every intersecting pair, all N x N
    sel = (iou > iou_threshold) & (src[ia] != src[ib])
    ia, ib, iou = ia[sel], ib[sel], iou[sel]
    o = np.lexsort((-iou, ia)); ia, ib = ia[o], ib[o]
    start = np.searchsorted(ia, np.arange(n + 1))
    g = 0
    for i in np.argsort(-(allc.scores * w[src]), kind='stable'):
        if group[i] >= 0: continue
        group[i] = g; taken = {src[i]}
        for j in ib[start[i]:start[i + 1]]:
            if group[j] < 0 and src[j] not in taken: group[j] = g; taken.add(src[j])
        g += 1
    return allc, src, group


def old_merge_models(preds, iou_threshold=0.5, vote=0.5):
    k = len(preds); w = np.ones(k) / k
    allc, src, group = old_match_groups(preds, w, iou_threshold)
    shape = allc.shape; ng = int(group.max()) + 1; wi = w[src]
    gw = np.bincount(group, weights=wi, minlength=ng)
    hw = shape[0] * shape[1]
    own = allc.pixel_owner()
    key = group[own] * hw + allc.pixels()                                   # one entry per (cell, pixel)
    ukey, inv = np.unique(key, return_inverse=True)
    pw = np.bincount(inv, weights=wi[own])
    g_of = ukey // hw
    kept = pw >= vote * gw[g_of] - 1e-9
    ukey, g_of = ukey[kept], g_of[kept]
    offsets = np.concatenate([[0], np.cumsum(np.bincount(g_of, minlength=ng))])
    scores = np.bincount(group, weights=wi * allc.scores, minlength=ng).astype(np.float32)
    order = np.argsort(-(allc.scores * wi), kind='stable')
    first = order[np.unique(group[order], return_index=True)[1]]
    leader = np.full(ng, -1, np.int64); leader[group[first]] = first
    out = Instances.from_pixels(ukey % hw, offsets, shape, scores, allc.labels[leader], {}, sorted=True)
    keep = out.areas > 0
    return out.select(keep).with_(meta={'n_models': np.bincount(group, minlength=ng)[keep]})


def old_mask_nms(x, iou_threshold):
    order = score_order(x); n = len(x)
    keep = np.ones(n, bool)
    y = x.select(order)
    ia, ib, iou = pairwise_iou(y, y)
    sel = (ia < ib) & (iou > iou_threshold)
    ia, ib = ia[sel], ib[sel]
    start = np.searchsorted(ia, np.arange(n + 1))
    for i in np.unique(ia).tolist():
        if keep[i]: keep[ib[start[i]:start[i + 1]]] = False
    return order[keep]


def old_postprocess(x, cfg=CONFIG):
    x = x.select(x.scores >= np.float32(cfg.score_threshold))
    x = x.select(old_mask_nms(x, cfg.nms_iou))
    return remove_overlaps(x, cfg.min_kept, cfg.min_area, budget=10 ** 15)  # the segment path, unbounded


# ---- measuring ------------------------------------------------------------------------------------------------
def measure(fn, *args):
    "(result, CPU seconds, peak traced MB) of `fn(*args)`."
    tracemalloc.start(); tracemalloc.reset_peak()
    t = time.process_time()
    out = fn(*args)
    dt = time.process_time() - t
    peak = tracemalloc.get_traced_memory()[1] / 2 ** 20
    tracemalloc.stop()
    return out, dt, peak


def ours(passes): return postprocess(merge_models(passes), config=CONFIG)
def peer(passes): return old_postprocess(old_merge_models(passes))


def old_overlapping_pairs(inst: Instances):
    "The previous submission check: every intersecting pair i < j with its pixel count."
    ia, ib, cnt = intersections(inst, inst)
    sel = ia < ib
    return ia[sel], ib[sel], cnt[sel]


def overlap_check(raw: Instances, peer_n: int, check: bool):
    "Submission overlap check on one raw pass: peer vs ours at `peer_n` cells, then ours capped at the full pass."
    if not check:
        small = raw.select(np.arange(peer_n))
        (pa, pb, pc), t_peer, m_peer = measure(old_overlapping_pairs, small)
        ov, t_ours, m_ours = measure(_overlaps, small)
        assert ov.complete and all(np.array_equal(x, y) for x, y in ((pa, ov.ia), (pb, ov.ib), (pc, ov.count)))
        print(f"submission overlap check, {peer_n} raw cells: identical {len(pa)} pairs\n"
              f"  peer {t_peer:.2f} s CPU, peak {m_peer:.0f} MB | ours (all pairs) {t_ours:.2f} s, peak {m_ours:.0f} MB"
              f" | ratio time {t_peer / t_ours:.1f}x, memory {m_peer / m_ours:.1f}x")
    for cap in (1, 100):
        ov, t, m = measure(_overlaps, raw, cap)
        print(f"submission overlap check, {len(raw)} raw cells ({raw.n_pixels / 1e6:.1f} M px), first {cap} pair(s): "
              f"{t:.2f} s CPU, peak {m:.0f} MB ({ov.n_cells} cells overlap, {ov.n_pixels} px covered twice or more)")
        assert len(ov) == cap and not ov.complete
        if check:
            assert t < MAX_OVERLAP_CPU_S and m < MAX_PEAK_GB * 1024, f"overlap check {t:.1f} s, {m:.0f} MB"


def same(a: Instances, b: Instances):
    assert len(a) == len(b), f"{len(a)} vs {len(b)} cells"
    for k in ('starts', 'lengths', 'run_offsets', 'scores', 'labels'):
        assert np.array_equal(getattr(a, k), getattr(b, k)), f"{k} differ"


def model_pass(threads=2):
    """An untrained torchvision R50-FPN (box score threshold 0: 1000 detections) on one synthetic 520 x 704 image:
    CPU seconds of the plain pass and of flip TTA (3 passes + merge + post-processing); the worst case a user meets."""
    import torch
    from cellseg_nb.maskrcnn import build_model, as_predictor
    from cellseg_nb.synth import synth_image
    from cellseg_nb.inference import tta_predict
    torch.set_num_threads(threads); torch.manual_seed(0)
    model = build_model(3, 'resnet50', box_score_thresh=0.0).eval()
    img, _ = synth_image('shsy5y', seed=0, shape=SHAPE)
    pred = as_predictor(model)
    plain, t_plain, m_plain = measure(pred, img)
    tta, t_tta, m_tta = measure(lambda: postprocess(tta_predict(pred, img), config=CONFIG))
    print(f"R50-FPN untrained: plain pass {len(plain)} detections {t_plain:.1f} s CPU; flip TTA + merge + "
          f"post-processing {t_tta:.1f} s CPU ({t_tta / t_plain:.1f}x the plain pass), {len(tta)} cells, "
          f"peak traced {m_tta:.0f} MB")


def build_fullsize(root) -> 'Path':
    """A folder like /kaggle/input under `root`: `sartorius-cell-instance-segmentation/` (synthetic, 520 x 704,
    2 test images) and `cellseg-weights/` with an *untrained* small Mask R-CNN at native resolution (its near-uniform
    class scores pass the box threshold: up to 1000 detections per pass) and an untrained Cellpose (0 epochs)."""
    import torch
    from pathlib import Path
    from cellseg_nb.synth import make_competition
    from cellseg_nb.data import SartoriusData
    from cellseg_nb.maskrcnn import build_model
    from cellseg_nb.pipeline import maskrcnn_demo_options
    from cellseg_nb.config import get_recipe
    from cellseg_nb.cpose import train_cellpose
    root = Path(root)
    comp = make_competition(root / 'sartorius-cell-instance-segmentation', n_images=3, seed=0, image_shape=SHAPE,
                            n_test=2, n_semi=0)
    w = root / 'cellseg-weights'; w.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = build_model(3, 'resnet18', **maskrcnn_demo_options(SHAPE))
    torch.save({'model': model.state_dict(), 'config': model.config}, w / 'maskrcnn.pth')
    cp = Path(train_cellpose(SartoriusData(comp), root / 'cp_train',
                             **{**get_recipe('demo').cellpose.train_options(), 'n_epochs': 0, 'nimg_per_epoch': 2}))
    for f in cp.parent.glob(cp.name + '*'):
        if f.is_file(): (w / ('cellpose' + f.name[len(cp.name):])).write_bytes(f.read_bytes())
    return root


KERNEL_CHILD = """
import json, resource, sys, time, torch
torch.set_num_threads(2)
from cellseg_nb.pipeline import load_predictor
from cellseg_nb.inference import predict_images, postprocess_all, list_images
root, which, tta = sys.argv[1], sys.argv[2], sys.argv[3] == '1'
w = f'{root}/cellseg-weights'
pred = load_predictor(maskrcnn=f'{w}/maskrcnn.pth' if which != 'cellpose' else None,
                      cellpose=f'{w}/cellpose' if which != 'maskrcnn' else None, device='cpu')
imgs = list_images(f'{root}/sartorius-cell-instance-segmentation/test')
t, c = time.perf_counter(), time.process_time()
raw = predict_images(pred, imgs, tta=tta, progress=False)
final = postprocess_all(raw)
n = len(imgs)
print(json.dumps(dict(model=which, tta=tta, images=n, cpu_s_per_image=(time.process_time() - c) / n,
                      wall_s_per_image=(time.perf_counter() - t) / n, raw_per_image=[len(r) for r in raw.values()],
                      max_rss_gb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20)))
"""


def kernel_timings(root):
    """Seconds per 520 x 704 image of the kernel's predictor + post-processing (CPU, 2 threads), each model and
    both, TTA off and on, each in a fresh child process; a DataFrame. Models from `build_fullsize(root)`."""
    import json, subprocess
    import pandas as pd
    from pathlib import Path
    root = Path(root)
    if not (root / 'cellseg-weights' / 'maskrcnn.pth').is_file(): build_fullsize(root)
    rows = []
    for which in ('maskrcnn', 'cellpose', 'both'):
        for tta in (0, 1):
            r = subprocess.run([sys.executable, '-c', KERNEL_CHILD, str(root), which, str(tta)], capture_output=True,
                               text=True, check=True)
            rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
    df = pd.DataFrame(rows)
    df['hours_240_cpu'] = df.cpu_s_per_image * 240 / 3600          # CPU time: what a quiet machine's wall time nears
    df['hours_240_wall'] = df.wall_s_per_image * 240 / 3600        # wall time here (a loaded machine inflates it)
    return df


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--check', action='store_true', help='ours only at the full worst case; assert the bounds')
    ap.add_argument('--n', type=int, default=1000, help='candidates per pass')
    ap.add_argument('--peer-n', type=int, default=300, help='candidates per pass for the peer comparison')
    ap.add_argument('--model', action='store_true', help='also time an untrained R50-FPN, plain vs TTA')
    ap.add_argument('--kernel', metavar='DIR', help="time the kernel's predictors on 520 x 704 images (models in DIR)")
    a = ap.parse_args(argv)
    if a.kernel:
        import pandas as pd
        with pd.option_context('display.width', 200, 'display.max_columns', 20): print(kernel_timings(a.kernel))
        return
    passes = worst_case(a.n)
    px = sum(p.n_pixels for p in passes)
    print(f"worst case: {len(passes)} passes x {a.n} cells, {px / 1e6:.1f} M pixels in all "
          f"(mean area {px / len(passes) / a.n:.0f} px), deepest pile {max(int(p.overlap_count().max()) for p in passes)}")
    if not a.check:
        small = [p.select(np.arange(a.peer_n)) for p in passes]
        r_peer, t_peer, m_peer = measure(peer, small)
        r_ours, t_ours, m_ours = measure(ours, small)
        same(r_ours, r_peer)
        print(f"{a.peer_n} cells per pass: identical outputs ({len(r_ours)} cells)\n"
              f"  peer {t_peer:.2f} s CPU, peak {m_peer:.0f} MB | ours {t_ours:.2f} s, peak {m_ours:.0f} MB | "
              f"ratio time {t_peer / t_ours:.1f}x, memory {m_peer / m_ours:.1f}x")
    one, t_one, m_one = measure(lambda: postprocess(passes[0], config=CONFIG))
    res, t_all, m_all = measure(ours, passes)
    print(f"{a.n} cells per pass, ours: one pass post-processed {t_one:.2f} s, peak {m_one:.0f} MB; "
          f"3 passes merged + post-processed {t_all:.2f} s CPU, peak {m_all:.0f} MB -> {len(res)} cells")
    assert res.overlap_count().max(initial=0) <= 1
    if a.check:
        assert m_all < MAX_PEAK_GB * 1024, f"peak {m_all:.0f} MB over {MAX_PEAK_GB} GB"
        assert t_all < MAX_CPU_S, f"{t_all:.1f} s CPU over {MAX_CPU_S} s"
        print(f"check passed: peak {m_all:.0f} MB < {MAX_PEAK_GB * 1024:.0f} MB, {t_all:.1f} s < {MAX_CPU_S:.0f} s CPU")
    overlap_check(passes[0], a.peer_n, a.check)
    if a.model: model_pass()


if __name__ == '__main__':
    main()
