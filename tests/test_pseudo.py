"""Pseudo-labels: confident cells of unlabelled images in train.csv format, read back as training data that never
enters validation, and the `cellseg pseudo-label` command with a real (tiny) Mask R-CNN checkpoint."""
import json, shutil
from pathlib import Path
import numpy as np, pandas as pd, pytest, torch
from cellseg_nb import cli
from cellseg_nb.celltypes import CELL_TYPES
from cellseg_nb.data import SartoriusData
from cellseg_nb.postprocess import postprocess
from cellseg_nb.synth import make_competition
from cellseg_nb.pseudo import pseudo_label, write_pseudo_labels, training_sources, PseudoLabelData, PSEUDO_COLUMNS
from cellseg_nb.maskrcnn_train import train
from cellseg_nb.config import get_recipe

torch.set_num_threads(1)
TINY = get_recipe('tiny').model.changed_options()     # the tests' small model (cellseg_nb.config)
RULES = {t: dict(min_score=0.6, min_area=30, min_cells=3) for t in CELL_TYPES}


@pytest.fixture(scope='module')
def comp(tmp_path_factory):
    "12 labelled images; train_semi_supervised/ holds copies of 4 of them under new ids (their truth is known)."
    root = make_competition(tmp_path_factory.mktemp('comp'), n_images=12, seed=5, image_shape=(96, 96), n_test=0, n_semi=0)
    data = SartoriusData(root)
    (root / 'train_semi_supervised').mkdir(exist_ok=True)
    semi = {f'semi{k}': data.ids[k] for k in range(4)}
    for s, i in semi.items(): shutil.copy(root / 'train' / f'{i}.png', root / 'train_semi_supervised' / f'{s}.png')
    return root, data, semi


def oracle(data, seed=0):
    "A predictor that knows the labelled images: their ground truth with random scores in [0.3, 1)."
    truth, rng = {data.image(i).tobytes(): data.instances(i) for i in data.ids}, np.random.default_rng(seed)
    return lambda image: (lambda g: g.with_(scores=rng.uniform(0.3, 1.0, len(g)).astype(np.float32)))(truth[image.tobytes()])


def test_kept_cells_are_exactly_the_confident_ones(comp):
    root, data, semi = comp
    df = pseudo_label(oracle(data), root, rules=RULES, progress=False)
    again = oracle(data)                  # the same scores, recomputed independently of pseudo_label
    for s, i in semi.items():
        cells = postprocess(again(data.image(i)), data.meta.cell_type[i])
        keep = cells.select((cells.scores >= 0.6) & (cells.areas >= 30))
        rows = df[df.id == s]
        if len(keep) < 3: assert rows.empty; continue
        assert rows.annotation.tolist() == keep.to_rles()
        np.testing.assert_allclose(rows.score, keep.scores, atol=1e-4)
        assert set(rows.cell_type) == {data.meta.cell_type[i]} and set(rows.sample_id) == {f'pseudo_{s}'}
    assert df.pseudo.all() and list(df.columns) == PSEUDO_COLUMNS and df.id.nunique() >= 2
    # an image with fewer confident cells than min_cells is left out entirely
    strict = pseudo_label(oracle(data), root, rules={t: {**RULES[t], 'min_cells': 10_000} for t in CELL_TYPES}, progress=False)
    assert strict.empty and list(strict.columns) == PSEUDO_COLUMNS


