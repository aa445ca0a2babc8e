"""The library's post-processing defaults measured on real images: the tune split of the real benchmark.

Run after `bench/bench_real.py` (same `--cache`): `python bench/real_defaults.py --cache DIR [--write]`.

Issue 17 section 4. Settings that hold across models are library defaults (`postprocess.DEFAULT_CONFIGS` and
`PostprocessConfig`'s fields): the minimum area, the mask NMS IoU, the kept fraction after overlap removal and hole
filling, per cell type. Score thresholds depend on a model's calibration and stay per model (`cellseg tune` on that
model's own predictions); they are swept here only to show the calibration. Each setting is swept alone from the
shipped defaults (the others kept), per cell type, for both trained models of the bench (our Cellpose and Mask
R-CNN), on the raw predictions of the 18 tune images (6 per type) that `bench_real.py` cached, post-processed with the
true cell type and scored with the competition metric (mean over the type's images). The value chosen for a type
is the one with the best mean over the two models; the shipped value is kept unless the chosen one gains at least
`MIN_GAIN` on that mean and loses on neither model (6 images per type are few: a smaller gain is noise).
The settings so chosen are then scored on the 24 test images beside the shipped ones (the gain on data the choice
never saw). Writes `results/real_defaults.csv` (the sweep), `results/real_defaults_chosen.csv` (per type and setting:
shipped, best, chosen) and `results/real_defaults_test.csv` (shipped vs chosen on the test split, per model and type)
with `--write`; prints them otherwise. CPU: about a minute. `--cellpose` also sweeps Cellpose's cell-probability
and flow thresholds on the tune split (`cellpose_thresholds`: `results/real_defaults_cellpose.csv`).
"""
# not in CI
# (it needs the real benchmark's cache: `bench/bench_real.py --cache DIR` first)
import argparse, sys
from pathlib import Path
import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_real as B

REPO = B.REPO
MODELS = {'Cellpose (ours)': 'ours', 'Mask R-CNN': 'maskrcnn'}
GRIDS = dict(min_area=(0, 25, 50, 75, 100, 150, 200, 300), nms_iou=(None, 0.3, 0.4, 0.5, 0.6, 0.7),
             min_kept=(0.2, 0.35, 0.5, 0.65, 0.8), fill_holes=(False, True),
             score_threshold=(0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9))
LIBRARY = ('min_area', 'nms_iou', 'min_kept', 'fill_holes')         # settings that are library defaults
MIN_GAIN = 0.005


def type_scores(gt: dict, raw: dict, types: dict, cfgs) -> dict:
    "Mean competition score per cell type of `raw` post-processed with `cfgs` (`PostprocessConfigs`), true types."
    from cellseg_nb.metric import score_image
    from cellseg_nb.postprocess import postprocess
    s = pd.Series({i: score_image(gt[i], postprocess(raw[i], types[i], cfgs)) for i in gt})
    t = pd.Series({i: types[i] for i in gt})
    return s.groupby(t).mean().to_dict()


def sweep(scorer, shipped) -> pd.DataFrame:
    "One row per (setting, value, model, cell type): the tune split's mean score with that one setting changed."
    rows = []
    for model, key in MODELS.items():
        raw = scorer.raw(f'{key}_tune')
        for ct in B.TYPES:
            gt = {i: g for i, g in scorer.gt['tune'].items() if scorer.types[i] == ct}     # scored on its own images only
            for setting, grid in GRIDS.items():
                for v in grid:
                    cfg = shipped.replace(ct, **{setting: v})
                    s = type_scores(gt, raw, scorer.types, cfg)[ct]
                    rows.append(dict(setting=setting, value=str(v), model=model, cell_type=ct, tune_mAP=s,
                                     shipped=str(getattr(shipped[ct], setting)) == str(v)))
    rows.sort(key=lambda r: (list(MODELS).index(r['model']), list(GRIDS).index(r['setting']),
                             [str(v) for v in GRIDS[r['setting']]].index(r['value']), B.TYPES.index(r['cell_type'])))
    return pd.DataFrame(rows)


