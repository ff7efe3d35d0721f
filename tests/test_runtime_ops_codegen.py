"""The built library's conv tiles and Winograd product tiles keep their accumulators in registers.

A tile's inner loop is one broadcast, V loads and V FMAs per nonzero; a compiler that keeps
the accumulators in memory adds V stores (and reloads) to it and halves the tile's rate with
every output still exact, so no output test can see it. GCC 12 did exactly that for the AVX2
tiles (an array of __m256 kept on the stack; docs/BENCHMARKS.md, "An AVX2-only core"). This
reads the machine code of the installed library: the loop of each vector ConvRun (and of each
ConvRows and ConvStripRows, which run it row after row) that holds its FMAs must not touch the
stack. Skipped
without objdump, and for a library other than the installed -O3 build (the sanitizer build is
-O1 by design).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

from onnxprune import runtime_ops

FUNCTION = re.compile(r"^([0-9a-f]+) <(.*)>:$")
INSN = re.compile(r"^\s+([0-9a-f]+):\s+(\S+)\s*(.*)$")
BRANCH = re.compile(r"^([0-9a-f]+) <")
TILE = re.compile(r"onnxprune::(avx2|avx512)::(ConvRun|ConvRows|ConvStripRows)<(\d+)>")
STACK = re.compile(r"\(%[re]?(sp|bp)\b")


def _functions(disassembly: str) -> dict[str, list[tuple[int, str, str]]]:
    """Demangled function name -> [(address, mnemonic, operands)]."""
    out: dict[str, list[tuple[int, str, str]]] = {}
    current = None
    for line in disassembly.splitlines():
        m = FUNCTION.match(line)
        if m:
            current = out.setdefault(m.group(2), [])
            continue
        m = INSN.match(line)
        if m and current is not None:
            current.append((int(m.group(1), 16), m.group(2), m.group(3)))
    return out


def innermost_fma_loops(insns: list[tuple[int, str, str]]) -> list[list[tuple[int, str, str]]]:
    """Bodies of the backward branches that hold FMAs and no other backward branch."""
    loops = []
    for address, mnemonic, operands in insns:
        m = BRANCH.match(operands)
        if not mnemonic.startswith("j") or not m or int(m.group(1), 16) > address:
            continue
        body = [i for i in insns if int(m.group(1), 16) <= i[0] <= address]
        nested = any(i[1].startswith("j") and BRANCH.match(i[2]) and int(BRANCH.match(i[2]).group(1), 16) <= i[0]
                     for i in body[:-1])
        if not nested and any(i[1].startswith("vfmadd") for i in body):
            loops.append(body)
    return loops


def stack_operands(body: list[tuple[int, str, str]]) -> list[str]:
    return [f"{mnemonic} {operands}" for _, mnemonic, operands in body if STACK.search(operands)]


def test_the_scan_finds_a_stack_access_in_an_fma_loop():
    # The check itself: a loop that spills an accumulator is reported, a clean one is not.
    spilling = [(0x10, "vbroadcastss", "(%rdi,%r9,4),%ymm0"),
                (0x16, "vfmadd231ps", "(%rcx,%rax,4),%ymm0,%ymm1"),
                (0x1c, "vmovaps", "%ymm1,-0x78(%rsp)"),
                (0x22, "jne", "10 <f+0x10>")]
    loops = innermost_fma_loops(spilling)
    assert len(loops) == 1 and stack_operands(loops[0]) == ["vmovaps %ymm1,-0x78(%rsp)"]
    clean = [i for i in spilling if "rsp" not in i[2]]
    assert stack_operands(innermost_fma_loops(clean)[0]) == []
    assert innermost_fma_loops([(0x0, "vfmadd231ps", "%ymm0,%ymm1,%ymm2"), (0x6, "jne", "20 <f+0x20>")]) == []


@pytest.mark.skipif(shutil.which("objdump") is None, reason="objdump not installed")
@pytest.mark.skipif(bool(os.environ.get("ONNXPRUNE_TEST_OPS_LIBRARY")),
                    reason="another build than the installed library (e.g. the -O1 sanitizer build)")
def test_vector_conv_tiles_keep_their_accumulators_in_registers():
    done = subprocess.run(["objdump", "-d", "-C", "--no-show-raw-insn", runtime_ops.library_path()],
                          capture_output=True, text=True, timeout=300, check=True)
    # ConvRows and ConvStripRows (a task's rows in one call) hold ConvRun's loop again, flattened in.
    tiles = {f"{m.group(1)} {m.group(2)} V={m.group(3)}": insns
             for name, insns in _functions(done.stdout).items() if (m := TILE.search(name))}
    assert sorted(tiles) == sorted(f"{isa} {kind} V={v}" for isa in ("avx2", "avx512")
                                   for kind in ("ConvRun", "ConvRows", "ConvStripRows") for v in (1, 4, 8, 12, 13, 14))
    for tile, insns in tiles.items():
        loops = innermost_fma_loops(insns)
        assert loops, f"{tile}: no loop with FMAs found"
        for body in loops:
            assert not stack_operands(body), f"{tile}: the FMA loop touches the stack: {stack_operands(body)[:4]}"


WINO_TILE = re.compile(r"onnxprune::\(anonymous namespace\)::(avx2::)?ProductTile<(\d)>")


@pytest.mark.skipif(shutil.which("objdump") is None, reason="objdump not installed")
@pytest.mark.skipif(bool(os.environ.get("ONNXPRUNE_TEST_OPS_LIBRARY")),
                    reason="another build than the installed library (e.g. the -O1 sanitizer build)")
def test_winograd_product_tiles_keep_their_accumulators_in_registers():
    """The Winograd path's products (winograd.cc): an array of AVX2 accumulators went through the
    stack on GCC 12 and the products ran at a third of the rate; they are named registers now."""
    done = subprocess.run(["objdump", "-d", "-C", "--no-show-raw-insn", runtime_ops.library_path()],
                          capture_output=True, text=True, timeout=300, check=True)
    tiles = {f"{'avx2' if m.group(1) else 'avx512'} NV={m.group(2)}": insns
             for name, insns in _functions(done.stdout).items() if (m := WINO_TILE.search(name))}
    assert {"avx2 NV=3", "avx512 NV=3"} <= set(tiles), sorted(tiles)
    for tile, insns in tiles.items():
        loops = innermost_fma_loops(insns)
        assert loops, f"{tile}: no loop with FMAs found"
        for body in loops:
            assert not stack_operands(body), f"{tile}: the FMA loop touches the stack: {stack_operands(body)[:4]}"