def test_training_takes_pseudo_labels_never_validates_on_them(comp, tmp_path, capsys):
    root, data, semi = comp
    csv = write_pseudo_labels(pseudo_label(oracle(data), root, rules=RULES, progress=False), tmp_path / 'pseudo.csv')
    pseudo = PseudoLabelData(csv, root)
    tr, va = training_sources(root, csv, fold=1, n_folds=2)
    assert set(pseudo.ids) <= set(tr.ids) and not set(pseudo.ids) & set(va.ids)
    folds = data.folds(2)['fold']
    assert sorted(va.ids) == sorted(folds.index[folds == 1]) and not any(va.is_pseudo(i) for i in va.ids)
    labelled_train = [i for i in tr.ids if not tr.is_pseudo(i)]
    assert not set(data.meta.sample_id[labelled_train]) & set(data.meta.sample_id[va.ids])     # grouped folds
    r = train((tr, va), tmp_path / 'run', backbone='resnet18', model_options=TINY, progress=False, iterations=3,
              batch_size=2, optimizer='adamw', lr=1e-3, warmup=1, checkpoint_every=3, val_every=3, val_images=2,
              augment=False)
    assert r['log'].iteration.tolist()[-1] == 3 and np.isfinite(r['val_score'])
    # the command line, with that real checkpoint as the model; an untrained model may keep no cell: the file is
    # still a valid pseudo-label file
    out = tmp_path / 'cli.csv'
    rc = cli.main(['pseudo-label', '--maskrcnn', str(r['checkpoint']), '--data', str(root), '--out', str(out),
                   '--rules', json.dumps({t: {'min_score': 0.0, 'min_area': 0, 'min_cells': 1} for t in CELL_TYPES}),
                   '--device', 'cpu'])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    got = pd.read_csv(out)
    assert list(got.columns) == PSEUDO_COLUMNS and set(got.id) <= set(semi)
    assert f'of {len(semi)} images kept' in captured.out


def test_bad_inputs_name_what_is_wrong(comp, tmp_path):
    root, data, semi = comp
    no_labels = lambda image: oracle(data)(image).with_(labels=None)
    with pytest.raises(ValueError, match="image id 'semi0'.*scores and labels"):
        pseudo_label(no_labels, root, progress=False)
    df = pseudo_label(oracle(data), root, rules=RULES, progress=False)
    bad = df.copy(); bad.loc[3, 'pseudo'] = False
    write_pseudo_labels(bad, tmp_path / 'bad.csv')
    with pytest.raises(ValueError, match=r'bad.csv, row 5: pseudo flag'):
        PseudoLabelData(tmp_path / 'bad.csv', root)
    clash = df.copy(); clash.loc[clash.id == clash.id[0], 'id'] = data.ids[-1]
    write_pseudo_labels(clash, tmp_path / 'clash.csv')
    with pytest.raises(ValueError, match='also in train.csv'):
        training_sources(root, tmp_path / 'clash.csv', fold=0, n_folds=2)
    with pytest.raises(ValueError, match='also in train.csv'):
        pseudo_label(oracle(data), root, ids=[data.ids[0]], progress=False)
    with pytest.raises(FileNotFoundError, match='pseudo-label file not found'):
        PseudoLabelData(tmp_path / 'missing.csv', root)


@pytest.mark.parametrize('n_folds', [2, 3])     # 12 images: 3 samples of astro and shsy5y
def test_every_fold_is_grouped_and_never_validates_pseudo_labels(comp, tmp_path, n_folds):
    """For every fold: validation = exactly the fold's labelled images; training = the other folds' labelled images
    + every pseudo-labelled image; no sample_id on both sides; every labelled image on exactly one side."""
    root, data, semi = comp
    csv = write_pseudo_labels(pseudo_label(oracle(data), root, rules=RULES, progress=False), tmp_path / 'pseudo.csv')
    pseudo_ids = set(PseudoLabelData(csv, root).ids)
    assert pseudo_ids
    folds = data.folds(n_folds)['fold']
    for k in range(n_folds):
        tr, va = training_sources(root, csv, fold=k, n_folds=n_folds)
        assert sorted(va.ids) == sorted(folds.index[folds == k]) and not set(va.ids) & pseudo_ids
        assert pseudo_ids <= set(tr.ids) and all(tr.is_pseudo(i) for i in pseudo_ids)
        labelled = [i for i in tr.ids if not tr.is_pseudo(i)]
        assert sorted(labelled + list(va.ids)) == sorted(data.ids)
        assert not set(data.meta.sample_id[labelled]) & set(data.meta.sample_id[list(va.ids)])
        i = next(iter(pseudo_ids))
        assert tr.instances(i).meta['pseudo'] and tr.image(i).shape == data.image_shape
