"""Model bundles (`cellseg_nb.bundle`) with small untrained models (a tiny Mask R-CNN, a Cellpose network with 0
epochs): the manifest checked against independent hashes of the files, the training-data fingerprint, a bundle
applied whole by `load_predictor`, `cellseg predict --bundle` failing with one line naming a wrong path or a
corrupted file, and a failed rewrite leaving the earlier bundle intact. The trained path (train -> tune-ensemble ->
bundle -> kernel) is tests/test_cli_workflow.py; the bundle's pictures and version checks are in nbs/18_bundle."""
import hashlib, json
from pathlib import Path
import numpy as np
import pytest
from cellseg_nb import cli
from cellseg_nb.bundle import write_bundle, read_bundle, runtime_versions, UNHASHED


@pytest.fixture(scope='module')
def models(tmp_path_factory):
    "A synthetic competition folder, a tiny untrained Mask R-CNN checkpoint, an untrained Cellpose model file."
    import torch
    from cellseg_nb.synth import make_competition
    from cellseg_nb.data import SartoriusData
    from cellseg_nb.maskrcnn import build_model
    from cellseg_nb.cpose import train_cellpose
    torch.set_num_threads(1)
    d = tmp_path_factory.mktemp('models')
    comp = make_competition(d / 'data', n_images=3, seed=2, image_shape=(64, 64), n_test=1, n_semi=0)
    torch.manual_seed(0)
    m = build_model(3, 'resnet18', fpn_channels=32, mask_head_channels=32, box_head_dim=128, min_size=64, max_size=64,
                    norm='gn', rpn_pre_nms_top_n_test=100, rpn_post_nms_top_n_test=50)
    torch.save({'model': m.state_dict(), 'config': m.config, 'recipe': {'name': 'tiny', 'train': {'lr': 0.001}}},
               d / 'checkpoint.pt')
    cp = train_cellpose(SartoriusData(comp), d / 'cp', n_epochs=0, bsize=64, nimg_per_epoch=2, diam_mean=17.,
                        progress=False)
    return comp, d / 'checkpoint.pt', Path(cp)


def test_manifest_hashes_fingerprint_and_recipe(models, tmp_path):
    from cellseg_nb.ensemble import EnsembleSettings
    comp, ckpt, cp = models
    ens = EnsembleSettings(['maskrcnn', 'cellpose'], {'shsy5y': 'both', 'astro': 'cellpose'},
                           {'shsy5y': {'maskrcnn': 0.7, 'cellpose': 0.3}}, {'shsy5y': 0.5})
    b = write_bundle(tmp_path / 'b', maskrcnn=ckpt, cellpose=cp, ensemble=ens, data=comp, cv_scores={'mAP': 0.3})
    man = json.loads((b / 'manifest.json').read_text())
    on_disk = sorted(p.name for p in b.iterdir() if p.name not in UNHASHED)
    assert sorted(man['files']) == on_disk
    for name, entry in man['files'].items():                      # hashes recomputed here, independently
        data = (b / name).read_bytes()
        assert entry == {'sha256': hashlib.sha256(data).hexdigest(), 'bytes': len(data)}, name
    assert man['versions'] == runtime_versions()
    assert man['data_fingerprint'] == {'train.csv sha256': hashlib.sha256((comp / 'train.csv').read_bytes()).hexdigest(),
                                       'train images': len(list((comp / 'train').glob('*.png')))}
    assert man['models'] == {'maskrcnn': {'kind': 'maskrcnn', 'file': 'maskrcnn.pth'},
                             'cellpose': {'kind': 'cellpose', 'file': 'cellpose'}} and man['cv_scores'] == {'mAP': 0.3}
    assert (b / 'cellpose').read_bytes() == cp.read_bytes() and (b / 'cellpose.json').read_bytes() == Path(f'{cp}.json').read_bytes()
    import yaml
    assert yaml.safe_load((b / 'maskrcnn_recipe.yaml').read_text()) == {'name': 'tiny', 'train': {'lr': 0.001}}
    meta = json.loads((b / 'dataset-metadata.json').read_text())
    assert meta['title'] == 'cellseg-weights' and meta['id'].endswith('/cellseg-weights')
    got = read_bundle(b)
    assert got.ensemble.to_dict() == ens.to_dict() and got.postprocess == ens.postprocess


