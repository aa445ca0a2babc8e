"""`cellseg train maskrcnn|cellpose` with recipes: --recipe, flags and --set merged in that order, the resolved recipe
printed, saved beside the run and inside the checkpoint; --pseudo_labels adds pseudo-labelled images to training only."""
import shutil
import numpy as np
import pytest
from cellseg_nb import cli
from cellseg_nb.config import Recipe, get_recipe
from cellseg_nb.data import SartoriusData
from cellseg_nb.maskrcnn import read_checkpoint
from cellseg_nb.synth import make_competition
from cellseg_nb.pseudo import pseudo_label, write_pseudo_labels


@pytest.fixture(scope='module')
def comp(tmp_path_factory):
    "12 labelled 96 px images; train_semi_supervised/ holds copies of 3 of them; a pseudo-label CSV of those 3."
    tmp = tmp_path_factory.mktemp('comp')
    root = make_competition(tmp / 'data', n_images=12, seed=5, image_shape=(96, 96), n_test=0, n_semi=0)
    data = SartoriusData(root)
    (root / 'train_semi_supervised').mkdir(exist_ok=True)
    semi = {f'semi{k}': data.ids[k] for k in range(3)}
    for s, i in semi.items(): shutil.copy(root / 'train' / f'{i}.png', root / 'train_semi_supervised' / f'{s}.png')
    truth = {data.image(i).tobytes(): data.instances(i) for i in data.ids}
    known = lambda image: (lambda g: g.with_(scores=np.full(len(g), 0.9, np.float32)))(truth[image.tobytes()])
    rules = {t: dict(min_score=0.5, min_area=1, min_cells=1) for t in ('shsy5y', 'astro', 'cort')}
    csv = write_pseudo_labels(pseudo_label(known, root, rules=rules, progress=False), tmp / 'pseudo.csv')
    return root, csv, data


def run(capsys, *argv):
    rc = cli.main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_train_maskrcnn_recipe_flags_set_and_pseudo_labels(comp, tmp_path, capsys):
    import torch
    torch.set_num_threads(1)
    root, csv, data = comp
    out = tmp_path / 'mr'
    rc, o, e = run(capsys, 'train', 'maskrcnn', '--data', root, '--out', out, '--recipe', 'tiny', '--lr', 1e-3,
                   '--set', 'train.iterations=2', '--set', 'train.val_every=2', '--set', 'train.lr=5e-4',
                   '--fold', 1, '--n_folds', 2, '--pseudo_labels', csv, '--device', 'cpu')
    assert rc == 0, e
    assert 'recipe tiny:' in o and 'lr: 0.0005' in o                     # printed at the start, --set wins over --lr
    n_val = int((data.folds(2)['fold'] == 1).sum())
    assert f"pseudo-labels: {len(data.ids) - n_val + 3} training images (3 pseudo-labelled), {n_val} validation images" in o
    ck = read_checkpoint(out / 'checkpoint.pt')
    saved = Recipe.load(out / 'recipe.yaml')
    assert saved.to_dict() == ck['recipe'] and saved.name == 'tiny'
    assert (saved.train.iterations, saved.train.lr, saved.train.fold, saved.model.fpn_channels) == (2, 5e-4, 1, 32)
    assert ck['train_config']['lr'] == 5e-4 and ck['iteration'] == 2 and set(ck['hooks']) >= {'log', 'validation', 'checkpoint'}
    # a wrong override is a one-line error naming the key, before any training
    rc, o, e = run(capsys, 'train', 'maskrcnn', '--data', root, '--out', tmp_path / 'bad', '--recipe', 'tiny',
                   '--set', 'train.lrate=0.1')
    assert rc == 1 and "unknown key 'train.lrate'" in e and not (tmp_path / 'bad').exists()


def test_train_cellpose_recipe_and_pseudo_labels(comp, tmp_path, capsys):
    import torch
    torch.set_num_threads(1)
    root, csv, data = comp
    out = tmp_path / 'cp'
    rc, o, e = run(capsys, 'train', 'cellpose', '--data', root, '--out', out, '--recipe', 'tiny', '--set', 'cellpose.epochs=1',
                   '--bsize', 64, '--fold', 1, '--n_folds', 2, '--pseudo_labels', csv, '--no_size_model', '--device', 'cpu')
    assert rc == 0, e
    n_train = int((data.folds(2)['fold'] != 1).sum())
    assert f"pseudo-labels: 3 pseudo-labelled images join the {n_train} labelled ones" in o
    r = Recipe.load(out / 'recipe.yaml')
    assert (r.cellpose.epochs, r.cellpose.bsize, r.cellpose.size_epochs) == (1, 64, 0) and (out / 'cellpose').is_file()
    import json
    info = json.loads((out / 'cellpose.json').read_text())               # what the model file says it was trained on
    held = set(data.folds(2).query('fold == 1').index)
    assert {f'semi{k}' for k in range(3)} <= set(info['train_ids']) and not held & set(info['train_ids'])
    assert info['stages'][-1]['n_images'] == n_train + 3


def test_train_cellpose_fold_lives_in_the_recipe(comp, tmp_path, capsys):
    "--fold / --n_folds are recipe settings (cellpose.fold, cellpose.n_folds): a recipe file's fold trains when no flag is given, --fold -1 is None (every image)."
    import json, torch
    torch.set_num_threads(1)
    root, _, data = comp
    r = get_recipe('tiny')
    r = r.replace(cellpose=r.cellpose.replace(epochs=1, bsize=64, size_epochs=0, fold=1, n_folds=3))
    rec = r.save(tmp_path / 'r.yaml')
    rc, o, e = run(capsys, 'train', 'cellpose', '--data', root, '--out', tmp_path / 'a', '--recipe', rec, '--device', 'cpu')
    assert rc == 0, e
    trained = set(json.loads((tmp_path / 'a' / 'cellpose.json').read_text())['train_ids'])
    assert trained == set(data.folds(3).query('fold != 1').index)                    # the recipe's fold held out
    assert Recipe.load(tmp_path / 'a' / 'recipe.yaml').cellpose.fold == 1
    rc, o, e = run(capsys, 'train', 'cellpose', '--data', root, '--out', tmp_path / 'b', '--recipe', rec, '--fold', -1, '--device', 'cpu')
    assert rc == 0, e
    assert set(json.loads((tmp_path / 'b' / 'cellpose.json').read_text())['train_ids']) == set(data.ids)
    assert Recipe.load(tmp_path / 'b' / 'recipe.yaml').cellpose.fold is None
