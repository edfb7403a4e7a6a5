"""Adaptive budget controller (ADM++): per-group compressed budgets that follow captured energy.

KV heads form groups of ``controller_group_size``. After each compression a group's energy (the
variance its compression captured, :mod:`.replay`) updates an EMA with weight
``controller_gain``. A group whose EMA is above ``controller_energy_ceiling`` compresses well and
gives back a step of budget; one below ``controller_energy_floor`` gains a step, from the budget
left free or, failing that, from the groups with the highest EMA. Budgets are per head of the
group, each in ``[0, C + headroom]`` (``C`` the configured compressed share), and the total over
heads never exceeds ``C * H_kv`` (the cap). One step is ``max(1, C // 8)`` slots.
"""

from __future__ import annotations

import torch


class BudgetController:
    def __init__(self, base: int, headroom: int, heads: int, group_size: int, gain: float, floor: float, ceiling: float):
        self.base, self.most = base, base + headroom
        self.group_of = torch.arange(heads) // group_size
        groups = int(self.group_of.max()) + 1 if heads else 0
        self.sizes = torch.bincount(self.group_of, minlength=groups)
        self.budgets = torch.full((groups,), base, dtype=torch.long)
        self.cap = base * heads
        self.gain, self.floor, self.ceiling = gain, floor, ceiling
        self.ema: torch.Tensor | None = None
        self.step = max(1, base // 8)
        self.adjustments = 0

    def per_head(self) -> torch.Tensor:
        return self.budgets[self.group_of]

    def total(self) -> int:
        return int((self.budgets * self.sizes).sum())

    def update(self, energy: torch.Tensor, active: torch.Tensor) -> None:
        """Fold one compression's energies ``(H,)`` (of ``active`` heads) in and move budgets."""
        energy, active = energy.detach().float().cpu(), active.cpu()
        groups = self.budgets.shape[0]
        weight = torch.zeros(groups).scatter_add_(0, self.group_of, active.float())
        summed = torch.zeros(groups).scatter_add_(0, self.group_of, energy * active)
        seen = weight > 0
        mean = summed / weight.clamp(min=1)
        if self.ema is None:
            self.ema = torch.where(seen, mean, torch.full_like(mean, float("nan")))
        else:
            blended = (1 - self.gain) * self.ema + self.gain * mean
            self.ema = torch.where(seen, torch.where(self.ema.isnan(), mean, blended), self.ema)
        before = self.budgets.clone()
        ema = self.ema.nan_to_num(1.0)
        for group in torch.nonzero(seen & (ema > self.ceiling)).flatten().tolist():
            self.budgets[group] = max(0, int(self.budgets[group]) - self.step)
        for group in sorted(torch.nonzero(seen & (ema < self.floor)).flatten().tolist(), key=lambda g: float(ema[g])):
            self._expand(group, ema)
        self.adjustments += int((self.budgets != before).sum())

    def _expand(self, group: int, ema: torch.Tensor) -> None:
        size = int(self.sizes[group])
        want = min(self.step, self.most - int(self.budgets[group]))
        if want <= 0:
            return
        # donors: groups at or above the floor, highest energy first
        for donor in sorted(range(self.budgets.shape[0]), key=lambda g: -float(ema[g])):
            if self.cap - self.total() >= want * size:
                break
            if donor == group or float(ema[donor]) < self.floor or int(self.budgets[donor]) == 0:
                continue
            short = want * size - (self.cap - self.total())
            give = min(int(self.budgets[donor]), -(-short // int(self.sizes[donor])))
            self.budgets[donor] -= give
        grant = min(want, (self.cap - self.total()) // size)
        if grant > 0:
            self.budgets[group] += grant
