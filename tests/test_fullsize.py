"""The full-size path end to end (issue 9, section 4): synthetic 520 x 704 competition images (the real size)
through both predictors, flip TTA, the ensemble, per-type post-processing, the submission writer and validator, by
running the offline Kaggle kernel (kaggle/cellseg-inference) on a bundle of the models (`cellseg_nb.bundle`) with its
defaults (`TTA = None`: the bundle's test-time passes, written as flip TTA) in a child process
whose every socket is blocked (a `sitecustomize` inherited by any process it starts).

The models are *untrained* (a half-trained model is what a user tries first, and the worst case of the cost
bound): a small Mask R-CNN at native resolution whose near-uniform class scores pass the box threshold for up to
its 1000 detections per pass, and a Cellpose network with no training epoch. Seconds per image are printed
(`pytest -s`). Budget: about 2-4 minutes on 2 quiet cores.
"""
import json, os, subprocess, sys, textwrap, time
from pathlib import Path
import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
NB = ROOT / 'kaggle' / 'cellseg-inference' / 'cellseg-inference.ipynb'
SHAPE = (520, 704)

GUARD = '''
"Installed as sitecustomize: every network access of this process (and of any Python child) raises."
import socket
class NetworkBlocked(OSError): pass
def _blocked(what):
    def f(*a, **k): raise NetworkBlocked(f"network access attempted: {what} {a[:2]}")
    return f
class _Socket(socket.socket):
    def __init__(self, family=-1, *a, **k):
        if family in (-1, socket.AF_INET, socket.AF_INET6): raise NetworkBlocked("network access attempted: socket()")
        super().__init__(family, *a, **k)
socket.socket = _Socket
for _name in ('create_connection', 'getaddrinfo', 'gethostbyname', 'gethostbyname_ex'):
    setattr(socket, _name, _blocked(_name))
'''


def guarded_env(tmp: Path) -> dict:
    "Environment of a child process with the network guard (as `sitecustomize`) first on its path."
    g = tmp / 'netguard'; g.mkdir(exist_ok=True)
    (g / 'sitecustomize.py').write_text(GUARD)
    env = dict(os.environ)
    env['PYTHONPATH'] = os.pathsep.join([str(g), str(ROOT), env.get('PYTHONPATH', '')]).rstrip(os.pathsep)
    env.update(OMP_NUM_THREADS='2', MKL_NUM_THREADS='2')
    return env


def build_fullsize(root: Path) -> Path:
    "The kernel's inputs at full size with untrained models: `bench/bench_worstcase.py`'s `build_fullsize`."
    import importlib.util
    spec = importlib.util.spec_from_file_location('bench_worstcase', ROOT / 'bench' / 'bench_worstcase.py')
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    return mod.build_fullsize(root)


RUNNER = '''
import json, sys, time
from execnb.nbio import read_nb
from execnb.shell import CaptureShell
nb_path, inp, out = sys.argv[1:4]
nb = read_nb(nb_path)
idx = next(i for i, c in enumerate(nb.cells) if c.cell_type == 'code')
params = nb.cells[idx].source + f"""
INPUT = {inp!r}
COMPETITION = f'{{INPUT}}/sartorius-cell-instance-segmentation'
BUNDLE = f'{{INPUT}}/cellseg-bundle'
OUTPUT = {out!r}
INSTALL = False
"""
shell = CaptureShell()
t, c = time.perf_counter(), time.process_time()
shell.run_all(nb, exc_stop=True, inject_code=params, inject_idx=idx)
dt, dc = time.perf_counter() - t, time.process_time() - c
ns = shell.user_ns
res = ns['result']
res.table.to_csv(f'{out}/table.csv', index=False)
outputs = ''.join(str(o) for c in nb.cells if c.cell_type == 'code' for o in c.get('outputs', []))
json.dump(dict(seconds=dt, cpu_seconds=dc, n_images=len(res.raw), tta=ns['predictor'].inference.tta, device=str(ns['device']),
               predictor=repr(ns['predictor']), validated='wrote and validated' in outputs), open(f'{out}/run.json', 'w'))
'''


