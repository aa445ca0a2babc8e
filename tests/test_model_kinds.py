"""Models by name: a kind that exists only in this test (the Otsu baseline with its settings in a JSON file), declared
by a plug-in package through the entry-point group `cellseg_nb.model_kinds`, goes with a Mask R-CNN through the
public path: out-of-fold predictions (`cellseg predict --model`), `cellseg tune-ensemble --raw NAME=CSV`, `cellseg
bundle --model`, `cellseg predict --bundle` in a fresh process, and the Kaggle kernel, which writes the same file."""
import importlib.util, json, os, subprocess, sys
from pathlib import Path
import numpy as np
import pytest
from cellseg_nb import cli

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = '''
import json
from pathlib import Path
import numpy as np
from cellseg_nb.predictors import ModelKind, ModelPredictor
from cellseg_nb.inference import threshold_predictor

def load(path, device='auto'):
    opts = json.loads(Path(path).read_text())
    label = int(opts.pop('label'))
    def fn(image):
        r = threshold_predictor(image, **opts)
        return r.with_(labels=np.full(len(r), label, np.int64))
    return ModelPredictor('otsu', fn, str(path))

KIND = ModelKind('otsu', load, '.json', train='nothing to train', what='Otsu settings')
'''


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    "A package `otsu_kind` installed on sys.path (a module and its dist-info with the entry point), as pip would."
    from cellseg_nb.predictors import MODEL_KINDS
    site = tmp_path / 'site'; site.mkdir()
    (site / 'otsu_kind.py').write_text(PLUGIN)
    info = site / 'otsu_kind-0.1.dist-info'; info.mkdir()
    (info / 'METADATA').write_text('Metadata-Version: 2.1\nName: otsu-kind\nVersion: 0.1\n')
    (info / 'entry_points.txt').write_text('[cellseg_nb.model_kinds]\notsu = otsu_kind:KIND\n')
    monkeypatch.syspath_prepend(str(site))
    MODEL_KINDS.pop('otsu', None)
    yield site
    MODEL_KINDS.pop('otsu', None); sys.modules.pop('otsu_kind', None)


@pytest.fixture
def files(tmp_path):
    "A synthetic competition folder, a tiny untrained Mask R-CNN checkpoint and the Otsu kind's settings file."
    import torch
    from cellseg_nb.synth import make_competition
    from cellseg_nb.maskrcnn import build_model
    torch.set_num_threads(1)
    comp = make_competition(tmp_path / 'data', n_images=8, seed=4, image_shape=(64, 64), n_test=2, n_semi=0)
    torch.manual_seed(0)
    m = build_model(3, 'resnet18', fpn_channels=32, mask_head_channels=32, box_head_dim=128, min_size=64, max_size=64,
                    norm='gn', rpn_pre_nms_top_n_test=100, rpn_post_nms_top_n_test=50, box_score_thresh=0.0)
    torch.save({'model': m.state_dict(), 'config': m.config}, tmp_path / 'checkpoint.pt')
    (tmp_path / 'otsu.json').write_text('{"sigma": 1.0, "min_area": 5, "label": 1}')
    return comp, tmp_path / 'checkpoint.pt', tmp_path / 'otsu.json'


def run(capsys, *argv):
    rc = cli.main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_kind_lookup_by_entry_point(plugin, files):
    from cellseg_nb.predictors import model_kind, MODEL_KINDS
    assert 'otsu' not in MODEL_KINDS
    k = model_kind('otsu')                                        # found through the plug-in's entry point
    assert k.name == 'otsu' and MODEL_KINDS['otsu'] is k
    img = np.zeros((40, 50), np.uint8); img[5:15, 5:20] = 200
    from cellseg_nb.inference import threshold_predictor
    got = k.load(files[2])(img)
    assert got.to_rles() == threshold_predictor(img, sigma=1.0, min_area=5).to_rles() and set(got.labels) == {1}
    with pytest.raises(ValueError, match=r"unknown model kind 'yolo'; known: \['cellpose', 'maskrcnn', 'otsu'"):
        model_kind('yolo')


