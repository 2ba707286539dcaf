#!/usr/bin/env python3
"""The structure measurements of docs/structure.md, over the non-test Rust code: the
crates' src/ trees (and fuzz/fuzz_targets) without `#[cfg(test)]` items (inline modules, or
modules in their own file); tests/, benches/ and examples/ are left out.

  .ci/structure.py fns [ROOT [N]]      the N longest functions (lines from `fn` to its `}`)
  .ci/structure.py copy ROOT DEST      the non-test code copied to DEST; then
                                       `cd DEST && duplicates --most 200` counts the pairs
"""
import os, re, sys

def strip_strings(line, state):
    # remove string/char literals and // comments for brace counting; state: in block comment / raw string
    out = []
    i = 0
    n = len(line)
    while i < n:
        if state['block']:
            j = line.find('*/', i)
            if j < 0:
                return ''.join(out)
            state['block'] = False
            i = j + 2
            continue
        if state['raw'] is not None:
            j = line.find(state['raw'], i)
            if j < 0:
                return ''.join(out)
            i = j + len(state['raw'])
            state['raw'] = None
            continue
        if state['str']:
            if line[i] == '\\':
                i += 2
                continue
            if line[i] == '"':
                state['str'] = False
            i += 1
            continue
        c = line[i]
        if line.startswith('//', i):
            break
        if line.startswith('/*', i):
            state['block'] = True
            i += 2
            continue
        m = re.match(r'b?r(#*)"', line[i:])
        if m and (i == 0 or not (line[i-1].isalnum() or line[i-1] == '_')):
            state['raw'] = '"' + m.group(1)
            i += m.end()
            continue
        if c == '"':
            state['str'] = True
            i += 1
            continue
        if c == "'":
            m = re.match(r"'(\\.[^']*|[^\\'])'", line[i:])
            if m:
                i += m.end()
                continue
        out.append(c)
        i += 1
    return ''.join(out)

def files(root):
    for base in [os.path.join(root, 'crates'), os.path.join(root, 'fuzz', 'fuzz_targets')]:
        for d, dirs, fs in os.walk(base):
            rel = os.path.relpath(d, root)
            parts = rel.split(os.sep)
            if any(p in ('tests', 'benches', 'examples', 'target', 'bpf') for p in parts[2:]) or 'target' in parts:
                dirs[:] = []
                continue
            for f in fs:
                if f.endswith('.rs'):
                    yield os.path.join(d, f)

def test_files(root, paths):
    """Files that are modules declared under #[cfg(test)]."""
    out = set()
    for p in paths:
        lines = open(p, encoding='utf-8').read().split('\n')
        for i, l in enumerate(lines):
            if l.strip().startswith('#[cfg(test)]') and i + 1 < len(lines):
                m = re.match(r'\s*(pub(\([^)]*\))?\s+)?mod\s+(\w+)\s*;', lines[i+1])
                if m:
                    name = m.group(3)
                    d = os.path.dirname(p)
                    stem = os.path.splitext(os.path.basename(p))[0]
                    cands = [os.path.join(d, name + '.rs'), os.path.join(d, stem, name + '.rs'), os.path.join(d, name, 'mod.rs')]
                    for c in cands:
                        if os.path.exists(c):
                            out.add(os.path.normpath(c))
    return out

def nontest_lines(p):
    """Lines of p with #[cfg(test)] items blanked (kept as empty lines so numbers hold)."""
    lines = open(p, encoding='utf-8').read().split('\n')
    out = list(lines)
    state = {'block': False, 'raw': None, 'str': False}
    i = 0
    while i < len(lines):
        l = lines[i]
        if l.strip() == '#[cfg(test)]':
            # blank the attribute and the following item (to its closing brace or ;)
            depth = 0
            started = False
            j = i
            st = {'block': False, 'raw': None, 'str': False}
            while j < len(lines):
                s = strip_strings(lines[j], st)
                if j > i:
                    depth += s.count('{') - s.count('}')
                    if '{' in s:
                        started = True
                out[j] = ''
                if j > i and ((started and depth <= 0) or (not started and s.rstrip().endswith(';'))):
                    break
                j += 1
            i = j + 1
            continue
        i += 1
    return out

FN = re.compile(r'^\s*(pub(\([^)]*\))?\s+)?(default\s+)?(const\s+)?(async\s+)?(unsafe\s+)?(extern\s+"[^"]*"\s+)?fn\s+(\w+)')

def functions(p, lines):
    res = []
    st = {'block': False, 'raw': None, 'str': False}
    stripped = [strip_strings(l, st) for l in lines]
    i = 0
    while i < len(lines):
        m = FN.match(stripped[i])
        if m:
            name = m.group(8)
            # find the opening brace (or ; for declarations)
            depth = 0
            j = i
            opened = False
            while j < len(lines):
                s = stripped[j]
                for ch in s:
                    if ch == '{':
                        depth += 1
                        opened = True
                    elif ch == '}':
                        depth -= 1
                    elif ch == ';' and not opened and depth == 0:
                        break
                if (not opened and ';' in s and depth == 0):
                    break
                if opened and depth <= 0:
                    break
                j += 1
            if opened:
                res.append((j - i + 1, p, i + 1, name))
        i += 1
    return res

def main():
    root = os.path.abspath(sys.argv[2] if len(sys.argv) > 2 else '.')
    cmd = sys.argv[1]
    ps = sorted(files(root))
    tf = test_files(root, ps)
    ps = [p for p in ps if os.path.normpath(p) not in tf and not p.endswith('_tests.rs')]
    if cmd == 'copy':
        dest = sys.argv[3]
        for p in ps:
            rel = os.path.relpath(p, root)
            q = os.path.join(dest, rel)
            os.makedirs(os.path.dirname(q), exist_ok=True)
            open(q, 'w').write('\n'.join(nontest_lines(p)))
    elif cmd == 'fns':
        allf = []
        for p in ps:
            allf += functions(os.path.relpath(p, root), nontest_lines(p))
        allf.sort(reverse=True)
        k = int(sys.argv[3]) if len(sys.argv) > 3 else 10
        for n, p, l, name in allf[:k]:
            print(f'{n:5d}  {p}:{l}  {name}')
        print('over 150:', sum(1 for f in allf if f[0] > 150), ' over 100:', sum(1 for f in allf if f[0] > 100))
main()
