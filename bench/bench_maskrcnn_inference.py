"""Mask R-CNN inference: our sparse path (`cellseg_nb.maskrcnn.predict`) vs torchvision's default output path
(`model(images)` in eval mode: dense (N, 1, H, W) float masks), same model, same image, 1000 detections.

Each path runs in a fresh child process (so one path's allocator state cannot hide or inflate the other's):
the child builds the same seeded R50-FPN (score threshold 0, so 1000 detections survive), reads one synthetic
520 x 704 shsy5y image, records its resident memory, then runs the path once while a thread samples RSS every
millisecond; peak memory = highest sample (and ru_maxrss) minus RSS before the call. Wall time: the same call,
median of `--repeats` runs in that child. Prints both figures and the ratios torchvision / ours.

    python bench/bench_maskrcnn_inference.py [--backbone resnet50] [--threads 2] [--repeats 1]
    python bench/bench_maskrcnn_inference.py --check    # CI: resnet18, one thread, a 256 x 256 image, 300 detections

Both paths' cells are compared pixel for pixel (each detection's mask > 0.5, in score order). `--check` asserts
that, and that ours is no slower (time ratio torchvision / ours >= 0.8; measured 1.1-1.4x) and grows peak memory less
(>= 1.5x; measured 2.2x with the check's 300 detections, 6.8x with 1000).
"""
import argparse, json, os, resource, subprocess, sys, threading, time


def child(path, backbone, threads, repeats, check=False):
    import numpy as np, torch
    torch.set_num_threads(threads)
    from cellseg_nb.maskrcnn import build_model, predict
    from cellseg_nb.synth import synth_image
    torch.manual_seed(0)
    shape = (256, 256) if check else (520, 704)
    model = build_model(3, backbone, box_score_thresh=0.0, min_size=shape[0], max_size=shape[1],
                        detections_per_img=300 if check else 1000).eval()
    img, gt = synth_image('shsy5y', seed=0, shape=shape)
    page = os.sysconf('SC_PAGE_SIZE')
    def rss():                                   # resident bytes of this process (Linux; psutil is not a dependency)
        with open('/proc/self/statm') as f: return int(f.read().split()[1]) * page
    x = torch.from_numpy(img)[None]

    def run():
        if path == 'ours':
            p = predict(model, [img])[0]
            return len(p), int(p.n_pixels), p
        with torch.inference_mode(): out = model([x])[0]
        return len(out['boxes']), int((out['masks'] > 0.5).sum()), out

    times, peaks = [], []
    for r in range(repeats):
        base = rss()
        peak, stop = [base], threading.Event()
        def sample():
            while not stop.is_set():
                peak[0] = max(peak[0], rss()); time.sleep(0.001)
        th = threading.Thread(target=sample); th.start()
        max_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        t = time.perf_counter(); n, npix, res = run(); dt = time.perf_counter() - t
        stop.set(); th.join()
        max_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        grow = max(peak[0], max_after if max_after > max_before else 0) - base
        times.append(dt); peaks.append(grow)
    if check:                                          # every cell's pixels, as RLE text, for the comparison
        from cellseg_nb.instances import Instances
        inst = res if path == 'ours' else Instances.from_masks((res['masks'][:, 0] > 0.5).numpy())
        np.save(os.environ['BENCH_MRCNN_OUT'] + f'_{path}.npy', np.array(inst.to_rles(), dtype=object), allow_pickle=True)
    print(json.dumps({'path': path, 'detections': n, 'mask_pixels': npix, 'seconds': sorted(times)[len(times) // 2],
                      'peak_bytes': peaks[0], 'cells_in_image': len(gt)}))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--backbone', default='resnet50'); ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--repeats', type=int, default=1); ap.add_argument('--child')
    ap.add_argument('--check', action='store_true', help='small CI run: assert identical cells and the bounds')
    a = ap.parse_args()
    if a.check and not a.child: a.backbone, a.threads = 'resnet18', 1
    if a.child: return child(a.child, a.backbone, a.threads, a.repeats, a.check)
    import tempfile
    tmp = tempfile.mkdtemp(prefix='bench_mrcnn_')
    res = {}
    for path in ('ours', 'torchvision'):
        out = subprocess.run([sys.executable, __file__, '--child', path, '--backbone', a.backbone, '--threads', str(a.threads),
                              '--repeats', str(a.repeats)] + (['--check'] if a.check else []), capture_output=True,
                             text=True, env={**os.environ, 'PYTHONWARNINGS': 'ignore', 'BENCH_MRCNN_OUT': tmp + '/cells'})
        if out.returncode: sys.exit(out.stderr[-3000:])
        res[path] = json.loads(out.stdout.strip().splitlines()[-1])
    o, t = res['ours'], res['torchvision']
    print(f"Mask R-CNN {a.backbone}-FPN, one {'256 x 256' if a.check else '520 x 704'} image, {a.threads} threads, untrained seeded weights, score threshold 0")
    for r in (o, t):
        print(f"  {r['path']:12s} detections {r['detections']:5d}  mask pixels {r['mask_pixels']:9d}  "
              f"wall {r['seconds']:7.2f} s  peak memory growth {r['peak_bytes'] / 2**20:8.1f} MiB")
    print(f"memory ratio torchvision / ours: {t['peak_bytes'] / max(o['peak_bytes'], 1):.1f}x")
    print(f"time ratio   torchvision / ours: {t['seconds'] / o['seconds']:.2f}x")
    if a.check:
        import numpy as np
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from _inputs import check_bound
        ro, rt = (np.load(f'{tmp}/cells_{p}.npy', allow_pickle=True) for p in ('ours', 'torchvision'))
        same = int(sum(x == y for x, y in zip(ro, rt)))
        print(f"{same} of {len(rt)} detections pixel-identical ({len(ro)} ours)")
        assert len(ro) == len(rt) == same, f"outputs differ: {same} identical of {len(ro)} / {len(rt)} detections"
        check_bound("Mask R-CNN inference time, torchvision / ours (wall)", t['seconds'] / o['seconds'], 0.8)
        check_bound("Mask R-CNN inference peak memory, torchvision / ours", t['peak_bytes'] / max(o['peak_bytes'], 1), 1.5)
    elif o['detections'] != t['detections'] or abs(o['mask_pixels'] - t['mask_pixels']) > 1e-3 * max(t['mask_pixels'], 1):
        print(f"WARNING: outputs differ ({o['detections']} vs {t['detections']} detections, "
              f"{o['mask_pixels']} vs {t['mask_pixels']} pixels)")


if __name__ == '__main__':
    main()
