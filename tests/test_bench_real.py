"The real benchmark's fixed splits, its split folders and its targets table (bench/bench_real.py); no training here."
import json, sys
from pathlib import Path
import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / 'bench'))
import bench_real

REAL = ROOT.parent / 'shared' / 'realdata' / 'sartorius_train405'
needs_real = pytest.mark.skipif(not REAL.is_dir(), reason=f"real data not found at {REAL} (../shared is absent in a user's clone)")


def test_splits_are_disjoint_nested_and_sized():
    doc = json.loads(bench_real.SPLITS.read_text())
    ids = {k: [i for t in bench_real.TYPES for i in doc[k][t]] for k in ('train', 'tune', 'test')}
    for k, v in ids.items(): assert len(v) == len(set(v)), f"{k}: an id twice"
    assert not set(ids['train']) & set(ids['tune']) and not set(ids['train']) & set(ids['test']) and not set(ids['tune']) & set(ids['test'])
    for t in bench_real.TYPES:
        assert len(doc['test'][t]) == bench_real.DRAW['test'] and len(doc['tune'][t]) == bench_real.DRAW['tune']
    full, small = bench_real.load_splits(), bench_real.load_splits(bench_real.CHECK['sizes'])
    for k, n in bench_real.SIZES.items():
        assert len(full[k]) == 3 * n
        assert set(small[k]) <= set(full[k])                            # the check's images are among the full run's
        for t in bench_real.TYPES: assert [i for i in full[k] if i in doc[k][t]] == doc[k][t][:n]


@needs_real
def test_splits_hold_their_cell_type_and_cover_the_folder():
    df = pd.read_csv(REAL / 'train.csv', usecols=['id', 'cell_type']).drop_duplicates('id').set_index('id').cell_type
    doc = json.loads(bench_real.SPLITS.read_text())
    seen = []
    for k in ('train', 'tune', 'test'):
        for t in bench_real.TYPES:
            assert set(df[doc[k][t]]) == {t}, f"{k}/{t}: an image of another type"
            seen += doc[k][t]
    assert sorted(seen) == sorted(df.index)                             # every labelled image in exactly one split


@needs_real
def test_split_folder_reads_as_the_competition_folder(tmp_path):
    from cellseg_nb.data import SartoriusData
    ids = bench_real.load_splits(bench_real.CHECK['sizes'])['test']
    sub = SartoriusData(bench_real.split_folder(tmp_path / 'test', ids))
    full = SartoriusData(REAL)
    assert sorted(sub.ids) == sorted(ids)
    for i in ids:
        assert len(sub.instances(i)) == len(full.instances(i))
        assert np.array_equal(sub.image(i), full.image(i))


@needs_real
def test_pseudo_folder_offers_every_unlabelled_image(tmp_path):
    "The pseudo-label option's folder: the train split as before plus every real unlabelled image to label."
    from cellseg_nb.data import SartoriusData
    ids = bench_real.load_splits(bench_real.CHECK['sizes'])['train']
    d = SartoriusData(bench_real.pseudo_folder(tmp_path / 'p', ids))
    unlabelled = sorted(f.stem for sub in bench_real.UNLABELLED for f in (REAL / sub).glob('*.png'))
    assert sorted(d.ids) == sorted(ids) and sorted(d.semi_supervised_ids) == unlabelled and len(unlabelled) == 85
    i = unlabelled[0]
    src = next(REAL / sub / f'{i}.png' for sub in bench_real.UNLABELLED if (REAL / sub / f'{i}.png').is_file())
    assert (tmp_path / 'p' / 'train_semi_supervised' / f'{i}.png').resolve() == src.resolve()
    assert bench_real.pseudo_folder(tmp_path / 'p', ids) == tmp_path / 'p'          # made once, then reused


def _row(model, option, per_type):
    d = {'model': model, 'option': option, **{f'mAP {t}': v for t, v in per_type.items()}}
    d['mAP'] = float(np.mean(list(per_type.values())))
    return d


def test_targets_compare_the_rows_they_name():
    N = bench_real.NAMES
    table = pd.DataFrame([
        _row(N['otsu'], 'tuned post-processing', dict(astro=0.02, cort=0.05, shsy5y=0.01)),
        _row(N['peer'], 'its own output', dict(astro=0.10, cort=0.20, shsy5y=0.05)),
        _row(N['ours'], 'default post-processing', dict(astro=0.12, cort=0.19, shsy5y=0.05)),
        _row(N['ours'], 'tuned post-processing', dict(astro=0.13, cort=0.21, shsy5y=0.06)),
        _row(N['maskrcnn'], 'default post-processing', dict(astro=0.08, cort=0.09, shsy5y=0.07)),
        _row(N['maskrcnn'], 'tuned post-processing', dict(astro=0.07, cort=0.09, shsy5y=0.07)),
        _row(bench_real.ENSEMBLE, 'choice per type', dict(astro=0.14, cort=0.21, shsy5y=0.08))])
    tg = targets = bench_real.targets(table).set_index('target')
    assert tg.loc['Cellpose (shipped) >= peer, astro', 'met'] and not tg.loc['Cellpose (shipped) >= peer, cort', 'met']
    assert tg.loc['Cellpose (shipped) >= peer, shsy5y', 'met']                       # equal counts as met
    assert tg.loc['Mask R-CNN >= Otsu + 0.05, astro', 'met'] and not tg.loc['Mask R-CNN >= Otsu + 0.05, cort', 'met']
    assert tg.loc['Mask R-CNN >= Otsu + 0.05, shsy5y', 'reference'] == pytest.approx(0.06)
    ens = tg.loc['tuned ensemble >= best single model (tuned), mean']
    assert ens['reference'] == pytest.approx(np.mean([0.13, 0.21, 0.06])) and ens['met']
    assert tg.loc['tuned post-processing >= defaults, ours, mean', 'met']
    assert not tg.loc['tuned post-processing >= defaults, maskrcnn, mean', 'met']
    md = bench_real.table_markdown(table.assign(**{c: 0 for c in bench_real.COLS if c not in table}))
    assert md.startswith('**Partial run: no rows yet for ' + N['ours_lc'])          # a missing model is said, not hidden
