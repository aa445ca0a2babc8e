"""The competitor's path through the `cellseg` command on a tiny synthetic competition folder:
train maskrcnn -> predict --fold (raw OOF) -> tune -> evaluate -> predict the test images -> validate-submission,
and train cellpose. Tiny settings: the point is the wiring, files and tables, not the scores."""
import pandas as pd
import pytest
from cellseg_nb import cli


@pytest.fixture(scope='module')
def comp(tmp_path_factory):
    from cellseg_nb.synth import make_competition
    return make_competition(tmp_path_factory.mktemp('comp') / 'data', n_images=12, seed=5, image_shape=(96, 96), n_semi=0)


def run(capsys, *argv):
    rc = cli.main([str(a) for a in argv])
    out = capsys.readouterr()
    assert rc == 0, out.err
    return out.out


def test_maskrcnn_train_predict_tune_evaluate_submit(comp, tmp_path, capsys, monkeypatch):
    import torch
    torch.set_num_threads(1)
    monkeypatch.setenv('CELLSEG_DATA', str(comp))                       # --data defaults to $CELLSEG_DATA
    run(capsys, 'train', 'maskrcnn', '--out', tmp_path / 'mr', '--backbone', 'resnet18', '--small', '--iters', 2, '--fold', 0,
        '--n_folds', 3, '--optimizer', 'adamw', '--lr', 1e-3, '--val_every', 2, '--device', 'cpu')
    ckpt = tmp_path / 'mr' / 'checkpoint.pt'
    assert ckpt.is_file() and (tmp_path / 'mr' / 'log.csv').is_file()
    out = run(capsys, 'predict', '--maskrcnn', ckpt, '--fold', 0, '--n_folds', 3, '--out', '', '--raw', tmp_path / 'oof.csv',
              '--device', 'cpu')
    raw = pd.read_csv(tmp_path / 'oof.csv')
    assert list(raw.columns) == ['id', 'height', 'width', 'score', 'label', 'predicted']
    out = run(capsys, 'tune', tmp_path / 'oof.csv', '--out', tmp_path / 'pp.yaml')
    assert (tmp_path / 'pp.yaml').is_file() and 'before' in out and 'after' in out
    out = run(capsys, 'evaluate', tmp_path / 'oof.csv', '--config', tmp_path / 'pp.yaml', '--out', tmp_path / 'per_image.csv')
    assert 'mAP' in out and 'AP@0.75' in out and (tmp_path / 'per_image.csv').is_file()
    sub = tmp_path / 'submission.csv'
    out = run(capsys, 'predict', '--maskrcnn', ckpt, '--config', tmp_path / 'pp.yaml', '--out', sub, '--device', 'cpu')
    assert 'validated' in out
    out = run(capsys, 'validate-submission', sub, '--images', comp / 'test')
    assert 'valid' in out
    ids = sorted(p.stem for p in (comp / 'test').glob('*.png'))
    assert sorted(pd.read_csv(sub, keep_default_na=False).id.unique()) == ids


def test_cellpose_train_command(comp, tmp_path, capsys):
    import torch
    torch.set_num_threads(1)
    out = run(capsys, 'train', 'cellpose', '--data', comp, '--out', tmp_path / 'cp', '--epochs', 1, '--bsize', 64,
              '--fold', 0, '--n_folds', 3, '--device', 'cpu')
    assert (tmp_path / 'cp' / 'cellpose').is_file() and (tmp_path / 'cp' / 'cellpose_size.npy').is_file()
    assert 'diameters on fold 0' in out
