"""The competitor's path through the `cellseg` command on a tiny synthetic competition folder:
train maskrcnn -> predict --fold (raw OOF) -> tune -> evaluate -> predict the test images -> validate-submission;
train cellpose; and the user guide's path to Kaggle (docs/guide_prediction.md) in its own commands: train both -> predict OOF with each ->
tune-ensemble -> bundle -> predict --bundle -> the Kaggle kernel on the bundle. Tiny settings: the point is the
wiring, files and tables, not the scores."""
import json, shutil
from pathlib import Path
import pandas as pd
import pytest
from cellseg_nb import cli

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def comp(tmp_path_factory):
    from cellseg_nb.synth import make_competition
    return make_competition(tmp_path_factory.mktemp('comp') / 'data', n_images=12, seed=5, image_shape=(96, 96), n_semi=0)


def run(capsys, *argv):
    rc = cli.main([str(a) for a in argv])
    out = capsys.readouterr()
    assert rc == 0, out.err
    return out.out


def run_fails(capsys, *argv) -> str:
    "Run a command that must fail; returns its one-line error."
    rc = cli.main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert rc == 1 and len(err.strip().splitlines()) == 1, err
    return err


def remembered(predictor):
    "The same predictor, computing each distinct image once (later calls return the kept `Instances`)."
    import hashlib
    from cellseg_nb.predictors import ModelPredictor
    kept = {}
    def fn(image):
        key = hashlib.sha256(image.tobytes() + str(image.shape).encode()).hexdigest()
        if key not in kept: kept[key] = predictor(image)
        return kept[key]
    return ModelPredictor(predictor.name, fn, predictor.source, predictor.model)


@pytest.fixture(scope='module')
def maskrcnn_ckpt(comp, tmp_path_factory):
    "`cellseg train maskrcnn`: a small ResNet-18 FPN, 2 AdamW iterations, fold 0 of 3 held out."
    import torch
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp('mr')
    assert cli.main([str(a) for a in ('train', 'maskrcnn', '--data', comp, '--out', out, '--backbone', 'resnet18', '--small',
                                      '--iters', 2, '--fold', 0, '--n_folds', 3, '--optimizer', 'adamw', '--lr', 1e-3,
                                      '--val_every', 2, '--device', 'cpu')]) == 0
    assert (out / 'log.csv').is_file()
    return out / 'checkpoint.pt'


@pytest.fixture(scope='module')
def cellpose_model(comp, tmp_path_factory):
    "`cellseg train cellpose`: 1 epoch, fold 0 of 3 held out; returns (model file, the command's output)."
    import torch, io, contextlib
    torch.set_num_threads(1)
    out, buf = tmp_path_factory.mktemp('cp'), io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = cli.main([str(a) for a in ('train', 'cellpose', '--data', comp, '--out', out, '--epochs', 1, '--bsize', 64,
                                        '--fold', 0, '--n_folds', 3, '--device', 'cpu')])
    assert rc == 0
    return out / 'cellpose', buf.getvalue()


