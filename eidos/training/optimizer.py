"""The optimizer a run trains with (`train.optimizer`): AdamW, or Muon for the transformer blocks' weight matrices
with AdamW for every other parameter, as one `torch.optim.Optimizer` (one state dict, one learning rate per
step, so checkpoints, resume and the stage schedule treat both alike).

Muon (Jordan et al. 2024, "Muon: An optimizer for hidden layers in neural networks") is `torch.optim.Muon`
with its Newton-Schulz iterations batched and in the run's precision (`BatchedMuon`, eidos/training/muon.py):
Nesterov momentum whose update matrix is replaced by its nearest semi-orthogonal matrix (five quintic
Newton-Schulz iterations). `adjust_lr_fn="match_rms_adamw"` scales the update by 0.2 sqrt(max(rows,
cols)), so its RMS is 0.2, that of a typical AdamW update, with decoupled weight decay (Liu et al. 2025, "Muon
is Scalable for LLM Training"): the stages' AdamW learning rates serve both.
"""

from __future__ import annotations

import torch
from torch import nn

from eidos.config import TrainConfig
from eidos.training.muon import BatchedMuon, closure_loss


def build_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """AdamW, or MuonWithAdamW when any stage updates the block matrices with Muon; at the first stage's learning
    rate. The stepper sets which rule updates the matrices when a stage begins (`use_for_matrices`)."""
    lr = cfg.stages[0].learning_rate
    if "muon" not in cfg.stage_optimizers():
        return torch.optim.AdamW(model.parameters(), lr=lr, betas=cfg.adam_betas, weight_decay=cfg.weight_decay,
                                 fused=device.type == "cuda")
    hidden = set(block_matrices(model))
    return MuonWithAdamW(
        [p for p in model.parameters() if p in hidden], [p for p in model.parameters() if p not in hidden],
        lr=lr, betas=cfg.adam_betas, weight_decay=cfg.weight_decay,
    )


def block_matrices(model: nn.Module) -> list[nn.Parameter]:
    """The 2-D weights inside the transformer blocks (attention, MLP, cross-attention, AdaLN maps): the hidden
    layers Muon is for. Embeddings of the input, time and text, and the output layer stay with AdamW."""
    blocks = [*model.encoder_blocks, *model.decoder_blocks]
    return [p for block in blocks for p in block.parameters() if p.ndim == 2]


class MuonWithAdamW(torch.optim.Optimizer):
    """`BatchedMuon` for `muon_params` (2-D) and `torch.optim.AdamW` for `adamw_params`, seen as one optimizer:
    its param_groups are the two optimizers' own group dicts and both keep their state in its one state, so
    setting a group's learning rate, `state.clear()` and the state dict reach both.

    `matrix_rule` "adamw" updates `muon_params` with AdamW instead (a stage's `optimizer`): a torch.optim.AdamW
    over them, outside param_groups (a parameter may be in one group only), on the same state and at the Muon
    group's learning rate. It is built when first needed and not pickled (torch's AdamW would check the shared
    state for its own keys on unpickling)."""

    def __init__(self, muon_params, adamw_params, lr: float, betas: tuple[float, float] = (0.9, 0.99),
                 weight_decay: float = 0.0, momentum: float = 0.95):
        muon_params, adamw_params = list(muon_params), list(adamw_params)
        self._parts: list[torch.optim.Optimizer] = []
        self._muon = None
        if muon_params:
            self._muon = BatchedMuon(muon_params, lr=lr, weight_decay=weight_decay, momentum=momentum,
                                     adjust_lr_fn="match_rms_adamw")
            self._parts.append(self._muon)
        if adamw_params:
            self._parts.append(torch.optim.AdamW(adamw_params, lr=lr, betas=betas, weight_decay=weight_decay))
        self.matrix_rule = "muon"
        self._adamw_options = {"betas": betas, "weight_decay": weight_decay}
        self._matrices_adamw: torch.optim.AdamW | None = None
        super().__init__([group for part in self._parts for group in part.param_groups], defaults={})
        self._share_groups_and_state()

    def _share_groups_and_state(self) -> None:
        groups = iter(self.param_groups)
        for part in self._parts:
            part.param_groups = [next(groups) for _ in part.param_groups]
            part.state = self.state
        if self._matrices_adamw is not None:  # load_state_dict brings a new state
            self._matrices_adamw.state = self.state

    def compute_in(self, precision: str) -> None:
        """Run Muon's Newton-Schulz iterations in the run's resolved precision ("no", "bf16" or "fp16"): bf16 for a
        bf16 run (as torch's Muon always does), float32 otherwise. Where "auto" chose float32, bf16 products are the
        slower ones; fp16 would overflow the iterations' powers."""
        if self._muon is not None:
            self._muon.newton_schulz_dtype = torch.bfloat16 if precision == "bf16" else torch.float32

    def use_for_matrices(self, rule: str, fresh: bool) -> None:
        """Update the block matrices with `rule` ("muon" or "adamw") from now on; `fresh` clears their state (one
        rule's moments mean nothing to the other)."""
        self.matrix_rule = rule
        if fresh and self._muon is not None:
            for param in self._muon.param_groups[0]["params"]:
                self.state.pop(param, None)

    def _adamw_for_matrices(self) -> torch.optim.AdamW:
        """The AdamW of the block matrices, on this optimizer's state, at the Muon group's current learning rate."""
        group = self._muon.param_groups[0]
        if self._matrices_adamw is None:
            self._matrices_adamw = torch.optim.AdamW(group["params"], lr=group["lr"], **self._adamw_options)
            self._matrices_adamw.state = self.state
        self._matrices_adamw.param_groups[0]["lr"] = group["lr"]
        return self._matrices_adamw

    def __getstate__(self) -> dict:
        return {**super().__getstate__(), "_parts": self._parts, "_muon": self._muon,
                "matrix_rule": self.matrix_rule, "_adamw_options": self._adamw_options, "_matrices_adamw": None}

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)  # load_state_dict comes here too, with new groups and state
        if "_parts" in self.__dict__:
            self._share_groups_and_state()

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(_from_hand_written_muon(state_dict, self.param_groups))

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure_loss(closure)
        for part in self._parts:
            if part is self._muon and self.matrix_rule == "adamw":
                part = self._adamw_for_matrices()
            part.step()
        return loss


def _from_hand_written_muon(state_dict: dict, groups: list[dict]) -> dict:
    """Checkpoints of the hand-written MuonWithAdamW that came before (groups marked "muon") keep the same
    per-parameter state (momentum_buffer; exp_avg, exp_avg_sq) but an int AdamW step and none of torch's group
    options: take the options from this optimizer's groups (the schedule sets the learning rate every step)."""
    if not any("muon" in group for group in state_dict["param_groups"]):
        return state_dict
    upgraded = [{**current, "params": saved["params"]}
                for saved, current in zip(state_dict["param_groups"], groups, strict=True)]
    state = {index: {key: torch.tensor(float(value)) if key == "step" else value for key, value in entry.items()}
             for index, entry in state_dict["state"].items()}
    return {"state": state, "param_groups": upgraded}
