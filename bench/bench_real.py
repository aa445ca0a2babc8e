"""Real-image benchmark on the competition's own images: every model from the same training images, scored per cell type.

Run: `python bench/bench_real.py [--jobs J] [--cache DIR] [--options] [--readme] [--check]`.

Data: `../shared/realdata/sartorius_train405/` (405 real labelled competition train images; read in place, never
copied) and, for the LIVECell stage, the 20 real LIVECell images of `livecell_test15/` + `livecell_val5/`.
Splits: fixed, disjoint and stratified by cell type, written down in `bench/real_splits.json` (drawn once by
`--make-splits` with seed 0, then frozen: per type 10 test, 8 tune, the rest train, in draw order); the bench uses
the first 20 **train**, 6 **tune** and 8 **test** images of each type (60 / 18 / 24; `SIZES`).
The folder's `sample_id` (and all other per-image metadata) is empty, so the splits are by image, not by sample:
images of one sample (one vessel imaged over time) look alike, and a held-out image whose sample has images in the
train split scores higher than an image of an unseen sample would. The numbers are optimistic for that reason.
The bench writes a competition-layout folder per split under its cache (`train/<id>.png` links + the split's rows of
train.csv) and trains through the real CLI on it with `--fold -1` (every image of the folder trains).

Every model: the train split, seed 0, one CPU thread, from scratch (no pretrained weights are on this machine).
Budget (`BUDGET`, `MASKRCNN`), about 2 CPU-hours for the whole run (`--jobs 2`: about an hour on 2 free cores):
- Cellpose, ours and the peer alike: 160 epochs x 8 random crops of 128 px, batch 8 (160 optimizer steps), cells
  seen at 17 px (`diam_mean`), AdamW at 0.005 (both defaults). The peer: cellpose's own schedule (10-epoch linear
  warm-up from 0, the last 50 epochs halving), float32, about 2.4 CPU-s per step here; ours: the library's defaults
  (`cellpose.schedule='budget'`: 5 % warm-up then a cosine to 0; `cellpose.amp='auto'`: bfloat16 autocast where the
  CPU computes it natively, as this machine's does: about 1.4 CPU-s per step).
  - ours: `python -m cellseg_nb.cli train cellpose --data <train split> --fold -1 ...` (the U-Net, then the
    SizeModel (10 epochs) and the per-type style centroids, all in its training CPU), predicted as `cellseg predict`
    does (`bundle.load_predictor`: the SizeModel's diameter, the cell type from the style), post-processed with
    the library defaults (`PostprocessConfigs()`, the type voted from the predicted labels, as `cellseg predict`);
  - peer: cellpose's documented usage (`CellposeModel(pretrained_model=False)`, `train.train_seg` with its own
    defaults otherwise, `CellposeModel.eval` at `diam_labels`), run as its own process; its masks scored as they are;
  - ours with a LIVECell stage first (`--livecell`: 40 epochs on the 20 real LIVECell images, then the same 160):
    the bench writes the 20 images as one LIVECell train split (`livecell_coco_train.json`) under its cache.
- Mask R-CNN: `python -m cellseg_nb.cli train maskrcnn --recipe demo --small --fold -1` (resnet18 FPN, 64-channel
  heads, from scratch), 800 iterations of batch 2 on random 256 px crops (AdamW 2e-3, 20 warm-up iterations,
  cosine); about 0.6 CPU-s per iteration.
- Otsu: the demo's classical baseline (`inference.threshold_predictor`), post-processed with the true cell type
  (its cells have no class).
The LIVECell-stage model is predicted on the test split only and scored with the default post-processing (CPU: our
Cellpose prediction with its SizeModel costs about 25 CPU-s per image here); the peer's masks are not tuned.
Post-processing tuned on the tune split (`tune.tune`, what `cellseg tune` runs) against the defaults; the ensemble
of ours (shipped) and Mask R-CNN tuned on the tune split (`ensemble.tune_ensemble`, what `cellseg tune-ensemble`
runs) against the best single model; flip TTA for Mask R-CNN (`cellseg predict --tta`). With `--options`, Mask
R-CNN trained again with one setting changed (input scale 1.5, 56 x 56 masks, anchors from the train split's
boxes), and Mask R-CNN trained on the train split plus pseudo-labels (`cellseg pseudo-label` with the Mask R-CNN row's
model on the folder's 85 unlabelled images (`unlabelled/` + `train_semi_supervised/`) with a score bar from that model's
own calibration (`pseudo_rules`), then `cellseg train maskrcnn --pseudo_labels`; its training CPU counts the
labelling, not the first model). Flip TTA is also predicted on the tune
split, so that tuning on the TTA output can be compared with tuning on plain predictions for a TTA submission.
The LIVECell-only rows of the earlier bench are dropped.

Learning curves (`results/bench_real_curves.csv`): snapshots of the same runs (Cellpose `cellpose.save_every=20`,
the ones after 41, 81 and 121 of the 160 epochs scored; Mask R-CNN `--checkpoint_every 100`, after 100, 200 and 400 of
the 800 iterations), each scored on the test split, plus the final models; a snapshot's CPU is the training process's
user + system CPU when the snapshot file appeared (read from /proc by a watcher thread). Cellpose snapshots are
predicted at their `diam_labels` and scored as the network gives them (no SizeModel, no post-processing: ours and
the peer alike); Mask R-CNN snapshots with the default post-processing.

Tasks (one per trained model) run `--jobs` at a time; with `--cache DIR` every finished task (its CPU times and raw
predictions of the tune and test splits) is kept there, a rerun reuses it and only re-scores, so re-scoring and
tuning never retrain. Writes `results/bench_real.csv` (one row per model: AP@0.5, AP@0.75, AP@0.9, mAP, mAP per
cell type, train CPU-s, predict CPU-s per image, cells predicted and true) and `results/bench_real_curves.csv`;
`--readme` rewrites its table in `docs/guide_benchmarks.md` and the README's short table (`HEADLINE` rows).

`--check` (in CI, run alone by `bench/check_all.py`; about 5 minutes wall and 9 CPU-minutes on 2 cores, 2 jobs): 2 / 1
/ 2 images per type (train / tune / test), 10 epochs of 64 crops for both Cellpose trainings (80 optimizer steps: the
peer's first 10 epochs are cellpose's warm-up, ours the budget schedule's; measured at 0.061 against 0.027) and 40
Mask R-CNN iterations, everything in a temporary folder (nothing committed is written). Exits 1 when ours (shipped)
is below the peer on the mean, or not above the Otsu baseline (a network that has not learned). Every figure is CPU
time (user + sys), not wall time: the machine may be shared.
"""
# CI: alone
import argparse, hashlib, json, os, shutil, subprocess, sys, tempfile, threading, time
from pathlib import Path
import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
REAL = REPO.parent / 'shared' / 'realdata'
DATA = REAL / 'sartorius_train405'
LIVECELL = [(REAL / 'livecell_test15', 'test'), (REAL / 'livecell_val5', 'val')]
SPLITS = REPO / 'bench' / 'real_splits.json'
TYPES = ('astro', 'cort', 'shsy5y')
SIZES = dict(train=20, tune=6, test=8)                       # images per cell type
DRAW = dict(test=10, tune=8)                # drawn per type into real_splits.json (train: the rest); SIZES uses the first n
SEED = 0
BUDGET = dict(epochs=160, bsize=128, batch_size=8, nimg_per_epoch=8, diam_mean=17., size_epochs=10, save_every=20,
              livecell_epochs=40)
