# Medians and ratios of bench/commits/run.sh output: python3 table.py OUT_DIR
import json,glob,statistics,sys,re,collections
out=sys.argv[1]
d=collections.defaultdict(list)
for f in sorted(glob.glob(out+'/infer-*.json')):
    eng=f.split('infer-')[1].split('-')[0]
    try: j=json.load(open(f))
    except Exception as e: print('bad',f,e); continue
    for r in j['rows']:
        k=(r['dtype'],r['threads'])
        d[(eng,k,'decode')]+=r['decode']['runs']
        d[(eng,k,'prefill')]+=r['prefill']['64']['runs']
keys=sorted({k for (_,k,_) in d})
print('| dtype | threads | decode base | decode now | ratio | prefill-64 base | prefill-64 now | ratio |')
print('|---|---|---|---|---|---|---|---|')
for k in keys:
    row=[k[0],str(k[1])]
    for m in ('decode','prefill'):
        b=statistics.median(d[('base',k,m)]); n=statistics.median(d[('now',k,m)])
        row+=[f'{b:.1f}',f'{n:.1f}',f'{n/b:.2f}x']
    print('| '+' | '.join(row)+' |')
t=collections.defaultdict(list)
for f in glob.glob(out+'/train-*.txt'):
    m=re.match(r'.*train-(\w+)-([\d.]+)-(\d)\.txt',f); eng,v=m.group(1),m.group(2)
    s=open(f).read()
    mm=re.search(r'([\d.]+)\s*tokens/s',s)
    if mm: t[(eng,v)].append(float(mm.group(1)))
    mc=re.search(r'([\d.,]+)\s*tokens per CPU',s)
print()
for v in ['4','5.2','6','7']:
    if t[('base',v)] and t[('now',v)]:
        b=statistics.median(t[('base',v)]); n=statistics.median(t[('now',v)])
        print(f'train v{v}: base {b:.0f} tok/s, now {n:.0f} tok/s, {n/b:.2f}x')
