"""What every recipe's child process shares: its place among data-parallel ranks, and the
failures that end a run with a status the job's worker understands (see `recipes.train`)."""

from __future__ import annotations

import os

LOSS_DIVERGED, BAD_DATA = 3, 4


class TrainingFailed(Exception):
    """Ends the run with `status` and this message (no traceback: it is the user's answer)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class Ranks:
    """This process's place in a data-parallel run started by torch's elastic launcher
    (RANK, WORLD_SIZE, LOCAL_WORLD_SIZE in the environment), or a run of one."""

    def __init__(self) -> None:
        import torch

        self.rank = int(os.environ.get("RANK", "0"))
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        # each rank gets its share of the cores: ranks that each start a thread per core
        # oversubscribe the machine, and DDP then runs many times slower than one process
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, local)))
        self.distributed = self.world > 1
        if self.distributed:
            import torch.distributed as dist

            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")

    @property
    def lead(self) -> bool:
        return self.rank == 0

    def close(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
