"""cellseg_nb.cpose: cellpose 3 training from scratch learns, the size model measures diameters within 20%, nothing
touches the network, bad model paths fail before cellpose is involved. One training run per session (session
fixtures, all under a network block), reused by the other tests. Figures are printed (`pytest -s`)."""
import json, os, socket, subprocess, sys, time
from pathlib import Path
import numpy as np
import pandas as pd
import pytest
import torch

from cellseg_nb.cpose import (train_cellpose, train_size_model, load_model, predict, compare_diameters,
                              diameter_summary, training_set, label_image, TrainingSet, image_diameter)
from cellseg_nb.synth import synth_image, make_competition
from cellseg_nb.data import SartoriusData
from cellseg_nb.metric import evaluate
from cellseg_nb.celltypes import class_id
from cellseg_nb.instances import Instances

torch.set_num_threads(1)
TYPES = ['shsy5y', 'astro']                     # two types of clearly different size (about 15 and 31 px)
EPOCHS = int(os.environ.get('CPOSE_TEST_EPOCHS', 100))
SETTINGS = dict(bsize=64, batch_size=8, nimg_per_epoch=8, diam_mean=12., learning_rate=0.005)


class NetworkBlocked(AssertionError): pass

class _Blocker:
    "Replace socket creation, connection and name resolution (and urlopen); record every attempt."
    def __init__(self): self.attempts = []
    def _fail(self, what):
        def f(*a, **k):
            self.attempts.append((what, a[:2]))
            raise NetworkBlocked(f"network access attempted: {what}{a[:2]}")
        return f
    def __enter__(self):
        self.mp = pytest.MonkeyPatch()
        for name in ('socket', 'create_connection', 'getaddrinfo', 'gethostbyname'):
            self.mp.setattr(socket, name, self._fail(name))
        import urllib.request
        self.mp.setattr(urllib.request, 'urlopen', self._fail('urlopen'))
        return self
    def __exit__(self, *exc): self.mp.undo()


def _images(seeds, level=3.0, shape=(192, 192)):
    "Dense synthetic images: [(cell_type, image, Instances)]."
    return [(t, *synth_image(t, [s, i], shape, level=level)) for s in seeds for i, t in enumerate(TYPES)]


class _Arrays:
    "A data source (`data.DataSource`: ids, image(id), instances(id), cell_type(id)) over in-memory images."
    def __init__(self, items):
        self.items, self.ids = items, list(range(len(items)))
        self.meta = pd.DataFrame({'cell_type': [x[0] for x in items]})
    def image(self, i): return self.items[i][1]
    def instances(self, i): return self.items[i][2]
    def cell_type(self, i): return self.items[i][0]


@pytest.fixture(scope='session')
def sets():
    train, val = _images(range(4)), _images(range(100, 103))
    ts = TrainingSet.from_arrays([x[1] for x in train], [x[2] for x in train], [x[0] for x in train])
    return ts, _Arrays(val)


@pytest.fixture(scope='session')
def trained(sets, tmp_path_factory):
    "Train from scratch (and an untrained twin: 0 epochs) and the size model, all with the network blocked."
    ts, val = sets
    out = tmp_path_factory.mktemp('cpose_models')
    t = {}
    with _Blocker() as net:
        c0 = time.process_time()
        untrained = train_cellpose(ts, out / 'untrained', n_epochs=0, **SETTINGS)
        t['untrained'] = time.process_time() - c0; c0 = time.process_time()
        path = train_cellpose(ts, out / 'model', n_epochs=EPOCHS, **SETTINGS)
        t['train'] = time.process_time() - c0; c0 = time.process_time()
        size = train_size_model(path, ts, n_epochs=24, bsize=96)
        t['size_model'] = time.process_time() - c0
    print(f"\ncpose CPU seconds: " + ', '.join(f'{k} {v:.1f}' for k, v in t.items()))
    return dict(path=path, untrained=untrained, size=size, attempts=list(net.attempts))


def _score(model, val, **kw):
    preds = predict(model, [val.image(i) for i in val.ids], cell_types=list(val.meta.cell_type), **kw)
    ev = evaluate({i: val.instances(i) for i in val.ids}, dict(zip(val.ids, preds)), dict(zip(val.ids, val.meta.cell_type)))
    return ev, preds


