"""Training that survives faults: SIGKILL after a checkpoint, while a checkpoint or the log is being written, inside
the LIVECell stage of a transfer, and under DDP; each resume ends bit-equal to the uninterrupted run. DDP with gloo on
CPU computes what one process computes on the same samples, and its ranks see different data."""
import io, itertools, json, os, signal, subprocess, sys, time
from pathlib import Path
import numpy as np, pandas as pd, pytest, torch
from cellseg_nb.synth import make_competition
from cellseg_nb.celltypes import CELL_TYPES
from cellseg_nb.maskrcnn_train import train, transfer, open_source, CellDataset, KeySampler, lr_at, TRAIN_DEFAULTS
from cellseg_nb.maskrcnn import build_model, read_checkpoint
from cellseg_nb.config import get_recipe

torch.set_num_threads(1)
TINY = get_recipe('tiny').model.changed_options()     # the tests' small model (cellseg_nb.config)
# every iteration validates nothing but fold 1's first image every 4 iterations; AdamW, warmup and a cosine
# schedule; BatchNorm (running statistics are state too); augmentation on (data order and augmentations must replay)
RUN = dict(backbone='resnet18', model_options=TINY, progress=False, fold=1, n_folds=2, val_images=1, val_every=4,
           iterations=10, checkpoint_every=4, log_every=1, batch_size=2, optimizer='adamw', lr=2e-3, warmup=3)
LOG_COLUMNS = ['iteration', 'lr', 'loss', 'loss_mask', 'val_score']

# `python driver.py FUNCTION ROOT OUT KWARGS_JSON [WHERE NTH KEEP]` runs cellseg_nb.maskrcnn_train.FUNCTION(ROOT, OUT,
# **KWARGS). With WHERE = 'checkpoint' or 'log', the NTH checkpoint save (torch.save) or log row (_append_row) of this
# process writes only its first KEEP bytes to the real file, forces them to disk and the process SIGKILLs itself: a
# kill -9 in the middle of that write, at a point chosen by the test instead of by chance.
DRIVER = """
import io, json, os, signal, sys, torch
torch.set_num_threads(1)
import cellseg_nb.maskrcnn_train as mt
fn, root, out, kw = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
where, nth, keep = (sys.argv[5], int(sys.argv[6]), int(sys.argv[7])) if len(sys.argv) > 5 else (None, 0, 0)
calls = 0

def die_writing(path, data):
    with open(path, 'ab') as f:
        f.write(data[:keep]); f.flush(); os.fsync(f.fileno())
    os.kill(os.getpid(), signal.SIGKILL)

def torn(kind):
    global calls
    if where != kind: return False
    calls += 1
    return calls == nth

real_save, real_append = torch.save, mt._append_row
def save(obj, f, *a, **k):
    if torn('checkpoint'):
        buf = io.BytesIO(); real_save(obj, buf); die_writing(f, buf.getvalue())
    return real_save(obj, f, *a, **k)
def append_row(path, row):
    if torn('log'):
        scratch = path.with_name('row.csv'); real_append(scratch, row)
        line = scratch.read_bytes().splitlines(keepends=True)[-1]; scratch.unlink()
        die_writing(path, line)
    return real_append(path, row)
torch.save, mt._append_row = save, append_row
getattr(mt, fn)(root, out, **kw)
"""


@pytest.fixture(scope='module')
def root(tmp_path_factory):
    return make_competition(tmp_path_factory.mktemp('comp'), n_images=12, seed=1, image_shape=(96, 96), n_test=0, n_semi=0)


@pytest.fixture(scope='module')
def driver(tmp_path_factory):
    p = tmp_path_factory.mktemp('driver') / 'driver.py'; p.write_text(DRIVER); return p


@pytest.fixture(scope='module')
def ref(root, tmp_path_factory):
    "The uninterrupted run of RUN."
    out = tmp_path_factory.mktemp('ref') / 'run'
    return {**train(root, out, **RUN), 'out': out}


