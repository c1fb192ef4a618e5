"""Peer figures for the skprocess benches: the Python library `suitkaise`
(its `processing` module) against the Python standard library
(`multiprocessing`), on the same workloads as the Rust benches.

Every figure is the median of REPS batches (after one warm-up batch); a
batch repeats the operation several times and yields the mean per operation
(or the rate over the batch). Each line reads

    PEER <workload> <suitkaise figure> | <stdlib name> <stdlib figure> | ratio <suitkaise/stdlib>x

so for times a ratio above 1 means suitkaise is slower, and for rates
(increments/s, MiB/s) a ratio above 1 means suitkaise is faster.

Run it through run.sh, which sets up the virtual environment.
"""

import multiprocessing as mp
import os
import platform
import statistics
import subprocess
import sys
import time

from suitkaise.processing import Pipe, Pool, Share, Skprocess

import peer_work

HERE = os.path.dirname(os.path.abspath(__file__))

REPS = 5
WORKERS = os.cpu_count() or 2
MIB = 1024 * 1024

# ---------------------------------------------------------------- reporting


def fmt_duration(seconds):
    """Formats like Rust's `{:.2?}` on a Duration."""
    if seconds >= 1.0:
        return f"{seconds:.2f}s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.2f}ms"
    if seconds >= 1e-6:
        return f"{seconds * 1e6:.2f}µs"
    return f"{seconds * 1e9:.2f}ns"


def human(x):
    if x >= 1e9:
        return f"{x / 1e9:.2f}G"
    if x >= 1e6:
        return f"{x / 1e6:.2f}M"
    if x >= 1e3:
        return f"{x / 1e3:.2f}k"
    return f"{x:.1f}"


def line(name, ours, base_name, base, ratio):
    print(f"PEER {name:<40} {ours:>12} | {base_name:<34} {base:>12} | ratio {ratio:>6.2f}x",
          flush=True)


def report_time(name, ours, base_name, base):
    line(name, fmt_duration(ours), base_name, fmt_duration(base), ours / base)


def report_rate(name, ours, base_name, base, unit):
    line(name, f"{human(ours)} {unit}", base_name, f"{human(base)} {unit}", ours / base)


def interleaved(*batches):
    """Medians of several batch functions. A batch returns one figure
    (seconds per op, or a rate). After one warm-up call each, they run in
    turn (a, b, c, a, b, c, ...) so that a change in the machine's load hits
    them all alike."""
    for batch in batches:
        batch()
    figures = [[] for _ in batches]
    for _ in range(REPS):
        for batch, out in zip(batches, figures):
            out.append(batch())
    return [statistics.median(out) for out in figures]


def per_op(n, op):
    """A batch of `n` calls of `op`, as seconds per call."""
    def batch():
        t = time.perf_counter()
        for _ in range(n):
            op()
        return (time.perf_counter() - t) / n
    return batch


# ------------------------------------------------ 1. spawn + result


class NoopProcess(Skprocess):
    def __init__(self):
        self.process_config.runs = 1

    def __run__(self):
        pass

    def __result__(self):
        return 1


def sk_spawn_result():
    assert NoopProcess().run() == 1


def bench_spawn():
    n = 8
    default = mp.get_start_method()
    ctx = mp.get_context()
    sk, base = interleaved(per_op(n, sk_spawn_result),
                           per_op(n, lambda: peer_work.spawn_result_once(ctx)))
    report_time("spawn+result: no-op Skprocess.run()", sk,
                f"mp.Process+Queue ({default}, default)", base)
    if default != "spawn":
        # in a fresh interpreter that never imports suitkaise, so the spawned
        # children re-import only the small stdlib-only module
        out = subprocess.run(
            [sys.executable, os.path.join(HERE, "peer_work.py"), "spawn", str(n), str(REPS)],
            check=True, capture_output=True, text=True,
        ).stdout
        report_time("spawn+result: no-op Skprocess.run()", sk,
                    "mp.Process+Queue (spawn)", float(out))


# ------------------------------------------------ 2. int round trip


class TellListenEcho(Skprocess):
    """Answers every int with int + 1, all in one __run__."""

    def __init__(self, n):
        self.n = n
        self.process_config.runs = 1

    def __run__(self):
        for _ in range(self.n):
            self.tell(self.listen() + 1)


class LifecycleEcho(Skprocess):
    """One message per lifecycle iteration: listen in __prerun__, answer in
    __run__ (the pattern the suitkaise docs show)."""

    def __init__(self, n):
        self.n = n
        self.msg = None
        self.process_config.runs = n

    def __prerun__(self):
        self.msg = self.listen()

    def __run__(self):
        self.tell(self.msg + 1)