def choose(table: pd.DataFrame, shipped) -> pd.DataFrame:
    "Per (setting, cell type): the shipped value, the best by the two models' mean, and the value chosen (`MIN_GAIN` rule)."
    out = []
    for (setting, ct), g in table[table.setting.isin(LIBRARY)].groupby(['setting', 'cell_type'], sort=False):
        by = g.pivot_table(index='value', columns='model', values='tune_mAP', sort=False)
        mean = by.mean(axis=1)
        ship = str(getattr(shipped[ct], setting))
        best = mean.idxmax()
        gain = float(mean[best] - mean[ship])
        keep_ship = gain < MIN_GAIN or (by.loc[best] < by.loc[ship]).any()
        out.append(dict(setting=setting, cell_type=ct, shipped=ship, shipped_mAP=float(mean[ship]), best=best,
                        best_mAP=float(mean[best]), gain=gain, chosen=ship if keep_ship else best,
                        changed=not keep_ship))
    return pd.DataFrame(out)


def _parse(setting, v: str):
    if setting == 'fill_holes': return v == 'True'
    if setting == 'min_area': return int(v)
    return None if v == 'None' else float(v)


def chosen_configs(chosen: pd.DataFrame, shipped):
    "The shipped `PostprocessConfigs` with every changed setting of `chosen` applied."
    cfg = shipped
    for r in chosen[chosen.changed].itertuples():
        cfg = cfg.replace(r.cell_type, **{r.setting: _parse(r.setting, r.chosen)})
    return cfg


def test_gain(scorer, shipped, new) -> pd.DataFrame:
    "Shipped vs chosen settings on the test split, per model and cell type (true types) and the mean over images."
    rows = []
    for model, key in MODELS.items():
        raw = scorer.raw(f'{key}_test')
        for name, cfg in (('shipped', shipped), ('chosen on real tune images', new)):
            d = type_scores(scorer.gt['test'], raw, scorer.types, cfg)
            n = pd.Series(scorer.types)[list(scorer.gt['test'])].value_counts()
            rows.append(dict(model=model, settings=name, **{f'mAP {t}': d[t] for t in B.TYPES},
                             mAP=sum(d[t] * n[t] for t in B.TYPES) / n.sum()))
    return pd.DataFrame(rows)


def calibration(scorer) -> pd.DataFrame:
    "Score quantiles of each model's raw candidates on the tune split: why one threshold cannot serve both."
    rows = []
    for model, key in MODELS.items():
        s = np.concatenate([p.scores for p in scorer.raw(f'{key}_tune').values() if p.scores is not None and len(p)])
        rows.append(dict(model=model, candidates=len(s), **{f'q{q}': float(np.quantile(s, q / 100)) for q in (1, 10, 50, 90)},
                         share_above_0_5=float((s >= 0.5).mean())))
    return pd.DataFrame(rows)


TUNE_RULE = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0)             # tune.tune's min_gain_se values compared (shipped: 2.0)


def tune_rule(scorer, values=TUNE_RULE) -> pd.DataFrame:
    """`cellseg tune`'s rule for leaving a type's default (`min_gain_se`: a setting must beat the default by that many
    standard errors of the per-image gains; 0 = the plain best grid point), measured on real data in both directions
    of a two-fold cross-fit: tuned on the tune split and scored on the test split (as the benchmark's tuned rows:
    types voted from the predictions; per-type columns), and tuned on the test split and scored on the tune split
    (`mAP swapped`). Both models and their ensemble (`tune_ensemble`). One row per (model, min_gain_se) plus the
    defaults; `types_changed`: the cell types (tune -> test direction) whose settings left the default."""
    from cellseg_nb.tune import tune
    from cellseg_nb.ensemble import tune_ensemble, ensemble
    from cellseg_nb.postprocess import PostprocessConfigs
    start, rows = PostprocessConfigs(), []
    fwd, back = ('tune', 'test'), ('test', 'tune')
    def score(split, preds): return B._score(scorer.gt[split], preds, scorer.types)
    def add(model, z, d, swapped, changed):
        rows.append(dict(model=model, min_gain_se=z, types_changed=changed, **{k: d[k] for k in ('mAP', 'mAP astro', 'mAP cort', 'mAP shsy5y')},
                         **{'mAP swapped': swapped}))
    for model, key in MODELS.items():
        raw = {s: scorer.raw(f'{key}_{s}') for s in fwd}
        add(model, 'defaults', score('test', scorer.post(raw['test'])), score('tune', scorer.post(raw['tune']))['mAP'], '-')
        for z in values:
            cfg = {a: tune(raw[a], scorer.gt[a], scorer.types, min_gain_se=z, progress=False).best for a in fwd}
            add(model, z, score('test', scorer.post(raw['test'], cfg['tune'])), score('tune', scorer.post(raw['tune'], cfg['test']))['mAP'],
                ' '.join(t for t in B.TYPES if cfg['tune'][t] != start[t]) or 'none')
    raw = {s: {'maskrcnn': scorer.raw(f'maskrcnn_{s}'), 'cellpose': scorer.raw(f'ours_{s}')} for s in fwd}
    for z in values:
        st = {a: tune_ensemble(raw[a], scorer.gt[a], scorer.types, min_gain_se=z).settings for a in fwd}
        ens = {(a, b): {i: ensemble({m: raw[b][m][i] for m in raw[b]}, st[a]) for i in scorer.gt[b]} for a, b in (fwd, back)}
        add('ensemble', z, score('test', ens[fwd]), score('tune', ens[back])['mAP'],
            ', '.join(f'{k} {v}' for k, v in sorted(st['tune'].choice.items())))
    return pd.DataFrame(rows)


