"""Training that survives faults: SIGKILL after a checkpoint + resume == uninterrupted run; DDP with gloo on CPU."""
import json, os, signal, subprocess, sys, time
from pathlib import Path
import pandas as pd, pytest, torch
from cellseg_nb.synth import make_competition
from cellseg_nb.maskrcnn_train import train
from cellseg_nb.maskrcnn import read_checkpoint

torch.set_num_threads(1)
TINY = dict(fpn_channels=32, mask_head_channels=32, box_head_dim=128, min_size=96, max_size=96,
            rpn_pre_nms_top_n_train=400, rpn_post_nms_top_n_train=200, rpn_pre_nms_top_n_test=400,
            rpn_post_nms_top_n_test=200, box_batch_size_per_image=64, rpn_batch_size_per_image=64)
# every iteration validates nothing but fold 1's first image every 4 iterations; AdamW, warmup and a cosine
# schedule; BatchNorm (running statistics are state too); augmentation on (data order and augmentations must replay)
RUN = dict(backbone='resnet18', model_options=TINY, progress=False, fold=1, n_folds=2, val_images=1, val_every=4,
           iterations=10, checkpoint_every=4, log_every=1, batch_size=2, optimizer='adamw', lr=2e-3, warmup=3)
DRIVER = """
import json, sys, torch
torch.set_num_threads(1)
from cellseg_nb.maskrcnn_train import train
root, out, kw = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
train(root, out, **kw)
"""


@pytest.fixture(scope='module')
def root(tmp_path_factory):
    return make_competition(tmp_path_factory.mktemp('comp'), n_images=12, seed=1, image_shape=(96, 96), n_test=0, n_semi=0)


def _env():
    return {**os.environ, 'OMP_NUM_THREADS': '1', 'MKL_NUM_THREADS': '1', 'PYTHONWARNINGS': 'ignore'}


def test_sigkill_then_resume_equals_uninterrupted(root, tmp_path):
    """Exact equality holds: the data order and augmentations are functions of (seed, sample number), the learning
    rate a function of the iteration, and the checkpoint restores model, optimizer, scaler, log accumulators and
    the torch/numpy/python RNG states; on one CPU thread every kernel used here is deterministic."""
    ref = train(root, tmp_path / 'ref', **RUN)
    driver = tmp_path / 'driver.py'; driver.write_text(DRIVER)
    out = tmp_path / 'killed'
    err = open(tmp_path / 'stderr.txt', 'w+')            # a file, not a pipe: a full pipe would block the child
    p = subprocess.Popen([sys.executable, str(driver), str(root), str(out), json.dumps(RUN)], env=_env(),
                         stdout=subprocess.DEVNULL, stderr=err)
    ckpt = out / 'checkpoint.pt'
    t0 = time.time()
    while not ckpt.exists() and p.poll() is None and time.time() - t0 < 300: time.sleep(0.02)
    p.send_signal(signal.SIGKILL); p.wait()
    err.seek(0)
    assert p.returncode == -signal.SIGKILL, err.read()[-2000:]
    killed_at = read_checkpoint(ckpt)['iteration']
    assert 4 <= killed_at < RUN['iterations'], killed_at
    assert (out / 'log.csv').exists()
    with pytest.raises(FileExistsError):
        train(root, out, **RUN)                           # refuses to overwrite without resume=True
    res = train(root, out, resume=True, **RUN)
    assert not list(out.glob('.*.tmp'))                  # a write torn by the kill is cleaned up
    a, b = ref['model'].state_dict(), res['model'].state_dict()
    assert a.keys() == b.keys()
    diff = {k: (a[k].double() - b[k].double()).abs().max().item() for k in a if not torch.equal(a[k], b[k])}
    assert not diff, f"resumed at {killed_at}: {len(diff)} tensors differ, max {max(diff.values())}"
    la, lb = pd.read_csv(tmp_path / 'ref' / 'log.csv'), pd.read_csv(out / 'log.csv')
    cols = ['iteration', 'lr', 'loss', 'loss_mask', 'val_score']
    pd.testing.assert_frame_equal(la[cols], lb[cols])
    # a finished run resumes to a no-op
    again = train(root, out, resume=True, **RUN)
    assert read_checkpoint(out / 'checkpoint.pt')['iteration'] == RUN['iterations']
    assert torch.equal(next(iter(again['model'].state_dict().values())), next(iter(b.values())))


def test_ddp_two_processes_gloo(root, tmp_path):
    driver = tmp_path / 'driver.py'; driver.write_text(DRIVER)
    out = tmp_path / 'ddp'
    kw = {**RUN, 'iterations': 2, 'checkpoint_every': 100, 'val_images': 1, 'val_every': 100}
    r = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nnodes=1',
                        '--nproc-per-node=2', str(driver), str(root), str(out), json.dumps(kw)],
                       env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ['checkpoint.pt', 'log.csv']
    ck = read_checkpoint(out / 'checkpoint.pt')
    assert ck['iteration'] == 2 and ck['train_config']['world_size'] == 2 and len(ck['rng']) == 2
    assert not any(k.startswith('module.') for k in ck['model'])
    assert pd.read_csv(out / 'log.csv').iteration.tolist() == [1, 2]