MASKRCNN = dict(iters=800, batch_size=2, crop=256, checkpoint_every=100)
CURVE_CELLPOSE = (40, 80, 120)              # snapshot epoch indices scored (cellpose's names: index + 1 epochs done) + the final
CURVE_MASKRCNN = (100, 200, 400)       # iterations scored + the final
CHECK = dict(sizes=dict(train=2, tune=1, test=2), budget=dict(epochs=10, nimg_per_epoch=64, save_every=5, size_epochs=2),
             maskrcnn=dict(iters=40, checkpoint_every=20), curve_cellpose=(5,), curve_maskrcnn=(20,))
SEED_CV = {'Mask R-CNN': dict(cort=0.387, shsy5y=0.188, astro=0.191), 'Cellpose': dict(cort=0.392, shsy5y=0.227, astro=0.187)}
NAMES = dict(otsu='Otsu baseline (true cell type)', peer='peer (cellpose train_seg + eval at diam_labels)',
             ours='ours (shipped: cellseg train cellpose, SizeModel)', ours_lc='ours + LIVECell stage (20 real images)',
             maskrcnn='Mask R-CNN (cellseg train maskrcnn, resnet18, scratch)')
ENSEMBLE = 'ensemble ours + Mask R-CNN (tuned on the tune split)'
OPTIONS = {'mr_scale15': ('Mask R-CNN, input scale 1.5', ['--scale', '1.5']),
           'mr_mask56': ('Mask R-CNN, 56 x 56 masks', ['--mask_size', '56']),
           'mr_anchors': ('Mask R-CNN, anchors from the train boxes', None),      # None: computed from the split
           'mr_pseudo': ('Mask R-CNN + pseudo-labels (unlabelled images, labelled by the Mask R-CNN row)', None)}
UNLABELLED = ('unlabelled', 'train_semi_supervised')           # folders of DATA pseudo-labelled by the mr_pseudo option


def cpu() -> float: return time.process_time()


# ---------------------------------------------------------------- splits and folders
def make_splits(path=SPLITS, seed=SEED):
    "Draw the splits once (seeded), write them to `path`; the file is then committed and never redrawn."
    from cellseg_nb.data import SartoriusData
    meta = SartoriusData(DATA).meta
    rng = np.random.default_rng(seed)
    out = {k: {} for k in SIZES}
    for t in TYPES:
        ids = sorted(meta.index[meta.cell_type == t])
        ids = [ids[i] for i in rng.permutation(len(ids))]
        out['test'][t], out['tune'][t], out['train'][t] = ids[:DRAW['test']], ids[DRAW['test']:DRAW['test'] + DRAW['tune']], \
            ids[DRAW['test'] + DRAW['tune']:]
    doc = dict(note="Fixed splits of ../shared/realdata/sartorius_train405 for bench/bench_real.py, drawn once with "
                    f"numpy default_rng({seed}): per cell type one permutation of the sorted ids, the first "
                    f"{DRAW['test']} test, the next {DRAW['tune']} tune, the rest train, each list in draw order. The bench "
                    "uses the first n of each list (nested: a larger n keeps the smaller one's images). By image: the "
                    "folder's sample_id is empty.", seed=seed, **out)
    from cellseg_nb.files import write_json
    write_json(path, doc, indent=1)
    return doc


def load_splits(sizes=None) -> dict:
    "`{split: [ids]}` from `real_splits.json`; `sizes` ({split: n per type}) takes the first n of each type's list."
    doc = json.loads(SPLITS.read_text())
    sizes = sizes or SIZES
    return {k: [i for t in TYPES for i in doc[k][t][:sizes[k]]] for k in SIZES}


def split_folder(root: Path, ids) -> Path:
    "A competition-layout folder at `root`: `train/<id>.png` links to the real images and the ids' rows of train.csv."
    if (root / 'train.csv').is_file(): return root
    tmp = root.with_name(f'{root.name}.tmp{os.getpid()}'); shutil.rmtree(tmp, ignore_errors=True)
    (tmp / 'train').mkdir(parents=True)
    df = pd.read_csv(DATA / 'train.csv', dtype=str, keep_default_na=False)
    keep = set(ids)
    df[df.id.isin(keep)].to_csv(tmp / 'train.csv', index=False)
    for i in ids: os.symlink(DATA / 'train' / f'{i}.png', tmp / 'train' / f'{i}.png')
    os.replace(tmp, root)
    return root


def pseudo_folder(root: Path, ids) -> Path:
    "`split_folder(root, ids)` plus `train_semi_supervised/` linking the real unlabelled images (`UNLABELLED`)."
    if (root / 'train_semi_supervised').is_dir(): return root
    split_folder(root, ids)
    tmp = root / f'.semi.tmp{os.getpid()}'; shutil.rmtree(tmp, ignore_errors=True); tmp.mkdir()
    for sub in UNLABELLED:
        for f in sorted((DATA / sub).glob('*.png')): os.symlink(f, tmp / f.name)
    os.replace(tmp, root / 'train_semi_supervised')
    return root


