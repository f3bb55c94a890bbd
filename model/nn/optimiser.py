"""Adam and a learning-rate schedule for the training loop, without ``torch.optim``.

``torch.optim``'s optimisers and schedulers import ``torch._dynamo`` on their first call: about 2 s of
every Train run on 2 cores (a tenth of a small scene's training, a thirtieth of the demo), for a
compiler this plugin never uses. These two classes are the same arithmetic as ``torch.optim.Adam``'s
single-tensor path (no amsgrad, weight decay or maximize) and ``LambdaLR``, with state dicts of the
same layout, so on the CPU a model trained with them is bit for bit the one ``torch.optim`` trains,
and a checkpoint saved by either resumes with either (``tests/unit/test_optimiser.py``).
``torch.amp``'s GradScaler takes ``Adam`` as it takes its own (``param_groups``, ``step``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch


class Adam:
    """Adam (Kingma & Ba 2015) over one group of parameters."""

    def __init__(
        self, params: Iterable[torch.Tensor], lr: float, betas: tuple = (0.9, 0.999), eps: float = 1e-8
    ) -> None:
        params = list(params)
        self.param_groups = [{"params": params, "lr": lr, "betas": tuple(betas), "eps": eps}]
        self.state: dict = {}  # id(param) -> {"step", "exp_avg", "exp_avg_sq"}

    def _params(self) -> list:
        return [p for group in self.param_groups for p in group["params"]]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self._params():
            if p.grad is not None:
                if set_to_none:
                    p.grad = None
                else:
                    p.grad.detach_().zero_()

    @torch.no_grad()
    def step(self) -> None:
        for group in self.param_groups:
            lr, (beta1, beta2), eps = group["lr"], group["betas"], group["eps"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state.get(id(p))
                if state is None:
                    zeros = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state = self.state[id(p)] = {
                        "step": torch.tensor(0.0, dtype=torch.float32),
                        "exp_avg": zeros,
                        "exp_avg_sq": zeros.clone(),
                    }
                grad, exp_avg, exp_avg_sq = p.grad, state["exp_avg"], state["exp_avg_sq"]
                state["step"] += 1
                exp_avg.lerp_(grad, 1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                step = state["step"].item()
                step_size = lr / (1 - beta1**step)
                denom = (exp_avg_sq.sqrt() / (1 - beta2**step) ** 0.5).add_(eps)
                p.addcdiv_(exp_avg, denom, value=-step_size)

    def state_dict(self) -> dict:
        """As ``torch.optim.Optimizer.state_dict``: state and groups keyed by the parameters' order."""
        index = {id(p): i for i, p in enumerate(self._params())}
        groups, start = [], 0
        for group in self.param_groups:
            n = len(group["params"])
            groups.append(
                {**{k: v for k, v in group.items() if k != "params"}, "params": list(range(start, start + n))}
            )
            start += n
        state = {index[k]: {name: t.clone() for name, t in v.items()} for k, v in self.state.items()}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict) -> None:
        params = self._params()
        groups = state_dict["param_groups"]
        if len(groups) != len(self.param_groups) or sum(len(g["params"]) for g in groups) != len(params):
            raise ValueError("The optimiser state is not for these parameters.")
        for group, saved in zip(self.param_groups, groups):
            group.update(lr=saved["lr"], betas=tuple(saved["betas"]), eps=saved["eps"])
            for k in ("initial_lr",):
                if k in saved:
                    group[k] = saved[k]
        self.state = {}
        for i, saved in state_dict["state"].items():
            p = params[int(i)]
            self.state[id(p)] = {
                "step": torch.as_tensor(saved["step"], dtype=torch.float32).clone(),
                "exp_avg": saved["exp_avg"].to(p.device, p.dtype).clone(),
                "exp_avg_sq": saved["exp_avg_sq"].to(p.device, p.dtype).clone(),
            }


class LambdaSchedule:
    """As ``torch.optim.lr_scheduler.LambdaLR``: each group's learning rate is its initial one times
    ``factor(i)`` after ``i`` calls of ``step``."""

    def __init__(self, optimiser: Any, factor: Callable[[int], float]) -> None:
        self.optimiser, self.factor = optimiser, factor
        for group in optimiser.param_groups:
            group.setdefault("initial_lr", group["lr"])
        self.base_lrs = [group["initial_lr"] for group in optimiser.param_groups]
        self.last_epoch = -1
        self.step()

    def step(self) -> None:
        self.last_epoch += 1
        for group, base in zip(self.optimiser.param_groups, self.base_lrs):
            group["lr"] = base * self.factor(self.last_epoch)

    def state_dict(self) -> dict:
        return {"base_lrs": list(self.base_lrs), "last_epoch": self.last_epoch}

    def load_state_dict(self, state_dict: dict) -> None:
        self.base_lrs = list(state_dict["base_lrs"])
        self.last_epoch = int(state_dict["last_epoch"])
