"""Repeated blocks: a 32- or 80-layer stack reported as one row per position in its block, with the range of each
number across the blocks, so the table stays readable; `--all-layers` keeps one row per layer."""

from __future__ import annotations

import re
from dataclasses import dataclass

from initcheck.report.model import BlockGroup, BlockPosition, LayerRow

LEAST = 4  # blocks a run needs to be grouped
_INDEXED = re.compile(r"^(?P<prefix>.+?)\.(?P<index>\d+)(?:\.(?P<rest>.*))?$")


def repeated_blocks(rows: list[LayerRow], least: int = LEAST) -> list[BlockGroup]:
    """Runs of at least `least` consecutive blocks (prefix.N.*, N = i, i+1, ...) whose rows are the same sequence of
    (name within the block, op)."""
    blocks = _blocks(rows)
    groups, start = [], 0
    while start < len(blocks):
        end = start + 1
        while end < len(blocks) and _continues(blocks[end - 1], blocks[end]):
            end += 1
        if end - start >= least:
            groups.append(_group(blocks[start:end]))
        start = end
    return groups


@dataclass
class _Block:
    prefix: str
    index: int
    rows: list[LayerRow]
    shape: list[tuple[str, str]]  # (name within the block, op) per row


def _blocks(rows: list[LayerRow]) -> list[_Block]:
    """Consecutive rows sharing prefix and block index, in table order."""
    out: list[_Block] = []
    for row in rows:
        match = _INDEXED.match(row.label)
        if match is None:
            out.append(_Block("", -1, [row], [(row.label, row.op)]))
            continue
        prefix, index, rest = match["prefix"], int(match["index"]), match["rest"] or ""
        last = out[-1] if out else None
        if last is not None and last.prefix == prefix and last.index == index:
            last.rows.append(row)
            last.shape.append((rest, row.op))
        else:
            out.append(_Block(prefix, index, [row], [(rest, row.op)]))
    return out


def _continues(a: _Block, b: _Block) -> bool:
    return bool(a.prefix) and a.prefix == b.prefix and b.index == a.index + 1 and a.shape == b.shape


def _group(blocks: list[_Block]) -> BlockGroup:
    first, last = blocks[0].index, blocks[-1].index
    positions = []
    for at, (rest, op) in enumerate(blocks[0].shape):
        rows = [b.rows[at] for b in blocks]
        Ks = [r.symbolic.K for r in rows]
        Gs = [r.symbolic.G for r in rows if r.symbolic.G is not None]
        positions.append(
            BlockPosition(
                label=f"{blocks[0].prefix}.[{first}-{last}]" + (f".{rest}" if rest else ""),
                op=op,
                rows=[r.index for r in rows],
                K=[min(Ks), max(Ks)],
                G=[min(Gs), max(Gs)] if len(Gs) == len(rows) else None,
                forward_log10=_extreme([r.forward_log10 for r in rows]),
                backward_log10=_extreme([r.backward_log10 for r in rows]),
            )
        )
    return BlockGroup(blocks[0].prefix, first, last, positions)


def _extreme(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return max(known, key=abs) if known else None
