"""Model FLOPs and MFU: the matrix products a training step actually runs, and the device's peak.

What is counted (`count_flops`): every matrix product and attention product that runs, as torch's
`FlopCounterMode` sees them: a forward pass's, and in the backward pass the gradients that are
actually computed (a frozen part in front of the trained ones, run without autograd, has none; a
frozen layer that gradients flow through gets its input's gradient and no weight gradient). So a
backbone skipped by the feature cache costs nothing, the probe's vocabulary layer costs its masked
rows only, the relation head's two rows are two rows, and embedding lookups, norms, softmax and the
loss are not FLOPs here. Counting runs through the step once (the loop counts its first optimizer
step); FLOPs per real token of that step then price the tokens of later steps (docs/speed.md).

Peaks (`PEAK_TFLOPS`) are per exact device name as `torch.cuda.get_device_name` reports it, dense
(without structured sparsity), from NVIDIA's datasheets; a device not in the table gets no MFU.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator

# Dense peak TFLOP/s per precision, by the name torch.cuda.get_device_name reports. NVIDIA's datasheets
# give tensor-core peaks "with sparsity"; the dense peak is half of that. Sources:
#   A100: NVIDIA A100 Tensor Core GPU datasheet, https://www.nvidia.com/en-us/data-center/a100/
#   H100 (SXM5, PCIe, NVL): NVIDIA H100 Tensor Core GPU datasheet, https://www.nvidia.com/en-us/data-center/h100/
#   H200 (SXM, NVL): NVIDIA H200 Tensor Core GPU datasheet, https://www.nvidia.com/en-us/data-center/h200/
#   V100 (SXM2, PCIe): NVIDIA Tesla V100 datasheet, https://www.nvidia.com/en-us/data-center/v100/
#     (no bf16 or tf32: Volta has neither; fp16 is the tensor-core peak)
#   L4: NVIDIA L4 Tensor Core GPU datasheet, https://www.nvidia.com/en-us/data-center/l4/
#   L40S: NVIDIA L40S GPU datasheet, https://www.nvidia.com/en-us/data-center/l40s/
#   H800 (SXM, reported as "NVIDIA H800"): NVIDIA's H800 datasheet gives the H100 SXM's tensor-core
#     compute (its FP64 and NVLink are what differ), so the H100 SXM's peaks
#   B200 (reported as "NVIDIA B200"): NVIDIA HGX B200 datasheet, https://www.nvidia.com/en-us/data-center/hgx/
#     per GPU: FP16/BF16 4.5 PFLOPS and TF32 2.2 PFLOPS with sparsity, i.e. 2.25 and 1.1 PFLOPS dense;
#     no fp32 entry (the datasheet gives none per GPU), so an fp32 run without TF32 gets no MFU there
_A100 = {"bf16": 312.0, "fp16": 312.0, "tf32": 156.0, "fp32": 19.5}
_H100_SXM = {"bf16": 989.5, "fp16": 989.5, "tf32": 494.5, "fp32": 67.0}
_H100_PCIE = {"bf16": 756.5, "fp16": 756.5, "tf32": 378.0, "fp32": 51.0}
_NVL = {"bf16": 835.5, "fp16": 835.5, "tf32": 417.5, "fp32": 60.0}  # H100 NVL and H200 NVL
PEAK_TFLOPS: dict[str, dict[str, float]] = {
    "NVIDIA A100-SXM4-40GB": _A100,
    "NVIDIA A100-SXM4-80GB": _A100,
    "NVIDIA A100-PCIE-40GB": _A100,
    "NVIDIA A100 80GB PCIe": _A100,
    "NVIDIA H100 80GB HBM3": _H100_SXM,
    "NVIDIA H100 PCIe": _H100_PCIE,
    "NVIDIA H100 NVL": _NVL,
    "NVIDIA H200": _H100_SXM,  # the H200 SXM has the H100 SXM's compute, with more and faster memory
    "NVIDIA H200 NVL": _NVL,
    "NVIDIA H800": _H100_SXM,  # the H800 SXM: the H100 SXM's compute
    "NVIDIA B200": {"bf16": 2250.0, "fp16": 2250.0, "tf32": 1100.0},
    "Tesla V100-SXM2-16GB": {"fp16": 125.0, "fp32": 15.7},
    "Tesla V100-SXM2-32GB": {"fp16": 125.0, "fp32": 15.7},
    "Tesla V100-PCIE-16GB": {"fp16": 112.0, "fp32": 14.0},
    "Tesla V100-PCIE-32GB": {"fp16": 112.0, "fp32": 14.0},
    "NVIDIA L4": {"bf16": 121.0, "fp16": 121.0, "tf32": 60.0, "fp32": 30.3},
    "NVIDIA L40S": {"bf16": 362.05, "fp16": 362.05, "tf32": 183.0, "fp32": 91.6},
}


def matmul_precision(precision: str) -> str:
    """The peak a run's matrix products are held to: `precision` bf16/fp16 (autocast), else fp32
    (`precision` fp32, or Accelerate's "no"), which is tf32 when torch lets fp32 products on CUDA use
    tensor cores (`torch.set_float32_matmul_precision("high")`)."""
    if precision in ("bf16", "fp16"):
        return precision
    import torch

    matmul = torch.backends.cuda.matmul
    try:
        tf32 = matmul.fp32_precision == "tf32"  # torch >= 2.9
    except AttributeError:
        tf32 = bool(matmul.allow_tf32)
    return "tf32" if tf32 else "fp32"


def peak_flops(device_name: str, precision: str) -> float | None:
    """Dense peak FLOP/s of the device named exactly `device_name` at `precision` (bf16, fp16, tf32,
    fp32); None for a device or precision not in `PEAK_TFLOPS`."""
    peak = PEAK_TFLOPS.get(device_name, {}).get(precision)
    return peak * 1e12 if peak is not None else None


def device_peak(device, precision: str) -> tuple[float | None, str]:
    """(peak FLOP/s, what it is) of a torch device running at the loop's `precision`; (None, why) when
    there is no MFU: a CPU, or a GPU not in the table."""
    if device.type != "cuda":
        return None, f"no MFU on {device.type}: no peak is known"
    import torch

    name, key = torch.cuda.get_device_name(device), matmul_precision(precision)
    peak = peak_flops(name, key)
    if peak is None:
        return None, f"no MFU: the dense {key} peak of {name!r} is not in kadapter's table (training/flops.py)"
    return peak, f"{name}, dense {key} {peak / 1e12:g} TFLOP/s"


# ---------------------------------------------------------------- counting


def _sdpa_cpu_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _sdpa_cpu_backward_flops(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None,
                             **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_backward_flop_count

    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


def _cpu_attention() -> dict:
    """torch counts the CUDA attention kernels but not the CPU one: the same formulas for it, so a
    count does not depend on the device."""
    import torch

    ops = torch.ops.aten
    if not hasattr(ops, "_scaled_dot_product_flash_attention_for_cpu"):
        return {}
    return {ops._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu_flops,
            ops._scaled_dot_product_flash_attention_for_cpu_backward: _sdpa_cpu_backward_flops}


class FlopCount:
    """What `count_flops` yields: `total` FLOPs once the block is done."""

    total: float = 0.0


@contextmanager
def count_flops() -> Iterator[FlopCount]:
    """Counts the FLOPs of the matrix and attention products run inside the block (see the module)."""
    from torch.utils.flop_counter import FlopCounterMode

    count = FlopCount()
    counter = FlopCounterMode(display=False, custom_mapping=_cpu_attention())
    with counter:
        yield count
    count.total = float(counter.get_total_flops())


def step_flops(step: Callable[[], Any]) -> float:
    """FLOPs of `step()` (a forward and backward pass, say) as `count_flops` counts them."""
    with count_flops() as count:
        step()
    return count.total
