"""The winners' options, measured: input scale, 56 x 56 masks, pseudo-labels, flip and multi-scale TTA, fusion.

Run: `python bench/bench_options.py --demo cellseg_out/demo [--iters N] [--work DIR] [--jobs J] [--phase all|train|eval]`.
Needs a finished `cellseg demo` folder (its default settings, seed 0): its data, its held-out test fold (fold 0), its
tuning fold (fold 1) and its two trained models (Mask R-CNN: the demo recipe's iterations, or `--maskrcnn_iters`
given to the demo, read from the demo's `recipe.yaml`; Cellpose 60 epochs). Every row is
scored on the demo's test fold with the competition metric, after post-processing tuned per cell type on the
tuning fold (`cellseg_nb.tune.tune`), as the demo does. Deterministic (seed 0, one torch thread per process).

Rows, all against the same held-out fold:
- inference options on the demo's own models (no training): the demo's Mask R-CNN as is; with flip TTA
  (`maskrcnn.predict(tta=True)`: boxes of the 3 passes merged by NMS, mask probabilities averaged); with
  multi-scale TTA (`tta_scales`, the same fusion at 0.8, 1, 1.25 x the model scale); both; the generic TTA
  (`inference.tta_predict`: whole predictions merged by `ensemble.merge_models`); Cellpose alone and with
  cellpose's own `augment` TTA; Mask R-CNN + Cellpose merged by the demo's vote and by the score-weighted fusion
  (`merge_models(vote_by='score')`).
- training options (each a Mask R-CNN trained again with the demo's recipe and ONE option changed, all at the same
  `--iters` budget, default 250 (the committed table's; the demo's own budget did not fit the CPU time here);
  `baseline` is the demo recipe at that budget): `scale` 1.5 (training
  and inference on 1.5x upscaled images), `mask_size` 56, and pseudo-labels (the demo's `train_semi_supervised/`
  images, 24 synthetic unlabelled images of the same generator, pseudo-labelled by the demo's Mask R-CNN with
  `pseudo.pseudo_label` with `PSEUDO_RULES_DEMO`, added to the training images; the tuning and test folds never see them).
Writes `results/bench_options.csv`: option, group, mAP, AP@0.5, AP@0.75, AP@0.9, CPU-s (training + prediction of
the tuning and test folds, user + sys of this process and its workers), train_iters. CPU time, not wall: the
machine may be shared.
"""
# not in CI
import argparse, json, os, sys, time, resource
from pathlib import Path
import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SEED = 0
N_SEMI = 24                                  # unlabelled images written beside the demo's data for pseudo-labels
TTA_SCALES = (0.8, 1.0, 1.25)
# pseudo-label rules for the demo's 160 x 160 images (a few cells each; `pseudo.PSEUDO_RULES` is for 520 x 704)
PSEUDO_RULES_DEMO = {'shsy5y': dict(min_score=0.5, min_area=60, min_cells=1),
                     'astro': dict(min_score=0.4, min_area=150, min_cells=1),
                     'cort': dict(min_score=0.7, min_area=100, min_cells=1)}
VARIANTS = {'baseline': dict(scale=1.0, mask_size=28), 'scale 1.5': dict(scale=1.5, mask_size=28),
            'mask 56 x 56': dict(scale=1.0, mask_size=56), 'pseudo-labels': dict(scale=1.0, mask_size=28, pseudo=True)}


from cellseg_nb.config import get_recipe
from cellseg_nb.files import write_csv, write_json
RECIPE = get_recipe('demo')                  # the demo's settings (data, folds, model, training)
DEMO = RECIPE.demo


def demo_maskrcnn_iters(demo: Path) -> int:
    "Iterations the demo folder's Mask R-CNN was trained for (the iteration stored in its checkpoint)."
    from cellseg_nb.maskrcnn import read_checkpoint
    return int(read_checkpoint(demo / 'models' / 'maskrcnn' / 'checkpoint.pt')['iteration'])


def cpu_self() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF); return r.ru_utime + r.ru_stime


