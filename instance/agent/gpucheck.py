"""A GPU machine whose GPU does not work must end at once, not after max_runtime_minutes of
training on its CPU: the driver answers (`nvidia-smi -L`) and torch sees CUDA, or the run ends
`failed` / `gpu_unavailable`."""
from __future__ import annotations

import logging
import subprocess
from typing import Callable

from ..protocol.pricing import PRICES
from .lockholder import StopRun

log = logging.getLogger(__name__)

NVIDIA_SMI_TIMEOUT_S = 60


class GpuUnavailable(StopRun):
    reason = "gpu_unavailable"


def gpu_expected(mode: str, instance_type: str | None, local: bool) -> bool:
    """`auto`: on EC2, every type of the price table has a GPU; a local run trains on whatever
    this machine has."""
    if mode in ("yes", "no"):
        return mode == "yes"
    return not local and bool(instance_type and PRICES.get(instance_type) and PRICES[instance_type].gpus)


def check_gpu(instance_type: str | None, gpus: int = 1, run: Callable = subprocess.run,
              cuda_devices: Callable[[], int] | None = None) -> str:
    """The GPUs the driver lists; raises GpuUnavailable naming what failed. `gpus`: how many the
    run trains on (one rank each), all of which the driver and torch must see."""
    try:
        proc = run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=NVIDIA_SMI_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise GpuUnavailable(f"{instance_type} should have a GPU, but nvidia-smi could not run ({exc})") from None
    if proc.returncode != 0 or "GPU" not in proc.stdout:
        detail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [f"exit {proc.returncode}"]
        raise GpuUnavailable(f"{instance_type} should have a GPU, but nvidia-smi failed: {detail[0]}")
    listed = [line for line in proc.stdout.splitlines() if line.startswith("GPU ")]
    if len(listed) < gpus:
        raise GpuUnavailable(f"the run trains on {gpus} GPUs of {instance_type}, but the driver lists {len(listed)}")
    seen = (cuda_devices or _torch_cuda_devices)()
    if seen == 0:
        import torch

        raise GpuUnavailable(f"{instance_type} should have a GPU and the driver sees one, but torch cannot use CUDA "
                             f"(torch {torch.__version__}, built for CUDA {torch.version.cuda})")
    if seen < gpus:
        raise GpuUnavailable(f"the run trains on {gpus} GPUs of {instance_type}, but torch sees {seen}")
    gpus_text = proc.stdout.strip()
    log.info("GPU check: %s; torch sees %d CUDA device(s)", gpus_text.replace("\n", "; "), seen)
    return gpus_text


def _torch_cuda_devices() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0
