"""Real-image benchmark: Cellpose trained through cellseg_nb vs cellpose's own training, on five real LIVECell images.

Run: `python bench/bench_real.py [--folds 0 1 2 3 4] [--epochs E] [--check] [--no-maskrcnn] [--jobs J]`.
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
Writes `results/bench_real.csv` (one row per fold and model, plus the mean) and, with `--markdown PATH`, the table as
Markdown. `--check` runs fold 0 only and exits 1 when ours (shipped or at the same diameter) is below the peer.
Every figure is CPU time (user + sys of the process), not wall time: the machine may be shared.
"""
# not in CI
import argparse, os, sys, tempfile, time
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


def maskrcnn_train(images, insts, work: Path, seed: int):
    "The demo's small Mask R-CNN (resnet18, from scratch) on random crops; returns (model, CPU seconds)."
    from cellseg_nb.maskrcnn_train import train, ArraySource
    from cellseg_nb.pipeline import maskrcnn_demo_options
    c0 = cpu()
    it, c = MASKRCNN['iterations'], MASKRCNN['crop']
    one_class = [x.with_(labels=None) for x in insts]                    # one class: cell (any line)
    r = train((ArraySource(images, one_class), None), work / 'maskrcnn', backbone='resnet18',
              model_options=maskrcnn_demo_options(images[0].shape), iterations=it, batch_size=MASKRCNN['batch_size'],
              optimizer='adamw', lr=2e-3, warmup=min(20, it // 5), val_every=10 ** 9, checkpoint_every=10 ** 9,
              augment=dict(crop_size=(c, c)), seed=seed, progress=False, device='cpu')
    return r['model'], cpu() - c0


ENSEMBLE = dict(weights=(0.7, 0.3), vote=0.5, score_threshold=0.3)   # fixed beforehand, not tuned on held-out images


def ensemble(cellpose_pred, maskrcnn_pred):
    """Cellpose (weight 0.7) + Mask R-CNN (0.3) merged by `merge_models` (pixel vote 0.5), cells with a merged score
    below 0.3 dropped, overlaps removed. A cell found by Mask R-CNN alone scores at most 0.3 x its score, so at a
    budget where Mask R-CNN has barely learned it cannot add false cells; where both models find a cell, the vote
    keeps the pixels of the stronger model."""
    from cellseg_nb.ensemble import merge_models
    from cellseg_nb.postprocess import filter_scores, remove_overlaps
    merged = merge_models([cellpose_pred, maskrcnn_pred], ENSEMBLE['weights'], vote=ENSEMBLE['vote'])
    return remove_overlaps(filter_scores(merged, ENSEMBLE['score_threshold']), min_kept=0.5, min_area=15)


def score(gt, pred) -> dict:
    from cellseg_nb.metric import precision_at, THRESHOLDS
    p = precision_at(gt, pred)
    t = list(np.round(THRESHOLDS, 2))
    return dict(mAP=float(p.mean()), ap50=float(p[t.index(0.5)]), ap75=float(p[t.index(0.75)]), n_pred=len(pred))


def run_fold(k: int, epochs: int, with_maskrcnn: bool, seed: int = SEED, ours_options: dict | None = None,
             budget: dict | None = None, maskrcnn: dict | None = None) -> list:
    "Train every model on the four images other than `ids[k]` and score `ids[k]`: one row per model."
    import torch
    BUDGET.update(budget or {}); MASKRCNN.update(maskrcnn or {})          # (set again in a worker process)
    torch.set_num_threads(1)
    from cellseg_nb.cpose import predict
    from cellseg_nb.postprocess import remove_overlaps, filter_scores
    ids, images, insts, types = load_data()
    tr = [i for i in range(len(ids)) if i != k]
    img, gt = images[k], insts[k]
    timg, tins, ttyp = [images[i] for i in tr], [insts[i] for i in tr], [types[i] for i in tr]
    rows = []
    def log(msg): print(f"[fold {k}, {time.strftime('%H:%M:%S')}, CPU {cpu():.0f} s] {msg}", flush=True)
    def row(model, pred, train_cpu, predict_cpu, diameter):
        rows.append(dict(fold=k, held_out=ids[k], cell_type=types[k], n_cells=len(gt), model=model, **score(gt, pred),
                         diameter=round(float(diameter), 2), train_cpu_s=round(train_cpu, 1),
                         predict_cpu_s=round(predict_cpu, 1)))
        log(f"{model}: mAP {rows[-1]['mAP']:.3f}, {len(pred)} cells, train CPU {train_cpu:.0f} s, predict CPU {predict_cpu:.0f} s")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        peer, d_peer, t_peer = peer_train(timg, tins, work, epochs, seed)
        c0 = cpu(); p = peer_predict(peer, img); row('peer (cellpose train_seg + eval)', p, t_peer, cpu() - c0, d_peer)
        ours, t_ours = ours_train(timg, tins, ttyp, work, epochs, seed, **(ours_options or {}))
        c0 = cpu(); shipped = predict(ours, [img], diameter='size_model')[0]
        row('ours (shipped: SizeModel diameter)', shipped, t_ours, cpu() - c0, shipped.meta['diameter'])
        c0 = cpu(); same = predict(ours, [img], diameter=d_peer)[0]
        row("ours (at the peer's diameter)", same, t_ours, cpu() - c0, d_peer)
        if with_maskrcnn:
          try:
            from cellseg_nb.maskrcnn import predict as mr_predict
            mr, t_mr = maskrcnn_train(timg, tins, work, seed)
            c0 = cpu(); mraw = mr_predict(mr, [img])[0]; t_mp = cpu() - c0
            mr_cells = remove_overlaps(filter_scores(mraw, 0.5), min_kept=0.5, min_area=15)
            row('Mask R-CNN (resnet18, from scratch)', mr_cells, t_mr, t_mp, np.nan)
            c0 = cpu(); ens = ensemble(shipped, mraw)
            row('ensemble (ours shipped + Mask R-CNN)', ens, t_ours + t_mr, cpu() - c0, np.nan)
          except Exception:                                       # keep the Cellpose rows of this fold; say what failed
            import traceback; traceback.print_exc(); log('Mask R-CNN / ensemble FAILED (traceback above)')
    return rows


def table_markdown(table) -> str:
    "The README's table (Markdown) from `results/bench_real.csv` (a path or its DataFrame)."
    from table import csv_markdown
    return csv_markdown(table, ['fold', 'held_out', 'model', 'mAP', 'ap50', 'ap75', 'n_pred', 'diameter', 'train_cpu_s'])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--folds', type=int, nargs='*', default=[0, 1, 2, 3, 4])
    ap.add_argument('--epochs', type=int, default=BUDGET['n_epochs'])
    ap.add_argument('--bsize', type=int, default=BUDGET['bsize'], help='training crop size (ours and the peer)')
    ap.add_argument('--batch-size', type=int, default=BUDGET['batch_size'])
    ap.add_argument('--crops', type=int, default=BUDGET['nimg_per_epoch'], help='crops per epoch (nimg_per_epoch)')
    ap.add_argument('--check', action='store_true', help='fold 0 only; exit 1 when ours is below the peer')
    ap.add_argument('--no-maskrcnn', action='store_true')
    ap.add_argument('--maskrcnn-iters', type=int, default=MASKRCNN['iterations'])
    ap.add_argument('--jobs', type=int, default=1, help='folds run in parallel processes (one CPU thread each)')
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
    if a.jobs > 1 and len(folds) > 1:
        from concurrent.futures import ProcessPoolExecutor
        import multiprocessing as mp
        with ProcessPoolExecutor(a.jobs, mp_context=mp.get_context('spawn')) as pool:
            results = list(pool.map(run_fold, folds, [a.epochs] * len(folds), [not a.no_maskrcnn] * len(folds),
                                    [SEED] * len(folds), [opts] * len(folds), [dict(BUDGET)] * len(folds),
                                    [dict(MASKRCNN)] * len(folds)))
    else:
        results = [run_fold(k, a.epochs, not a.no_maskrcnn, SEED, opts, dict(BUDGET), dict(MASKRCNN)) for k in folds]
    df = pd.DataFrame([r for rs in results for r in rs])
    mean = df.groupby('model', sort=False)[['mAP', 'ap50', 'ap75', 'n_pred', 'train_cpu_s', 'predict_cpu_s']].mean().reset_index()
    mean.insert(0, 'fold', 'mean'); mean['held_out'] = f'{len(folds)} folds'
    table = pd.concat([df, mean], ignore_index=True)
    out = Path(a.out); out.parent.mkdir(parents=True, exist_ok=True)
    from cellseg_nb.files import write_csv, write_text
    write_csv(out, table)
    pd.set_option('display.width', 200); pd.set_option('display.max_columns', 20)
    print(table.round(3).to_string(index=False))
    m = mean.set_index('model')['mAP']
    peer = m['peer (cellpose train_seg + eval)']
    ours = {k: v for k, v in m.items() if k.startswith('ours') or k.startswith('ensemble')}
    print(f"\nbudget: {a.epochs} epochs x {BUDGET['nimg_per_epoch']} crops of {BUDGET['bsize']} px (cells seen at "
          f"{BUDGET['diam_mean']:.0f} px), seed {SEED}, 1 thread; wall {time.time() - t0:.0f} s")
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