def livecell_folder(root: Path) -> Path:
    "The 20 real LIVECell images as one train split: `root/LIVECell_dataset_2021/annotations/LIVECell/livecell_coco_train.json`."
    base = root / 'LIVECell_dataset_2021'
    js = base / 'annotations' / 'LIVECell' / 'livecell_coco_train.json'
    if js.is_file(): return root
    from cellseg_nb.data import LiveCellData
    images, anns, cats = [], [], None
    (base / 'images' / 'livecell_train_val_images').mkdir(parents=True, exist_ok=True)
    for folder, split in LIVECELL:
        d = LiveCellData(folder, split)
        coco = json.loads(d.json.read_text())
        cats = cats or coco['categories']
        new = {}
        for im in coco['images']:
            new[im['id']] = len(images) + 1
            images.append({**im, 'id': new[im['id']]})
            src = d._paths[im['file_name']]
            dst = base / 'images' / 'livecell_train_val_images' / Path(im['file_name']).name
            if not dst.exists(): os.symlink(src, dst)
        for a in coco['annotations']: anns.append({**a, 'id': len(anns) + 1, 'image_id': new[a['image_id']]})
    from cellseg_nb.files import write_json
    write_json(js, dict(images=images, annotations=anns, categories=cats))
    return root


def box_anchors(ids) -> list:
    "Anchor sizes from the train split's boxes: the 5/25/50/75/95th percentiles of sqrt(box area), px, increasing."
    from cellseg_nb.data import SartoriusData
    ds = SartoriusData(DATA)
    b = np.concatenate([ds.instances(i).boxes for i in ids])
    side = np.sqrt((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]))
    a = [int(round(v)) for v in np.percentile(side, [5, 25, 50, 75, 95])]
    for k in range(1, len(a)): a[k] = max(a[k], a[k - 1] + 1)
    return a


ANCHOR_SETS = {'library default (ModelConfig)': (8, 16, 32, 64, 128), 'small model (--small, demo)': (16, 32, 64, 128, 256)}


def anchor_table(splits) -> pd.DataFrame:
    """Mask R-CNN anchors against the train split's real boxes, per cell type (`maskrcnn.anchor_coverage`, native
    scale, the small model's aspect ratios): the share of true boxes with an anchor at IoU >= 0.7 (the RPN's positive
    threshold) and the median best IoU, for the library's default anchors, the small model's and the boxes' own
    percentiles (`box_anchors`). No training: a measurement for the defaults (issue 17, section 4)."""
    from cellseg_nb.data import SartoriusData
    from cellseg_nb.maskrcnn import build_model, anchor_coverage
    from cellseg_nb.pipeline import maskrcnn_demo_options
    ds = SartoriusData(DATA)
    sets = {**ANCHOR_SETS, 'from the train boxes (5/25/50/75/95th pct of sqrt area)': tuple(box_anchors(splits['train']))}
    rows = []
    for name, sizes in sets.items():
        m = build_model(3, 'resnet18', **{**maskrcnn_demo_options(ds.image_shape), 'anchor_sizes': tuple(int(x) for x in sizes)})
        for t in TYPES:                                   # one image at a time: boxes x anchors IoU of one image only
            cov = pd.concat([anchor_coverage(m, ds.instances(i).boxes, ds.image_shape)
                             for i in splits['train'] if ds.meta.cell_type[i] == t])
            rows.append(dict(anchors=name, sizes=' '.join(map(str, sizes)), cell_type=t, boxes=len(cov),
                             share_with_positive_anchor=round(float((cov.n_positive > 0).mean()), 3),
                             median_best_iou=round(float(cov.best_iou.median()), 3)))
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- measured processes
def _proc_cpu(pid) -> float:
    with open(f'/proc/{pid}/stat') as f: rest = f.read().rsplit(')', 1)[1].split()
    return (int(rest[11]) + int(rest[12])) / os.sysconf('SC_CLK_TCK')


def run_measured(cmd, log: Path, watch=None) -> tuple:
    """Run `cmd` (one thread), output to `log`; returns (CPU seconds of the process, {key: CPU seconds when `watch()`
    first returned key}). `watch`: called every 0.5 s while it runs, returns the keys present now (snapshot files)."""
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'MKL_NUM_THREADS': '1', 'PYTHONWARNINGS': 'ignore',
           'PYTHONPATH': os.pathsep.join([str(REPO)] + ([os.environ['PYTHONPATH']] if os.environ.get('PYTHONPATH') else []))}
    log.parent.mkdir(parents=True, exist_ok=True)
    seen, stop = {}, threading.Event()
    with open(log, 'w') as f:
        p = subprocess.Popen([str(c) for c in cmd], stdout=f, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        def poll():
            while not stop.wait(0.5):
                try: c = _proc_cpu(p.pid); keys = watch()
                except Exception: continue
                for k in keys: seen.setdefault(k, c)
        th = threading.Thread(target=poll, daemon=True)
        if watch: th.start()
        _, status, ru = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
        stop.set()
        if watch: th.join()
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd[:6]))} ... failed (exit {p.returncode}); last lines of {log}:\n"
                           + '\n'.join(log.read_text().splitlines()[-15:]))
    return ru.ru_utime + ru.ru_stime, seen


def _cli(*args): return [sys.executable, '-m', 'cellseg_nb.cli', *args]


# ---------------------------------------------------------------- predictions
def predict_split(predictor, ids, tta=False) -> tuple:
    "({id: raw Instances}, CPU seconds per image) of `predictor` on the real images `ids`."
    from cellseg_nb.inference import predict_images
    c0 = cpu()
    preds = predict_images(predictor, {i: DATA / 'train' / f'{i}.png' for i in ids}, tta=tta, progress=False)
    return preds, (cpu() - c0) / max(1, len(ids))


def _save(cache, name, preds):
    from cellseg_nb.inference import save_predictions
    (cache / 'preds').mkdir(parents=True, exist_ok=True)
    save_predictions(preds, cache / 'preds' / f'{name}.csv')


def peer_predictor(path):
    "cellpose's `CellposeModel.eval` at the model's `diam_labels` (the peer's documented prediction), as a predictor."
    from cellpose import models
    from cellseg_nb.instances import Instances
    from cellseg_nb.predictors import ModelPredictor
    m = models.CellposeModel(gpu=False, pretrained_model=str(path), model_type=None, nchan=2)
    return ModelPredictor('peer', lambda img: Instances.from_label_image(m.eval(img, channels=[0, 0])[0]), str(path))


def unet_predictor(path):
    """Our network file alone at its `diam_labels` (no SizeModel, no post-processing, cellpose's flow threshold 0.4 for
    every type, as the peer's `eval`): `cpose.predict`."""
    from cellseg_nb import cpose
    from cellseg_nb.predictors import ModelPredictor
    b = cpose.load_model(path, mkldnn=False)
    d = float(b.cp.diam_labels)
    return ModelPredictor('unet', lambda img: cpose.predict(b, [img], diameter=d, flow_threshold=cpose.FLOW_THRESHOLD)[0], str(path))


