"""Benchmark: `cellseg_nb.cpose.predict` vs calling cellpose's `CellposeModel.eval` directly, same model, same images.

Run: `python bench/bench_cpose.py [--model PATH] [--images N] [--repeats R] [--threads T]`.
Without `--model`, a small cellpose U-Net is first trained from scratch on dense synthetic images (not timed) so that
the images give real masks (an untrained net finds none, which would hide the cost of converting masks).
Inputs: N synthetic 520 x 704 images (the competition size) of the three cell types (`cellseg_nb.synth`).
Peer: `model.cp.eval(img, channels=[0, 0], normalize=..., diameter=None, flow_threshold=...)` per image (the flow
threshold ours uses for the image's cell type, `FLOW_THRESHOLDS`), returning cellpose's label image.
Ours: `predict(model, images)` -> list[Instances] with per-cell scores (mean cell probability) and labels.
Both run with the same settings; each is timed R times, interleaved, and the best time is kept.
Prints the per-image times and the ratio ours / peer (the issue's bound: <= 1.10).
`--check` (CI, about 1.5 minutes of CPU): 40 training epochs, 2 images of 256 x 256, 4 repeats; asserts cells are found, every image's cells pixel-identical
between ours and the peer's label image, and the CPU-time ratio ours / peer <= 1.10.
"""
import argparse, tempfile, time
from pathlib import Path
import numpy as np


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--model', default=None); ap.add_argument('--images', type=int, default=3)
    ap.add_argument('--repeats', type=int, default=2); ap.add_argument('--threads', type=int, default=1)
    ap.add_argument('--epochs', type=int, default=80)
    ap.add_argument('--check', action='store_true', help='small run that asserts identical cells and the 1.10 bound')
    a = ap.parse_args()
    if a.check: a.epochs, a.images, a.repeats = min(a.epochs, 40), min(a.images, 2), 4
    shape = (256, 256) if a.check else (520, 704)
    import torch
    torch.set_num_threads(a.threads)
    from cellseg_nb.cpose import (train_cellpose, load_model, predict, to_instances, TrainingSet, _CHANNELS, _NORMALIZE,
                                  FLOW_THRESHOLDS, FLOW_THRESHOLD, type_threshold)
    from cellseg_nb.synth import synth_image
    from cellseg_nb.celltypes import CELL_TYPES
    path = a.model
    if path is None:
        tr = [(t, *synth_image(t, [s, i], (192, 192), level=3)) for s in range(3) for i, t in enumerate(CELL_TYPES)]
        ts = TrainingSet.from_arrays([x[1] for x in tr], [x[2] for x in tr], [x[0] for x in tr])
        t0 = time.time()
        path = train_cellpose(ts, Path(tempfile.mkdtemp()) / 'bench_model', n_epochs=a.epochs, bsize=64, diam_mean=12.,
                              nimg_per_epoch=8, learning_rate=0.005)
        print(f"trained a bench model ({a.epochs} epochs) in {time.time() - t0:.0f} s: {path}")
    model = load_model(path)
    imgs = [synth_image(CELL_TYPES[i % 3], [7, i], shape)[0] for i in range(a.images)]
    types = [CELL_TYPES[i % 3] for i in range(a.images)]

    def peer():
        return [model.cp.eval(im, channels=list(_CHANNELS), normalize=dict(_NORMALIZE), diameter=None,
                              flow_threshold=type_threshold(FLOW_THRESHOLDS, t, FLOW_THRESHOLD))[0] for im, t in zip(imgs, types)]
    def ours():
        return predict(model, imgs, cell_types=types)

    def timed(f):
        w, c = time.perf_counter(), time.process_time()
        r = f()
        return r, time.perf_counter() - w, time.process_time() - c

    peer(); ours()                                                      # warm-up (numba, MKL-DNN)
    tp, to = [], []
    for _ in range(a.repeats):
        masks, w, c = timed(peer); tp.append((w, c))
        preds, w, c = timed(ours); to.append((w, c))
    for i, (m, p) in enumerate(zip(masks, preds)):                      # the same cells, pixel for pixel
        assert_same_cells(m, p.to_label_image(), f"image {i}")
    # what predict adds, timed alone: label image + cell probability -> Instances with scores and labels
    outs = [model.cp.eval(im, channels=list(_CHANNELS), normalize=dict(_NORMALIZE), diameter=None) for im in imgs]
    conv = min(timed(lambda: [to_instances(m, f[2], 1) for m, f, _ in outs])[1] for _ in range(5))
    n = len(imgs); cells = sum(len(p) for p in preds)
    bw, bc = min(x[0] for x in tp), min(x[1] for x in tp)
    ow, oc = min(x[0] for x in to), min(x[1] for x in to)
    print(f"{n} images {shape[0]}x{shape[1]}, {cells} cells predicted, {a.threads} thread(s), best of {a.repeats}")
    print(f"cellpose eval (peer): {bw / n:.3f} s/image wall, {bc / n:.3f} s/image CPU")
    print(f"cpose.predict (ours): {ow / n:.3f} s/image wall, {oc / n:.3f} s/image CPU")
    print(f"conversion to Instances alone: {1000 * conv / n:.1f} ms/image = {conv / bw:.4f} of the eval time")
    print(f"ratio ours/peer: wall {ow / bw:.3f}, CPU {oc / bc:.3f}")
    if a.check:
        assert cells > 0, "the bench model found no cells: the pixel comparison would be empty"
        import sys; sys.path.insert(0, str(Path(__file__).parent))
        from _inputs import check_at_most
        check_at_most("cpose.predict / cellpose eval (CPU)", oc / bc, 1.10)


def assert_same_cells(a, b, what):
    "Two label images (H, W) hold the same cells pixel for pixel, whatever their ids (a one-to-one id mapping)."
    assert np.array_equal(a > 0, b > 0), f"{what}: foreground differs"
    fg = a > 0
    pairs = np.unique(np.stack([a[fg], b[fg]]), axis=1)
    assert pairs.shape[1] == len(np.unique(a[fg])) == len(np.unique(b[fg])), f"{what}: cells differ"


if __name__ == '__main__':
    main()
