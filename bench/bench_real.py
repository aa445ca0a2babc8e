"""Real-image benchmark: Cellpose trained through cellseg_nb vs cellpose's own training, on five real LIVECell images.

Run: `python bench/bench_real.py [--folds 0 1 2 3 4] [--epochs E] [--check] [--no-maskrcnn] [--no-options]
[--jobs J] [--cache DIR] [--readme]`.
Data: `../shared/realdata/livecell_val5/` (five LIVECell images, 1,243 annotated cells, CC BY-NC: read in place, never
copied). Fold k trains on four images and scores the fifth (`ids[k]`) with the competition metric (mean over IoU
thresholds 0.50-0.95 of TP / (TP + FP + FN)); the held-out image rotates over the five folds.

Same splits, same seed, same training budget (`BUDGET`: epochs, crops per epoch, crop size, the diameter the network
sees cells at) for every model, all from scratch, one CPU thread each:
- peer: cellpose's documented usage. `CellposeModel(pretrained_model=False, nchan=2)`, `train.train_seg(model.net,
  images, label images, channels=[0, 0], ...)` with its own defaults otherwise (learning rate, `min_train_masks`),
  the model reloaded from its file and `CellposeModel.eval(image, channels=[0, 0])`: diameter from the training
  labels (`diam_labels`). Its label images rasterize the annotations in file order (a later cell does not overwrite
  an earlier one: `Instances.to_label_image`).
- ours: `cellseg_nb.cpose.train_cellpose` + `train_size_model` + `predict`: `shipped` uses our SizeModel's diameter
  (what `cellseg predict` does), `same_d` the peer's diameter (so the two networks are compared at equal diameter).
- Mask R-CNN (`cellseg_nb.maskrcnn_train.train`, the demo's resnet18 model, from scratch, no pretrained weights:
  this machine has no local COCO checkpoint) on random 256 px crops, and the ensemble of ours (shipped) with it
  (`ensemble`: fixed weights, not tuned on the held-out image).
- the winners' options on real images, each against its own baseline row of the same fold: inference options on the
  fold's trained models (no training: our Cellpose with cellpose's `augment` TTA; Mask R-CNN with flip TTA; the
  ensemble with the score-weighted vote, `merge_models(vote_by='score')`; the union of both models' cells,
  `union_ensemble`) and training options (`TRAINING_OPTIONS`:
  Mask R-CNN trained again on the same images, budget and seed with ONE setting changed: input scale 1.5, 56 x 56
  masks; `--no-options` leaves them out). Pseudo-labels are not measured here: the five images have no unlabelled
  neighbours in this folder.
Work is split into tasks (one fold's models; one training option on one fold), run `--jobs` at a time, the folds'
models first; with `--cache DIR` every finished task's rows are kept there and a rerun with the same budget reuses them.
Writes `results/bench_real.csv` (one row per fold and model, plus the mean) and, with `--markdown PATH`, the table as
Markdown. `--check` runs fold 0 only and exits 1 when ours (shipped or at the same diameter) is below the peer.
Every figure is CPU time (user + sys of the process), not wall time: the machine may be shared.
"""
# not in CI
import argparse, hashlib, json, os, sys, tempfile, time
from pathlib import Path
import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / 'shared' / 'realdata' / 'livecell_val5' / 'LIVECell_dataset_2021'
BUDGET = dict(n_epochs=100, bsize=64, batch_size=2, nimg_per_epoch=4, diam_mean=17.)   # the same for ours and the peer
SIZE_EPOCHS = 5                                                                  # our SizeModel
MASKRCNN = dict(iterations=150, batch_size=2, crop=256)          # about the CPU of one Cellpose training (ours)
SEED = 0


def cpu() -> float: return time.process_time()


def load_data(root=DATA):
    "The five real images: (ids, images uint8 (520, 704), Instances, cell types)."
    if not root.exists():
        sys.exit(f"real data not found at {root}: this benchmark needs ../shared/realdata beside the repository")
    from cellseg_nb.data import LiveCellData
    d = LiveCellData(root, split='val')
    ids = list(d.ids)
    return ids, [d.image(i) for i in ids], [d.instances(i) for i in ids], [str(d.meta.cell_type[i]) for i in ids]


