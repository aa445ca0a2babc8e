"""Benchmark: Sartorius RLE decode / encode, cellseg_nb vs the public-notebook codec.

Run: `python bench/bench_rle.py` (writes `bench/results/bench_rle.json`), or `--check` (300 cells, under 30 s:
asserts the outputs equal and both batch paths >= 30x faster than the public notebook, CPU time). Inputs: 520 x 704 images with 300 and 800 elliptical cells (shsy5y density).
Peers (written here from their description): the decoder copied through public notebooks builds a full-size
mask per cell with a Python loop over runs; its encoder pads the flattened full mask with zeros and diffs it.
Our batch paths: `Instances.from_rles` (text -> runs) and `Instances.to_rles` (runs -> text). Every output is
checked equal to the peer's before timing is reported.
"""
import sys, time
from pathlib import Path
sys.path.insert(0, str(Path(__file__).parent))
import numpy as np
import pandas as pd
from _inputs import make_instances, SHAPE, race, save_results, check_bound
from cellseg_nb.instances import Instances
from cellseg_nb.rle import rle_decode, rle_encode


def public_rle_decode(mask_rle, shape=SHAPE):
    "The public-notebook decoder: a full-size uint8 mask, one slice assignment per run."
    s = mask_rle.split()
    starts, lengths = [np.asarray(x, dtype=int) for x in (s[0:][::2], s[1:][::2])]
    starts -= 1
    ends = starts + lengths
    img = np.zeros(shape[0] * shape[1], dtype=np.uint8)
    for lo, hi in zip(starts, ends):
        img[lo:hi] = 1
    return img.reshape(shape)


def public_rle_encode(img):
    "The public-notebook encoder: pad the flattened full mask with zeros, diff, runs as text."
    pixels = img.flatten()
    pixels = np.concatenate([[0], pixels, [0]])
    runs = np.where(pixels[1:] != pixels[:-1])[0] + 1
    runs[1::2] -= runs[::2]
    return ' '.join(str(x) for x in runs)


def bench(n_cells, seed=0, chunk=50, clock='wall'):
    gt, _ = make_instances(n_cells, seed)
    n = len(gt)
    rles = gt.to_rles()
    # --- decode: check equality, then time
    ours = Instances.from_rles(rles, SHAPE)
    pix = ours.pixels(); off = np.concatenate([[0], np.cumsum(ours.areas)])
    for i, r in enumerate(rles):
        assert np.array_equal(np.flatnonzero(public_rle_decode(r)), pix[off[i]:off[i + 1]]), i
        assert np.array_equal(rle_decode(r, SHAPE), public_rle_decode(r).astype(bool)), i
    t = race({'dec_peer': lambda: [public_rle_decode(r) for r in rles],
              'dec_ours': lambda: Instances.from_rles(rles, SHAPE),
              'dec_single': lambda: [rle_decode(r, SHAPE) for r in rles]}, rounds=5, clock=clock)
    # --- encode: the peer needs a full mask per cell; build them in chunks outside the timed region
    t.update(enc_peer=0.0, enc_single=0.0)
    for c0 in range(0, n, chunk):
        masks = gt.select(np.arange(c0, min(n, c0 + chunk))).to_masks().astype(np.uint8)
        peer = [public_rle_encode(m) for m in masks]
        assert peer == rles[c0:c0 + chunk] == [rle_encode(m) for m in masks]
        tc = race({'enc_peer': lambda: [public_rle_encode(m) for m in masks],
                   'enc_single': lambda: [rle_encode(m) for m in masks]}, rounds=3, clock=clock)
        t['enc_peer'] += tc['enc_peer']; t['enc_single'] += tc['enc_single']
    assert ours.to_rles() == rles
    t['enc_ours'] = race({'enc_ours': lambda: gt.to_rles(),
                          'enc_peer_chunk': lambda: [public_rle_encode(m) for m in masks]}, rounds=5,
                         clock=clock)['enc_ours']
    t_dec_peer, t_dec_ours, t_dec_single = t['dec_peer'], t['dec_ours'], t['dec_single']
    t_enc_peer, t_enc_ours, t_enc_single = t['enc_peer'], t['enc_ours'], t['enc_single']
    us = lambda t: t / n * 1e6
    rows = [
        dict(cells=n, op='decode', impl='public notebook (full mask per cell)', us_per_cell=us(t_dec_peer)),
        dict(cells=n, op='decode', impl='cellseg_nb rle_decode (full mask per cell)', us_per_cell=us(t_dec_single)),
        dict(cells=n, op='decode', impl='cellseg_nb Instances.from_rles (batch)', us_per_cell=us(t_dec_ours)),
        dict(cells=n, op='encode', impl='public notebook (full mask per cell)', us_per_cell=us(t_enc_peer)),
        dict(cells=n, op='encode', impl='cellseg_nb rle_encode (full mask per cell)', us_per_cell=us(t_enc_single)),
        dict(cells=n, op='encode', impl='cellseg_nb Instances.to_rles (batch)', us_per_cell=us(t_enc_ours)),
    ]
    df = pd.DataFrame(rows)
    peer = df.groupby('op')['us_per_cell'].transform('first')
    df['speedup_vs_public'] = peer / df['us_per_cell']
    return df


BOUND = 30   # batch decode and batch encode vs the public notebook (goal 50x for decode)


if __name__ == '__main__':
    import argparse
    ap = argparse.ArgumentParser(); ap.add_argument('--check', action='store_true', help='assert outputs and bounds')
    a = ap.parse_args()
    pd.set_option('display.width', 140)
    sizes = [(300, 0)] if a.check else [(300, 0), (800, 1)]
    df = pd.concat([bench(n, seed=s, clock='cpu' if a.check else 'wall') for n, s in sizes], ignore_index=True)
    print(df.to_string(index=False, float_format=lambda x: f"{x:9.2f}"))
    print("every decoded cell and every encoded string equals the public notebook's")
    batch = df[df.impl.str.contains('batch')]
    for _, r in batch.iterrows():
        if a.check: check_bound(f"{r.op} {r.cells} cells, batch vs public notebook (CPU)", r.speedup_vs_public, BOUND)
        else: print(f"{r.op} {r.cells} cells: {r.speedup_vs_public:.1f}x faster than the public notebook (bound {BOUND}x)")
    if not a.check: save_results('bench_rle', df.to_dict('records'))