# ---------------------------------------------------------------- tasks
def _setup():
    import torch, warnings
    torch.set_num_threads(1); warnings.filterwarnings('ignore')


def peer_train_main(train_dir, out, epochs, save_every, budget):
    "The peer's training, run as its own process (`--peer-train`): cellpose's documented usage."
    import torch
    from cellpose import models, train
    from cellseg_nb.data import SartoriusData
    torch.set_num_threads(1)
    ds = SartoriusData(train_dir)
    images = [ds.image(i) for i in ds.ids]
    labels = [ds.instances(i).to_label_image(np.int32) for i in ds.ids]
    torch.manual_seed(SEED); np.random.seed(SEED)
    model = models.CellposeModel(gpu=False, pretrained_model=False, model_type=None, nchan=2,
                                 diam_mean=budget['diam_mean'], mkldnn=False)
    path, _, _ = train.train_seg(model.net, train_data=images, train_labels=labels, channels=[0, 0], n_epochs=epochs,
                                 bsize=budget['bsize'], batch_size=budget['batch_size'],
                                 nimg_per_epoch=budget['nimg_per_epoch'], save_path=out, save_every=save_every,
                                 save_each=True, model_name='peer')
    print(f"peer model: {path}")


def _cellpose_watch(out: Path, final: str):
    "Keys: snapshot files `*_epoch_NNNN` under `out` (any depth) and the phase files of `final` once written."
    def watch():
        keys = [f.name for f in out.rglob('*_epoch_*')]
        keys += [s for s in ('', '_size.npy', '_types.json') if (out / (final + s)).is_file()]
        return keys
    return watch


def _curve(cache, model, points, ids, make_predictor, post=None, types=None) -> list:
    "Score each (label, x, cpu, path) snapshot on `ids`; raw predictions kept as `cache/preds/curve_<model>_<label>.csv`."
    rows = []
    for label, x, c, path in points:
        preds, t = predict_split(make_predictor(path), ids)
        _save(cache, f'curve_{model}_{label}', preds)
        rows.append(dict(model=model, point=label, x=x, train_cpu_s=round(c, 1), predict_cpu_s=round(t, 2)))
    return rows


def task_ours(cache, splits, budget, curve, livecell=False):
    _setup()
    from cellseg_nb.bundle import load_predictor
    key = 'ours_lc' if livecell else 'ours'
    out = cache / 'runs' / key; shutil.rmtree(out, ignore_errors=True)
    cmd = _cli('train', 'cellpose', '--data', split_folder(cache / 'data' / 'train', splits['train']), '--fold', '-1',
               '--out', out, '--epochs', budget['epochs'], '--bsize', budget['bsize'], '--device', 'cpu',
               '--set', f"cellpose.diam_mean={budget['diam_mean']}", '--set', f"cellpose.nimg_per_epoch={budget['nimg_per_epoch']}",
               '--set', f"cellpose.batch_size={budget['batch_size']}", '--set', f"cellpose.size_epochs={budget['size_epochs']}",
               '--set', f"cellpose.save_every={0 if livecell else budget['save_every']}")
    if livecell: cmd += ['--livecell', livecell_folder(cache / 'livecell20'), '--livecell_epochs', budget['livecell_epochs']]
    train_cpu, seen = run_measured(cmd, cache / 'logs' / f'{key}.log', _cellpose_watch(out, 'cellpose'))
    res = dict(task=key, train_cpu_s=train_cpu, phases={k or 'unet': v for k, v in seen.items() if not k.startswith('cellpose')
                                                        or k == ''}, snapshots={})
    pred = load_predictor(cellpose=out / 'cellpose', device='cpu')
    for split in (('test',) if livecell else ('test', 'tune')):      # the LIVECell row: defaults only (CPU)
        p, t = predict_split(pred, splits[split]); _save(cache, f'{key}_{split}', p); res[f'predict_cpu_s_{split}'] = t
    if not livecell:
        p, t = predict_split(unet_predictor(out / 'cellpose'), splits['test']); _save(cache, 'ours_unet_test', p)
        res['predict_cpu_s_unet'] = t
        pts = [(f'epoch_{e:04d}', e + 1, seen[f'cellpose_epoch_{e:04d}'], out / f'cellpose_epoch_{e:04d}')
               for e in curve if f'cellpose_epoch_{e:04d}' in seen]
        res['curve'] = _curve(cache, 'ours', pts, splits['test'], unet_predictor)
        res['curve'].append(dict(model='ours', point='final', x=budget['epochs'], train_cpu_s=round(seen.get('', train_cpu), 1),
                                 predict_cpu_s=round(t, 2), preds='ours_unet_test'))
    return res


def task_peer(cache, splits, budget, curve):
    _setup()
    out = cache / 'runs' / 'peer'; shutil.rmtree(out, ignore_errors=True); out.mkdir(parents=True)
    cmd = [sys.executable, Path(__file__).resolve(), '--peer-train', split_folder(cache / 'data' / 'train', splits['train']),
           out, '--budget', json.dumps(budget)]
    def watch(): return [f.name for f in (out / 'models').glob('peer*')] if (out / 'models').is_dir() else []
    train_cpu, seen = run_measured(cmd, cache / 'logs' / 'peer.log', watch)
    res = dict(task='peer', train_cpu_s=train_cpu, phases=dict(seen))
    pred = peer_predictor(out / 'models' / 'peer')
    for split in ('test',):                                         # the peer's own output is not tuned
        p, t = predict_split(pred, splits[split]); _save(cache, f'peer_{split}', p); res[f'predict_cpu_s_{split}'] = t
    pts = [(f'epoch_{e:04d}', e + 1, seen[f'peer_epoch_{e:04d}'], out / 'models' / f'peer_epoch_{e:04d}')
           for e in curve if f'peer_epoch_{e:04d}' in seen]
    res['curve'] = _curve(cache, 'peer', pts, splits['test'], peer_predictor)
    res['curve'].append(dict(model='peer', point='final', x=budget['epochs'], train_cpu_s=round(train_cpu, 1),
                             predict_cpu_s=round(res['predict_cpu_s_test'], 2), preds='peer_test'))
    return res