def rule_choice(rule: pd.DataFrame) -> float:
    "The smallest `min_gain_se` whose tuned settings score at or above the defaults for both models in both directions."
    ok = {}
    for model in MODELS:
        g = rule[rule.model == model].set_index('min_gain_se')
        d = g.loc['defaults']
        for z, r in g.drop(index='defaults').iterrows():
            ok[float(z)] = ok.get(float(z), True) and r['mAP'] >= d['mAP'] - 1e-12 and r['mAP swapped'] >= d['mAP swapped'] - 1e-12
    good = [z for z, v in sorted(ok.items()) if v]
    return good[0] if good else float('nan')


CELLPOSE_THRESHOLDS = [dict(cellprob_threshold=c, flow_threshold=0.4) for c in (-1.0, 0.0, 1.0, 2.0)] + \
                      [dict(cellprob_threshold=0.0, flow_threshold=f) for f in (0.2, 0.6, 0.8)]


def cellpose_thresholds(scorer, cache, grid=CELLPOSE_THRESHOLDS, splits=('tune', 'test')) -> pd.DataFrame:
    """Cellpose's cell-probability and flow thresholds (`cpose.predict`, shipped 0.0 / 0.4) swept one at a time with
    our trained model, each image at its true type's training diameter (`diameter='cell_type'`, one network pass per
    setting; the shipped SizeModel path costs several), post-processed with the shipped defaults; on the tune split
    (where a choice would be made) and on the test split (whether it carries over). One row per (split, setting,
    cell type)."""
    import torch
    from cellseg_nb import cpose
    from cellseg_nb.data import SartoriusData
    from cellseg_nb.postprocess import PostprocessConfigs
    torch.set_num_threads(1)
    ds = SartoriusData(B.DATA)
    bundle = cpose.load_model(cache / 'runs' / 'ours' / 'cellpose', mkldnn=False)
    rows = []
    for split in splits:
        ids = list(scorer.gt[split])
        for g in grid:
            raw = {i: cpose.predict(bundle, [ds.image(i)], diameter='cell_type', cell_types=[scorer.types[i]], **g)[0] for i in ids}
            d = type_scores(scorer.gt[split], raw, scorer.types, PostprocessConfigs())
            for ct in B.TYPES: rows.append(dict(split=split, **g, cell_type=ct, mAP=d[ct]))
            print(split, g, {k: round(v, 4) for k, v in d.items()}, flush=True)
    return pd.DataFrame(rows)


def read_results(folder=REPO / 'results') -> tuple:
    "(chosen, test, calibration, Cellpose sweep or None, tune rule or None) as written by `--write`: the guide's block."
    read = lambda n: pd.read_csv(Path(folder) / f'real_defaults_{n}.csv', keep_default_na=False, na_values=[''])
    opt = lambda n: read(n) if (Path(folder) / f'real_defaults_{n}.csv').is_file() else None
    return read('chosen'), read('test'), read('calibration'), opt('cellpose'), opt('tune_rule')


