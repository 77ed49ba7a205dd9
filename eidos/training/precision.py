"""The precision a run trains in (`train.mixed_precision`): "no" (float32), "bf16" or "fp16" autocast, or "auto".

"auto" takes bf16 where it is faster. On CUDA that is any card with bf16 support. On a CPU it depends on the
processor: bf16 autocast halved the step time of the embedded default on an AMD EPYC, whose bf16 matrix products
run 2.4x as fast as float32 ones, and made it 1.2-1.4x slower on an Intel Xeon without AMX, where they run at
0.6x (BENCHMARKS.md, "A second kind of 2-core CPU"). So on a CPU "auto" times bf16 against float32 matrix
products, the bulk of a step, and takes bf16 only where they are faster. (Timing whole forward + backward passes
of the model instead could not tell the two apart on a loaded 2-core machine: passes varied 2x from one to the
next; a product of two 1024 x 1024 matrices gives the same ratio to within 0.1 in 0.4 seconds.)

The choice is recorded in the run's trainer state: a resumed run trains on in the precision it started in, so a
timing on resume can never switch it (and break exact resume).
"""

from __future__ import annotations

import contextlib
import logging
import statistics
import time

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list

from eidos.config.schema import MIXED_PRECISIONS

logger = logging.getLogger(__name__)

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
RESOLVED = tuple(name for name in MIXED_PRECISIONS if name != "auto")


def autocast(precision: str, device: torch.device):
    """The autocast context of a resolved precision ("no", "bf16" or "fp16") on `device`."""
    if precision == "no":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=AUTOCAST_DTYPES[precision])


def resolve_precision(setting: str, recorded: str, accelerator: Accelerator) -> str:
    """The precision to train in: `setting` unless it is "auto"; then the one a resumed run `recorded` in its
    trainer state, else the faster one on this device (every process takes the main process's choice)."""
    if setting != "auto":
        return setting
    if recorded in RESOLVED:
        return recorded
    device = accelerator.device
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "no"
    if device.type != "cpu":
        return "no"
    choice = [None]
    if accelerator.is_main_process:
        speedup = bf16_matmul_speedup()
        choice[0] = "bf16" if speedup > 1 else "no"
        logger.info("mixed precision auto: bf16 matrix products run %.2fx as fast as float32 ones on this CPU; "
                    "training in %s", speedup, "bf16" if choice[0] == "bf16" else "float32")
    if accelerator.num_processes > 1:
        broadcast_object_list(choice)
    return choice[0]


def bf16_matmul_speedup(size: int = 1024, rounds: int = 15) -> float:
    """float32 seconds / bf16 seconds of a (size x size) matrix product on the CPU: the median over `rounds`
    back-to-back pairs (a shared machine's load drifts; a pair sees the same load), after one warm-up of each."""
    generator = torch.Generator().manual_seed(0)
    float32 = torch.randn(size, size, generator=generator)
    bf16 = float32.bfloat16()

    def seconds(matrix: torch.Tensor) -> float:
        start = time.perf_counter()
        matrix @ matrix
        return time.perf_counter() - start

    seconds(float32), seconds(bf16)
    return statistics.median(seconds(float32) / seconds(bf16) for _ in range(rounds))