def make_data(demo: Path, work: Path) -> Path:
    """The demo's synthetic competition folder again (same generator, seed and settings) plus `N_SEMI`
    `train_semi_supervised/` images; checks that its train.csv is the demo's byte for byte."""
    from cellseg_nb.synth import make_competition
    root = work / 'data'
    if not (root / 'train.csv').is_file():
        make_competition(root, n_images=DEMO.n_images, seed=DEMO.seed, image_shape=DEMO.image_shape, n_test=3, n_semi=N_SEMI)
    if (root / 'train.csv').read_bytes() != (demo / 'data' / 'train.csv').read_bytes():
        raise SystemExit(f"{root}/train.csv differs from the demo's {demo}/data/train.csv: run `cellseg demo` with its defaults")
    return root


def splits(root):
    from cellseg_nb.data import SartoriusData
    ds = SartoriusData(root)
    folds = ds.folds(DEMO.n_folds, seed=DEMO.seed)['fold']
    return ds, folds.index[folds >= 2].tolist(), folds.index[folds == 1].tolist(), folds.index[folds == 0].tolist()


def train_variant(name, root, demo, work, iters):
    "Train one Mask R-CNN variant in this process (one thread, seed 0); returns (checkpoint, CPU seconds)."
    import torch
    torch.set_num_threads(1)
    from cellseg_nb.pipeline import train_maskrcnn_demo, maskrcnn_predictor, deterministic
    from cellseg_nb.maskrcnn_train import train
    from cellseg_nb.pipeline import maskrcnn_demo_options
    c0 = cpu_self()
    ds, train_ids, _, _ = splits(root)
    o = dict(VARIANTS[name]); pseudo = o.pop('pseudo', False)
    out = work / 'models' / name.replace(' ', '_')
    warmup = min(RECIPE.train.warmup, iters // 5)
    with deterministic(SEED):
        if not pseudo:
            ck, _ = train_maskrcnn_demo(ds, train_ids, out, iters, progress=False, warmup=warmup, seed=SEED, **o)
        else:
            from cellseg_nb.pseudo import pseudo_label, write_pseudo_labels, PseudoLabelData, CombinedSource
            labeller = maskrcnn_predictor(demo / 'models' / 'maskrcnn' / 'checkpoint.pt', device='cpu')
            csv = write_pseudo_labels(pseudo_label(labeller, root, rules=PSEUDO_RULES_DEMO, progress=False), out / 'pseudo_labels.csv')
            pl = PseudoLabelData(csv, root)
            src = CombinedSource([(ds.subset(train_ids), train_ids), (pl, pl.ids)])
            r = train((src, None), out, backbone=RECIPE.model.backbone,
                      model_options=maskrcnn_demo_options(ds.image_shape, **o), iterations=iters, batch_size=2,
                      optimizer='adamw', lr=2e-3, warmup=warmup, seed=SEED, val_every=10 ** 9,
                      checkpoint_every=10 ** 9, progress=False, device='cpu')
            ck = Path(r['checkpoint'])
            (out / 'pseudo_summary.json').write_text(json.dumps(dict(
                images=len(pl.ids), cells=int(len(pl.df)), labelled_train_images=len(train_ids))))
    return str(ck), cpu_self() - c0


def train_all(root, demo, work, iters, jobs):
    "Train the variants not yet in `work/train_times.json` (J processes at a time); returns {name: (ckpt, cpu s)}."
    import concurrent.futures as cf, multiprocessing as mp
    done_file = work / f'train_times_{iters}.json'
    done = json.loads(done_file.read_text()) if done_file.is_file() else {}
    todo = [n for n in VARIANTS if n not in done]
    todo.sort(key=lambda n: -VARIANTS[n]['scale'])                       # the longest first
    with cf.ProcessPoolExecutor(jobs, mp_context=mp.get_context('spawn')) as pool:
        futs = {pool.submit(train_variant, n, root, demo, work, iters): n for n in todo}
        for f in cf.as_completed(futs):
            n = futs[f]; ck, c = f.result()
            done[n] = [ck, c]
            write_json(done_file, done, indent=1)
            print(f"trained {n}: {c:.0f} CPU s -> {ck}", flush=True)
    return done


def _tuned_scores(raw, gt, types, tune_ids, test_ids):
    "Post-processing tuned per type on the tuning fold, scored on the test fold: the metric's 'overall' row."
    from cellseg_nb.tune import tune
    from cellseg_nb.inference import postprocess_all
    from cellseg_nb.metric import evaluate
    sub = lambda d, ids: {i: d[i] for i in ids}
    best = tune(sub(raw, tune_ids), sub(gt, tune_ids), types, progress=False).best
    pred = postprocess_all(sub(raw, test_ids), best, {i: types[i] for i in test_ids})
    return evaluate(sub(gt, test_ids), pred, types).summary.loc['overall']


def evaluate_all(root, demo, work, iters, out_csv, max_images=None, only=None):
    """Every row of the table (see the module docstring) -> `out_csv` (temporary file, then renamed); returns it.
    Rows and raw predictions are cached in `work/rows_{iters}/` (a rerun or a second process reuses them);
    `only`: 'test-time' or 'training' computes those rows only (two processes can share the work)."""
    import torch
    torch.set_num_threads(1)
    from cellseg_nb import maskrcnn, cpose
    from cellseg_nb.pipeline import deterministic, quiet_library_warnings
    from cellseg_nb.inference import predict_images, save_predictions, load_predictions
    from cellseg_nb.ensemble import merge_models
    ds, _, tune_ids, test_ids = splits(root)
    if max_images: tune_ids, test_ids = tune_ids[:max_images], test_ids[:max_images]      # a smoke run only
    types = ds.meta.cell_type.to_dict()
    ids = tune_ids + test_ids
    gt = {i: ds.instances(i) for i in ids}
    images = {i: ds.image(i) for i in ids}
    cache = work / f'rows_{iters}' if not max_images else work / f'rows_{iters}_smoke{max_images}'
    cache.mkdir(parents=True, exist_ok=True)
    slug = lambda name: ''.join(ch if ch.isalnum() else '_' for ch in name)[:80]
    rows, raw = [], {}

    def run(name, group, make_predictor, train_cpu=0.0, passes=1, train_iters=None, **kw):
        f = cache / f'{slug(name)}.csv'
        if not f.is_file():
            c0 = cpu_self()
            with deterministic(SEED), quiet_library_warnings():
                preds = predict_images(make_predictor(), images, progress=False, **kw)
            (cache / f'{slug(name)}.cpu').write_text(str(cpu_self() - c0))
            save_predictions(preds, f)
        raw[name] = load_predictions(f)
        add(name, group, float((cache / f'{slug(name)}.cpu').read_text()) + train_cpu, passes, train_iters)

    def add(name, group, cpu, passes, train_iters):
        s = _tuned_scores(raw[name], gt, types, tune_ids, test_ids)
        rows.append({'option': name, 'group': group, 'mAP': s['mAP'], 'AP@0.5': s['AP@0.5'], 'AP@0.75': s['AP@0.75'],
                     'AP@0.9': s['AP@0.9'], 'CPU-s': round(cpu, 1), 'passes': passes, 'train_iters': train_iters})
        print(f"{name:58s} mAP {s['mAP']:.3f}  AP@0.75 {s['AP@0.75']:.3f}  AP@0.9 {s['AP@0.9']:.3f}  {cpu:7.1f} CPU s", flush=True)

    demo_iters = demo_maskrcnn_iters(demo)
    if only in (None, 'test-time'):
        mr_path = demo / 'models' / 'maskrcnn' / 'checkpoint.pt'
        mr_pred = lambda **o: (lambda: maskrcnn.as_predictor(maskrcnn.load_model(mr_path, device='cpu'), **o))
        MR, CP = "Mask R-CNN (the demo's)", "Cellpose + SizeModel (the demo's)"
        run(MR, 'test-time', mr_pred(), train_iters=demo_iters)
        run('+ flip TTA (3 passes; boxes NMS, mask probabilities averaged)', 'test-time', mr_pred(tta=True), passes=3, train_iters=demo_iters)
        run(f'+ multi-scale TTA x{TTA_SCALES} (3 passes)', 'test-time', mr_pred(tta_scales=TTA_SCALES), passes=3, train_iters=demo_iters)
        run('+ flip and multi-scale TTA (9 passes)', 'test-time', mr_pred(tta=True, tta_scales=TTA_SCALES), passes=9, train_iters=demo_iters)
        run('+ flip TTA, whole predictions fused (merge_models)', 'test-time', mr_pred(), passes=3, train_iters=demo_iters, tta=True)
        cp_path = demo / 'models' / 'cellpose' / 'cellpose'
        cp_pred = lambda **o: (lambda: (lambda m: (lambda image: cpose.predict(m, [image], diameter='size_model', **o)[0]))(cpose.load_model(cp_path)))
        run(CP, 'test-time', cp_pred())
        run("Cellpose + cellpose's augment TTA (flipped tiles)", 'test-time', cp_pred(augment=True), passes=None)
        cpu_models = [r['CPU-s'] for r in rows if r['option'] in (MR, CP)]
        for name, fusion in [('Ensemble, mask vote by model weight (the demo)', {}),
                             ('Ensemble, vote weighted by score', dict(vote_by='score')),
                             ('Ensemble, vote by score, score = mean of members', dict(vote_by='score', score_fusion='mean'))]:
            c0 = cpu_self()
            raw[name] = {i: merge_models([raw[MR][i], raw[CP][i]], **fusion) for i in ids}
            add(name, 'fusion across models', sum(cpu_models) + cpu_self() - c0, 2, None)
    if only in (None, 'training'):
        trained = json.loads((work / f'train_times_{iters}.json').read_text())
        for v in VARIANTS:
            if v not in trained and only: print(f"{v}: not trained yet, skipped"); continue
            if v not in trained: raise SystemExit(f"{v}: not trained yet (run --phase train --iters {iters})")
            ck, train_cpu = trained[v]
            run(f'Mask R-CNN trained: {v}', f'training ({iters} iterations)',
                (lambda ck: lambda: maskrcnn.as_predictor(maskrcnn.load_model(ck, device='cpu')))(ck), train_cpu=train_cpu, train_iters=iters)
    df = pd.DataFrame(rows).astype({'passes': 'Int64', 'train_iters': 'Int64'})
    if only is None:
        out_csv.parent.mkdir(parents=True, exist_ok=True)
        write_csv(out_csv, df, float_format='%.4f')
        print(f"wrote {out_csv}")
    print(df.to_string(index=False))
    return df

def table_markdown(csv=REPO / 'results' / 'bench_options.csv') -> str:
    "The options table of `docs/guide_benchmarks.md` (Markdown) from `results/bench_options.csv` (a path or its DataFrame)."
    from table import csv_markdown
    return csv_markdown(csv, ['option', 'group', 'mAP', 'AP@0.5', 'AP@0.75', 'AP@0.9', 'CPU-s', 'passes', 'train_iters'])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--demo', default='cellseg_out/demo', help='a finished `cellseg demo` folder (default settings, seed 0)')
    ap.add_argument('--iters', type=int, default=None, help="Mask R-CNN iterations of the trained variants (default: 250)")
    ap.add_argument('--work', default=None, help='folder for the data, the trained variants and predictions (kept: a rerun reuses them)')
    ap.add_argument('--jobs', type=int, default=2, help='variants trained at a time (one process, one thread each)')
    ap.add_argument('--phase', default='all', choices=('all', 'train', 'eval'))
    ap.add_argument('--out', default=str(REPO / 'results' / 'bench_options.csv'))
    ap.add_argument('--only', default=None, choices=('test-time', 'training'), help='evaluate these rows only (no CSV written)')
    ap.add_argument('--max_images', type=int, default=None, help='a smoke run: at most this many tuning and test images')
    ap.add_argument('--readme', action='store_true', help="only rewrite the options table of docs/guide_benchmarks.md from --out, then exit")
    a = ap.parse_args(argv)
    if a.readme:
        sys.path.insert(0, str(REPO / 'docs'))
        import readme
        readme.set_block('options-table', table_markdown(a.out)); readme.main(); return
    demo = Path(a.demo)
    if not (demo / 'models' / 'maskrcnn' / 'checkpoint.pt').is_file(): raise SystemExit(f"{demo}: not a finished demo folder (run `cellseg demo`)")
    iters = a.iters or 250
    work = Path(a.work or (demo.parent / 'bench_options')); work.mkdir(parents=True, exist_ok=True)
    root = make_data(demo, work)
    trained = train_all(root, demo, work, iters, a.jobs) if a.phase in ('all', 'train') else None
    if a.phase in ('all', 'eval'):
        evaluate_all(root, demo, work, iters, Path(a.out), a.max_images, a.only)


if __name__ == '__main__':
    main()