def test_bundle_applies_models_ensemble_and_postprocessing(models, tmp_path):
    "load_predictor(bundle=) is the same predictor as the bundled files + settings loaded directly."
    from cellseg_nb.ensemble import EnsembleSettings
    from cellseg_nb.postprocess import PostprocessConfigs
    from cellseg_nb.bundle import load_predictor
    from cellseg_nb.data import read_image
    comp, ckpt, cp = models
    ens = EnsembleSettings(['maskrcnn', 'cellpose'], {t: 'both' for t in ('shsy5y', 'astro', 'cort')},
                           {t: {'maskrcnn': 0.8, 'cellpose': 0.2} for t in ('shsy5y', 'astro', 'cort')})
    pp = PostprocessConfigs().replace('astro', score_threshold=0.0, min_area=5)
    b = write_bundle(tmp_path / 'b', maskrcnn=ckpt, cellpose=cp, ensemble=ens, postprocess=pp)
    from_bundle = load_predictor(bundle=b, device='cpu')
    direct = load_predictor(maskrcnn=ckpt, cellpose=cp, ensemble=ens, device='cpu')
    assert from_bundle.postprocess == pp and direct.postprocess == ens.postprocess
    img = read_image(next((comp / 'test').glob('*.png')))
    x, y = from_bundle(img), direct(img)
    assert len(x) > 0 and x.to_rles() == y.to_rles() and np.array_equal(x.scores, y.scores)
    with pytest.raises(ValueError, match='not both'): load_predictor(bundle=b, maskrcnn=ckpt)


def test_predict_bundle_errors_name_the_path_or_file(models, tmp_path, capsys):
    comp, ckpt, cp = models
    b = write_bundle(tmp_path / 'b', maskrcnn=ckpt, cellpose=cp)
    def fails(*argv):
        rc = cli.main([str(a) for a in ('predict', *argv, '--images', comp / 'test', '--out', tmp_path / 's.csv', '--device', 'cpu')])
        err = capsys.readouterr().err
        assert rc == 1 and len(err.strip().splitlines()) == 1, err
        return err
    assert f"bundle folder not found: {tmp_path / 'nope'}" in fails('--bundle', tmp_path / 'nope')
    assert f"{tmp_path} is not a cellseg bundle: no manifest.json" in fails('--bundle', tmp_path)
    raw = bytearray((b / 'maskrcnn.pth').read_bytes()); raw[len(raw) // 2] ^= 0xFF
    (b / 'maskrcnn.pth').write_bytes(bytes(raw))                     # one flipped byte in the weights
    assert f"{b / 'maskrcnn.pth'}: changed or corrupted" in fails('--bundle', b)
    (b / 'cellpose_types.json').unlink(missing_ok=True); (b / 'cellpose.json').unlink()
    err = fails('--bundle', b)
    assert f"{b / 'cellpose.json'}: missing" in err and f"{b / 'maskrcnn.pth'}: changed" in err     # every problem listed
    assert not (tmp_path / 's.csv').exists()


def test_failed_rewrite_keeps_the_earlier_bundle(models, tmp_path):
    comp, ckpt, cp = models
    b = write_bundle(tmp_path / 'b', maskrcnn=ckpt)
    before = (b / 'manifest.json').read_text()
    bad = tmp_path / 'bad.pt'; bad.write_bytes(b'not a checkpoint')
    with pytest.raises(ValueError, match=f'cannot read weights file {bad}'): write_bundle(b, maskrcnn=bad, cellpose=cp)
    assert (b / 'manifest.json').read_text() == before and read_bundle(b).cellpose is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ['b', 'bad.pt']            # no temporary folder left
    with pytest.raises(ValueError, match='ensemble settings need both models'):
        from cellseg_nb.ensemble import EnsembleSettings
        write_bundle(tmp_path / 'c', maskrcnn=ckpt, ensemble=EnsembleSettings(['maskrcnn', 'cellpose'], {'cort': 'both'}))
    assert not (tmp_path / 'c').exists()