@pytest.fixture(scope='module')
def kaggle_input(tmp_path_factory):
    t = time.perf_counter()
    root = build_fullsize(tmp_path_factory.mktemp('input'))
    from cellseg_nb.postprocess import PostprocessConfig, PostprocessConfigs
    from cellseg_nb.celltypes import CELL_TYPES
    from cellseg_nb.bundle import write_bundle
    from cellseg_nb.inference import InferenceSettings
    # every candidate passes the score threshold, so NMS and overlap removal work on the whole flood of cells
    pp = PostprocessConfigs({ct: PostprocessConfig(score_threshold=0.0, min_area=20) for ct in CELL_TYPES})
    w = root / 'cellseg-weights'
    write_bundle(root / 'cellseg-bundle', maskrcnn=w / 'maskrcnn.pth', cellpose=w / 'cellpose', postprocess=pp,
                 inference=InferenceSettings(tta=True))
    print(f"\nfull-size inputs and untrained models built in {time.perf_counter() - t:.0f} s")
    return root


def test_guard_blocks_the_network_in_children(tmp_path):
    "The guard is live in a child process and in a grandchild it starts (so a test under it cannot pass by luck)."
    code = textwrap.dedent('''
        import socket, urllib.request
        for f in (lambda: socket.create_connection(('www.kaggle.com', 443), timeout=1),
                  lambda: socket.socket(), lambda: socket.getaddrinfo('pypi.org', 443),
                  lambda: urllib.request.urlopen('https://pypi.org', timeout=1)):
            try: f(); print('OPEN')
            except Exception as e: print('BLOCKED' if 'network access attempted' in str(e) else f'OTHER {e!r}')
    ''')
    env = guarded_env(tmp_path)
    r = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True, timeout=120)
    assert r.stdout.split() == ['BLOCKED'] * 4, r.stdout + r.stderr
    r2 = subprocess.run([sys.executable, '-c', "import subprocess, sys; subprocess.run([sys.executable, '-c', "
                         "\"import socket\\ntry: socket.socket(); print('OPEN')\\nexcept OSError as e: print(e)\"])"],
                        env=env, capture_output=True, text=True, timeout=120)
    assert 'network access attempted' in r2.stdout, r2.stdout + r2.stderr


def test_kernel_defaults_fullsize_offline(kaggle_input, tmp_path):
    "The Kaggle kernel with its defaults (the bundle's flip TTA, both models -> ensemble) on 520 x 704 images, network blocked."
    from cellseg_nb.submission import validate_submission
    from cellseg_nb.inference import list_images
    out = tmp_path / 'working'; out.mkdir()
    runner = tmp_path / 'run_kernel.py'; runner.write_text(RUNNER)
    nb_src = json.loads(NB.read_text())
    params = ''.join(next(c for c in nb_src['cells'] if c['cell_type'] == 'code')['source'])
    assert 'TTA = None' in params                                     # the kernel's default (the bundle's) runs here
    r = subprocess.run([sys.executable, str(runner), str(NB), str(kaggle_input), str(out)], env=guarded_env(tmp_path),
                       capture_output=True, text=True, timeout=1200, cwd=tmp_path)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    run = json.loads((out / 'run.json').read_text())
    assert run['tta'] is True and run['validated'] and run['predictor'].startswith('ModelPredictor(ensemble')
    test_dir = kaggle_input / 'sartorius-cell-instance-segmentation' / 'test'
    ids = sorted(list_images(test_dir))
    report = validate_submission(out / 'submission.csv', test_dir, shape=SHAPE)     # independently, again
    assert report.ok, str(report)
    df = pd.read_csv(out / 'submission.csv', keep_default_na=False)
    assert list(df.columns) == ['id', 'predicted'] and sorted(df.id.unique()) == ids
    table = pd.read_csv(out / 'table.csv')
    assert (table.n_raw > 500).all(), table                        # the untrained models flood the merge
    assert (table.n_cells > 0).all(), table                         # ... and post-processing keeps some of them
    print(f"\nkernel (TTA, Mask R-CNN + Cellpose, untrained, CPU): {run['seconds'] / run['n_images']:.1f} s wall, "
          f"{run['cpu_seconds'] / run['n_images']:.1f} s CPU per 520 x 704 image incl. start-up; raw candidates "
          f"per image {table.n_raw.tolist()}, kept {table.n_cells.tolist()}")
