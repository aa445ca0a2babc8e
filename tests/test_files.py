"""Atomic writing (`cellseg_nb.files`) and the modules' writers that go through it: a write that raises midway leaves
neither the target nor a temporary file, and an existing target keeps its old bytes. Cost: about 2 CPU-seconds."""
import json
import numpy as np
import pandas as pd
import pytest
import torch

from cellseg_nb.files import (atomic_write, atomic_path, stale_temps, write_bytes, write_text, write_json, write_csv,
                              save_torch, save_figure)


def _listing(folder): return sorted(p.name for p in folder.iterdir())


class Boom(Exception): pass


def test_round_trips_match_the_plain_writers(tmp_path):
    df = pd.DataFrame({'id': ['a', 'b,c'], 'x': [1.25, np.nan], 'n': [1, 2]})
    df.to_csv(tmp_path / 'ref.csv', index=False)
    assert write_csv(tmp_path / 'sub' / 'a.csv', df).read_bytes() == (tmp_path / 'ref.csv').read_bytes()
    df.to_csv(tmp_path / 'ref_i.csv')
    assert write_csv(tmp_path / 'i.csv', df, index=True).read_bytes() == (tmp_path / 'ref_i.csv').read_bytes()
    obj = {'a': [1, 2.5, None], 'é': 'ü'}
    assert json.loads(write_json(tmp_path / 'a.json', obj, indent=1).read_text()) == obj
    assert write_text(tmp_path / 't.txt', 'x\r\ny\n').read_bytes() == b'x\r\ny\n'       # no newline translation
    assert write_bytes(tmp_path / 'b.bin', b'\x00\xff').read_bytes() == b'\x00\xff'
    sd = {'w': torch.arange(6.).reshape(2, 3)}
    assert torch.equal(torch.load(save_torch(sd, tmp_path / 'm.pt'), weights_only=True)['w'], sd['w'])
    import matplotlib; matplotlib.use('Agg'); import matplotlib.pyplot as plt
    fig, ax = plt.subplots(); ax.plot([0, 1])
    png = save_figure(fig, tmp_path / 'f.png').read_bytes()
    assert png[:8] == b'\x89PNG\r\n\x1a\n' and fig.number not in plt.get_fignums()   # a PNG, and this figure closed
    assert not any(n.endswith('.tmp') for n in _listing(tmp_path) + _listing(tmp_path / 'sub'))


@pytest.mark.parametrize('existing', [False, True])
def test_a_write_that_raises_midway_leaves_no_trace(tmp_path, existing):
    target = tmp_path / 'out.csv'
    if existing: target.write_bytes(b'old,good\n')
    before = _listing(tmp_path)

    def half_written():
        with atomic_write(target, 'w') as f:
            f.write('id,predicted\n' * 1000); f.flush()
            assert stale_temps(target)                           # the bytes went to a temporary file beside it ...
            assert (target.read_bytes() == b'old,good\n') if existing else not target.exists()   # ... not the target
            raise Boom('disk full')
    with pytest.raises(Boom): half_written()

    class BadFrame(pd.DataFrame):                                # pandas raising in the middle of to_csv
        def to_csv(self, f, **kw):
            f.write('id\n'); raise Boom('bad row')
    with pytest.raises(Boom): write_csv(target, BadFrame({'id': [1]}))
    with pytest.raises(Exception): write_json(target, {'x': object()})       # not JSON-serialisable
    with pytest.raises(Exception): save_torch({'f': lambda: 0}, target)      # not picklable
    with pytest.raises(FileNotFoundError, match='created no file'):          # a writer that wrote nothing
        with atomic_path(target): pass
    assert _listing(tmp_path) == before and stale_temps(target) == []
    assert (target.read_bytes() == b'old,good\n') if existing else not target.exists()


def test_modules_write_through_it(tmp_path):
    "A submission whose last image is invalid raises and leaves the previous submission.csv intact."
    from cellseg_nb.instances import Instances
    from cellseg_nb.submission import write_submission
    lab = np.zeros((8, 8), np.int32); lab[1:3, 1:3] = 1; lab[5:7, 5:7] = 2
    good = Instances.from_label_image(lab)
    path = write_submission({'a': good}, tmp_path / 'submission.csv')
    first = path.read_bytes()
    overlapping = Instances.from_masks(np.stack([lab == 1, lab > 0]))
    with pytest.raises(ValueError, match='overlap'):
        write_submission({'a': good, 'b': overlapping}, tmp_path / 'submission.csv')
    assert path.read_bytes() == first and _listing(tmp_path) == ['submission.csv']


_NO_ROOM_SCRIPT = r'''
import errno, resource, signal, sys, torch
from pathlib import Path
from cellseg_nb.files import write_bytes, save_torch
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)           # a write past the limit fails with EFBIG instead of killing us
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
folder = Path(sys.argv[1])
for name, write in [('big.bin', lambda p: write_bytes(p, b'x' * (3 << 20))),
                    ('big.pt', lambda p: save_torch({'w': torch.zeros(1 << 20)}, p))]:
    try: write(folder / name)
    except OSError as e: print(name, e.errno, '|', e, '|', type(e.__cause__).__name__)
    else: print(name, 'written')
'''


def test_no_room_to_write_is_one_clear_error(tmp_path):
    "A file-size limit (as a full disk) under plain writes and torch.save: an OSError naming the file, nothing left."
    import subprocess, sys, errno
    (tmp_path / 'big.pt').write_bytes(b'old checkpoint')
    r = subprocess.run([sys.executable, '-c', _NO_ROOM_SCRIPT, str(tmp_path)], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    lines = dict(line.split(' ', 1) for line in r.stdout.strip().splitlines())
    assert lines['big.bin'].startswith(f'{errno.EFBIG} |') and lines['big.bin'].endswith('| OSError')
    assert lines['big.pt'].startswith(f'{errno.ENOSPC} |') and lines['big.pt'].endswith('| RuntimeError')
    for name in ('big.bin', 'big.pt'):
        assert str(tmp_path / name) in lines[name] and 'no room to write it' in lines[name] and 'MiB free' in lines[name]
    assert _listing(tmp_path) == ['big.pt'] and (tmp_path / 'big.pt').read_bytes() == b'old checkpoint'
