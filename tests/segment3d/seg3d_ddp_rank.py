"""One rank of the 2-process segment3d run (started by test_seg3d_ddp.py as torchrun would):
trains the tiny U-Net data-parallel through the shared loop and saves, per epoch, this rank's
parameters and a digest of the patches it trained on."""

import hashlib
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from mixprec.distributed.launch import DistContext
from mixprec.vision.trainer import train


def main(data: str, model: str, out: Path, init: str) -> None:
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    torch.set_num_threads(1)
    ctx = DistContext(rank, world, rank, torch.device("cpu"))
    seen: list[str] = []

    def on_batch_end(st, batch):
        seen.append(hashlib.sha1(batch[0].numpy().tobytes()).hexdigest())

    def on_epoch_end(st, epoch):
        params = {k: v.detach().clone() for k, v in st.model.state_dict().items()}
        torch.save({"params": params, "batches": list(seen), "steps": st.prec.steps},
                   out / f"rank{rank}-epoch{epoch}.pt")

    train(model=model, data=data, epochs=2, patch=16, batch=4, iterations=2, amp=False, verbose=False,
          plots=False, project=str(out / "runs"), dist=ctx,
          callbacks={"on_batch_end": on_batch_end, "on_epoch_end": on_epoch_end})
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], Path(sys.argv[3]), sys.argv[4])