def test_third_kind_from_tuning_to_the_kernel(plugin, files, tmp_path, capsys):
    comp, ckpt, otsu = files
    # out-of-fold predictions of both models on fold 0
    for args, raw in ((['--maskrcnn', ckpt], 'mr.csv'), (['--model', f'otsu={otsu}'], 'otsu.csv')):
        rc, o, e = run(capsys, 'predict', *args, '--data', comp, '--fold', 0, '--n_folds', 2, '--out', '',
                       '--raw', tmp_path / raw, '--device', 'cpu')
        assert rc == 0, e
    rc, o, e = run(capsys, 'tune-ensemble', '--raw', f'maskrcnn={tmp_path / "mr.csv"}', '--raw', f'otsu={tmp_path / "otsu.csv"}',
                   '--data', comp, '--out', tmp_path / 'ens.json')
    assert rc == 0, e
    ens = json.loads((tmp_path / 'ens.json').read_text())
    assert ens['models'] == ['maskrcnn', 'otsu'] and 'otsu' in o
    rc, o, e = run(capsys, 'bundle', '--out', tmp_path / 'bundle', '--maskrcnn', ckpt, '--model', f'otsu={otsu}',
                   '--ensemble', tmp_path / 'ens.json')
    assert rc == 0, e
    man = json.loads((tmp_path / 'bundle' / 'manifest.json').read_text())
    assert man['models'] == {'maskrcnn': {'kind': 'maskrcnn', 'file': 'maskrcnn.pth'}, 'otsu': {'kind': 'otsu', 'file': 'otsu.json'}}
    assert (tmp_path / 'bundle' / 'otsu.json').read_bytes() == otsu.read_bytes()
    # cellseg predict --bundle in a fresh process: the plug-in is found by its entry point there too
    env = {**os.environ, 'PYTHONPATH': os.pathsep.join([str(plugin), str(ROOT), os.environ.get('PYTHONPATH', '')]),
           'OMP_NUM_THREADS': '1', 'CELLSEG_DEBUG': '1'}
    sub = tmp_path / 'sub.csv'
    r = subprocess.run([sys.executable, '-m', 'cellseg_nb.cli', 'predict', '--bundle', str(tmp_path / 'bundle'),
                        '--data', str(comp), '--out', str(sub), '--device', 'cpu'], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert len(sub.read_text().splitlines()) > 2                 # cells were written, not just the header
    # the same predictor in this process gives the same file
    from cellseg_nb.bundle import load_predictor
    from cellseg_nb.inference import make_submission
    p = load_predictor(bundle=tmp_path / 'bundle', device='cpu')
    assert 'otsu' in p.source and 'maskrcnn' in p.source
    make_submission(p, comp / 'test', tmp_path / 'here.csv', p.postprocess, progress=False)
    assert (tmp_path / 'here.csv').read_bytes() == sub.read_bytes()
    # the Kaggle kernel on a /kaggle/input-like folder with this bundle writes the same submission
    import shutil
    inp = tmp_path / 'input'; inp.mkdir()
    shutil.copytree(comp, inp / 'sartorius-cell-instance-segmentation')
    shutil.copytree(tmp_path / 'bundle', inp / 'cellseg-weights')
    spec = importlib.util.spec_from_file_location('kernel_tests', ROOT / 'tests' / 'test_kaggle_kernel.py')
    kt = importlib.util.module_from_spec(spec); spec.loader.exec_module(kt)
    work = tmp_path / 'working'; work.mkdir()
    kt.run_kernel(inp, work)
    assert (work / 'submission.csv').read_bytes() == sub.read_bytes()
    # a kind nobody declares is one clear error
    rc, o, e = run(capsys, 'predict', '--model', f'yolo={otsu}', '--data', comp, '--out', '')
    assert rc == 1 and "unknown model kind 'yolo'" in e