def _env():
    return {**os.environ, 'OMP_NUM_THREADS': '1', 'MKL_NUM_THREADS': '1', 'PYTHONWARNINGS': 'ignore'}


def _start(cmd, tmp_path, name):
    "Start `cmd` in its own process group, stderr to a file (a full pipe would block the child)."
    err = open(tmp_path / f'{name}.stderr', 'w+')
    return subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=err, start_new_session=True), err


def _kill_when(p, path, timeout=300):
    "SIGKILL the process group of `p` as soon as `path` exists (or when `p` ended by itself)."
    t0 = time.time()
    while not path.exists() and p.poll() is None and time.time() - t0 < timeout: time.sleep(0.02)
    if p.poll() is None: os.killpg(p.pid, signal.SIGKILL)
    p.wait()


def _assert_same_weights(a, b, what):
    a, b = a.state_dict(), b.state_dict()
    assert a.keys() == b.keys()
    diff = {k: (a[k].double() - b[k].double()).abs().max().item() for k in a if not torch.equal(a[k], b[k])}
    assert not diff, f"{what}: {len(diff)} tensors differ, max {max(diff.values())}"


def _assert_same_log(a, b):
    pd.testing.assert_frame_equal(pd.read_csv(a)[LOG_COLUMNS], pd.read_csv(b)[LOG_COLUMNS])


def test_sigkill_then_resume_equals_uninterrupted(root, ref, driver, tmp_path):
    """Exact equality holds: the data order and augmentations are functions of (seed, sample number), the learning
    rate a function of the iteration, and the checkpoint restores model, optimizer, scaler, log accumulators and
    the torch/numpy/python RNG states; on one CPU thread every kernel used here is deterministic."""
    out = tmp_path / 'killed'
    p, err = _start([sys.executable, str(driver), 'train', str(root), str(out), json.dumps(RUN)], tmp_path, 'killed')
    ckpt = out / 'checkpoint.pt'
    _kill_when(p, ckpt)
    err.seek(0)
    assert p.returncode == -signal.SIGKILL, err.read()[-2000:]
    killed_at = read_checkpoint(ckpt)['iteration']
    assert 4 <= killed_at < RUN['iterations'], killed_at
    assert (out / 'log.csv').exists()
    with pytest.raises(FileExistsError):
        train(root, out, **RUN)                           # refuses to overwrite without resume=True
    res = train(root, out, resume=True, **RUN)
    assert not list(out.glob('.*.tmp'))                  # a write torn by the kill is cleaned up
    _assert_same_weights(ref['model'], res['model'], f"resumed at {killed_at}")
    _assert_same_log(ref['out'] / 'log.csv', out / 'log.csv')
    # a finished run resumes to a no-op
    again = train(root, out, resume=True, **RUN)
    assert read_checkpoint(out / 'checkpoint.pt')['iteration'] == RUN['iterations']
    _assert_same_weights(again['model'], res['model'], "resuming a finished run")


