# Rewrites a .cu file for tools/cuda_emulation: dynamic shared memory and <<<>>> launches.
import re, sys
src = open(sys.argv[1]).read()
# Dynamic shared memory: the emulator's per-block buffer.
src = re.sub(r'extern __shared__ (\w+) (\w+)\[\];',
             r'\1* \2 = reinterpret_cast<\1*>(::emu::g_smem);', src)
def split_top(s):
    parts, depth, cur = [], 0, ''
    for ch in s:
        if ch in '([{': depth += 1
        if ch in ')]}': depth -= 1
        if ch == ',' and depth == 0:
            parts.append(cur); cur = ''
        else:
            cur += ch
    parts.append(cur)
    return [p.strip() for p in parts]
def repl(m):
    k, cfg, args = m.group(1), m.group(2), m.group(3)
    c = split_top(cfg)
    return '::emu::Launch(%s, dim3(%s), %s, %s, %s);' % (k, c[0], c[1], c[2], args)
src2, n = re.subn(r'(\w+)<<<(.*?)>>>\((.*?)\);', repl, src, flags=re.S)
sys.stderr.write('launches replaced: %d\n' % n)
open(sys.argv[2], 'w').write(src2)