def tables_markdown(chosen: pd.DataFrame, test: pd.DataFrame, cal: pd.DataFrame, thr=None, rule=None) -> str:
    """The guide's block (Markdown): the settings that changed, the test-split check, the calibration, the Cellpose
    threshold sweep and the tune rule (the last two when given)."""
    from table import csv_markdown
    ch = chosen[chosen.changed]
    out = ('Settings the real tune split changed (best value by the two models\' mean; `MIN_GAIN` rule):\n\n'
           + (csv_markdown(ch, ['setting', 'cell_type', 'shipped', 'shipped_mAP', 'chosen', 'best_mAP', 'gain'])
              if len(ch) else 'none: no setting gained at least 0.005 on the mean without a loss on either model.')
           + f"\n\n{len(chosen) - len(ch)} of {len(chosen)} (setting, cell type) pairs keep their shipped value. On the test split:\n\n"
           + csv_markdown(test, list(test.columns))
           + "\n\nScore calibration of the raw candidates (tune split): why score thresholds stay per model:\n\n"
           + csv_markdown(cal, list(cal.columns)))
    if thr is not None:
        wide = thr.pivot_table(index=['cellprob_threshold', 'flow_threshold'], columns=['split', 'cell_type'], values='mAP', sort=False)
        wide.columns = [f'{sp} {ct}' for sp, ct in wide.columns]
        wide = wide.reset_index()
        out += ("\n\nCellpose's thresholds (our model, true type's diameter, shipped post-processing; shipped: cell probability "
                "0.0, flow 0.4), mAP per split and cell type: chosen on tune, checked on test:\n\n" + csv_markdown(wide, list(wide.columns)))
    if rule is not None:
        out += ("\n\n`cellseg tune`'s rule for leaving a default (`min_gain_se`), tuned on the tune split and scored on the "
                "test split (`mAP` and per type), and the other way round (`mAP swapped`); `defaults`: no tuning. The "
                f"smallest value that loses to the defaults for neither model in either direction: {rule_choice(rule)}"
                "\n\n" + csv_markdown(rule, list(rule.columns)))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--cache', required=True, help="bench_real.py's --cache folder (its run_* folder is found)")
    ap.add_argument('--write', action='store_true', help='write results/real_defaults*.csv')
    ap.add_argument('--readme', action='store_true', help="rewrite the guide's real-defaults-table block")
    ap.add_argument('--cellpose', action='store_true', help="also sweep Cellpose's cell-probability and flow thresholds "
                    "(re-predicts the tune and test splits once per setting: about 35 CPU-minutes)")
    a = ap.parse_args(argv)
    from cellseg_nb.postprocess import PostprocessConfigs
    runs = sorted(Path(a.cache).glob('run_*'), key=lambda p: p.stat().st_mtime)
    runs = [r for r in runs if all((r / 'preds' / f'{k}_{s}.csv').is_file() for k in MODELS.values() for s in ('tune', 'test'))]
    if not runs: sys.exit(f"{a.cache}: no bench_real run with Cellpose and Mask R-CNN predictions of the tune and test splits")
    cache = runs[-1]
    scorer = B.Scorer(cache, B.load_splits())
    shipped = PostprocessConfigs()
    table = sweep(scorer, shipped)
    chosen = choose(table, shipped)
    test = test_gain(scorer, shipped, chosen_configs(chosen, shipped))
    cal = calibration(scorer)
    rule = tune_rule(scorer)
    thr = cellpose_thresholds(scorer, cache) if a.cellpose else None
    pd.set_option('display.width', 250)
    print(chosen.round(4).to_string(index=False)); print(test.round(4).to_string(index=False)); print(cal.round(3).to_string(index=False))
    print(rule.round(4).to_string(index=False)); print(f"min_gain_se chosen by the rule: {rule_choice(rule)}")
    if a.write:
        from cellseg_nb.files import write_csv
        for name, df in (('real_defaults', table), ('real_defaults_chosen', chosen), ('real_defaults_test', test),
                         ('real_defaults_calibration', cal), ('real_defaults_tune_rule', rule),
                         ('real_defaults_cellpose', thr)):
            if df is not None: write_csv(REPO / 'results' / f'{name}.csv', df.round(5))
        print(f"wrote results/real_defaults*.csv from {cache}")
    if a.readme:
        sys.path.insert(0, str(REPO / 'docs'))
        import readme
        print(f"wrote {readme.set_block('real-defaults-table', tables_markdown(*read_results()))}")


if __name__ == '__main__':
    main()