def task_maskrcnn(cache, splits, mr, curve, option=None):
    _setup()
    from cellseg_nb.bundle import load_predictor
    key = option or 'maskrcnn'
    out = cache / 'runs' / key; shutil.rmtree(out, ignore_errors=True)
    snaps = out / 'snapshots'
    cmd = _cli('train', 'maskrcnn', '--data', split_folder(cache / 'data' / 'train', splits['train']), '--fold', '-1',
               '--out', out, '--recipe', 'demo', '--small', '--iters', mr['iters'], '--batch_size', mr['batch_size'],
               '--checkpoint_every', mr['checkpoint_every'], '--val_every', 10 ** 9, '--device', 'cpu',
               '--set', f"augment.crop_size=[{mr['crop']}, {mr['crop']}]")
    pseudo_cpu = 0.
    if option == 'mr_pseudo':            # label the unlabelled images with the Mask R-CNN row's model, then train on both
        base = cache / 'runs' / 'maskrcnn' / 'checkpoint.pt'
        t0 = time.time()
        while not (cache / 'tasks' / 'maskrcnn.json').is_file():          # the Mask R-CNN row runs beside this task
            if (cache / 'tasks' / 'maskrcnn.failed').is_file() or time.time() - t0 > 4 * 3600:
                raise RuntimeError("mr_pseudo needs the Mask R-CNN row's model, which did not finish")
            time.sleep(10)
        folder = pseudo_folder(cache / 'data' / 'train_pseudo', splits['train'])
        out.mkdir(parents=True, exist_ok=True)
        rules = json.dumps(pseudo_rules(cache))
        pseudo_cpu, _ = run_measured(_cli('pseudo-label', '--maskrcnn', base, '--data', folder, '--out', out.parent / 'mr_pseudo.csv',
                                          '--rules', rules, '--device', 'cpu'), cache / 'logs' / 'mr_pseudo_label.log')
        cmd[cmd.index('--data') + 1] = folder
        cmd += ['--pseudo_labels', out.parent / 'mr_pseudo.csv']
    elif option:
        extra = OPTIONS[option][1]
        cmd += extra if extra is not None else ['--set', f"model.anchor_sizes={box_anchors(splits['train'])}"]
    state = dict(mtime=None, n=0)
    def watch():                                      # each new checkpoint.pt is the next multiple of checkpoint_every
        f = out / 'checkpoint.pt'
        if f.is_file() and f.stat().st_mtime != state['mtime']:
            state['mtime'] = f.stat().st_mtime; state['n'] += 1
            it = min(state['n'] * mr['checkpoint_every'], mr['iters'])
            if it in curve and not option:
                snaps.mkdir(exist_ok=True); shutil.copy(f, snaps / f'iter_{it:05d}.pt')
        return [f'iter_{min(k * mr["checkpoint_every"], mr["iters"]):05d}' for k in range(1, state['n'] + 1)]
    train_cpu, seen = run_measured(cmd, cache / 'logs' / f'{key}.log', watch)
    res = dict(task=key, train_cpu_s=train_cpu + pseudo_cpu, phases=dict(seen, pseudo_label=pseudo_cpu))
    pred = load_predictor(maskrcnn=out / 'checkpoint.pt', device='cpu')
    for split in (('test',) if option else ('test', 'tune')):
        p, t = predict_split(pred, splits[split]); _save(cache, f'{key}_{split}', p); res[f'predict_cpu_s_{split}'] = t
    if not option:
        p, t = predict_split(pred, splits['test'], tta=True); _save(cache, 'maskrcnn_flip_test', p); res['predict_cpu_s_flip'] = t
        p, _ = predict_split(pred, splits['tune'], tta=True); _save(cache, 'maskrcnn_flip_tune', p)   # tuning on TTA output
        pts = [(f'iter_{i:05d}', i, seen[f'iter_{i:05d}'], snaps / f'iter_{i:05d}.pt') for i in curve
               if (snaps / f'iter_{i:05d}.pt').is_file() and f'iter_{i:05d}' in seen]
        res['curve'] = _curve(cache, 'maskrcnn', pts, splits['test'], lambda p: load_predictor(maskrcnn=p, device='cpu'))
        res['curve'].append(dict(model='maskrcnn', point='final', x=mr['iters'], train_cpu_s=round(train_cpu, 1),
                                 predict_cpu_s=round(res['predict_cpu_s_test'], 2), preds='maskrcnn_test'))
        shutil.rmtree(snaps, ignore_errors=True)          # full checkpoints (optimizer state): scored, not kept
    return res


def pseudo_rules(cache, q=0.9) -> dict:
    """`cellseg pseudo-label --rules` for the Mask R-CNN row's model: per type, `min_score` = the `q` quantile of its
    raw candidates' scores on the tune split (the library's `PSEUDO_RULES` ask 0.6-0.7, made for trained models; at
    this budget 5% of the candidates score above 0.5, and those rules keep no cell); minimum area and cell count as
    shipped."""
    from cellseg_nb.inference import load_predictions
    raw = load_predictions(cache / 'preds' / 'maskrcnn_tune.csv')
    types = json.loads(SPLITS.read_text())['tune']
    out = {}
    for t in TYPES:
        s = np.concatenate([raw[i].scores for i in types[t] if i in raw and len(raw[i])] or [np.zeros(0)])
        if len(s): out[t] = {'min_score': round(float(np.quantile(s, q)), 4)}
    return out


def task_otsu(cache, splits):
    _setup()
    from cellseg_nb.inference import threshold_predictor
    from cellseg_nb.predictors import ModelPredictor
    res = dict(task='otsu', train_cpu_s=0.0)
    for split in ('test', 'tune'):
        p, t = predict_split(ModelPredictor('otsu', threshold_predictor), splits[split])
        _save(cache, f'otsu_{split}', p); res[f'predict_cpu_s_{split}'] = t
    return res


def _task_call(name, cache, splits, budget, mr, curves):
    if name == 'ours': return task_ours, (cache, splits, budget, curves[0])
    if name == 'ours_lc': return task_ours, (cache, splits, budget, curves[0], True)
    if name == 'peer': return task_peer, (cache, splits, budget, curves[0])
    if name == 'maskrcnn': return task_maskrcnn, (cache, splits, mr, curves[1])
    if name == 'otsu': return task_otsu, (cache, splits)
    return task_maskrcnn, (cache, splits, mr, curves[1], name)


