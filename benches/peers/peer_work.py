"""Standard-library-only helpers for peers.py.

Two jobs:
- the work functions that the Pool workloads map, living in an importable
  module (rather than in `__main__`), since where a function lives changes
  how suitkaise serializes it;
- `python peer_work.py spawn <n> <reps>` measures mp.Process start + result
  + join with the 'spawn' start method in an interpreter that never imports
  suitkaise, so the spawned children re-import only this small module.
"""

import multiprocessing as mp
import statistics
import sys
import time


def double(x):
    return x * 2


def burn(k):
    """A pure-Python loop; peers.py calibrates `k` to about 1 ms."""
    acc = 0
    for i in range(k):
        acc = (acc + i * i) % 1_000_003
    return acc


def _noop(q):
    q.put(1)


def spawn_result_once(ctx):
    q = ctx.Queue()
    p = ctx.Process(target=_noop, args=(q,))
    p.start()
    assert q.get() == 1
    p.join()


def _spawn_main(n, reps):
    ctx = mp.get_context("spawn")

    def batch():
        t = time.perf_counter()
        for _ in range(n):
            spawn_result_once(ctx)
        return (time.perf_counter() - t) / n

    batch()
    print(statistics.median(batch() for _ in range(reps)))


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] != "spawn":
        sys.exit("usage: peer_work.py spawn <n per batch> <batches>")
    _spawn_main(int(sys.argv[2]), int(sys.argv[3]))