@pytest.mark.parametrize('where, nth, keep, resumes_at', [
    ('checkpoint', 2, 1_000_000, 4),   # the 2nd checkpoint (iteration 8) torn after 1 MB: resume from iteration 4
    ('log', 10, 1, 8),                 # the row of iteration 10 torn after its first byte, '1': resume from 8
])
def test_sigkill_while_writing_then_resume(root, ref, driver, tmp_path, where, nth, keep, resumes_at):
    """kill -9 in the middle of writing the checkpoint or a log row: the last complete checkpoint stays readable, the
    torn temporary file is removed, the torn log row is dropped, and the resumed run equals the uninterrupted one.
    The resumed run loads its data with 2 worker processes: workers do not change the result."""
    out = tmp_path / 'killed'
    p, err = _start([sys.executable, str(driver), 'train', str(root), str(out), json.dumps(RUN), where, str(nth),
                     str(keep)], tmp_path, 'killed')
    p.wait(timeout=600); err.seek(0)
    assert p.returncode == -signal.SIGKILL, err.read()[-2000:]
    assert read_checkpoint(out / 'checkpoint.pt')['iteration'] == resumes_at
    if where == 'checkpoint':
        torn = list(out.glob('.checkpoint.pt.*.tmp'))
        assert len(torn) == 1 and torn[0].stat().st_size == keep
    else:
        assert not (out / 'log.csv').read_bytes().endswith(b'\n')
    res = train(root, out, resume=True, **RUN, num_workers=2)
    assert not list(out.glob('.*.tmp'))
    _assert_same_weights(ref['model'], res['model'], f"killed while writing the {where}, resumed at {resumes_at}")
    _assert_same_log(ref['out'] / 'log.csv', out / 'log.csv')


def test_transfer_resumes_inside_the_livecell_stage(driver, tmp_path):
    "A transfer killed during its LIVECell stage resumes that stage and goes on to the competition stage as if never stopped."
    root = make_competition(tmp_path / 'comp', n_images={'shsy5y': 3, 'astro': 0, 'cort': 0}, seed=2,
                            image_shape=(64, 64), n_test=0, n_semi=0, livecell=8)
    stage = dict(batch_size=1, optimizer='adamw', lr=1e-3, warmup=2, log_every=1, val_every=100, val_images=1)
    kw = dict(backbone='resnet18', model_options=TINY, progress=False,
              pretrain={**stage, 'iterations': 6, 'checkpoint_every': 3}, finetune={**stage, 'iterations': 3, 'fold': None})
    ref = transfer(root, tmp_path / 'ref', **kw)
    out = tmp_path / 'killed'
    p, err = _start([sys.executable, str(driver), 'transfer', str(root), str(out), json.dumps(kw)], tmp_path, 'killed')
    _kill_when(p, out / 'livecell' / 'checkpoint.pt')
    err.seek(0)
    assert p.returncode == -signal.SIGKILL, err.read()[-2000:]
    assert read_checkpoint(out / 'livecell' / 'checkpoint.pt')['iteration'] == 3 and not (out / 'competition').exists()
    res = transfer(root, out, resume=True, **kw)
    for s in ('livecell', 'competition'):
        _assert_same_weights(ref[s]['model'], res[s]['model'], f"transfer stage {s}")
        _assert_same_log(tmp_path / 'ref' / s / 'log.csv', out / s / 'log.csv')


def test_amp_gradscaler_steps_on_cpu(root, tmp_path):
    """amp='any' runs the AMP path (float16 autocast, GradScaler scale / unscale before clipping / step / update,
    skipped steps on overflow) on the CPU: losses finite, the first one within 5% of float32's (the same sample and
    initial weights), the scaler's state checkpointed, the weights kept in float32."""
    kw = {**RUN, 'iterations': 5, 'checkpoint_every': 5, 'val_every': 5}
    fp32 = train(root, tmp_path / 'fp32', **kw, amp=False)
    amp = train(root, tmp_path / 'amp', **kw, amp='any')
    assert np.isfinite(amp['log'].loss).all()
    assert amp['log'].loss.iloc[0] == pytest.approx(fp32['log'].loss.iloc[0], rel=0.05)
    assert not amp['log'].loss.equals(fp32['log'].loss)      # float16 arithmetic really ran
    st = read_checkpoint(amp['checkpoint'])['scaler']
    assert st and 0 < st['scale'] <= 65536.0                 # an enabled scaler (a disabled one saves {})
    assert not read_checkpoint(fp32['checkpoint'])['scaler']
    assert all(p.dtype == torch.float32 for p in amp['model'].parameters())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="AMP (float16 autocast + GradScaler) runs on CUDA only")
