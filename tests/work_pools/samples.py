"""Sample tasks for the work-pool tests: the shipped SFT example with its hardware rewritten."""

from __future__ import annotations

import re
from typing import Any

from configs import validate_text
from tasks.registry import TASK_TYPES
from tests.conftest import ROOT

EXAMPLE = (ROOT / "configs" / "sft_mistral_7b.yaml").read_text()
HARDWARE = re.compile(r"^    hardware:\n(?:^      .*\n)+", re.MULTILINE)
ADAPTER_LAST_LINE = '      target_modules: ["q_proj", "v_proj"]\n'


def sample_task(gpu_type: str | None, count: int = 1, cpu: str = "8", memory: str = "64Gi") -> Any:
    """The example task asking for ``count`` GPUs of ``gpu_type`` (None: CPU only) per replica."""
    gpu = f'      gpu:\n        type: "{gpu_type}"\n        count: {count}\n' if gpu_type else ""
    hardware = f'    hardware:\n      cpu: "{cpu}"\n      memory: "{memory}"\n' + gpu
    text, replaced = HARDWARE.subn(hardware, EXAMPLE)
    assert replaced == 1 and ADAPTER_LAST_LINE in text and 'type: "qlora"' in text, (
        "the example task changed shape; update samples.py"
    )
    if gpu_type is None:  # QLoRA's 4-bit loading needs CUDA
        text = text.replace('type: "qlora"', 'type: "lora"')
    else:  # float16: the one compute dtype every catalog GPU (T4 included) can run
        text = text.replace(ADAPTER_LAST_LINE, ADAPTER_LAST_LINE + '      compute_dtype: "float16"\n')
    result = validate_text(text, "t.yaml", TASK_TYPES)
    assert result.valid, "\n".join(issue.format() for issue in result.issues)
    return result.task