def run_tasks(names, jobs, cache: Path, splits, budget, mr, curves) -> dict:
    "Run the tasks `names` `jobs` at a time (spawned processes); a task with `cache/tasks/<name>.json` is reused."
    from cellseg_nb.files import write_json
    (cache / 'tasks').mkdir(parents=True, exist_ok=True)
    done, todo = {}, []
    for n in names:
        f = cache / 'tasks' / f'{n}.json'
        if f.is_file(): done[n] = json.loads(f.read_text()); print(f"cached: {n}", flush=True)
        else: todo.append(n)
    def finish(n, res):
        done[n] = res; write_json(cache / 'tasks' / f'{n}.json', res, default=str)
        print(f"[{time.strftime('%H:%M:%S')}] done: {n} (train CPU {res['train_cpu_s']:.0f} s)", flush=True)
    failed = []
    if jobs > 1 and len(todo) > 1:
        import concurrent.futures as cf, multiprocessing as mp
        with cf.ProcessPoolExecutor(jobs, mp_context=mp.get_context('spawn')) as pool:
            futs = {}
            for n in todo: fn, args = _task_call(n, cache, splits, budget, mr, curves); futs[pool.submit(fn, *args)] = n
            for f in cf.as_completed(futs):
                try: finish(futs[f], f.result())
                except Exception as e:
                    failed.append(futs[f]); print(f"FAILED: {futs[f]}: {e}", flush=True)
                    (cache / 'tasks' / f'{futs[f]}.failed').write_text(str(e))
    else:
        for n in todo:
            fn, args = _task_call(n, cache, splits, budget, mr, curves)
            try: finish(n, fn(*args))
            except Exception as e: failed.append(n); print(f"FAILED: {n}: {e}", flush=True)
    return done, failed


# ---------------------------------------------------------------- scoring
COLS = ['model', 'option', 'AP@0.5', 'AP@0.75', 'AP@0.9', 'mAP', 'mAP astro', 'mAP cort', 'mAP shsy5y', 'train CPU s',
        'predict CPU s/image', 'cells predicted', 'cells true']


def _score(gt, preds, types) -> dict:
    from cellseg_nb.metric import evaluate
    pi = evaluate(gt, {i: preds[i] for i in gt}, types).per_image
    d = {'AP@0.5': pi['p@0.50'].mean(), 'AP@0.75': pi['p@0.75'].mean(), 'AP@0.9': pi['p@0.90'].mean(), 'mAP': pi.score.mean()}
    for t in TYPES: d[f'mAP {t}'] = pi.score[pi.cell_type == t].mean()
    d['cells predicted'], d['cells true'] = int(pi.n_pred.sum()), int(pi.n_true.sum())
    return d


class Scorer:
    "Ground truth of the tune and test splits, raw predictions from the cache, post-processing and tuning."
    def __init__(self, cache, splits):
        from cellseg_nb.data import SartoriusData
        ds = SartoriusData(DATA)
        self.cache, self.splits, self.types = cache, splits, ds.meta.cell_type.astype(str).to_dict()
        self.gt = {s: {i: ds.instances(i) for i in splits[s]} for s in ('tune', 'test')}
    def raw(self, name):
        from cellseg_nb.inference import load_predictions
        return load_predictions(self.cache / 'preds' / f'{name}.csv')
    def post(self, preds, cfg=None, true_type=False):
        from cellseg_nb.inference import postprocess_all
        # the type voted from the predicted labels (as `cellseg predict`); an image predicted empty has no labels to
        # vote (load_predictions gives None): its true type there, which cannot change an empty result
        return postprocess_all(preds, cfg, {i: self.types[i] if true_type or p.labels is None else None
                                            for i, p in preds.items()})
    def tuned(self, name, true_type=False):
        "Post-processing settings tuned on the tune split's raw predictions of `name` (`tune.tune`, as `cellseg tune`)."
        from cellseg_nb.tune import tune
        raw = self.raw(f'{name}_tune')
        if true_type: raw = {i: p.with_(labels=None) for i, p in raw.items()}
        return tune(raw, self.gt['tune'], self.types, progress=False).best
    def score(self, preds): return _score(self.gt['test'], preds, self.types)


def build_tables(cache, splits, tasks: dict, budget, mr) -> tuple:
    "(results table, curves table) from the cached tasks; rows of missing tasks are left out."
    s = Scorer(cache, splits)
    rows = []
    def add(model, option, preds, task, predict_key='predict_cpu_s_test', train=None):
        d = s.score(preds)
        rows.append({'model': model, 'option': option, **d, 'train CPU s': round(train if train is not None else task['train_cpu_s']),
                     'predict CPU s/image': round(task.get(predict_key, np.nan), 2)})
        print(f"{model} [{option}]: mAP {d['mAP']:.3f}", flush=True)
    if 'otsu' in tasks:
        raw = s.raw('otsu_test')
        add(NAMES['otsu'], 'default post-processing', s.post(raw, None, True), tasks['otsu'])
        add(NAMES['otsu'], 'tuned post-processing', s.post(raw, s.tuned('otsu', True), True), tasks['otsu'])
    if 'peer' in tasks: add(NAMES['peer'], 'its own output', s.raw('peer_test'), tasks['peer'])
    single = {}
    for key in ('ours', 'ours_lc', 'maskrcnn'):
        if key not in tasks: continue
        raw = s.raw(f'{key}_test')
        add(NAMES[key], 'default post-processing', s.post(raw), tasks[key])
        if key == 'ours_lc': continue                       # not predicted on the tune split (CPU): defaults only
        cfg = s.tuned(key)
        add(NAMES[key], 'tuned post-processing', s.post(raw, cfg), tasks[key]); single[key] = rows[-1]['mAP']
        if key == 'ours':
            add('ours, network alone at diam_labels (no SizeModel)', 'its own output', s.raw('ours_unet_test'), tasks[key],
                'predict_cpu_s_unet', train=tasks[key]['phases'].get('unet', tasks[key]['train_cpu_s']))
        if key == 'maskrcnn':
            flip = s.raw('maskrcnn_flip_test')
            add(NAMES[key] + ' + flip TTA', 'default post-processing', s.post(flip), tasks[key], 'predict_cpu_s_flip')
            add(NAMES[key] + ' + flip TTA', 'tuned post-processing', s.post(flip, cfg), tasks[key], 'predict_cpu_s_flip')
            if (cache / 'preds' / 'maskrcnn_flip_tune.csv').is_file():      # tuned on the flip-TTA output itself
                add(NAMES[key] + ' + flip TTA', 'tuned on flip-TTA predictions', s.post(flip, s.tuned('maskrcnn_flip')),
                    tasks[key], 'predict_cpu_s_flip')
    if 'ours' in tasks and 'maskrcnn' in tasks:
        from cellseg_nb.ensemble import tune_ensemble, ensemble
        tr = {'maskrcnn': s.raw('maskrcnn_tune'), 'cellpose': s.raw('ours_tune')}
        st = tune_ensemble(tr, s.gt['tune'], s.types).settings
        te = {'maskrcnn': s.raw('maskrcnn_test'), 'cellpose': s.raw('ours_test')}
        ens = {i: ensemble({m: te[m][i] for m in te}, st) for i in splits['test']}
        t = dict(train_cpu_s=tasks['ours']['train_cpu_s'] + tasks['maskrcnn']['train_cpu_s'],
                 predict_cpu_s_test=tasks['ours']['predict_cpu_s_test'] + tasks['maskrcnn']['predict_cpu_s_test'])
        add(ENSEMBLE, 'choice per type: ' +
            ', '.join(f'{k} {v}' for k, v in sorted(st.choice.items())), ens, t)
    for key, (name, _) in OPTIONS.items():
        if key in tasks: add(name, 'default post-processing', s.post(s.raw(f'{key}_test')), tasks[key])
    table = pd.DataFrame(rows, columns=COLS)
    curves = []
    for key in ('ours', 'peer', 'maskrcnn'):
        for c in (tasks.get(key) or {}).get('curve', []):
            preds = s.raw(c.get('preds') or f"curve_{c['model']}_{c['point']}")
            if key == 'maskrcnn': preds = s.post(preds)
            d = s.score(preds)
            curves.append({**{k: c[k] for k in ('model', 'point', 'x', 'train_cpu_s')}, 'train CPU min': round(c['train_cpu_s'] / 60, 2),
                           **{k: d[k] for k in ('mAP', 'mAP astro', 'mAP cort', 'mAP shsy5y', 'cells predicted')}})
    return table, pd.DataFrame(curves)