def test_amp_gradscaler_steps_on_gpu(root, tmp_path):
    """The default amp=True on a GPU: float16 autocast and the GradScaler (scale, unscale before clipping, step,
    update) for 6 iterations; the first loss agrees with float32's and the scaler's state is checkpointed."""
    kw = {**RUN, 'iterations': 6, 'checkpoint_every': 3, 'val_every': 3, 'device': 'cuda'}
    fp32 = train(root, tmp_path / 'fp32', **kw, amp=False)
    amp = train(root, tmp_path / 'amp', **kw, amp=True)
    assert np.isfinite(amp['log'].loss).all() and np.isfinite(amp['val_score'])
    assert amp['log'].loss.iloc[0] == pytest.approx(fp32['log'].loss.iloc[0], rel=0.05)
    st = read_checkpoint(amp['checkpoint'])['scaler']
    assert st and st['scale'] > 0                          # an enabled scaler (a disabled one saves {})
    assert not read_checkpoint(fp32['checkpoint'])['scaler']
    assert all(p.dtype == torch.float32 for p in amp['model'].parameters())


# DDP: SGD with the default lr 0.02, momentum, weight decay and gradient clipping, the `step` schedule (lr / 10 from
# iteration 4.5 on), one warmup iteration. Frozen BatchNorm: trainable BatchNorm computes its statistics per process,
# so no sharding of a batch can reproduce it.
DDP_RUN = dict(backbone='resnet18', model_options={**TINY, 'norm': 'frozen_bn'}, progress=False, fold=None,
               batch_size=1, iterations=6, warmup=1, schedule='step', checkpoint_every=2, log_every=1)


def _torchrun(driver, root, out, kw):
    return [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nnodes=1', '--nproc-per-node=2',
            str(driver), 'train', str(root), str(out), json.dumps(kw)]


@pytest.fixture(scope='module')
def ddp_run(root, driver, tmp_path_factory):
    "The uninterrupted DDP_RUN under torchrun with 2 processes (gloo)."
    out = tmp_path_factory.mktemp('ddp') / 'run'
    r = subprocess.run(_torchrun(driver, root, out, DDP_RUN), env=_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return out


def one_process_reference(root, kw, world=2):
    """`train(root, **kw)` under DDP with `world` processes, recomputed in this process: each iteration takes the
    `world` samples that one process with batch size `world` takes, computes sample r's loss with rank r's torch RNG
    stream (the box samplers draw from it), averages the gradients (DDP's all-reduce), clips, sets the lr and steps.
    Mask R-CNN pools its loss normalizers over the images of a batch, so a plain batch of `world` images in one
    process is a differently weighted loss; the mean of per-image losses is what data parallelism computes."""
    cfg = {**TRAIN_DEFAULTS, **{k: v for k, v in kw.items() if k in TRAIN_DEFAULTS}}
    src, ids, *_ = open_source(root, 'competition', fold=None)
    ds = CellDataset(src, ids, augment=cfg['augment'])
    torch.manual_seed(cfg['seed'])
    model = build_model(3, kw['backbone'], class_names=list(CELL_TYPES), **kw['model_options']).train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, cfg['lr'], momentum=cfg['momentum'], weight_decay=cfg['weight_decay'])
    rngs = []
    for r in range(world): torch.manual_seed(cfg['seed'] + 1 + r); rngs.append(torch.get_rng_state())
    batches = KeySampler(len(ds), world, cfg['seed'])       # one process, batch size `world`
    for it, keys in zip(range(cfg['iterations']), batches):
        grads = []
        for r, key in enumerate(keys):
            torch.set_rng_state(rngs[r])
            x, t = ds[key]
            opt.zero_grad(set_to_none=False)
            sum(model([x], [t]).values()).backward()
            rngs[r] = torch.get_rng_state()
            grads.append([p.grad.clone() for p in params])
        for p, *g in zip(params, *grads): p.grad = sum(g) / world
        torch.nn.utils.clip_grad_norm_(params, cfg['clip_grad'])
        for g in opt.param_groups: g['lr'] = lr_at(it, cfg)
        opt.step()
    return model.eval()


