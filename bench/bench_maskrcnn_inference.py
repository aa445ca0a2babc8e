"""Mask R-CNN inference: our sparse path (`cellseg_nb.maskrcnn.predict`) vs torchvision's default output path
(`model(images)` in eval mode: dense (N, 1, H, W) float masks), same model, same image, 1000 detections.

Each path runs in a fresh child process (so one path's allocator state cannot hide or inflate the other's):
the child builds the same seeded R50-FPN (score threshold 0, so 1000 detections survive), reads one synthetic
520 x 704 shsy5y image, records its resident memory, then runs the path once while a thread samples RSS every
millisecond; peak memory = highest sample (and ru_maxrss) minus RSS before the call. Wall time: the same call,
median of `--repeats` runs in that child. Prints both figures and the ratios torchvision / ours.

    python bench/bench_maskrcnn_inference.py [--backbone resnet50] [--threads 2] [--repeats 1]
"""
import argparse, json, os, resource, subprocess, sys, threading, time


def child(path, backbone, threads, repeats):
    import numpy as np, psutil, torch
    torch.set_num_threads(threads)
    from cellseg_nb.maskrcnn import build_model, predict
    from cellseg_nb.synth import synth_image
    torch.manual_seed(0)
    model = build_model(3, backbone, box_score_thresh=0.0).eval()
    img, gt = synth_image('shsy5y', seed=0, shape=(520, 704))
    proc = psutil.Process()
    x = torch.from_numpy(img)[None]

    def run():
        if path == 'ours':
            p = predict(model, [img])[0]
            return len(p), int(p.n_pixels)
        with torch.inference_mode(): out = model([x])[0]
        return len(out['boxes']), int((out['masks'] > 0.5).sum())

    times, peaks = [], []
    for r in range(repeats):
        base = proc.memory_info().rss
        peak, stop = [base], threading.Event()
        def sample():
            while not stop.is_set():
                peak[0] = max(peak[0], proc.memory_info().rss); time.sleep(0.001)
        th = threading.Thread(target=sample); th.start()
        max_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        t = time.perf_counter(); n, npix = run(); dt = time.perf_counter() - t
        stop.set(); th.join()
        max_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        grow = max(peak[0], max_after if max_after > max_before else 0) - base
        times.append(dt); peaks.append(grow)
    print(json.dumps({'path': path, 'detections': n, 'mask_pixels': npix, 'seconds': sorted(times)[len(times) // 2],
                      'peak_bytes': peaks[0], 'cells_in_image': len(gt)}))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--backbone', default='resnet50'); ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--repeats', type=int, default=1); ap.add_argument('--child')
    a = ap.parse_args()
    if a.child: return child(a.child, a.backbone, a.threads, a.repeats)
    res = {}
    for path in ('ours', 'torchvision'):
        out = subprocess.run([sys.executable, __file__, '--child', path, '--backbone', a.backbone, '--threads', str(a.threads),
                              '--repeats', str(a.repeats)], capture_output=True, text=True, env={**os.environ, 'PYTHONWARNINGS': 'ignore'})
        if out.returncode: sys.exit(out.stderr[-3000:])
        res[path] = json.loads(out.stdout.strip().splitlines()[-1])
    o, t = res['ours'], res['torchvision']
    print(f"Mask R-CNN {a.backbone}-FPN, one 520 x 704 image, {a.threads} threads, untrained seeded weights, score threshold 0")
    for r in (o, t):
        print(f"  {r['path']:12s} detections {r['detections']:5d}  mask pixels {r['mask_pixels']:9d}  "
              f"wall {r['seconds']:7.2f} s  peak memory growth {r['peak_bytes'] / 2**20:8.1f} MiB")
    print(f"memory ratio torchvision / ours: {t['peak_bytes'] / max(o['peak_bytes'], 1):.1f}x")
    print(f"time ratio   torchvision / ours: {t['seconds'] / o['seconds']:.2f}x")
    if o['detections'] != t['detections'] or abs(o['mask_pixels'] - t['mask_pixels']) > 1e-3 * max(t['mask_pixels'], 1):
        print(f"WARNING: outputs differ ({o['detections']} vs {t['detections']} detections, "
              f"{o['mask_pixels']} vs {t['mask_pixels']} pixels)")


if __name__ == '__main__':
    main()
