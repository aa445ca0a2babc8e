"""The Sartorius RLE codec: bad input names the annotation and fault; round trips against pycocotools and against
the public-notebook codec (written here from its description); canonical output."""
import numpy as np
import pytest
from pycocotools import mask as mask_util
from cellseg_nb.rle import (parse_rles, format_rles, canonical_runs, rle_encode, rle_decode, to_coco_rle,
                            from_coco_rle, coco_rle_runs, runs_to_pixels, pixels_to_runs)
from cellseg_nb.instances import Instances


def public_decode(rle, shape):
    "Public-notebook decoder: row-major, 1-indexed, a loop over runs."
    s = rle.split()
    starts, lengths = np.asarray(s[0::2], int) - 1, np.asarray(s[1::2], int)
    img = np.zeros(shape[0] * shape[1], np.uint8)
    for lo, n in zip(starts, lengths): img[lo:lo + n] = 1
    return img.reshape(shape).astype(bool)


def public_encode(mask):
    "Public-notebook encoder: pad the flattened mask with zeros and diff."
    px = np.concatenate([[0], mask.ravel().astype(np.uint8), [0]])
    runs = np.where(px[1:] != px[:-1])[0] + 1
    runs[1::2] -= runs[::2]
    return ' '.join(map(str, runs))


BAD = [('1 2 3', 'odd number of tokens'), ('1 x', "token 'x' is not an integer"), ('1.5 2', 'not an integer'),
       ('1e1 2', 'not an integer'), ('0 3', 'start 0 < 1'), ('-4 3', 'start -4 < 1'), ('3 0', 'length 0 < 1'),
       ('3 -2', 'length -2 < 1'), ('11 3', 'past the image end'), ('12 2', 'past the image end'),
       ('13 1', 'past the image end'), ('9223372036854775807 9223372036854775807', 'past the image end'),
       ('5 2 3 1', 'not ascending'), ('1 3 2 2', 'overlapping')]


@pytest.mark.parametrize('bad,what', BAD)
def test_bad_input_names_annotation_image_and_fault(bad, what):
    with pytest.raises(ValueError, match='bad RLE') as e:
        parse_rles(['1 1', '', bad, '2 1'], (3, 4), ids=['a', 'b', 'img_c', 'd'])
    assert what in str(e.value) and "annotation 2 (image id 'img_c')" in str(e.value)
    with pytest.raises(ValueError, match='annotation 0') as e:
        rle_decode(bad, (3, 4))
    assert what in str(e.value)
    with pytest.raises(ValueError, match="image id 'x9'") as e:
        Instances.from_rles(['1 2', bad], (3, 4), ids=['x8', 'x9'])
    assert what in str(e.value) and 'annotation 1' in str(e.value)


def test_first_fault_wins_and_good_inputs_pass():
    with pytest.raises(ValueError, match='annotation 1'):
        parse_rles(['1 1', '1 x', '0 3'], (3, 4))
    assert parse_rles(['12 1'], (3, 4))[0].tolist() == [11]           # the last pixel is fine
    assert rle_decode('12 1', (3, 4))[2, 3]


def test_empty_and_missing_annotations_are_cells_without_pixels():
    s, l, ro = parse_rles(['', '   ', None, float('nan'), '2 1'], (3, 4))
    assert ro.tolist() == [0, 0, 0, 0, 0, 1] and s.tolist() == [1] and l.tolist() == [1]
    inst = Instances.from_rles(['', '2 1'], (3, 4))
    assert len(inst) == 2 and inst.areas.tolist() == [0, 1] and inst.to_rles() == ['', '2 1']
    assert not rle_decode('', (3, 4)).any() and rle_encode(np.zeros((3, 4), bool)) == ''


def test_row_major_one_indexed():
    m = rle_decode('2 1 5 2', (2, 4))
    assert np.argwhere(m).tolist() == [[0, 1], [1, 0], [1, 1]]
    assert rle_encode(m) == '2 1 5 2'


def test_canonical_output_merges_touching_runs():
    assert format_rles(*parse_rles(['1 2 3 2', '4 1 5 1 9 3'], (3, 4))) == ['1 4', '4 2 9 3']
    s, l, ro = canonical_runs([0, 3, 5, 9], [3, 0, 2, 1], [0, 2, 4])
    assert (s.tolist(), l.tolist(), ro.tolist()) == ([0, 5, 9], [3, 2, 1], [0, 1, 3])


def test_random_round_trips_vs_public_codec_and_pycocotools():
    rng = np.random.default_rng(0)
    for _ in range(200):
        shape = (int(rng.integers(1, 40)), int(rng.integers(1, 40)))
        m = rng.random(shape) < rng.random()
        r = rle_encode(m)
        assert r == public_encode(m)
        assert np.array_equal(rle_decode(r, shape), m) and np.array_equal(public_decode(r, shape), m)
        ref = mask_util.encode(np.asfortranarray(m.astype(np.uint8)))
        assert to_coco_rle(m) == ref and to_coco_rle(r, shape) == ref
        assert from_coco_rle(ref) == r
        raw = {'size': list(shape), 'counts': _uncompressed_counts(m)}
        assert mask_util.frPyObjects(raw, *shape) == ref and from_coco_rle(raw) == r
        s, l, sh = coco_rle_runs(ref)
        assert sh == shape and np.array_equal(runs_to_pixels(s, l), np.flatnonzero(m))
        assert [x.tolist() for x in pixels_to_runs(np.flatnonzero(m))] == [s.tolist(), l.tolist()]


def _uncompressed_counts(m):
    "COCO uncompressed counts (column-major, background first) of a mask, computed directly."
    px = np.concatenate([[0], m.T.ravel().astype(np.int8), [1 - (m.T.ravel()[-1] if m.size else 0)]])
    flips = np.flatnonzero(px[1:] != px[:-1])
    return np.diff(np.concatenate([[0], flips])).tolist()


def test_batch_paths_match_single_mask_codec():
    rng = np.random.default_rng(1)
    shape = (30, 40)
    masks = rng.random((25, *shape)) < rng.random((25, 1, 1)) * 0.5
    masks[3] = False                                                   # an empty cell
    rles = [rle_encode(m) for m in masks]
    inst = Instances.from_rles(rles, shape)
    assert inst.to_rles() == rles
    assert np.array_equal(inst.to_masks(), masks)
    assert inst.to_coco_rles() == [mask_util.encode(np.asfortranarray(m.astype(np.uint8))) for m in masks]
    # a non-canonical input (split runs) comes back canonical
    split = ['1 1 2 1 3 5', '7 2 9 1']
    assert Instances.from_rles(split, shape).to_rles() == ['1 7', '7 3']


def test_coco_polygons_rasterize_like_pycocotools():
    shape = (30, 40)
    polys = [[[5, 5, 20, 6, 18, 22, 4, 15]], [[30, 2, 38, 2, 38, 9, 30, 9], [1, 25, 6, 25, 6, 29]], []]
    inst = Instances.from_coco(polys, shape)
    for k, p in enumerate(polys):
        ref = mask_util.decode(mask_util.merge(mask_util.frPyObjects(p, *shape))).astype(bool) if p else \
            np.zeros(shape, bool)
        assert np.array_equal(inst.to_masks()[k], ref)
