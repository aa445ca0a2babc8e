"Submission files: round trips on real files, and every fault of validate_submission detected and named."
import os
import numpy as np
import pandas as pd
import pytest
from cellseg_nb.instances import Instances
from cellseg_nb.postprocess import random_candidates, remove_overlaps
from cellseg_nb.submission import write_submission, read_submission, validate_submission, expected_ids

SHAPE = (520, 704)


def make_preds(n_images=4, seed=0, shape=SHAPE, n=200):
    preds = {f"{seed:02d}{k:010x}": remove_overlaps(random_candidates(n, shape, seed=seed * 100 + k), 0.0, 20)
             for k in range(n_images)}
    return preds


def test_roundtrip_real_size(tmp_path):
    preds = make_preds()
    ids = list(preds)[::-1] + ['empty0']
    preds[ids[1]] = preds[ids[1]].select([])
    p = write_submission(preds, tmp_path / 'submission.csv', ids=ids)
    assert sorted(os.listdir(tmp_path)) == ['submission.csv']
    df = pd.read_csv(p, dtype=str, keep_default_na=False)
    assert list(df.columns) == ['id', 'predicted']
    assert len(df) == sum(max(len(v), 1) for v in preds.values()) + 1
    assert (df.groupby('id', sort=False).size().index.tolist()) == ids
    back = read_submission(p)
    assert list(back) == ids
    for k, v in preds.items():
        assert back[k].shape == v.shape
        assert np.array_equal(back[k].starts, v.starts) and np.array_equal(back[k].lengths, v.lengths)
        assert np.array_equal(back[k].run_offsets, v.run_offsets)
        # pixels decoded independently of our codec
        dense = np.zeros(SHAPE[0] * SHAPE[1], np.int32)
        for i, r in enumerate(df.loc[df.id == k, 'predicted']):
            if not r: continue
            t = np.array(r.split(), int).reshape(-1, 2)
            for s, l in t: dense[s - 1:s - 1 + l] = i + 1
        assert np.array_equal(dense.reshape(SHAPE), v.to_label_image()) if len(v) else not dense.any()
    assert len(back['empty0']) == 0
    rep = validate_submission(p, ids)
    assert rep.ok and rep.n_images == len(ids) and rep.n_cells == sum(len(v) for v in preds.values()), str(rep)


def test_write_refuses_bad_input(tmp_path):
    preds = make_preds(1)
    k = next(iter(preds))
    dup = Instances.concat([preds[k], preds[k].select([3])])
    with pytest.raises(ValueError, match=f"image {k}: cells 3 and {len(dup) - 1} overlap"):
        write_submission({k: dup}, tmp_path / 's.csv')
    with pytest.raises(ValueError, match="ids not in `ids`"):
        write_submission(preds, tmp_path / 's.csv', ids=['other'])
    with pytest.raises(ValueError, match="expected Instances"):
        write_submission({'a': np.zeros((2, 2))}, tmp_path / 's.csv')
    assert os.listdir(tmp_path) == []


def test_expected_ids_sources(tmp_path):
    (tmp_path / 'test').mkdir()
    for k in ('b', 'a'): (tmp_path / 'test' / f'{k}.png').touch()
    (tmp_path / 'test' / 'notes.txt').touch()
    assert expected_ids(tmp_path / 'test') == ['a', 'b']
    (tmp_path / 'sample_submission.csv').write_text('id,predicted\nb,1 1\nb,3 1\na,5 1\n')
    assert expected_ids(tmp_path / 'sample_submission.csv') == ['b', 'a']
    assert expected_ids(['x', 3]) == ['x', '3']
    with pytest.raises(ValueError, match='not a folder'): expected_ids(tmp_path / 'nothing')


def faults_file(tmp_path, shape=(30, 40)):
    "A file with one fault of every kind that can sit in a file, and the (kind, line) pairs expected."
    a = Instances.from_masks(np.pad(np.ones((1, 5, 5), bool), ((0, 0), (2, 23), (2, 33))))
    r = a.to_rles()[0]
    lines = ['id,predicted',
             f'im1,{r}',              # 2 ok
             f'im1,{r}',              # 3 overlaps line 2
             'im1,1 2 3',             # 4 odd tokens
             'im1,7 x',               # 5 non-integer
             'im1,9 3 4 1',           # 6 not ascending
             'im1,20 0',              # 7 length 0
             f'im2,{30 * 40 - 2} 5',  # 8 past the end
             'im2,0 4',               # 9 0-indexed start
             'im2,',                  # 10 empty prediction with cells
             'im2,1 2,extra',         # 11 three fields
             'zzz,1 1',               # 12 unknown id
             'im2,1200 1']            # 13 ok (last pixel)
    p = tmp_path / 'broken.csv'
    p.write_text('\n'.join(lines) + '\n')
    want = {('overlap', 3), ('malformed_rle', 4), ('malformed_rle', 5), ('malformed_rle', 6), ('malformed_rle', 7),
            ('out_of_bounds', 8), ('out_of_bounds', 9), ('empty_with_cells', 10), ('bad_row', 11), ('unknown_id', 12),
            ('missing_id', 0)}
    return p, want


