# Medians and ratios of bench/commits/run.sh output: python3 table.py OUT_DIR
# Each cell: the medians of all runs of each engine, and the median over the rounds of the ratio of
# one round's pair (now / base, each its runs' median), the figure that survives the VM's slow periods.
import json, glob, statistics, sys, re, collections
out = sys.argv[1]
runs = collections.defaultdict(list)    # (eng, cell, metric) -> every run's tok/s
pair = collections.defaultdict(dict)    # (cell, metric) -> round -> {eng: median of that process}
for f in sorted(glob.glob(out + '/infer-*.json')):
    m = re.match(r'.*infer-(base|now)-(\w+)-(\d+)-(\d+)\.json$', f)
    if not m: continue
    eng, rnd = m.group(1), int(m.group(4))
    try: j = json.load(open(f))
    except Exception as e: print('bad', f, e); continue
    for r in j['rows']:
        cell = (r['dtype'], r['threads'])
        for metric, rs in (('decode', r['decode']['runs']), ('prefill', r['prefill']['64']['runs'])):
            runs[(eng, cell, metric)] += rs
            pair[(cell, metric)].setdefault(rnd, {})[eng] = statistics.median(rs)
def ratio(key):
    rs = [p['now'] / p['base'] for p in pair[key].values() if 'now' in p and 'base' in p]
    return statistics.median(rs), min(rs), max(rs)
cells = sorted({c for (c, _) in pair})
print('| dtype | threads | decode base | decode now | ratio (pairs, min-max) | prefill-64 base | prefill-64 now | ratio (pairs, min-max) |')
print('|---|---|---|---|---|---|---|---|')
for c in cells:
    row = [c[0], str(c[1])]
    for metric in ('decode', 'prefill'):
        b = statistics.median(runs[('base', c, metric)]); n = statistics.median(runs[('now', c, metric)])
        r, lo, hi = ratio((c, metric))
        row += [f'{b:.1f}', f'{n:.1f}', f'{r:.2f}x ({lo:.2f}-{hi:.2f})']
    print('| ' + ' | '.join(row) + ' |')
t = collections.defaultdict(dict)
for f in glob.glob(out + '/train-*.txt'):
    m = re.match(r'.*train-(base|now)-([\d.]+)-(\d+)\.txt$', f)
    mm = re.search(r'([\d.]+)\s*tokens/s', open(f).read())
    if m and mm: t[m.group(2)].setdefault(int(m.group(3)), {})[m.group(1)] = float(mm.group(1))
print()
for v in ['4', '5.2', '6', '7']:
    ps = [p for p in t[v].values() if 'now' in p and 'base' in p]
    if not ps: continue
    b = statistics.median(p['base'] for p in ps); n = statistics.median(p['now'] for p in ps)
    rs = [p['now'] / p['base'] for p in ps]
    print(f'train v{v}: base {b:.0f} tok/s, now {n:.0f} tok/s, pairs {statistics.median(rs):.2f}x ({min(rs):.2f}-{max(rs):.2f})')