def test_ranks_see_different_data():
    "Rank r of `world` with batch b takes, at every iteration, slice r of what one process with batch world x b takes."
    for n, world, b in [(5, 2, 1), (7, 3, 2), (12, 2, 2)]:
        single = list(itertools.islice(KeySampler(n, world * b, seed=3), 12))
        ranks = [list(itertools.islice(KeySampler(n, b, 3, 0, r, world), 12)) for r in range(world)]
        for it, keys in enumerate(single):
            assert [k for r in range(world) for k in ranks[r][it]] == keys
        flat = [k for keys in single for k in keys]
        assert [k for _, _, k in flat] == list(range(len(flat)))               # every sample has its own key
        for e in range(len(flat) // n):                                          # each epoch shows every image once
            assert sorted(i for i, _, _ in flat[e * n:(e + 1) * n]) == list(range(n))
        # a sampler started at iteration 5 (a resumed run) continues the same sequence
        assert list(itertools.islice(KeySampler(n, b, 3, 5, 1, world), 7)) == ranks[1][5:]


def test_ddp_equals_one_process_on_the_same_samples(root, ddp_run):
    ck = read_checkpoint(ddp_run / 'checkpoint.pt')
    assert ck['iteration'] == 6 and ck['train_config']['world_size'] == 2 and len(ck['rng']) == 2
    assert not any(k.startswith('module.') for k in ck['model'])
    assert sorted(p.name for p in ddp_run.iterdir()) == ['checkpoint.pt', 'log.csv']
    log = pd.read_csv(ddp_run / 'log.csv')
    assert log.iteration.tolist() == list(range(1, 7))
    np.testing.assert_allclose(log.lr, [lr_at(i, {**TRAIN_DEFAULTS, **DDP_RUN}) for i in range(6)], rtol=1e-5)
    assert log.lr.iloc[1] == 0.02 and log.lr.iloc[-1] == pytest.approx(0.002)
    ddp = build_model(3, 'resnet18', **DDP_RUN['model_options']); ddp.load_state_dict(ck['model'])
    ref = one_process_reference(root, DDP_RUN)
    torch.manual_seed(0); init = build_model(3, 'resnet18', **DDP_RUN['model_options']).state_dict()
    a, b = ddp.state_dict(), ref.state_dict()
    moved = max((a[k].double() - init[k].double()).abs().max().item() for k in a)
    worst = max((a[k].double() - b[k].double()).abs().max().item() for k in a)
    print(f"DDP vs one process: largest weight difference {worst:.2e}; largest change from the initial weights {moved:.2e}")
    assert moved > 1e-3 and worst < 1e-6, (moved, worst)


def test_ddp_sigkill_then_resume(root, driver, ddp_run, tmp_path):
    "kill -9 of torchrun and both workers after the first checkpoint; a DDP resume ends bit-equal to the uninterrupted run."
    out = tmp_path / 'killed'
    p, err = _start(_torchrun(driver, root, out, DDP_RUN), tmp_path, 'killed')
    _kill_when(p, out / 'checkpoint.pt')
    killed_at = read_checkpoint(out / 'checkpoint.pt')['iteration']
    assert 2 <= killed_at < 6, killed_at
    r = subprocess.run(_torchrun(driver, root, out, {**DDP_RUN, 'resume': True}), env=_env(), capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = read_checkpoint(ddp_run / 'checkpoint.pt'), read_checkpoint(out / 'checkpoint.pt')
    diff = [k for k in a['model'] if not torch.equal(a['model'][k], b['model'][k])]
    assert not diff, f"resumed at {killed_at}: {len(diff)} tensors differ"
    _assert_same_log(ddp_run / 'log.csv', out / 'log.csv')