def peer_train(images, insts, work: Path, epochs: int, seed: int):
    "cellpose's own training, as documented; returns (model file, its diam_labels, CPU seconds)."
    import torch
    from cellpose import models, train
    c0 = cpu()
    torch.manual_seed(seed); np.random.seed(seed)
    model = models.CellposeModel(gpu=False, pretrained_model=False, model_type=None, nchan=2,
                                 diam_mean=BUDGET['diam_mean'], mkldnn=False)
    labels = [x.to_label_image(np.int32) for x in insts]
    path, _, _ = train.train_seg(model.net, train_data=images, train_labels=labels, channels=[0, 0],
                                 n_epochs=epochs, bsize=BUDGET['bsize'], batch_size=BUDGET['batch_size'],
                                 nimg_per_epoch=BUDGET['nimg_per_epoch'], save_path=work, model_name='peer')
    reloaded = models.CellposeModel(gpu=False, pretrained_model=str(path), model_type=None, nchan=2)
    return reloaded, float(reloaded.diam_labels), cpu() - c0


def peer_predict(model, image, diameter=None):
    from cellseg_nb.instances import Instances
    masks = model.eval(image, channels=[0, 0], diameter=diameter)[0]
    return Instances.from_label_image(masks)


def ours_train(images, insts, types, work: Path, epochs: int, seed: int, **options):
    "Cellpose through cellseg_nb (+ SizeModel), `options` for `train_cellpose`; returns (bundle, CPU seconds)."
    from cellseg_nb.cpose import TrainingSet, train_cellpose, train_size_model, load_model
    c0 = cpu()
    ts = TrainingSet.from_arrays(images, insts, types)
    path = train_cellpose(ts, work / 'ours', n_epochs=epochs, seed=seed, progress=False,
                          **{**{k: v for k, v in BUDGET.items() if k != 'n_epochs'}, **options})
    train_size_model(path, ts, n_epochs=SIZE_EPOCHS, bsize=BUDGET['bsize'])
    return load_model(path), cpu() - c0


