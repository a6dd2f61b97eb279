"""Learning rate: linear warm-up, then poly decay, as a function of the global step (so resume needs no state)."""
from __future__ import annotations


def poly_lr(step: int, total: int, base_lr: float, warmup: int = 0, power: float = 0.9, min_lr: float = 0.0) -> float:
    if step < warmup:
        return base_lr * (0.1 + 0.9 * step / warmup)
    frac = min(1.0, (step - warmup) / max(1, total - warmup))
    return (base_lr - min_lr) * (1 - frac) ** power + min_lr