def targets(table: pd.DataFrame) -> pd.DataFrame:
    "The issue's targets, each with the numbers it compares and whether it is met."
    t = table.set_index(['model', 'option'])
    def get(model, option):
        try: return t.loc[(model, option)]
        except KeyError: return None
    rows = []
    ours, peer = get(NAMES['ours'], 'default post-processing'), get(NAMES['peer'], 'its own output')
    if ours is not None and peer is not None:
        for ty in TYPES:
            rows.append(dict(target=f'Cellpose (shipped) >= peer, {ty}', ours=ours[f'mAP {ty}'], reference=peer[f'mAP {ty}'],
                             met=bool(ours[f'mAP {ty}'] >= peer[f'mAP {ty}'])))
    mr, otsu = get(NAMES['maskrcnn'], 'default post-processing'), get(NAMES['otsu'], 'tuned post-processing')
    if mr is not None and otsu is not None:
        for ty in TYPES:
            rows.append(dict(target=f'Mask R-CNN >= Otsu + 0.05, {ty}', ours=mr[f'mAP {ty}'], reference=otsu[f'mAP {ty}'] + 0.05,
                             met=bool(mr[f'mAP {ty}'] >= otsu[f'mAP {ty}'] + 0.05)))
    ens = table[table.model.str.startswith('ensemble')]
    singles = table[table.model.isin([NAMES['ours'], NAMES['maskrcnn']]) & (table.option == 'tuned post-processing')]
    if len(ens) and len(singles):
        rows.append(dict(target='tuned ensemble >= best single model (tuned), mean', ours=ens.mAP.iloc[0],
                         reference=singles.mAP.max(), met=bool(ens.mAP.iloc[0] >= singles.mAP.max())))
    for key in ('ours', 'maskrcnn'):
        d, tu = get(NAMES[key], 'default post-processing'), get(NAMES[key], 'tuned post-processing')
        if d is not None and tu is not None:
            rows.append(dict(target=f'tuned post-processing >= defaults, {key}, mean', ours=tu.mAP, reference=d.mAP,
                             met=bool(tu.mAP >= d.mAP)))
    return pd.DataFrame(rows, columns=['target', 'ours', 'reference', 'met'])


def seed_cv(table: pd.DataFrame) -> pd.DataFrame:
    "Per-type mAP of our two models here beside the seed's CV (full data, GPU, pretrained)."
    rows = []
    for fam, key in (('Mask R-CNN', 'maskrcnn'), ('Cellpose', 'ours')):
        r = table[(table.model == NAMES[key]) & (table.option == 'tuned post-processing')]
        for ty in ('cort', 'shsy5y', 'astro'):
            rows.append(dict(model=fam, cell_type=ty, here=r[f'mAP {ty}'].iloc[0] if len(r) else np.nan, seed_cv=SEED_CV[fam][ty]))
    return pd.DataFrame(rows)


def table_markdown(table) -> str:
    "The block of `docs/guide_benchmarks.md` (Markdown) from `results/bench_real.csv` (a path or its DataFrame): results, targets, seed CV."
    from table import csv_markdown
    df = pd.read_csv(table, keep_default_na=False, na_values=['']) if isinstance(table, (str, os.PathLike)) else table
    out = csv_markdown(df, COLS)
    expected = [NAMES[k] for k in ('otsu', 'peer', 'ours', 'ours_lc', 'maskrcnn')] + [ENSEMBLE]
    missing = [m for m in expected if m not in set(df.model)]
    if missing:
        out = (f"**Partial run: no rows yet for {', '.join(missing)}** (the full run had not finished these tasks when "
               "the table was made; `--cache` resumes it).\n\n" + out)
    tg = targets(df)
    if len(tg):
        tg = tg.assign(met=tg.met.map({True: 'yes', False: 'no'}))
        out += '\n\nTargets of issue 17 on the test split:\n\n' + csv_markdown(tg, list(tg.columns))
    sc = seed_cv(df)
    out += ("\n\nPer-type mAP here (tuned post-processing) beside the seed's CV (full data, GPU, pretrained weights; "
            "here 60 images, CPU, from scratch):\n\n" + csv_markdown(sc, list(sc.columns)))
    return out


HEADLINE = [(NAMES['otsu'], 'tuned post-processing', 'classical baseline (Otsu, tuned)'),
            (NAMES['peer'], 'its own output', "cellpose's own training and eval (peer)"),
            (NAMES['ours'], 'default post-processing', 'Cellpose, ours (cellseg train cellpose, SizeModel)'),
            (NAMES['ours_lc'], 'default post-processing', 'Cellpose, ours, LIVECell stage first'),
            (NAMES['maskrcnn'], 'tuned post-processing', 'Mask R-CNN (resnet18 FPN, tuned)'),
            (NAMES['maskrcnn'] + ' + flip TTA', 'tuned on flip-TTA predictions', 'Mask R-CNN + flip TTA'),
            (ENSEMBLE, None, 'ensemble, tuned on the tune split')]