def maskrcnn_train(images, insts, work: Path, seed: int, **options):
    """The demo's small Mask R-CNN (resnet18, from scratch) on random crops, `options` (`scale`, `mask_size`) for
    `maskrcnn_demo_options`; returns (model, CPU seconds)."""
    from cellseg_nb.maskrcnn_train import train, ArraySource
    from cellseg_nb.pipeline import maskrcnn_demo_options
    c0 = cpu()
    it, c = MASKRCNN['iterations'], MASKRCNN['crop']
    one_class = [x.with_(labels=None) for x in insts]                    # one class: cell (any line)
    r = train((ArraySource(images, one_class), None), work / 'maskrcnn', backbone='resnet18',
              model_options=maskrcnn_demo_options(images[0].shape, **options), iterations=it, batch_size=MASKRCNN['batch_size'],
              optimizer='adamw', lr=2e-3, warmup=min(20, it // 5), val_every=10 ** 9, checkpoint_every=10 ** 9,
              augment=dict(crop_size=(c, c)), seed=seed, progress=False, device='cpu')
    return r['model'], cpu() - c0


ENSEMBLE = dict(weights=(0.7, 0.3), vote=0.5, score_threshold=0.3)   # fixed beforehand, not tuned on held-out images


def ensemble(cellpose_pred, maskrcnn_pred, vote_by: str = 'weight'):
    """Cellpose (weight 0.7) + Mask R-CNN (0.3) merged by `merge_models` (pixel vote 0.5), cells with a merged score
    below 0.3 dropped, overlaps removed. A cell found by Mask R-CNN alone scores at most 0.3 x its score, so at a
    budget where Mask R-CNN has barely learned it cannot add false cells; where both models find a cell, the vote
    keeps the pixels of the stronger model. `vote_by='score'`: each member's vote weighs weight x its score."""
    from cellseg_nb.ensemble import merge_models
    from cellseg_nb.postprocess import filter_scores, remove_overlaps
    merged = merge_models([cellpose_pred, maskrcnn_pred], ENSEMBLE['weights'], vote=ENSEMBLE['vote'], vote_by=vote_by)
    return remove_overlaps(filter_scores(merged, ENSEMBLE['score_threshold']), min_kept=0.5, min_area=15)


UNION = dict(weights=(0.5, 0.5), vote_by='score', score_fusion='max', maskrcnn_min_score=0.5)


def union_ensemble(cellpose_pred, maskrcnn_raw):
    """Every cell of either model: Cellpose's cells and Mask R-CNN's confident ones (score >= 0.5, its own threshold
    here) fused by `merge_models` with equal weights, the score-weighted pixel vote and the best member's score
    (`score_fusion='max'`), no further score threshold, overlaps removed. An option row: measured, not shipped."""
    from cellseg_nb.ensemble import merge_models
    from cellseg_nb.postprocess import filter_scores, remove_overlaps
    mr = filter_scores(maskrcnn_raw, UNION['maskrcnn_min_score'])
    merged = merge_models([cellpose_pred, mr], UNION['weights'], vote_by=UNION['vote_by'], score_fusion=UNION['score_fusion'])
    return remove_overlaps(merged, min_kept=0.5, min_area=15)


def score(gt, pred) -> dict:
    from cellseg_nb.metric import precision_at, THRESHOLDS
    p = precision_at(gt, pred)
    t = list(np.round(THRESHOLDS, 2))
    return dict(mAP=float(p.mean()), ap50=float(p[t.index(0.5)]), ap75=float(p[t.index(0.75)]), n_pred=len(pred))


TRAINING_OPTIONS = {'Mask R-CNN, input scale 1.5': dict(scale=1.5),          # one setting changed, same budget
                    'Mask R-CNN, 56 x 56 masks': dict(mask_size=56)}
PEER, SHIPPED, MASKRCNN_ROW = 'peer (cellpose train_seg + eval)', 'ours (shipped: SizeModel diameter)', 'Mask R-CNN (resnet18, from scratch)'


def _setup(budget, maskrcnn):
    "In a worker process: the parent's budget, one torch thread, the data; returns (ids, images, insts, types)."
    import torch
    BUDGET.update(budget or {}); MASKRCNN.update(maskrcnn or {})
    torch.set_num_threads(1)
    return load_data()


def _split(k, data):
    ids, images, insts, types = data
    tr = [i for i in range(len(ids)) if i != k]
    return images[k], insts[k], [images[i] for i in tr], [insts[i] for i in tr], [types[i] for i in tr]


class _Rows(list):
    "The rows of one task, each logged as it is scored."
    def __init__(self, k, data):
        super().__init__(); self.k, (self.ids, _, self.insts, self.types) = k, data
    def log(self, msg): print(f"[fold {self.k}, {time.strftime('%H:%M:%S')}, CPU {cpu():.0f} s] {msg}", flush=True)
    def add(self, model, pred, train_cpu, predict_cpu, diameter=np.nan, option=''):
        k, gt = self.k, self.insts[self.k]
        self.append(dict(fold=k, held_out=self.ids[k], cell_type=self.types[k], n_cells=len(gt), model=model,
                         option=option, **score(gt, pred), diameter=round(float(diameter), 2),
                         train_cpu_s=round(train_cpu, 1), predict_cpu_s=round(predict_cpu, 1)))
        self.log(f"{model}: mAP {self[-1]['mAP']:.3f}, {len(pred)} cells, train CPU {train_cpu:.0f} s, predict CPU {predict_cpu:.0f} s")


def _maskrcnn_cells(raw):
    from cellseg_nb.postprocess import remove_overlaps, filter_scores
    return remove_overlaps(filter_scores(raw, 0.5), min_kept=0.5, min_area=15)


def run_fold(k: int, epochs: int, with_maskrcnn: bool, seed: int = SEED, ours_options: dict | None = None,
             budget: dict | None = None, maskrcnn: dict | None = None, keep: str | None = None) -> list:
    """Train every model on the four images other than `ids[k]` and score `ids[k]`: one row per model, then the
    inference options on these models (rows with `option` set). `keep`: a folder where each model's raw prediction
    of the held-out image is saved (`inference.save_predictions`, one CSV per model) for later re-scoring."""
    data = _setup(budget, maskrcnn)
    from cellseg_nb.cpose import predict
    img, gt, timg, tins, ttyp = _split(k, data)
    rows = _Rows(k, data)
    def kept(name, inst):
        if keep:
            from cellseg_nb.inference import save_predictions
            Path(keep).mkdir(parents=True, exist_ok=True)
            save_predictions({str(data[0][k]): inst}, Path(keep) / f'{name}.csv')
        return inst
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        peer, d_peer, t_peer = peer_train(timg, tins, work, epochs, seed)
        c0 = cpu(); p = kept('peer', peer_predict(peer, img)); rows.add(PEER, p, t_peer, cpu() - c0, d_peer)
        ours, t_ours = ours_train(timg, tins, ttyp, work, epochs, seed, **(ours_options or {}))
        c0 = cpu(); shipped = kept('ours_shipped', predict(ours, [img], diameter='size_model')[0])
        rows.add(SHIPPED, shipped, t_ours, cpu() - c0, shipped.meta['diameter'])
        c0 = cpu(); same = kept('ours_same_d', predict(ours, [img], diameter=d_peer)[0])
        rows.add("ours (at the peer's diameter)", same, t_ours, cpu() - c0, d_peer)
        c0 = cpu(); aug = kept('ours_augment', predict(ours, [img], diameter='size_model', augment=True)[0])
        rows.add('ours shipped + cellpose augment TTA', aug, t_ours, cpu() - c0, aug.meta['diameter'], option='inference')
        if with_maskrcnn:
          try:
            from cellseg_nb.maskrcnn import predict as mr_predict
            mr, t_mr = maskrcnn_train(timg, tins, work, seed)
            c0 = cpu(); mraw = kept('maskrcnn_raw', mr_predict(mr, [img])[0]); t_mp = cpu() - c0
            rows.add(MASKRCNN_ROW, _maskrcnn_cells(mraw), t_mr, t_mp)
            c0 = cpu(); ens = ensemble(shipped, mraw)
            rows.add('ensemble (ours shipped + Mask R-CNN)', ens, t_ours + t_mr, cpu() - c0)
            c0 = cpu(); flip = kept('maskrcnn_flip_raw', mr_predict(mr, [img], tta=True)[0])
            rows.add('Mask R-CNN + flip TTA', _maskrcnn_cells(flip), t_mr, cpu() - c0, option='inference')
            c0 = cpu(); ens_s = ensemble(shipped, mraw, vote_by='score')
            rows.add('ensemble, score-weighted vote', ens_s, t_ours + t_mr, cpu() - c0, option='inference')
            c0 = cpu(); uni = union_ensemble(shipped, mraw)
            rows.add("ensemble, union of both models' cells", uni, t_ours + t_mr, cpu() - c0, option='inference')
          except Exception:                                       # keep the Cellpose rows of this fold; say what failed
            import traceback; traceback.print_exc(); rows.log('Mask R-CNN / ensemble FAILED (traceback above)')
    return list(rows)


def run_option(k: int, name: str, seed: int = SEED, budget: dict | None = None, maskrcnn: dict | None = None) -> list:
    "Mask R-CNN trained on fold `k`'s four images with the training option `name` (`TRAINING_OPTIONS`): one row."
    data = _setup(budget, maskrcnn)
    from cellseg_nb.maskrcnn import predict as mr_predict
    img, gt, timg, tins, ttyp = _split(k, data)
    rows = _Rows(k, data)
    with tempfile.TemporaryDirectory() as tmp:
        mr, t_mr = maskrcnn_train(timg, tins, Path(tmp), seed, **TRAINING_OPTIONS[name])
        c0 = cpu(); raw = mr_predict(mr, [img])[0]
        rows.add(name, _maskrcnn_cells(raw), t_mr, cpu() - c0, option='training')
    return list(rows)


def _task_key(task, budget, maskrcnn) -> str:
    "File name of a task's cached rows: the task and a hash of everything that changes its result."
    what = [task, budget, maskrcnn, SEED, SIZE_EPOCHS, ENSEMBLE, TRAINING_OPTIONS] + ([UNION, 'kept'] if task[0] == 'fold' else [])
    h = hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return '_'.join(str(t).replace(' ', '').replace(',', '') for t in task) + f'_{h}.json'


def run_tasks(tasks: list, jobs: int, cache: Path | None, with_maskrcnn: bool, ours_options: dict) -> list:
    """Run `tasks` (('fold', k) or ('option', k, name)) `jobs` at a time in spawned processes, in the order given;
    rows of tasks already in `cache` are reused, each finished task's rows written there at once."""
    budget, maskrcnn = dict(BUDGET), dict(MASKRCNN)
    def call(t):
        keep = str(cache / 'predictions' / _task_key(t, budget, maskrcnn)[:-5]) if cache else None
        if t[0] == 'fold': return run_fold, (t[1], budget['n_epochs'], with_maskrcnn, SEED, ours_options, budget, maskrcnn, keep)
        return run_option, (t[1], t[2], SEED, budget, maskrcnn)
    from cellseg_nb.files import write_json
    done, todo = {}, []
    for t in tasks:
        f = cache / _task_key(t, budget, maskrcnn) if cache else None
        if f is not None and f.is_file(): done[t] = json.loads(f.read_text()); print(f"cached: {t} ({f.name})")
        else: todo.append(t)
    def finish(t, rows):
        done[t] = rows
        if cache: write_json(cache / _task_key(t, budget, maskrcnn), rows)
    if jobs > 1 and len(todo) > 1:
        import concurrent.futures as cf, multiprocessing as mp
        with cf.ProcessPoolExecutor(jobs, mp_context=mp.get_context('spawn')) as pool:
            futs = {}
            for t in todo: fn, args = call(t); futs[pool.submit(fn, *args)] = t
            for f in cf.as_completed(futs): finish(futs[f], f.result())
    else:
        for t in todo: fn, args = call(t); finish(t, fn(*args))
    return [r for t in tasks for r in done[t]]


def summary(df: pd.DataFrame) -> pd.DataFrame:
    "Per model (rows in first-seen order): mAP of each fold, then the means over the folds the model ran on."
    df = df[df.fold != 'mean'].copy(); df['fold'] = df.fold.astype(int)
    order = list(dict.fromkeys(df.model))
    per_fold = df.pivot(index='model', columns='fold', values='mAP').reindex(order)
    per_fold.columns = [f'fold {c}' for c in per_fold.columns]
    means = df.groupby('model')[['mAP', 'ap50', 'ap75', 'n_pred', 'train_cpu_s']].mean().reindex(order)
    means.columns = ['mean mAP', 'mean AP@0.5', 'mean AP@0.75', 'mean cells', 'train CPU s']
    means[['mean cells', 'train CPU s']] = means[['mean cells', 'train CPU s']].round().astype(int)
    opt = (df['option'] if 'option' in df else pd.Series('', df.index)).fillna('').groupby(df.model).first().reindex(order)
    return pd.concat([opt.rename('option'), per_fold, means], axis=1).reset_index()


def table_markdown(table) -> str:
    "The README's table (Markdown) from `results/bench_real.csv` (a path or its DataFrame): one row per model."
    from table import csv_markdown
    s = summary(pd.read_csv(table) if isinstance(table, (str, os.PathLike)) else table)
    return csv_markdown(s, list(s.columns))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--folds', type=int, nargs='*', default=[0, 1, 2, 3, 4])
    ap.add_argument('--epochs', type=int, default=BUDGET['n_epochs'])
    ap.add_argument('--bsize', type=int, default=BUDGET['bsize'], help='training crop size (ours and the peer)')
    ap.add_argument('--batch-size', type=int, default=BUDGET['batch_size'])
    ap.add_argument('--crops', type=int, default=BUDGET['nimg_per_epoch'], help='crops per epoch (nimg_per_epoch)')
    ap.add_argument('--check', action='store_true', help='fold 0 only, no options; exit 1 when ours is below the peer')
    ap.add_argument('--no-maskrcnn', action='store_true')
    ap.add_argument('--no-options', action='store_true', help='leave out the training options (Mask R-CNN trained again)')
    ap.add_argument('--maskrcnn-iters', type=int, default=MASKRCNN['iterations'])
    ap.add_argument('--jobs', type=int, default=1, help='tasks run in parallel processes (one CPU thread each)')
    ap.add_argument('--cache', default=None, help="keep each finished task's rows in this folder; reuse them on a rerun")
    ap.add_argument('--out', default=str(REPO / 'results' / 'bench_real.csv'))
    ap.add_argument('--markdown', default=None, help='also write the table as Markdown to this file')
    ap.add_argument('--readme', action='store_true', help='also rewrite the README table (nbs/index.ipynb, README.md)')
    ap.add_argument('--ours-lr', type=float, default=None, help="our learning rate (default: train_cellpose's)")
    a = ap.parse_args(argv)
    folds = [0] if a.check else a.folds
    MASKRCNN.update(iterations=a.maskrcnn_iters)
    BUDGET.update(n_epochs=a.epochs, bsize=a.bsize, batch_size=a.batch_size, nimg_per_epoch=a.crops)
    t0 = time.time()
    opts = {} if a.ours_lr is None else dict(learning_rate=a.ours_lr)
    tasks = [('fold', k) for k in folds]
    if not (a.check or a.no_options or a.no_maskrcnn): tasks += [('option', k, n) for n in TRAINING_OPTIONS for k in folds]
    cache = Path(a.cache) if a.cache else None
    if cache: cache.mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame(run_tasks(tasks, a.jobs, cache, not a.no_maskrcnn, opts))
    mean = df.groupby('model', sort=False)[['mAP', 'ap50', 'ap75', 'n_pred', 'train_cpu_s', 'predict_cpu_s']].mean().reset_index()
    mean.insert(0, 'fold', 'mean'); mean['held_out'] = f'{len(folds)} folds'
    mean['option'] = mean.model.map(df.groupby('model')['option'].first())
    table = pd.concat([df, mean], ignore_index=True)
    out = Path(a.out); out.parent.mkdir(parents=True, exist_ok=True)
    from cellseg_nb.files import write_csv, write_text
    write_csv(out, table)
    pd.set_option('display.width', 250); pd.set_option('display.max_columns', 20)
    print(summary(table).round(3).to_string(index=False))
    m = mean.set_index('model')['mAP']
    peer = m[PEER]
    ours = {k: v for k, v in m.items() if k.startswith('ours') or k.startswith('ensemble')}
    print(f"\nbudget: {a.epochs} epochs x {BUDGET['nimg_per_epoch']} crops of {BUDGET['bsize']} px (cells seen at "
          f"{BUDGET['diam_mean']:.0f} px), Mask R-CNN {MASKRCNN['iterations']} iterations, seed {SEED}, 1 thread per "
          f"task; wall {time.time() - t0:.0f} s")
    for k, v in ours.items(): print(f"{k}: mAP {v:.3f} vs peer {peer:.3f}: ratio {v / max(peer, 1e-9):.2f}")
    if a.markdown:
        write_text(a.markdown, table_markdown(table) + '\n')
    if a.readme:
        sys.path.insert(0, str(REPO / 'docs'))
        import readme
        readme.set_block('real-bench-table', table_markdown(out)); readme.main()
    if a.check:
        low = {k: v for k, v in ours.items() if k.startswith('ours') and v < peer}
        if low: sys.exit(f"FAIL: ours below the peer (mAP {peer:.3f}): {low}")
        print("check passed: ours >= peer")


if __name__ == '__main__':
    main()