def test_maskrcnn_train_predict_tune_evaluate_submit(comp, maskrcnn_ckpt, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv('CELLSEG_DATA', str(comp))                       # --data defaults to $CELLSEG_DATA
    ckpt = maskrcnn_ckpt
    assert ckpt.is_file()
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
    assert 'validated' in out and f'post-processing: {tmp_path / "pp.yaml"}' in out
    out = run(capsys, 'validate-submission', sub, '--images', comp / 'test')
    assert 'valid' in out
    ids = sorted(p.stem for p in (comp / 'test').glob('*.png'))
    assert sorted(pd.read_csv(sub, keep_default_na=False).id.unique()) == ids
    # --config cannot apply to a submission (no scores, already post-processed): an error, not ignored
    err = run_fails(capsys, 'evaluate', sub, '--config', tmp_path / 'pp.yaml')
    assert f'{sub} is a submission CSV' in err and '--config' in err, err


def test_predict_multiscale_tta_flag(comp, maskrcnn_ckpt, tmp_path, capsys):
    """`predict --tta --tta_scales` predicts with Mask R-CNN's own passes (fused inside `maskrcnn.predict`, the
    predictor's inference settings): the same raw file byte for byte as those passes in process, unlike plain
    prediction; `--no_tta` gives the plain predictions."""
    from cellseg_nb.predictors import maskrcnn_predictor
    from cellseg_nb.inference import predict_images, save_predictions
    out = run(capsys, 'predict', '--maskrcnn', maskrcnn_ckpt, '--images', comp / 'test', '--tta', '--tta_scales', '0.8,1,1.25',
              '--out', '', '--raw', tmp_path / 'cli.csv', '--device', 'cpu')
    assert 'flip TTA at scales 0.8, 1.0, 1.25' in out
    here = predict_images(maskrcnn_predictor(maskrcnn_ckpt, device='cpu', tta=True, tta_scales=(0.8, 1, 1.25)), comp / 'test',
                          progress=False)
    save_predictions(here, tmp_path / 'here.csv')
    plain = predict_images(maskrcnn_predictor(maskrcnn_ckpt, device='cpu'), comp / 'test', progress=False)
    save_predictions(plain, tmp_path / 'plain.csv')
    assert (tmp_path / 'cli.csv').read_bytes() == (tmp_path / 'here.csv').read_bytes() != (tmp_path / 'plain.csv').read_bytes()
    out = run(capsys, 'predict', '--maskrcnn', maskrcnn_ckpt, '--images', comp / 'test', '--no_tta', '--out', '',
              '--raw', tmp_path / 'none.csv', '--device', 'cpu')
    assert 'no TTA' in out and (tmp_path / 'none.csv').read_bytes() == (tmp_path / 'plain.csv').read_bytes()
    for bad in ('1,x', '0,1', '-1'):
        err = run_fails(capsys, 'predict', '--maskrcnn', maskrcnn_ckpt, '--images', comp / 'test', '--tta_scales', bad, '--out', '')
        assert '--tta_scales' in err and bad in err, err
    err = run_fails(capsys, 'predict', '--maskrcnn', maskrcnn_ckpt, '--images', comp / 'test', '--tta_scales', '20', '--out', '')
    assert 'expected factors in 0.1..10' in err, err                  # the range: checked where the passes run


def test_cellpose_train_command(cellpose_model):
    model, out = cellpose_model
    assert model.is_file() and Path(str(model) + '_size.npy').is_file()
    assert 'diameters on fold 0' in out


def test_train_tune_bundle_kernel(comp, maskrcnn_ckpt, cellpose_model, tmp_path, capsys, monkeypatch):
    """The user guide's Kaggle path (docs/guide_prediction.md) in its own commands: OOF predictions of each model -> tune-ensemble -> bundle ->
    predict --bundle, which equals the same models and settings applied in this process, and the Kaggle kernel on the
    bundle, which writes the same submission. Tuned ensemble weights change the submission."""
    from cellseg_nb.ensemble import EnsembleSettings
    from cellseg_nb.predictors import maskrcnn_predictor, cellpose_predictor, ensemble_predictor
    from cellseg_nb.inference import make_submission, save_predictions
    monkeypatch.setenv('CELLSEG_DATA', str(comp))
    cp, _ = cellpose_model
    # 1. out-of-fold raw predictions of both models on fold 0, then the ensemble tuned on them
    for name, model in (('maskrcnn', maskrcnn_ckpt), ('cellpose', cp)):
        run(capsys, 'predict', f'--{name}', model, '--fold', 0, '--n_folds', 3, '--out', '', '--raw', tmp_path / f'oof_{name}.csv',
            '--device', 'cpu')
    # (--min_gain_se 0: the plain best settings; on 3 OOF images the default rule keeps the defaults, under which
    #  these one-epoch models write no cell at all, so step 4 below would have no cells to tilt)
    out = run(capsys, 'tune-ensemble', '--maskrcnn', tmp_path / 'oof_maskrcnn.csv', '--cellpose', tmp_path / 'oof_cellpose.csv',
              '--weights', '0.5', '--min_gain_se', 0, '--out', tmp_path / 'ensemble.json')
    assert 'chosen' in out
    settings = EnsembleSettings.load(tmp_path / 'ensemble.json')
    assert sorted(settings.models) == ['cellpose', 'maskrcnn'] and settings.choice
    # 2. the bundle: weights without training state, the tuned settings, a manifest of hashes and versions
    bundle = tmp_path / 'bundle'
    out = run(capsys, 'bundle', '--maskrcnn', maskrcnn_ckpt, '--cellpose', cp, '--ensemble', tmp_path / 'ensemble.json',
              '--cv', '{"fold 0 mAP": 0.01}', '--data', comp, '--out', bundle)
    man = json.loads((bundle / 'manifest.json').read_text())
    assert man['ensemble'] == 'ensemble.json' and man['postprocess_from'] == 'ensemble' and man['cv_scores'] == {'fold 0 mAP': 0.01}
    assert {'maskrcnn.pth', 'cellpose', 'cellpose_size.npy', 'postprocess.yaml', 'ensemble.json'} <= set(man['files'])
    ck, kept = maskrcnn_ckpt.stat().st_size, (bundle / 'maskrcnn.pth').stat().st_size
    assert kept < 0.5 * ck, (ck, kept)                                    # AdamW's two moments per weight stay behind
    with capsys.disabled(): print(f"\nresnet18-small Mask R-CNN: checkpoint {ck / 2**20:.1f} MiB -> bundle weights {kept / 2**20:.1f} MiB "
          f"({kept / ck:.0%})")
    # 3. predict --bundle equals the same models and settings loaded here from their own files (each model's output
    #    kept per image, so that step 4 reuses it)
    sub_bundle = tmp_path / 'sub_bundle.csv'
    out = run(capsys, 'predict', '--bundle', bundle, '--out', sub_bundle, '--raw', tmp_path / 'raw_bundle.csv', '--device', 'cpu')
    assert 'post-processing: the bundle' in out
    members = [remembered(maskrcnn_predictor(maskrcnn_ckpt, device='cpu')), remembered(cellpose_predictor(cp, device='cpu'))]
    here = ensemble_predictor(members, settings=settings)
    res = make_submission(here, comp / 'test', tmp_path / 'sub_here.csv', settings.postprocess, progress=False)
    assert sub_bundle.read_text() == (tmp_path / 'sub_here.csv').read_text()
    save_predictions(res.raw, tmp_path / 'raw_here.csv')
    assert (tmp_path / 'raw_bundle.csv').read_text() == (tmp_path / 'raw_here.csv').read_text()
    # 4. tuned weights reach the submission: with 'both' everywhere, equal weights reproduce the untuned ensemble
    #    exactly, and tilting the weights changes the cells (merged scores are weighted: here Cellpose, trained one
    #    epoch, finds few cells, and Mask R-CNN's weight 0.1 puts its candidates below the tuned score thresholds)
    def submission(predictor, name):
        return make_submission(predictor, comp / 'test', tmp_path / name, settings.postprocess, progress=False).path.read_text()
    def both(weights):
        return EnsembleSettings(settings.models, {ct: 'both' for ct in settings.choice}, {ct: weights for ct in settings.choice},
                                {ct: 0.5 for ct in settings.choice}, settings.iou_threshold, settings.postprocess)
    equal = submission(ensemble_predictor(members, settings=both({'maskrcnn': 1.0, 'cellpose': 1.0})), 'equal.csv')
    assert submission(ensemble_predictor(members), 'untuned.csv') == equal
    tilted = {submission(ensemble_predictor(members, settings=both({'maskrcnn': w, 'cellpose': 1 - w})), f'w{w}.csv')
              for w in (0.9, 0.1)}
    assert tilted - {equal}, "tilting the ensemble weights changed no submission"
    # 5. the Kaggle kernel on the bundle writes the same submission
    import test_kaggle_kernel as tk
    inp = tmp_path / 'input'; inp.mkdir()
    (inp / 'sartorius-cell-instance-segmentation').symlink_to(comp)
    shutil.copytree(bundle, inp / 'cellseg-weights')
    work = tmp_path / 'working'; work.mkdir()
    tk.run_kernel(inp, work)
    assert (work / 'submission.csv').read_text() == sub_bundle.read_text()


def test_evaluate_says_which_images_hold_no_cell(comp, tmp_path, capsys):
    """`cellseg evaluate` names the images left with no cell: raw predictions -> the raw count and the step that
    removed them (here every cell of one image under its type's score threshold); a submission -> that it cannot say."""
    import warnings
    import numpy as np
    from cellseg_nb.data import SartoriusData
    from cellseg_nb.inference import save_predictions
    from cellseg_nb.submission import write_submission
    from cellseg_nb.postprocess import PostprocessConfigs
    ds = SartoriusData(comp)
    ids = ds.ids[:3]
    gt = {i: ds.instances(i) for i in ids}
    raw = {i: g.with_(scores=np.full(len(g), 0.99 if k else 0.01, np.float32)) for k, (i, g) in enumerate(gt.items())}
    save_predictions(raw, tmp_path / 'raw.csv')
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        run(capsys, 'evaluate', tmp_path / 'raw.csv', '--data', comp)
    msgs = [str(w.message) for w in caught if 'cells kept' in str(w.message)]
    thr = PostprocessConfigs()[ds.cell_type(ids[0])].score_threshold
    assert msgs == [f"image {ids[0]} ({ds.cell_type(ids[0])}): 0 cells kept of {len(gt[ids[0]])} raw cells, best score "
                    f"0.010: score threshold {thr:g} for {ds.cell_type(ids[0])} removed {len(gt[ids[0]])} -> no cell "
                    f"written for this image"], [str(w.message) for w in caught]
    write_submission({ids[0]: gt[ids[0]].select([]), **{i: gt[i].select([0]) for i in ids[1:]}}, tmp_path / 'sub.csv', ids=ids)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        run(capsys, 'evaluate', tmp_path / 'sub.csv', '--data', comp)
    msgs = [str(w.message) for w in caught if 'hold no cell' in str(w.message)]
    assert len(msgs) == 1 and f"1 of 3 images hold no cell ({ids[0]})" in msgs[0] and '--raw' in msgs[0]
