"""agent/ops/host.py: the boot id, and giving freed C heap back to the kernel."""

from __future__ import annotations

from agent.ops.host import boot_id, release_free_heap


def _rss_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_boot_id_is_this_boots() -> None:
    with open("/proc/sys/kernel/random/boot_id") as f:
        assert boot_id() == f.read().strip() != ""


def test_free_heap_pages_go_back_to_the_kernel() -> None:
    # (the gateways' C library is glibc, as here; elsewhere it returns False and this fails)
    # 64 MB of 1 kB blocks (malloc'd: larger than Python's small-object limit), of which one
    # in 64 stays alive: the freed ones are holes in the heap that glibc keeps by itself
    blocks = [bytes(1024) for _ in range(64 * 1024)]
    kept = blocks[::64]
    del blocks
    before = _rss_kb()
    assert release_free_heap()
    after = _rss_kb()
    assert before - after > 20 * 1024, (before, after)
    assert len(kept) == 1024