def headline_markdown(table) -> str:
    "The README's short real-image table (Markdown) from `results/bench_real.csv` (a path or its DataFrame): `HEADLINE` rows."
    from cellseg_nb.pipeline import markdown_table
    df = pd.read_csv(table, keep_default_na=False, na_values=['']) if isinstance(table, (str, os.PathLike)) else table
    rows = []
    for model, option, label in HEADLINE:
        r = df[(df.model == model) & ((df.option == option) if option else True)]
        if len(r): rows.append({'model (24 real test images)': label, **{c: r[c].iloc[0] for c in
                                ('mAP', 'mAP astro', 'mAP cort', 'mAP shsy5y', 'train CPU s')}})
    return markdown_table(pd.DataFrame(rows), index=False)


# ---------------------------------------------------------------- main
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--jobs', type=int, default=1, help='tasks run in parallel processes (one CPU thread each)')
    ap.add_argument('--cache', default=None, help='keep finished tasks (CPU times, raw predictions) here; reuse on a rerun')
    ap.add_argument('--options', action='store_true', help='also the Mask R-CNN training options (3 more trainings)')
    ap.add_argument('--no-livecell', action='store_true', help='leave out the LIVECell-stage Cellpose')
    ap.add_argument('--check', action='store_true', help='small split and budget, temporary folder; exit 1 when ours < peer')
    ap.add_argument('--readme', action='store_true', help="also rewrite the user guide's table (docs/guide_benchmarks.md) and the README's short one")
    ap.add_argument('--out', default=str(REPO / 'results' / 'bench_real.csv'))
    ap.add_argument('--curves', default=str(REPO / 'results' / 'bench_real_curves.csv'))
    ap.add_argument('--tables-only', action='store_true', help='no training: the tables from the tasks the cache holds (a partial run)')
    ap.add_argument('--anchors', default=None, help='only measure anchor coverage of the train boxes (anchor_table) into this CSV')
    ap.add_argument('--make-splits', action='store_true', help='draw bench/real_splits.json (done once; it is committed)')
    ap.add_argument('--peer-train', nargs=2, default=None, help=argparse.SUPPRESS)
    ap.add_argument('--budget', default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if not DATA.is_dir():
        msg = f"real data not found at {DATA}: this benchmark needs ../shared/realdata beside the repository"
        if a.check: print(f"skipped: {msg}"); return
        sys.exit(msg)
    if a.peer_train:
        b = json.loads(a.budget); return peer_train_main(Path(a.peer_train[0]), Path(a.peer_train[1]), b['epochs'], b['save_every'], b)
    if a.make_splits: make_splits(); print(f"wrote {SPLITS}"); return
    if a.anchors:
        from cellseg_nb.files import write_csv
        t = anchor_table(load_splits()); write_csv(a.anchors, t); print(t.to_string(index=False)); return
    budget, mr = dict(BUDGET), dict(MASKRCNN)
    curves = (CURVE_CELLPOSE, CURVE_MASKRCNN)
    sizes = None
    if a.check:
        budget.update(CHECK['budget']); mr.update(CHECK['maskrcnn']); sizes = CHECK['sizes']
        curves = (CHECK['curve_cellpose'], CHECK['curve_maskrcnn'])
    splits = load_splits(sizes)
    tmp = None
    if a.check and not a.cache: tmp = tempfile.mkdtemp(prefix='bench_real_check_')
    cache = Path(a.cache or tmp)
    tag = hashlib.sha1(json.dumps([budget, mr, splits, curves], sort_keys=True).encode()).hexdigest()[:10]
    cache = cache / f'run_{tag}'
    cache.mkdir(parents=True, exist_ok=True)
    print(f"cache {cache}; splits {', '.join(f'{k} {len(v)}' for k, v in splits.items())}; budget {budget}; Mask R-CNN {mr}", flush=True)
    names = ['ours', 'peer', 'maskrcnn'] + ([] if a.check or a.no_livecell else ['ours_lc']) + ['otsu']
    if a.options and not a.check: names += list(OPTIONS)
    t0 = time.time()
    split_folder(cache / 'data' / 'train', splits['train'])           # made once here, before the tasks share them
    if 'ours_lc' in names: livecell_folder(cache / 'livecell20')
    if a.tables_only:
        tasks = {n: json.loads((cache / 'tasks' / f'{n}.json').read_text()) for n in names if (cache / 'tasks' / f'{n}.json').is_file()}
        failed = [n for n in names if n not in tasks]
        print(f"tables from the cached tasks {sorted(tasks)}; missing: {failed}")
    else: tasks, failed = run_tasks(names, max(a.jobs, 2) if a.check else a.jobs, cache, splits, budget, mr, curves)
    table, curve = build_tables(cache, splits, tasks, budget, mr)
    pd.set_option('display.width', 250); pd.set_option('display.max_columns', 20)
    print(table.round(3).to_string(index=False)); print(curve.round(3).to_string(index=False))
    tg = targets(table); print(tg.to_string(index=False))
    print(f"wall {time.time() - t0:.0f} s" + (f"; FAILED tasks: {failed}" if failed else ''))
    from cellseg_nb.files import write_csv
    if a.check:
        write_csv(cache / 'bench_real.csv', table); write_csv(cache / 'bench_real_curves.csv', curve)
        if tmp: shutil.rmtree(tmp, ignore_errors=True)
        m = table.set_index('model')['mAP']
        ours = table[(table.model == NAMES['ours']) & (table.option == 'default post-processing')].mAP.iloc[0]
        peer = m[NAMES['peer']]
        if failed: sys.exit(f"FAIL: tasks failed: {failed}")
        otsu = table[(table.model == NAMES['otsu']) & (table.option == 'default post-processing')].mAP.iloc[0]
        if ours < peer: sys.exit(f"FAIL: ours (shipped) mAP {ours:.3f} below the peer's {peer:.3f}")
        if ours <= otsu: sys.exit(f"FAIL: ours (shipped) mAP {ours:.3f} not above the Otsu baseline's {otsu:.3f}: it has not learned")
        print(f"OK ours (shipped) mAP {ours:.3f} >= peer {peer:.3f}, > Otsu baseline {otsu:.3f}")
        return
    write_csv(a.out, table); write_csv(a.curves, curve)
    print(f"wrote {a.out}, {a.curves}")
    if a.readme:
        sys.path.insert(0, str(REPO / 'docs'))
        import readme
        readme.set_block('real-bench-table', table_markdown(a.out))
        readme.set_block('real-bench-headline', headline_markdown(a.out)); readme.main()
    if failed: sys.exit(1)


if __name__ == '__main__':
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