class PipeEcho(Skprocess):
    def __init__(self, point, n):
        self.pipe = point
        self.n = n
        self.process_config.runs = 1

    def __run__(self):
        for _ in range(self.n):
            self.pipe.send(self.pipe.recv() + 1)


def _mp_pipe_echo(conn, n):
    for _ in range(n):
        conn.send(conn.recv() + 1)


def sk_tell_listen_rt(cls, n):
    def batch():
        p = cls(n)
        p.start()
        p.tell(0)  # first round trip outside the clock: the child is starting
        assert p.listen() == 1
        t = time.perf_counter()
        for i in range(1, n):
            p.tell(i)
            assert p.listen() == i + 1
        dt = time.perf_counter() - t
        p.wait()
        p.result()
        return dt / (n - 1)
    return batch


def sk_pipe_rt(n):
    def batch():
        anchor, point = Pipe.pair()
        p = PipeEcho(point, n)
        p.start()
        anchor.send(0)
        assert anchor.recv() == 1
        t = time.perf_counter()
        for i in range(1, n):
            anchor.send(i)
            assert anchor.recv() == i + 1
        dt = time.perf_counter() - t
        p.wait()
        p.result()
        anchor.close()
        return dt / (n - 1)
    return batch


def mp_pipe_rt(n):
    def batch():
        here, there = mp.Pipe()
        p = mp.Process(target=_mp_pipe_echo, args=(there, n))
        p.start()
        here.send(0)
        assert here.recv() == 1
        t = time.perf_counter()
        for i in range(1, n):
            here.send(i)
            assert here.recv() == i + 1
        dt = time.perf_counter() - t
        p.join()
        here.close()
        there.close()
        return dt / (n - 1)
    return batch


def bench_round_trip():
    base, tl, lc, sp = interleaved(
        mp_pipe_rt(2000),
        sk_tell_listen_rt(TellListenEcho, 500),
        sk_tell_listen_rt(LifecycleEcho, 200),
        sk_pipe_rt(2000),
    )
    report_time("int round trip: tell/listen", tl, "mp.Pipe ping-pong", base)
    report_time("int rt: tell/listen, 1 per lifecycle", lc, "mp.Pipe ping-pong", base)
    report_time("int round trip: suitkaise Pipe", sp, "mp.Pipe ping-pong", base)


# ------------------------------------------------ 3. shared counter


class ShareIncrementer(Skprocess):
    """Waits for a go (tell/listen) so both incrementers start together,
    then adds 1 to share.counter n times; returns its own start/end times."""

    def __init__(self, share, n):
        self.share = share
        self.n = n
        self.process_config.runs = 1

    def __run__(self):
        self.tell("ready")
        self.listen()
        self.t0 = time.perf_counter()
        for _ in range(self.n):
            self.share.counter += 1
        self.t1 = time.perf_counter()

    def __result__(self):
        return (self.t0, self.t1)


def _mp_namespace_inc(ns, lock, n, barrier, times):
    barrier.wait()
    t0 = time.perf_counter()
    for _ in range(n):
        with lock:
            ns.counter += 1
    times.put((t0, time.perf_counter()))


def _mp_value_inc(value, n, barrier, times):
    barrier.wait()
    t0 = time.perf_counter()
    for _ in range(n):
        with value.get_lock():
            value.value += 1
    times.put((t0, time.perf_counter()))


def window(spans):
    """Wall time from the first start to the last end across processes."""
    return max(t1 for _, t1 in spans) - min(t0 for t0, _ in spans)


def sk_share_counter(share, n, finals):
    def batch():
        share.counter = 0
        ps = [ShareIncrementer(share, n) for _ in range(2)]
        for p in ps:
            p.start()
        for p in ps:
            assert p.listen() == "ready"
        for p in ps:
            p.tell("go")
        spans = [p.result() for p in ps]
        finals.append(int(share.counter))
        return 2 * n / window(spans)
    return batch


def mp_namespace_counter(manager, n, finals):
    def batch():
        ns = manager.Namespace()
        ns.counter = 0
        lock = manager.Lock()
        barrier = mp.Barrier(3)
        times = mp.Queue()
        ps = [mp.Process(target=_mp_namespace_inc, args=(ns, lock, n, barrier, times))
              for _ in range(2)]
        for p in ps:
            p.start()
        barrier.wait()
        spans = [times.get() for _ in ps]
        for p in ps:
            p.join()
        finals.append(ns.counter)
        return 2 * n / window(spans)
    return batch


def mp_value_counter(n, finals):
    def batch():
        value = mp.Value("q", 0)
        barrier = mp.Barrier(3)
        times = mp.Queue()
        ps = [mp.Process(target=_mp_value_inc, args=(value, n, barrier, times))
              for _ in range(2)]
        for p in ps:
            p.start()
        barrier.wait()
        spans = [times.get() for _ in ps]
        for p in ps:
            p.join()
        finals.append(value.value)
        return 2 * n / window(spans)
    return batch


