"""GPU timing of the Mask R-CNN R50-FPN at the native 520 x 704 (prepared for the H100; NOT run yet).

Trains `cellseg_nb.maskrcnn_train.train` from scratch on a synthetic competition folder for a short fixed number
of iterations (AMP, SGD, batch `--batch-size`), then times inference (`predict`, with and without flip TTA).
Prints and writes (to `--out`/gpu_maskrcnn.json) training iterations/s (median over the iterations after the
first `--skip`), inference images/s, peak GPU memory and the device name.

    python bench/gpu_maskrcnn.py --out "$OUT"            # about 2-4 minutes on one H100
    python bench/gpu_maskrcnn.py --smoke                 # the same code path, tiny, on CPU (checks the script)
"""
import argparse, json, os, tempfile, time
from pathlib import Path


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--iterations', type=int, default=60); ap.add_argument('--skip', type=int, default=10)
    ap.add_argument('--batch-size', type=int, default=4); ap.add_argument('--images', type=int, default=16)
    ap.add_argument('--workers', type=int, default=4); ap.add_argument('--out', default='.')
    ap.add_argument('--smoke', action='store_true')
    a = ap.parse_args()
    import numpy as np, torch
    cuda = torch.cuda.is_available()
    if a.smoke: a.iterations, a.skip, a.images, a.batch_size, a.workers = 3, 0, 3, 2, 0
    else: assert cuda, "this script times the GPU; no CUDA device found (use --smoke to check it on CPU)"
    shape = (128, 128) if a.smoke else (520, 704)
    opts = dict(backbone='resnet18', model_options=dict(min_size=128, max_size=128)) if a.smoke else dict(backbone='resnet50')
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    peak = torch.cuda.max_memory_allocated if cuda else (lambda: 0)
    reset = torch.cuda.reset_peak_memory_stats if cuda else (lambda: None)
    from cellseg_nb.synth import make_competition
    from cellseg_nb.data import SartoriusData
    from cellseg_nb.maskrcnn import predict
    from cellseg_nb.maskrcnn_train import train
    tmp = Path(tempfile.mkdtemp())
    t = time.time()
    root = make_competition(tmp / 'comp', n_images=a.images, seed=0, image_shape=shape, n_test=0, n_semi=0)
    print(f"synthetic data: {a.images} images in {time.time() - t:.0f} s", flush=True)
    torch.backends.cudnn.benchmark = True
    reset()
    t = time.time()
    r = train(root, tmp / 'run', **opts, fold=None, iterations=a.iterations, batch_size=a.batch_size,
              lr=0.02, warmup=10, checkpoint_every=a.iterations, log_every=1, amp=True, num_workers=a.workers)
    train_wall = time.time() - t
    log = r['log']
    spi = float(np.median(log.sec_per_iter.iloc[a.skip:]))
    train_mem = peak()
    model = r['model'].eval()
    src = SartoriusData(root); imgs = [src.image(i) for i in src.ids]
    res = {}
    for tta in (False, True):
        predict(model, imgs[:2], tta=tta)                               # warm-up
        sync(); reset(); t = time.time()
        preds = predict(model, imgs, tta=tta, batch_size=4)
        sync(); dt = time.time() - t
        res['tta' if tta else 'plain'] = dict(images_per_s=len(imgs) / dt, seconds=dt, peak_gpu_bytes=peak(),
                                              mean_detections=float(np.mean([len(p) for p in preds])))
    out = dict(device=torch.cuda.get_device_name() if cuda else 'cpu (smoke)', smoke=a.smoke, torch=torch.__version__, iterations=a.iterations,
               batch_size=a.batch_size, train_it_per_s=1 / spi, train_images_per_s=a.batch_size / spi,
               train_wall_s=train_wall, train_peak_gpu_bytes=train_mem, final_loss=float(log.loss.iloc[-1]),
               inference=res)
    print(json.dumps(out, indent=1))
    Path(a.out).mkdir(parents=True, exist_ok=True)
    (Path(a.out) / 'gpu_maskrcnn.json').write_text(json.dumps(out, indent=1))


if __name__ == '__main__':
    main()
