"""Run every benchmark's `--check` (CI): `python bench/check_all.py [name ...]`.

The rule: every `bench/bench_*.py` whose source mentions `--check` is run as `python bench/bench_X.py --check`,
except a file holding the line `# not in CI` (a check that trains models for minutes, run by hand). A file holding
the line `# CI: alone` (a check that runs its own parallel jobs: `bench_real.py`) runs after the others, by itself,
so that it does not disturb their timed ratios. Each check
asserts identical outputs between ours and the peer and its ratio bound, and exits non-zero when one is missed.
Prints each check's wall and CPU time, and exits 1 if any check failed. `-j N` (default 2) runs N checks at a
time: each check times single-threaded work in CPU time (or, for Mask R-CNN, one torch thread), so checks on
separate cores do not disturb each other's ratios much.
"""
import os, resource, subprocess, sys, time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
SKIP_MARK = '# not in CI'
ALONE_MARK = '# CI: alone'


def checks(names=()):
    "The benchmark files that CI runs, in name order (only `names` when given)."
    out = []
    for p in sorted(BENCH.glob('bench_*.py')):
        src = p.read_text()
        if "'--check'" not in src and '"--check"' not in src: continue
        if any(line.strip() == SKIP_MARK for line in src.splitlines()): continue
        if names and p.stem not in names: continue
        out.append(p)
    return out


def cpu_children():
    r = resource.getrusage(resource.RUSAGE_CHILDREN); return r.ru_utime + r.ru_stime


def run_one(p, env):
    "Run one check; returns (path, CompletedProcess, wall seconds)."
    t = time.time()
    r = subprocess.Popen([sys.executable, str(p), '--check'], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    out, err = r.communicate()
    return p, subprocess.CompletedProcess(r.args, r.returncode, out, err), time.time() - t


def main(names=(), jobs=2):
    env = {**os.environ, 'PYTHONWARNINGS': 'ignore', 'PYTHONPATH': os.pathsep.join(
        [str(BENCH.parent)] + ([os.environ['PYTHONPATH']] if os.environ.get('PYTHONPATH') else []))}
    failed, t_all = [], time.time()
    todo = checks(names)
    from concurrent.futures import ThreadPoolExecutor
    alone = [p for p in todo if any(line.strip() == ALONE_MARK for line in p.read_text().splitlines())]
    with ThreadPoolExecutor(jobs) as ex:
        results = list(ex.map(lambda p: run_one(p, env), [p for p in todo if p not in alone]))
    results += [run_one(p, env) for p in alone]
    for p, r, wall in results:
        lines = [l for l in r.stdout.splitlines() if l.startswith(('OK', 'MISSED'))]
        print(f"{'passed' if r.returncode == 0 else 'FAILED'} {p.name} --check: {wall:.0f} s wall", flush=True)
        for l in lines: print('    ' + l)
        if r.returncode:
            failed.append(p.name)
            print(r.stdout[-3000:] + r.stderr[-3000:])
    print(f"bench checks: {len(todo) - len(failed)} passed, {len(failed)} failed in {time.time() - t_all:.0f} s wall, "
          f"{cpu_children():.0f} s CPU")
    if failed: sys.exit(1)


if __name__ == '__main__':
    import argparse
    ap = argparse.ArgumentParser(); ap.add_argument('names', nargs='*'); ap.add_argument('-j', '--jobs', type=int, default=2)
    a = ap.parse_args()
    main(a.names, a.jobs)