def test_training_learns(sets, trained):
    ts, val = sets
    before, _ = _score(trained['untrained'], val, diameter='cell_type')
    after, preds = _score(trained['path'], val, diameter='cell_type')
    b, a = before.summary.loc['overall', 'mAP'], after.summary.loc['overall', 'mAP']
    b50, a50 = before.summary.loc['overall', 'AP@0.5'], after.summary.loc['overall', 'AP@0.5']
    print(f"\nlearning ({EPOCHS} epochs from scratch, {len(ts)} train / {len(val.ids)} held-out images): "
          f"mAP {b:.3f} -> {a:.3f}, AP@0.5 {b50:.3f} -> {a50:.3f}\n{after.summary.round(3)}")
    assert a >= b + 0.08 and a50 >= b50 + 0.2
    for p, ct in zip(preds, val.meta.cell_type):
        assert p.scores.dtype == np.float32 and ((p.scores > 0) & (p.scores <= 1)).all()
        assert (p.labels == class_id(ct)).all() and p.meta['model'] == 'cellpose' and p.meta['cell_type'] == ct
    info = json.loads(Path(str(trained['path']) + '.json').read_text())
    losses = info['stages'][-1]['losses']
    assert info['stages'][-1]['n_epochs'] == EPOCHS and len(losses) == EPOCHS
    assert np.mean(losses[-10:]) < 0.7 * np.mean(losses[:10])
    assert info['type_diameters'] == pytest.approx(ts.type_diameters())


def test_size_model_within_20_percent(sets, trained):
    ts, val = sets
    cmp = compare_diameters(trained['path'], val)
    summ = diameter_summary(cmp)
    with pd.option_context('display.width', 200, 'display.max_columns', 20):
        print(f"\nsize model vs GT diameters (held-out images):\n{cmp.round(3)}\n{summ.round(3)}")
    assert summ.loc['overall', 'mean_abs_rel_error'] < 0.2                     # on average within 20%
    per_type = cmp.groupby('cell_type')[['gt', 'size_model']].median()
    assert ((per_type['size_model'] / per_type['gt'] - 1).abs() < 0.2).all()   # each type's typical size within 20%
    assert (cmp['rel_error'].abs() < 0.35).all()                               # and no image far off


def test_no_network_during_training_and_prediction(sets, trained):
    ts, val = sets
    assert trained['attempts'] == []                                    # training and size model, in the fixture
    with _Blocker() as net:
        bundle = load_model(trained['path'])
        for mode in (None, 'size_model', 'cell_type', 20.0):
            preds = predict(bundle, [val.image(0)], diameter=mode)
            assert len(preds) == 1 and preds[0].shape == val.image(0).shape
    assert net.attempts == []
    with _Blocker() as net, pytest.raises(NetworkBlocked):              # the blocker does block
        socket.create_connection(('www.cellpose.org', 443))
    assert len(net.attempts) == 1


def test_size_model_on_an_image_without_cells_is_silent(trained):
    "cellpose's SizeModel finds no cell on a blank image: its median of an empty list warns nothing at the user."
    import warnings
    blank = np.full((96, 96), 128, np.uint8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        pred, = predict(trained['path'], [blank], diameter='size_model', progress=False)
    assert len(pred) == 0 and pred.shape == blank.shape
    assert [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)] == []


def test_cell_type_from_style(sets, trained):
    "Without cell_types the image's type comes from the style centroids stored by train_size_model."
    ts, val = sets
    preds = predict(trained['path'], [val.image(i) for i in val.ids])
    got = [p.meta['cell_type'] for p in preds]
    print('\ncell types from styles:', got, 'true:', list(val.meta.cell_type))
    assert got == list(val.meta.cell_type)
    assert all((p.labels == class_id(g)).all() for p, g in zip(preds, got))


