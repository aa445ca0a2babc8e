"""Cellpose's training schedule and precision measured on real images: what each change buys per CPU-minute.

Run: `python bench/real_schedule.py [--jobs J] [--cache DIR] [--write] [--readme]`.

Issue 17 section 3. The U-Net of `cpose.train_cellpose` trained on the real benchmark's train split (60 competition
images, `bench_real.SIZES`) with the real benchmark's budget (`bench_real.BUDGET`: 160 epochs of one batch of 8
random 128 px crops, cells at 17 px, AdamW 0.005, seed 0, one CPU thread), once per variant of the two settings
that `fit_unet` adds to cellpose's own training:
- `schedule`: 'cellpose' (`train.train_seg`'s learning-rate list: 10-epoch warm-up from 0, halvings over the last
  50 epochs) or 'budget' (5 % warm-up, cosine to 0);
- `amp`: float32 or bfloat16 autocast of the forward pass (what `amp='auto'` picks on a CPU with AVX512-BF16/AMX;
  on a CPU without it, bfloat16 is emulated and slower, and 'auto' stays float32);
and a user's first short run (10 epochs of one crop of every image: 80 optimizer steps, all inside `train_seg`'s
10-epoch warm-up) with either schedule. Each network is scored on the 18 tune images at its `diam_labels` without
SizeModel or post-processing (as the real bench scores networks alone; its learning curves come from snapshots of its
own runs). 'cellpose' in float32 is `train_seg`'s training exactly
(`tests/test_cpose.py` checks bit-identical weights). Training CPU is the process's user + system time of the
training call. Writes `results/real_schedule.csv` with `--write` (prints it otherwise), and its table in
`docs/guide_benchmarks.md` with `--readme`. About 35 CPU-minutes; the
variants run `--jobs` at a time.
"""
# not in CI
# (it trains six networks on the real images for about 35 CPU-minutes)
import argparse, json, sys, time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_real as B

OUT = B.REPO / 'results' / 'real_schedule.csv'
VARIANTS = {                                    # name: (schedule, amp, epochs)
    "train_seg's (cellpose, float32)": ('cellpose', False, 160),
    'cellpose schedule, bfloat16': ('cellpose', True, 160),
    'budget schedule, float32': ('budget', False, 160),
    'budget schedule, bfloat16 (shipped)': ('budget', True, 160),
    "a first run: 10 epochs of every image, train_seg's schedule, bfloat16": ('cellpose', True, -10),
    'a first run: 10 epochs of every image, budget schedule, bfloat16': ('budget', True, -10),
}                                               # epochs -10: 10 epochs of every train image (nimg_per_epoch None)


def run_variant(name, cache: Path) -> list:
    "Train one variant (cached in `cache/<n>/`) and score it on the tune split: rows of `results/real_schedule.csv`."
    B._setup()
    from cellseg_nb import cpose
    from cellseg_nb.data import SartoriusData
    schedule, amp, epochs = VARIANTS[name]
    splits, b = B.load_splits(), B.BUDGET
    npe = b['nimg_per_epoch']
    if epochs < 0: epochs, npe = -epochs, None
    out = cache / _key(name)
    res_file = out / 'result.json'
    if res_file.is_file(): return json.loads(res_file.read_text())['rows']
    data = SartoriusData(B.split_folder(cache / 'data' / 'train', splits['train']))
    c0 = B.cpu()
    path = cpose.train_cellpose(data, out, n_epochs=epochs, bsize=b['bsize'], batch_size=b['batch_size'],
                                nimg_per_epoch=npe, diam_mean=b['diam_mean'], seed=B.SEED,
                                schedule=schedule, amp=amp, progress=False)
    train_cpu = B.cpu() - c0
    meta = json.loads((out / 'cellpose.json').read_text())
    scorer = B.Scorer(cache, splits)
    preds, _ = B.predict_split(B.unet_predictor(path), splits['tune'])
    s = B._score(scorer.gt['tune'], preds, scorer.types)
    rows = [dict(variant=name, schedule=schedule, autocast=meta['settings']['autocast'], epochs=epochs,
                 **{'crops per epoch': npe or len(splits['train'])},
                 **{'train CPU s': round(train_cpu, 1), 'train CPU s per epoch': round(train_cpu / epochs, 2)},
                 **{k: s[k] for k in ('mAP', 'mAP astro', 'mAP cort', 'mAP shsy5y', 'cells predicted')})]
    from cellseg_nb.files import write_json
    write_json(res_file, dict(train_cpu_s=train_cpu, rows=rows))     # temporary name, then renamed
    return rows


COLUMNS = ['epochs', 'crops per epoch', 'train CPU s', 'train CPU s per epoch', 'mAP', 'mAP astro', 'mAP cort', 'mAP shsy5y',
           'cells predicted']


def table_markdown(csv=OUT) -> str:
    "The guide's `real-schedule-table` block: `results/real_schedule.csv` as a Markdown table (mAP to 3 decimals)."
    t = pd.read_csv(csv)
    head = '| variant | ' + ' | '.join(COLUMNS) + ' |\n|' + '---|' * (len(COLUMNS) + 1) + '\n'
    def cell(k, v): return f'{v:.3f}' if k.startswith('mAP') else f'{v:g}'
    return head + ''.join('| ' + ' | '.join([r['variant']] + [cell(k, r[k]) for k in COLUMNS]) + ' |\n' for _, r in t.iterrows())


def _key(name): return ''.join(c if c.isalnum() else '_' for c in name).strip('_')


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--jobs', type=int, default=1)
    ap.add_argument('--cache', default=None, help='trained variants and their scores are kept here and reused')
    ap.add_argument('--write', action='store_true', help=f'write {OUT.relative_to(B.REPO)}')
    ap.add_argument('--readme', action='store_true', help="also rewrite the guide's real-schedule-table block from it")
    a = ap.parse_args(argv)
    if not B.DATA.is_dir(): sys.exit(f"skipped: {B.DATA} not found (the real competition images)")
    import tempfile
    cache = Path(a.cache or tempfile.mkdtemp(prefix='real_schedule_'))
    cache.mkdir(parents=True, exist_ok=True)
    B.split_folder(cache / 'data' / 'train', B.load_splits()['train'])
    t0 = time.time()
    with ProcessPoolExecutor(max(1, a.jobs)) as ex:
        rows = [r for rs in ex.map(run_variant, list(VARIANTS), [cache] * len(VARIANTS)) for r in rs]
    table = pd.DataFrame(rows)
    print(table.round(4).to_string(index=False))
    print(f"wall {time.time() - t0:.0f} s")
    if a.write:
        from cellseg_nb.files import write_csv
        write_csv(OUT, table)
        print(f"wrote {OUT}")
    if a.readme:
        sys.path.insert(0, str(B.REPO / 'docs'))
        import readme
        print(f"wrote {readme.set_block('real-schedule-table', table_markdown(OUT))}")


if __name__ == '__main__':
    main()