def test_validate_finds_every_fault(tmp_path):
    p, want = faults_file(tmp_path)
    rep = validate_submission(p, ['im1', 'im2', 'im3'], shape=(30, 40))
    got = set(zip(rep.problems.kind, rep.problems.line))
    assert got == want, str(rep)
    assert rep.problems.loc[rep.problems.kind == 'missing_id', 'id'].tolist() == ['im3']
    assert rep.problems.loc[rep.problems.kind == 'unknown_id', 'id'].tolist() == ['zzz']
    text = str(rep)
    for kind, line in want:
        assert f"[{kind}]" in text and (line == 0 or f"line {line}:" in text)
    with pytest.raises(ValueError, match=r'\[overlap\] line 3: image im1: cells on lines 2 and 3 share 25 pixels'):
        validate_submission(p, ['im1', 'im2', 'im3'], shape=(30, 40), raise_on_error=True)
    # each fault alone is found alone
    body = p.read_text().splitlines()
    for k in range(3, 13):
        q = tmp_path / f'one{k}.csv'
        q.write_text('\n'.join([body[0], body[1], body[12], body[k - 1]]) + '\n')
        rep1 = validate_submission(q, ['im1', 'im2'], shape=(30, 40))
        kinds = set(rep1.problems.kind)
        expect = {kd for kd, ln in want if ln == k}
        assert kinds == expect, (k, str(rep1))


def test_validate_file_level_faults(tmp_path):
    p = tmp_path / 's.csv'
    p.write_text('')
    assert set(validate_submission(p, ['a']).problems.kind) == {'empty_file', 'missing_id'}
    p.write_text('id,predicted\n')
    assert set(validate_submission(p, ['a', 'b']).problems.kind) == {'missing_id'}
    for header in ['\ufeffid,predicted', 'ImageId,EncodedPixels', 'id,predicted,score', 'predicted,id', 'id']:
        p.write_text(header + '\na,1 1\n')
        rep = validate_submission(p, ['a'])
        assert 'wrong_header' in set(rep.problems.kind), header
        with pytest.raises(ValueError, match='header'): read_submission(p)
    p.write_bytes(b'id,predicted\na,1 1\xff\n')
    assert set(validate_submission(p, ['a']).problems.kind) == {'unreadable', 'missing_id'}
    assert set(validate_submission(tmp_path / 'none.csv', ['a']).problems.kind) == {'no_file', 'missing_id'}


def test_overlap_pairs_match_dense(tmp_path):
    rng = np.random.default_rng(3)
    shape = (60, 80)
    c = random_candidates(40, shape, seed=3, area=(20, 200))           # raw, overlapping
    ids = {}
    p = tmp_path / 's.csv'
    p.write_text('id,predicted\n' + ''.join(f'img,{r}\n' for r in c.to_rles()))
    rep = validate_submission(p, ['img'], shape=shape)
    m = c.to_masks().reshape(len(c), -1).astype(np.int64)
    inter = m @ m.T
    want = {(i + 2, j + 2, int(inter[i, j])) for i in range(len(c)) for j in range(i + 1, len(c)) if inter[i, j] > 0}
    got = set()
    for msg in rep.problems.loc[rep.problems.kind == 'overlap', 'message']:
        w = msg.split()
        got.add((int(w[5]), int(w[7]), int(w[9])))
    assert got == want and len(want) > 10
    few = validate_submission(p, ['img'], shape=shape, max_overlaps=5).problems.query("kind == 'overlap'")
    listed = {(int(w[5]), int(w[7]), int(w[9])) for w in few.message.str.split().iloc[:-1]}
    assert len(few) == 6 and len(listed) == 5 and listed <= want                # the first 5, exact, then a summary
    cover = m.sum(0)
    assert few.message.iloc[-1] == (f"image img: more overlapping pairs than the 5 listed: "
                                    f"{int((inter - np.diag(np.diag(inter)) > 0).any(1).sum())} cells overlap another, "
                                    f"{int((cover > 1).sum())} pixels are covered twice or more")


def test_overlap_checks_stay_bounded_on_a_pile_up(tmp_path):
    "A half-trained model's 1000 large piled-up masks: the overlap error and the report take seconds, not minutes."
    import time
    pile = random_candidates(1000, SHAPE, seed=0, area=(4000, 60000), dup_frac=0.6)
    t = time.process_time()
    with pytest.raises(ValueError, match=r"image x: cells 0 and \d+ overlap by \d+ px \(\d+ cells overlap another"):
        write_submission({'x': pile}, tmp_path / 's.csv')
    assert not (tmp_path / 's.csv').exists()
    (tmp_path / 'pile.csv').write_text('id,predicted\n' + ''.join(f'x,{r}\n' for r in pile.to_rles()))
    rep = validate_submission(tmp_path / 'pile.csv', ['x'])
    cpu = time.process_time() - t
    ov = rep.problems.query("kind == 'overlap'")
    assert len(ov) == 101 and ov.message.iloc[-1].startswith('image x: more overlapping pairs than the 100 listed')
    one, = [(int(w[5]) - 2, int(w[7]) - 2, int(w[9])) for w in ov.message.iloc[:1].str.split()]
    assert one[2] == int((pile[one[0]].to_masks() & pile[one[1]].to_masks()).sum())    # exact, against dense masks
    print(f"\n1000 piled-up masks ({pile.n_pixels:,} px): overlap error + report in {cpu:.1f} CPU s")
    assert cpu < 20


def test_read_submission_errors(tmp_path):
    p = tmp_path / 's.csv'
    p.write_text('id,predicted\na,1 1\na,1 2 3\n')
    with pytest.raises(ValueError, match=r's.csv line 3, image a.*odd number of tokens'): read_submission(p, (4, 4))
    p.write_text('id,predicted\na,1 1,2\n')
    with pytest.raises(ValueError, match='line 2: 3 fields'): read_submission(p, (4, 4))
