"""Start a script on 2 local ranks (gloo, CPU) the way torchrun does: RANK/WORLD_SIZE/LOCAL_RANK
in the environment; rendezvous through a file store, so no port is needed."""

import os
import subprocess
import sys
from pathlib import Path


def run_ranks(script, args, tmp: Path, world=2, timeout=400):
    """Run ``python script --... args`` on ``world`` ranks; raise with each rank's output tail on
    failure or timeout. Returns the ranks' combined outputs."""
    store = tmp / "store"
    procs, logs = [], []
    for rank in range(world):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
               "LOCAL_WORLD_SIZE": str(world), "OMP_NUM_THREADS": "1"}
        log = open(tmp / f"rank{rank}.log", "w+")  # noqa: SIM115
        logs.append(log)
        procs.append(subprocess.Popen([sys.executable, str(script), *map(str, args), f"file://{store}"],
                                      env=env, stdout=log, stderr=subprocess.STDOUT))
    failed = False
    try:
        for p in procs:
            failed |= p.wait(timeout=timeout) != 0
    except subprocess.TimeoutExpired:
        failed = True
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    texts = []
    for log in logs:
        log.seek(0)
        texts.append(log.read())
        log.close()
    if failed:
        tails = "\n".join(f"--- rank {r} ---\n{t[-3000:]}" for r, t in enumerate(texts))
        raise AssertionError(f"{script} failed on {world} ranks:\n{tails}")
    return texts