def bench_shared_counter():
    n_share, n_ns, n_value = 500, 1000, 100_000
    sk_finals, ns_finals, value_finals = [], [], []

    share = Share()
    share.counter = 0
    try:
        with mp.Manager() as manager:
            sk, ns, value = interleaved(
                sk_share_counter(share, n_share, sk_finals),
                mp_namespace_counter(manager, n_ns, ns_finals),
                mp_value_counter(n_value, value_finals),
            )
    finally:
        share.stop()

    report_rate("shared counter: Share, 2 procs", sk,
                "Manager().Namespace + Manager Lock", ns, "inc/s")
    report_rate("shared counter: Share, 2 procs", sk,
                "mp.Value + get_lock()", value, "inc/s")

    checks = [("Share", sk_finals, 2 * n_share), ("Namespace", ns_finals, 2 * n_ns),
              ("Value", value_finals, 2 * n_value)]
    bad = [(what, got, want) for what, finals, want in checks for got in finals if got != want]
    summary = ", ".join(f"{what} {finals[-1]}/{want} x{len(finals)}"
                        for what, finals, want in checks)
    print(f"  final counts {'exact' if not bad else 'WRONG'}: {summary}", flush=True)
    if bad:
        for what, got, want in bad:
            print(f"  {what}: got {got}, want {want}", flush=True)
    return not bad


# ------------------------------------------------ 4. Pool.map


# The same two functions as in peer_work, defined here in `__main__` too:
# suitkaise serializes a function from `__main__` by value, one from an
# importable module by reference, and the Pool workers rebuild it per item.


def double(x):
    return x * 2


def burn(k):
    acc = 0
    for i in range(k):
        acc = (acc + i * i) % 1_000_003
    return acc


def calibrate_burn(target=1e-3):
    """Loop count for which peer_work.burn takes about `target` seconds."""
    k = 10_000
    peer_work.burn(k)
    t = min(_timed(peer_work.burn, k) for _ in range(5))
    return max(1, int(k * target / t))


def _timed(f, *args):
    t = time.perf_counter()
    f(*args)
    return time.perf_counter() - t


def map_batch(pool, fn, items, expect):
    def batch():
        t = time.perf_counter()
        out = pool.map(fn, items)
        dt = time.perf_counter() - t
        assert out == expect
        return dt
    return batch


def bench_pool():
    tiny = list(range(10_000))
    tiny_expect = [double(x) for x in tiny]
    k = calibrate_burn()
    cpu = [k] * 200
    cpu_expect = [peer_work.burn(k)] * len(cpu)

    sk_pool = Pool(workers=WORKERS)
    mp_pool = mp.Pool(processes=WORKERS)
    try:
        sk_tiny, sk_tiny_main, mp_tiny = interleaved(
            map_batch(sk_pool, peer_work.double, tiny, tiny_expect),
            map_batch(sk_pool, double, tiny, tiny_expect),
            map_batch(mp_pool, peer_work.double, tiny, tiny_expect),
        )
        sk_cpu, sk_cpu_main, mp_cpu = interleaved(
            map_batch(sk_pool, peer_work.burn, cpu, cpu_expect),
            map_batch(sk_pool, burn, cpu, cpu_expect),
            map_batch(mp_pool, peer_work.burn, cpu, cpu_expect),
        )
    finally:
        sk_pool.close()
        mp_pool.close()
        mp_pool.join()

    base = f"mp.Pool({WORKERS}).map"
    report_time("Pool.map 10k tiny (x*2), fn in module", sk_tiny, base, mp_tiny)
    report_time("Pool.map 10k tiny (x*2), fn in __main__", sk_tiny_main, base, mp_tiny)
    report_time("Pool.map 200 x ~1 ms CPU, fn in module", sk_cpu, base, mp_cpu)
    report_time("Pool.map 200 x ~1 ms CPU, fn in __main__", sk_cpu_main, base, mp_cpu)


# ------------------------------------------------ 5. 1 MiB pipe throughput


class PipeSink(Skprocess):
    def __init__(self, point, n):
        self.pipe = point
        self.n = n
        self.process_config.runs = 1

    def __run__(self):
        total = 0
        for _ in range(self.n):
            total += len(self.pipe.recv())
        self.pipe.send(total)


def _mp_pipe_sink(conn, n):
    total = 0
    for _ in range(n):
        total += len(conn.recv_bytes())
    conn.send(total)


def sk_pipe_throughput(n, payload):
    def batch():
        anchor, point = Pipe.pair()
        p = PipeSink(point, n + 1)
        p.start()
        anchor.send(payload)  # warm: the first message waits for the child
        t = time.perf_counter()
        for _ in range(n):
            anchor.send(payload)
        assert anchor.recv() == (n + 1) * len(payload)
        dt = time.perf_counter() - t
        p.wait()
        p.result()
        anchor.close()
        return n * len(payload) / MIB / dt
    return batch