def test_competition_folder_path(tmp_path):
    "`train_cellpose` and `training_set` from a competition root path (SartoriusData); 0 epochs (no learning)."
    root = make_competition(tmp_path / 'comp', n_images={'shsy5y': 2, 'astro': 1, 'cort': 1}, seed=2,
                            image_shape=(96, 128), n_test=0, n_semi=0)
    data = SartoriusData(root)
    ts = training_set(root, min_masks=1)
    assert len(ts) + len(ts.skipped) == 4
    for id, lab in zip(ts.ids, ts.labels):
        assert np.array_equal(lab, label_image(data.instances(id), 'smaller'))
        assert ts.diameters[ts.ids.index(id)] == pytest.approx(image_diameter(data.instances(id)))
    path = train_cellpose(str(root), tmp_path / 'm', n_epochs=0, bsize=64, diam_mean=12.)
    assert sorted(p.name for p in (tmp_path / 'm').iterdir()) == ['cellpose', 'cellpose.json']
    info = json.loads((tmp_path / 'm' / 'cellpose.json').read_text())
    assert set(info['type_diameters']) == set(ts.cell_types) and info['train_ids'] == list(ts.ids)


def test_bad_model_path_fails_before_cellpose(tmp_path):
    "In a fresh interpreter: clear errors, and cellpose was never imported."
    code = f"""
import sys
from cellseg_nb import cpose
for bad in ['cyto3', 'livecell_cp3', {str(tmp_path / 'missing')!r}, {str(tmp_path)!r}, None, '']:
    for f in (lambda: cpose.load_model(bad), lambda: cpose.predict(bad, []),
              lambda: cpose.train_cellpose({str(tmp_path / 'nodata')!r}, {str(tmp_path / 'o')!r}, pretrained_model=bad or 'cyto3'),
              lambda: cpose.train_size_model(bad, None)):
        try: f(); raise SystemExit('no error for ' + repr(bad))
        except (FileNotFoundError, ValueError) as e: assert 'model' in str(e), e
        if bad == 'cyto3':
            try: f()
            except Exception as e: assert 'built-in cellpose model name' in str(e), e
assert 'cellpose' not in sys.modules, 'cellpose was imported'
print('ok')
"""
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == 'ok', r.stdout[-1000:] + r.stderr[-2000:]
    assert not (tmp_path / 'o').exists()


def test_label_image_smaller_rule_against_dense():
    "On shared pixels the smallest owner wins: compared with a dense argmin over the masks."
    from cellseg_nb.postprocess import random_candidates
    cand = random_candidates(80, (64, 96), seed=5)
    lab = label_image(cand, 'smaller')
    m = cand.to_masks()
    big = np.iinfo(np.int64).max
    winner = np.where(m, cand.areas[:, None, None], big).argmin(0)          # ties: lower index, as the stable sort
    alive = np.zeros(len(cand), bool); alive[np.unique(winner[m.any(0)])] = True
    new_id = np.cumsum(alive) * alive
    exp = np.where(m.any(0), new_id[winner], 0)
    assert np.array_equal(lab, exp)


def test_training_shows_progress(capfd, tmp_path):
    "A short training prints a bar per stage with the epoch count, the epoch's loss and the time left."
    items = _images([7], shape=(96, 96))
    ts = TrainingSet.from_arrays([x[1] for x in items], [x[2] for x in items], [x[0] for x in items])
    path = train_cellpose(ts, tmp_path / 'm', n_epochs=3, bsize=64, batch_size=2, nimg_per_epoch=4, diam_mean=12.)
    err = capfd.readouterr().err
    assert 'cellpose cellpose' in err and '3/3' in err and 'epoch' in err, err[-1500:]
    losses = json.loads(Path(str(path) + '.json').read_text())['stages'][-1]['losses']
    shown = [float(x) for x in __import__('re').findall(r'loss (\d+\.\d+)', err)]
    assert len(losses) == 3 and shown and shown[-1] == pytest.approx(losses[-1], abs=6e-5), (shown, losses)
    path = train_cellpose(ts, tmp_path / 'q', n_epochs=2, bsize=64, batch_size=2, nimg_per_epoch=4, diam_mean=12.,
                          progress=False)
    assert 'epoch' not in capfd.readouterr().err
    from cellpose import train
    assert train._loss_fn_seg.__module__ == 'cellpose.train'               # the loss hook is removed afterwards


