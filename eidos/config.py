"""Typed configuration, validated in one place.

Each section is a dataclass whose `__post_init__` refuses impossible values with a message naming the key,
the value and what is allowed.
"""

from __future__ import annotations

from dataclasses import dataclass

TIME_SAMPLERS = ("lognormal", "logit_normal")
TANGENTS = ("jvp", "finite_difference")


def _require(ok: bool, key: str, value, allowed: str) -> None:
    if not ok:
        raise ValueError(f"config key {key!r} = {value!r} is invalid: expected {allowed}")


@dataclass
class ObjectiveConfig:
    """Flow matching + flow-anchored consistency (FACM) + MAE, DESIGN §3.

    time_sampler: "lognormal" draws sigma = exp(N(time_mean, time_std^2)), s = (2/pi) arctan(sigma) (sCM/FACM);
        "logit_normal" draws s = sigmoid(N(time_mean, time_std^2)) (SD3), e.g. time_mean=0, time_std=1.
    fm_weight, consistency_weight, mae_weight: weights of the three loss parts; consistency_weight=0 gives plain
        flow matching (no JVP), mae_weight only matters when tokens are masked.
    text_dropout: probability of replacing a sample's text by the null text (trains the unconditional branch).
    guidance_scale, guidance_interval: classifier-free guidance baked into the target velocity for s inside
        [lo, hi]; guidance_scale=1 disables it (and its extra forward).
    tangent: "jvp" (exact forward-mode derivative) or "finite_difference" (two no-grad forwards, step
        finite_difference_step); adaptive_loss_eps: the constant c in e / sqrt(e + c).
    """

    time_sampler: str = "lognormal"
    time_mean: float = -0.8
    time_std: float = 1.6
    fm_weight: float = 1.0
    consistency_weight: float = 1.0
    mae_weight: float = 0.1
    text_dropout: float = 0.1
    guidance_scale: float = 1.75
    guidance_interval: tuple[float, float] = (0.0, 0.75)
    tangent: str = "jvp"
    finite_difference_step: float = 1e-3
    adaptive_loss_eps: float = 1e-3

    def __post_init__(self) -> None:
        self.guidance_interval = tuple(self.guidance_interval)
        _require(self.time_sampler in TIME_SAMPLERS, "objective.time_sampler", self.time_sampler,
                 f"one of {TIME_SAMPLERS}")
        _require(self.time_std > 0, "objective.time_std", self.time_std, "a positive number")
        for key in ("fm_weight", "consistency_weight", "mae_weight"):
            _require(getattr(self, key) >= 0, f"objective.{key}", getattr(self, key), "a number >= 0")
        _require(self.fm_weight + self.consistency_weight > 0, "objective.fm_weight", self.fm_weight,
                 "fm_weight + consistency_weight > 0 (nothing would be trained)")
        _require(0 <= self.text_dropout < 1, "objective.text_dropout", self.text_dropout, "a probability in [0, 1)")
        _require(self.guidance_scale >= 1, "objective.guidance_scale", self.guidance_scale, "a number >= 1")
        lo, hi = self.guidance_interval if len(self.guidance_interval) == 2 else (1, 0)
        _require(0 <= lo <= hi <= 1, "objective.guidance_interval", self.guidance_interval,
                 "[lo, hi] with 0 <= lo <= hi <= 1")
        _require(self.tangent in TANGENTS, "objective.tangent", self.tangent, f"one of {TANGENTS}")
        _require(self.finite_difference_step > 0, "objective.finite_difference_step", self.finite_difference_step,
                 "a positive number")
        _require(self.adaptive_loss_eps > 0, "objective.adaptive_loss_eps", self.adaptive_loss_eps, "a positive number")