def mp_pipe_throughput(n, payload):
    def batch():
        here, there = mp.Pipe()
        p = mp.Process(target=_mp_pipe_sink, args=(there, n + 1))
        p.start()
        here.send_bytes(payload)
        t = time.perf_counter()
        for _ in range(n):
            here.send_bytes(payload)
        assert here.recv() == (n + 1) * len(payload)
        dt = time.perf_counter() - t
        p.join()
        here.close()
        there.close()
        return n * len(payload) / MIB / dt
    return batch


def bench_throughput():
    payload = os.urandom(MIB)
    n = 64
    sk, base = interleaved(sk_pipe_throughput(n, payload), mp_pipe_throughput(n, payload))
    report_rate("1 MiB pipe throughput: suitkaise Pipe", sk,
                "mp.Pipe send_bytes/recv_bytes", base, "MiB/s")


# ------------------------------------------------ extra: lifecycle overhead


class EmptyLifecycle(Skprocess):
    """Empty hooks; measures the time per iteration inside the child."""

    def __init__(self, n):
        self.n = n
        self.t0 = None
        self.t1 = None
        self.process_config.runs = n

    def __prerun__(self):
        if self.t0 is None:
            self.t0 = time.perf_counter()

    def __run__(self):
        pass

    def __postrun__(self):
        pass

    def __onfinish__(self):
        self.t1 = time.perf_counter()

    def __result__(self):
        return (self.t1 - self.t0) / self.n


class _Hooks:
    def prerun(self):
        pass

    def run(self):
        pass

    def postrun(self):
        pass


def bench_lifecycle():
    n = 2000
    hooks = _Hooks()

    def plain():
        t = time.perf_counter()
        for _ in range(100_000):
            hooks.prerun()
            hooks.run()
            hooks.postrun()
        return (time.perf_counter() - t) / 100_000

    sk, base = interleaved(lambda: EmptyLifecycle(n).run(), plain)
    report_time("lifecycle overhead per iteration", sk,
                "plain loop calling 3 empty methods", base)


# ------------------------------------------------ 7. queue, 1 producer / 1 consumer


QUEUE_BURST = 20_000


def _mp_queue_sink(items, acks):
    while True:
        for _ in range(QUEUE_BURST):
            if items.get() is None:
                return
        acks.put(1)


def bench_queue():
    """multiprocessing.Queue moving small ints from this process to a
    child, bursts acknowledged as in benches/queue.rs, beside mp.Pipe."""
    items, acks = mp.Queue(), mp.Queue()
    child = mp.Process(target=_mp_queue_sink, args=(items, acks))
    child.start()
    mine, theirs = mp.Pipe()
    pipe_child = mp.Process(target=_mp_item_sink, args=(theirs,))
    pipe_child.start()

    def queue_burst():
        t = time.perf_counter()
        for i in range(QUEUE_BURST):
            items.put(i)
        acks.get()
        return QUEUE_BURST / (time.perf_counter() - t)

    def pipe_burst():
        t = time.perf_counter()
        for i in range(QUEUE_BURST):
            mine.send(i)
        mine.recv()
        return QUEUE_BURST / (time.perf_counter() - t)

    q, p = interleaved(queue_burst, pipe_burst)
    items.put(None)
    mine.send(None)
    child.join()
    pipe_child.join()
    report_rate("mp.Queue 1P/1C, small ints", q, "mp.Pipe, same items", p, "items/s")


def _mp_item_sink(conn):
    while True:
        for _ in range(QUEUE_BURST):
            if conn.recv() is None:
                return
        conn.send(1)


# ----------------------------------------------------------------- main


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for row in f:
                if row.startswith("model name"):
                    return row.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown cpu"


def main():
    try:
        nproc = len(os.sched_getaffinity(0))
    except AttributeError:
        nproc = os.cpu_count()
    import importlib.metadata as md
    print(f"machine: nproc={nproc} cpu_count={os.cpu_count()} ({cpu_model()}), "
          f"{platform.system()} {platform.machine()}", flush=True)
    print(f"python {platform.python_version()} ({platform.python_implementation()}), "
          f"suitkaise {md.version('suitkaise')}, "
          f"multiprocessing start method {mp.get_start_method()}, pool workers {WORKERS}",
          flush=True)
    print(f"each figure: median of {REPS} batches after one warm-up batch", flush=True)

    t = time.perf_counter()
    bench_spawn()
    bench_round_trip()
    ok = bench_shared_counter()
    bench_pool()
    bench_throughput()
    bench_lifecycle()
    bench_queue()
    print(f"total {time.perf_counter() - t:.1f}s", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
