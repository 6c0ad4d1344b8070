"""One torchrun rank of gpu_check's ddp phase: ``doppeltrain fit``, recording what DDP used.

``python -m torch.distributed.run ... gpu_check_ddp.py RECORD_DIR`` runs the fit command
of ``RECORD_DIR/fit-args.json`` on every rank and writes ``RECORD_DIR/rank{RANK}.json``: the process
group's backend (nccl on GPUs, gloo on the CPU), the batch-norm layers the network was
converted to (SyncBatchNorm on CUDA), the fit's exit code and the rank's peak GPU memory.
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def main() -> int:
    import torch
    import torch.distributed as dist

    import doppeltrain.distributed as dist_utils
    from doppeltrain.cli import main as doppeltrain_main

    record_dir = Path(sys.argv[1])
    argv = json.loads((record_dir / "fit-args.json").read_text())
    seen: dict = {}
    convert = dist_utils.convert_sync_batchnorm

    def recording_convert(network, device):
        converted = convert(network, device)
        seen["batchnorm"] = dict(Counter(type(m).__name__ for m in converted.modules() if "BatchNorm" in type(m).__name__))
        seen["backend"] = dist.get_backend() if dist.is_initialized() else None
        seen["world_size"] = dist.get_world_size() if dist.is_initialized() else 1
        return converted

    dist_utils.convert_sync_batchnorm = recording_convert  # train.py calls it through the module
    code = doppeltrain_main(argv)
    rank = int(os.environ.get("RANK", "0"))
    seen.update(rank=rank, exit_code=code)
    seen["max_memory_allocated_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None
    record_dir.mkdir(parents=True, exist_ok=True)
    (record_dir / f"rank{rank}.json").write_text(json.dumps(seen))
    return code


if __name__ == "__main__":
    sys.exit(main())