def test_training_equals_cellpose_train_seg(tmp_path):
    """With cellpose's schedule in float32, our training loop is cellpose's own: same seed, same images and labels
    (no overlaps, so every label rule agrees) -> bit-identical network weights after `train_cellpose` and after a
    direct `train.train_seg` at cellpose's documented defaults (learning rate, normalization, rescaling, crops)."""
    import inspect
    from cellpose import models, train
    defaults = {k: v.default for k, v in inspect.signature(train.train_seg).parameters.items()}
    ours = {k: v.default for k, v in inspect.signature(train_cellpose).parameters.items()}
    for k in ('learning_rate', 'weight_decay', 'batch_size', 'bsize', 'nimg_per_epoch', 'SGD'):
        assert ours[k] == defaults[k], (k, ours[k], defaults[k])
    items = _images([8], shape=(96, 96))
    labels = [label_image(x[2], 'order') for x in items]
    clean = [Instances.from_label_image(l) for l in labels]                 # the same cells, without overlaps
    kw = dict(n_epochs=3, bsize=64, batch_size=2, nimg_per_epoch=4)
    ts = TrainingSet.from_arrays([x[1] for x in items], clean, [x[0] for x in items])
    for lab, other in zip(ts.labels, labels): assert np.array_equal(lab, other)
    path = train_cellpose(ts, tmp_path / 'ours', diam_mean=12., seed=3, progress=False, schedule='cellpose', amp=False, **kw)
    (tmp_path / 'peer').mkdir()                                            # cellpose needs save_path to exist
    torch.manual_seed(3); np.random.seed(3)
    m = models.CellposeModel(gpu=False, pretrained_model=False, model_type=None, nchan=2, diam_mean=12., mkldnn=False)
    peer, _, _ = train.train_seg(m.net, train_data=[x[1] for x in items], train_labels=labels, channels=[0, 0],
                                 save_path=tmp_path / 'peer', **kw)
    a, b = torch.load(path, weights_only=True), torch.load(peer, weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_size_model_equals_cellpose_train_size(capfd, tmp_path):
    """`train_size_model` fits the SizeModel cellpose's `train.train_size` fits (same crops, styles and ridge fit; it
    only skips cellpose's flow computation), shows a bar per phase, and computes the type styles on at most
    `type_tiles` tiles per image whatever the diameter (counted on the network's inputs)."""
    from cellpose import train
    items = _images([9, 10], shape=(128, 160))
    ts = TrainingSet.from_arrays([x[1] for x in items], [x[2] for x in items], [x[0] for x in items])
    path = train_cellpose(ts, tmp_path / 'm', n_epochs=0, bsize=64, diam_mean=12., progress=False)
    peer = train.train_size(load_model(path).cp.net, str(tmp_path / 'peer'), train_data=ts.images, train_labels=ts.labels,
                            channels=[0, 0], normalize=True, min_train_masks=0, n_epochs=3, batch_size=3, bsize=64)
    capfd.readouterr()
    net = load_model(path).cp.net
    seen = []
    size = train_size_model(path, ts, n_epochs=3, batch_size=3, bsize=64, type_tiles=2)
    ours = np.load(size, allow_pickle=True).item()
    assert set(ours) == set(peer) and ours['diam_mean'] == peer['diam_mean']
    for k in ('A', 'smean', 'ymean'): np.testing.assert_allclose(ours[k], peer[k], rtol=1e-4, atol=1e-6)
    err = capfd.readouterr().err
    assert f'cellpose SizeModel' in err and f'{3 * len(ts)}/{3 * len(ts)}' in err, err[-800:]
    assert 'cellpose type styles' in err and f'{len(ts)}/{len(ts)}' in err, err[-800:]
    from cellseg_nb.cpose import type_styles, _normalized
    h = net.register_forward_hook(lambda m, a, o: seen.append(a[0].shape[0]))
    try: st = type_styles(net, _normalized(ts.images), np.full(len(ts), 3.0), tiles=2, progress=False)   # 4x upscaling
    finally: h.remove()
    assert seen == [2] * len(ts) and np.allclose(np.linalg.norm(st, axis=1), 1)
    cents = json.loads(Path(str(path) + '_types.json').read_text())
    assert set(cents) == set(ts.cell_types) and all(np.isclose(np.linalg.norm(v), 1) for v in cents.values())


def test_size_model_prediction_reuses_its_pass(sets, trained):
    """`diameter='size_model'`: the segmentation at the style estimate is the prediction when its cells' diameter
    agrees within `size_tolerance`; otherwise a pass at that diameter (moved by at most 1.5x). Both checked against cellpose's own `eval`
    at the diameters computed here from the SizeModel's parameters (no call of ours)."""
    from cellpose import utils
    ts, val = sets
    b = load_model(trained['path'])
    img = val.image(0)
    kw = dict(channels=[0, 0], normalize=dict(normalize=True))
    style = b.cp.eval(img, resample=False, compute_masks=False, **kw)[-1]
    ds = float(np.clip(b.size._size_estimation(np.array(style)), 8, 100))
    at_ds = b.cp.eval(img, diameter=ds, **kw)[0]
    d0 = float(utils.diameters(at_ds)[0])
    d = float(np.clip(np.clip(d0, ds / 1.5, ds * 1.5) if d0 > 0 else b.size.diam_mean, 8, 100))   # no cell: its own fallback
    keep, = predict(b, [img], diameter='size_model', size_tolerance=10.0, flow_threshold=0.4)     # eval's threshold
    again, = predict(b, [img], diameter='size_model', size_tolerance=0.0, flow_threshold=0.4)
    assert keep.meta['diameter'] == pytest.approx(ds) and again.meta['diameter'] == pytest.approx(d)
    assert np.array_equal(keep.to_label_image(), Instances.from_label_image(at_ds).to_label_image())
    at_d = b.cp.eval(img, diameter=d, **kw)[0]
    assert np.array_equal(again.to_label_image(), Instances.from_label_image(at_d).to_label_image())
    print(f"\nstyle estimate {ds:.2f} px, its cells' diameter {d:.2f} px ({len(keep)} / {len(again)} cells)")


@pytest.mark.parametrize('given', [True, False])
def test_per_type_thresholds_equal_cellpose_eval(sets, trained, given):
    """Flow and cell-probability thresholds per cell type: each image's masks are cellpose's own `eval` at its type's
    values (the type given, or the one its style gives); the defaults are `FLOW_THRESHOLDS`."""
    from cellseg_nb.cpose import FLOW_THRESHOLDS
    ts, val = sets
    b = load_model(trained['path'])
    kw = dict(channels=[0, 0], normalize=dict(normalize=True))
    ids = val.ids[:3]
    imgs, types = [val.image(i) for i in ids], [val.cell_type(i) for i in ids]
    assert set(types) == set(TYPES)
    ft, cpt = {'shsy5y': 0.9, 'astro': 0.1, 'cort': 0.6}, {'shsy5y': -1.0, 'astro': 1.0}
    differs = 0
    for kwargs, flow_of, prob_of in ((dict(flow_threshold=ft, cellprob_threshold=cpt), ft.get, lambda t: cpt.get(t, 0.0)),
                                     ({}, FLOW_THRESHOLDS.get, lambda t: 0.0)):
        preds = predict(b, imgs, diameter=20.0, cell_types=types if given else None, **kwargs)
        for img, ct, p in zip(imgs, types, preds):
            assert p.meta['cell_type'] == ct
            ref = b.cp.eval(img, diameter=20.0, flow_threshold=flow_of(ct), cellprob_threshold=prob_of(ct), **kw)[0]
            assert np.array_equal(p.to_label_image(), Instances.from_label_image(ref).to_label_image()), (ct, kwargs)
            plain = b.cp.eval(img, diameter=20.0, **kw)[0]                     # cellpose's 0.4 / 0.0 for every type
            differs += not np.array_equal(ref, plain)
    assert differs >= 2                                                        # the thresholds did change masks


def test_per_type_thresholds_on_real_images(trained):
    """The same equality on real competition images (520 x 704, one per type, their true type given): masks at the
    default `FLOW_THRESHOLDS` are cellpose's own `eval` at that type's flow threshold. Skips, naming the path, where
    ../shared is absent."""
    from cellseg_nb.cpose import FLOW_THRESHOLDS
    real = Path(__file__).resolve().parents[2] / 'shared' / 'realdata' / 'sartorius_train405'
    if not (real / 'train.csv').is_file(): pytest.skip(f"real competition images missing: {real}")
    ds = SartoriusData(real)
    b = load_model(trained['path'])
    kw = dict(channels=[0, 0], normalize=dict(normalize=True))
    n_cells = 0
    for ct in ('shsy5y', 'astro', 'cort'):
        i = ds.meta.index[ds.meta.cell_type == ct][0]
        img = ds.image(i)
        p, = predict(b, [img], diameter=20.0, cell_types=[ct])
        ref = b.cp.eval(img, diameter=20.0, flow_threshold=FLOW_THRESHOLDS[ct], **kw)[0]
        assert p.shape == img.shape[:2] and np.array_equal(p.to_label_image(), Instances.from_label_image(ref).to_label_image()), (i, ct)
        n_cells += len(p)
    assert n_cells > 0                                                         # not an empty comparison


def test_lr_schedules():
    """'cellpose' is train_seg's list as its docstring-free code defines it: linear from 0 over 10 epochs, constant,
    then ten halvings over the last 50 (more than 100 epochs) or 100 epochs (more than 300); 'budget' warms up over
    5 % of the steps, never at 0, then falls monotonically to 0 at the last step."""
    from cellseg_nb.cpose import lr_schedule
    lr = 0.005
    for n in (3, 10, 60, 101, 160, 301, 500):
        cp = lr_schedule('cellpose', lr, n)
        assert cp.shape == (n,)
        np.testing.assert_allclose(cp[:min(n, 10)], np.linspace(0, lr, 10)[:min(n, 10)])
        tail = 100 if n > 300 else 50 if n > 100 else 0
        assert np.all(cp[10:n - tail] == lr)
        if tail:
            blocks = cp[n - tail:].reshape(10, tail // 10)
            np.testing.assert_allclose(blocks[:, 0], lr / 2 ** np.arange(1, 11))
            assert np.all(blocks == blocks[:, :1])
        b = lr_schedule('budget', lr, n, 3)
        w = max(1, round(0.05 * 3 * n))
        assert b.shape == (3 * n,) and b[0] > 0 and b.max() == pytest.approx(lr) and b[-1] < lr * 0.05
        np.testing.assert_allclose(b[:w], lr * np.arange(1, w + 1) / w)
        assert np.all(np.diff(b[w - 1:]) <= 0)
    np.testing.assert_array_equal(lr_schedule('cellpose', lr, 20, 4), np.repeat(lr_schedule('cellpose', lr, 20), 4))
    with pytest.raises(ValueError, match='schedule'): lr_schedule('onecycle', lr, 10)


def test_budget_schedule_and_bfloat16_train(tmp_path):
    """`schedule` and `amp` reach the loop: the budget schedule and bfloat16 autocast each give other weights than
    cellpose's float32 run from the same seed, the losses stay finite, and the model file records both."""
    from cellseg_nb.cpose import autocast_dtype
    items = _images([8], shape=(96, 96))
    ts = TrainingSet.from_arrays([x[1] for x in items], [x[2] for x in items], [x[0] for x in items])
    kw = dict(n_epochs=3, bsize=64, batch_size=2, nimg_per_epoch=4, diam_mean=12., seed=3, progress=False)
    paths = {k: train_cellpose(ts, tmp_path / k, schedule=s, amp=a, **kw)
             for k, s, a in (('ref', 'cellpose', False), ('budget', 'budget', False), ('bf16', 'cellpose', True))}
    w = {k: torch.load(p, weights_only=True) for k, p in paths.items()}
    for k in ('budget', 'bf16'): assert any(not torch.equal(w[k][n], w['ref'][n]) for n in w['ref']), k
    meta = json.loads(Path(str(paths['bf16']) + '.json').read_text())
    assert meta['settings']['schedule'] == 'cellpose' and meta['settings']['autocast'] == 'torch.bfloat16'
    assert all(np.isfinite(meta['stages'][-1]['losses']))
    assert autocast_dtype(False, 'cpu') is None and autocast_dtype(True, 'cpu') == torch.bfloat16
    with pytest.raises(ValueError, match='amp'): autocast_dtype('fp16', 'cpu')
