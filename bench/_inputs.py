"Shared benchmark inputs: 520 x 704 images with elliptical cells at shsy5y density (~225 px each)."
import numpy as np
from cellseg_nb.instances import Instances

SHAPE = (520, 704)


def _paint(lab, cy, cx, a, b, theta, value):
    "Paint one filled ellipse (semi-axes a, b, angle theta) into label image `lab` where it is still 0."
    h, w = lab.shape
    r = int(np.ceil(max(a, b))) + 1
    y0, y1, x0, x1 = max(0, int(cy) - r), min(h, int(cy) + r + 1), max(0, int(cx) - r), min(w, int(cx) + r + 1)
    if y0 >= y1 or x0 >= x1: return
    yy, xx = np.mgrid[y0:y1, x0:x1]
    dy, dx = yy - cy, xx - cx
    u = dx * np.cos(theta) + dy * np.sin(theta); v = -dx * np.sin(theta) + dy * np.cos(theta)
    inside = (u / a) ** 2 + (v / b) ** 2 <= 1
    win = lab[y0:y1, x0:x1]
    win[inside & (win == 0)] = value


def ellipse_params(n, rng, shape=SHAPE, area=225.0):
    "Random ellipses (cy, cx, a, b, theta), float64 (n, 5), mean area about `area` px."
    h, w = shape
    a = rng.uniform(7, 11, n); b = area / np.pi / a * rng.uniform(0.9, 1.1, n)
    return np.stack([rng.uniform(0, h, n), rng.uniform(0, w, n), a, b, rng.uniform(0, np.pi, n)], 1)


def label_image(params, shape=SHAPE, ids=None):
    "Non-overlapping label image (H, W) int32 of ellipses; earlier ones win; ids 1..n unless given."
    lab = np.zeros(shape, np.int32)
    ids = np.arange(1, len(params) + 1) if ids is None else ids
    for p, i in zip(params, ids): _paint(lab, *p, i)
    return lab


def relabel(lab):
    "Relabel a label image to consecutive ids 1..N (cellpose and the histogram metric need them)."
    u, inv = np.unique(lab, return_inverse=True)
    out = inv.reshape(lab.shape).astype(np.int32)
    return out if u[0] == 0 else out + 1


def make_pair(n, seed=0, shape=SHAPE):
    """Ground truth and a plausible prediction, both as consecutive label images (H, W) int32:
    prediction = cells shifted up to 2 px, axes scaled 0.85..1.15, 10% missed, 10% extra."""
    rng = np.random.default_rng(seed)
    gp = ellipse_params(n, rng, shape)
    gt = relabel(label_image(gp, shape))
    pp = gp.copy()
    pp[:, :2] += rng.uniform(-2, 2, (n, 2)); pp[:, 2:4] *= rng.uniform(0.85, 1.15, (n, 2))
    pp = pp[rng.random(n) > 0.1]
    pp = np.concatenate([pp, ellipse_params(n // 10, rng, shape)])
    pr = relabel(label_image(pp[rng.permutation(len(pp))], shape))
    return gt, pr


def make_instances(n, seed=0, shape=SHAPE):
    "`make_pair` as two `Instances`."
    gt, pr = make_pair(n, seed, shape)
    return Instances.from_label_image(gt), Instances.from_label_image(pr)


def race(funcs: dict, rounds=7, min_time=0.02, clock='wall'):
    """Best seconds per call of each function in `funcs` (name -> callable), timed interleaved: every round
    times each function once (repeating it until `min_time` has passed), so that load from other processes on a
    shared machine hits all of them alike. `clock`: 'wall' (time.perf_counter) or 'cpu' (time.process_time, this
    process's CPU time: steadier on a loaded machine; every function timed here is single-threaded).
    Returns {name: seconds}; with clock='both', {name: (wall, cpu)}."""
    import time
    number = {}
    for k, f in funcs.items():          # warm up and choose the repeat count
        t = time.perf_counter(); f(); dt = time.perf_counter() - t
        number[k] = max(1, int(min_time / max(dt, 1e-7)))
    wall = {k: float('inf') for k in funcs}; cpu = dict(wall)
    for _ in range(rounds):
        for k, f in funcs.items():
            t, c = time.perf_counter(), time.process_time()
            for _ in range(number[k]): f()
            wall[k] = min(wall[k], (time.perf_counter() - t) / number[k])
            cpu[k] = min(cpu[k], (time.process_time() - c) / number[k])
    if clock == 'both': return {k: (wall[k], cpu[k]) for k in funcs}
    return cpu if clock == 'cpu' else wall


# --- output files and bounds shared by every benchmark ---------------------------------------------------------
RESULTS = __import__('pathlib').Path(__file__).resolve().parent / 'results'


def save_results(name, rows, meta=None):
    """Write a full run's rows (list of dicts) to `bench/results/<name>.json` (temp name, then rename): the speed
    benchmark table of `docs/guide_benchmarks.md` is made from these files by `python bench/table.py`. `--check` runs write nothing."""
    import json, os, platform
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f'{name}.json'
    tmp = out.with_suffix('.json.tmp')
    doc = dict(benchmark=name, machine=dict(cpus=os.cpu_count(), python=platform.python_version()),
               meta=meta or {}, rows=rows)
    tmp.write_text(json.dumps(doc, indent=1, default=float) + '\n')
    os.replace(tmp, out)
    print(f"wrote {out}")


def check_bound(what, ratio, bound):
    "Assert that `ratio` (peer time / our time, larger is better) is at least `bound`; print the outcome either way."
    ok = ratio >= bound
    print(f"{'OK    ' if ok else 'MISSED'} {what}: {ratio:.2f}x (bound >= {bound}x)")
    assert ok, f"{what}: ratio {ratio:.2f}x is below its bound {bound}x"


def check_at_most(what, ratio, bound):
    "Assert that `ratio` (our time / peer time, smaller is better) is at most `bound`; print the outcome either way."
    ok = ratio <= bound
    print(f"{'OK    ' if ok else 'MISSED'} {what}: {ratio:.3f} (bound <= {bound})")
    assert ok, f"{what}: ratio {ratio:.3f} is above its bound {bound}"
