#!/usr/bin/env python3
"""Import cycles between the top-level modules of src/ (issue 29, one-way layers).

    python3 .ci/layers.py [src] [-v]

Reads `crate::X` paths (use lines, `crate::{a, b}` groups on one line, inline paths) of non-test
code (a file stops at its first `#[cfg(test)]`; tests.rs files and tests/ folders are skipped),
and prints the groups of modules that reach each other (strongly connected components), then
every pair that imports both ways with file:line of each side. `-v`: every edge with its count
and first place. Exit status 1 when a cycle remains. The same check runs in `cargo test` as
integration-tests/layers.rs (Rust only); this script is for reading the whole graph.
"""
import os, re, sys, collections
args = [a for a in sys.argv[1:] if not a.startswith('-')]
root = args[0] if args else 'src'
mods = {os.path.splitext(f)[0] for f in os.listdir(root) if f.endswith('.rs') or os.path.isdir(os.path.join(root, f))}
mods -= {'lib', 'main'}
edges = collections.defaultdict(list)  # (a,b) -> [file:line]
pat = re.compile(r'\bcrate::(\w+)')
grp = re.compile(r'\bcrate::\{([^}]*)\}')
for dp, _, fs in os.walk(root):
    for f in fs:
        if not f.endswith('.rs') or f == 'tests.rs' or dp.endswith('/tests'):
            continue
        p = os.path.join(dp, f)
        rel = os.path.relpath(p, root)
        top = rel.split(os.sep)[0]
        top = os.path.splitext(top)[0]
        if top not in mods:
            continue
        for n, line in enumerate(open(p, encoding='utf-8'), 1):
            if line.strip().startswith('#[cfg(test)]'):
                break
            s = line.split('//')[0] if not line.strip().startswith('//') else ''
            targets = set(pat.findall(s))
            for g in grp.findall(s):
                targets |= {t.strip().split('::')[0] for t in g.split(',') if t.strip()}
            for t in targets:
                if t in mods and t != top:
                    edges[(top, t)].append(f'src/{rel}:{n}')
graph = collections.defaultdict(set)
for a, b in edges:
    graph[a].add(b)
# Tarjan
index, low, stack, on, sccs, i = {}, {}, [], set(), [], [0]
def strong(v):
    index[v] = low[v] = i[0]; i[0] += 1; stack.append(v); on.add(v)
    for w in graph[v]:
        if w not in index:
            strong(w); low[v] = min(low[v], low[w])
        elif w in on:
            low[v] = min(low[v], index[w])
    if low[v] == index[v]:
        c = []
        while True:
            w = stack.pop(); on.discard(w); c.append(w)
            if w == v: break
        sccs.append(c)
sys.setrecursionlimit(10000)
for v in sorted(mods):
    if v not in index:
        strong(v)
big = [sorted(c) for c in sccs if len(c) > 1]
print('modules:', len(mods), 'edges:', len(edges))
for c in big:
    print(f'\nCYCLE GROUP ({len(c)}): {" ".join(c)}')
# direct two-way pairs
print('\nTWO-WAY PAIRS:')
for (a, b) in sorted(edges):
    if a < b and (b, a) in edges:
        print(f'  {a} <-> {b}')
        print(f'    {a} -> {b}: {", ".join(edges[(a,b)][:6])}{" ..." if len(edges[(a,b)])>6 else ""}')
        print(f'    {b} -> {a}: {", ".join(edges[(b,a)][:6])}{" ..." if len(edges[(b,a)])>6 else ""}')
if '-v' in sys.argv:
    print('\nEDGES:')
    for (a, b), locs in sorted(edges.items()):
        print(f'{a} -> {b}: {len(locs)}  {locs[0]}')

sys.exit(1 if big else 0)
