"""`maskrcnn_train.EventStorage`, the one place a training run's scalars go: put / latest / at / history, and the
averaging across processes with a real 2-process gloo group (what the trainer's losses go through under torchrun)."""
import json, os, socket
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from cellseg_nb.maskrcnn_train import EventStorage

# what each rank puts at iteration 1 and 2: `a` and `b` averaged, `lr` kept per process (reduce=False)
PUT = {0: [{'a': 1.0, 'b': 0.1}, {'a': 3.0, 'b': -2.5}], 1: [{'a': 2.0, 'b': 0.2}, {'a': 6.0, 'b': 7.25}]}


def test_put_latest_at_history():
    s = EventStorage(max_history=3)
    assert s.latest() == {} and s.at(1) == {} and s.history('loss') == []
    for i in range(1, 6): s.put_scalars(i, loss=1.0 / i, loss_mask=0.5 * i)
    s.put_scalar('val_score', 0.25, 5, reduce=False)
    assert s.latest() == {'loss': (1.0 / 5, 5), 'loss_mask': (2.5, 5), 'val_score': (0.25, 5)}
    assert s.at(5) == {'loss': 0.2, 'loss_mask': 2.5, 'val_score': 0.25} and s.at(4) == {}
    assert s.history('loss') == [(1.0 / 3, 3), (1.0 / 4, 4), (1.0 / 5, 5)]      # the last max_history values
    assert s.history('val_score') == [(0.25, 5)]
    s.put_scalar('loss', torch.tensor(0.5), 6)                                   # tensors are stored as floats
    assert s.latest()['loss'] == (0.5, 6) and type(s.latest()['loss'][0]) is float


def _rank(rank, port, out):
    dist.init_process_group('gloo', init_method=f'tcp://127.0.0.1:{port}', rank=rank, world_size=2)
    try:
        s = EventStorage()
        for it, vals in enumerate(PUT[rank], 1):
            s.put_scalars(it, **vals)
            s.put_scalar('lr', 0.1 * (rank + 1), it, reduce=False)
        with open(os.path.join(out, f'{rank}.json'), 'w') as f:
            json.dump({'latest': s.latest(), 'a': s.history('a'), 'b': s.history('b'), 'lr': s.history('lr')}, f)
    finally:
        dist.destroy_process_group()


def test_values_averaged_across_two_gloo_processes(tmp_path):
    with socket.socket() as sk:
        sk.bind(('127.0.0.1', 0)); port = sk.getsockname()[1]
    mp.spawn(_rank, args=(port, str(tmp_path)), nprocs=2, join=True)
    res = [json.loads((tmp_path / f'{r}.json').read_text()) for r in range(2)]
    mean = {k: [[(PUT[0][i][k] + PUT[1][i][k]) / 2, i + 1] for i in range(2)] for k in 'ab'}
    for r in range(2):
        assert res[r]['a'] == mean['a']
        assert [i for _, i in res[r]['b']] == [1, 2]
        assert [v for v, _ in res[r]['b']] == pytest.approx([v for v, _ in mean['b']], abs=1e-15)
        assert res[r]['lr'] == [[0.1 * (r + 1), 1], [0.1 * (r + 1), 2]]      # reduce=False: this process's own
        assert res[r]['latest']['a'] == [4.5, 2]
