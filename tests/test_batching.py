"""`service.batching.Batcher`: BentoML's dispatcher inside the service process.

Concurrent calls share batches, each gets exactly its own items' outputs in
order, a call larger than the room left is split across batches, `then`
overlaps the next batch's `first`, errors reach every caller of the batch,
a cancelled call stays cancelled, past the budget or after shutdown calls
are shed.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

import pytest

from service.batching import Batcher, Overloaded


def _recording(max_batch_size: int = 8):
    batches: list[list[int]] = []

    def first(items: list[int]) -> list[int]:
        batches.append(list(items))
        return [10 * item for item in items]

    def then(items: list[int], middle: list[int]) -> list[int]:
        return [m + item for item, m in zip(items, middle, strict=True)]  # 11 * item

    return Batcher(first, then, max_batch_size, max_latency_ms=10_000), batches


def _holding(release: threading.Event) -> Callable[[list[int]], list[int]]:
    """A `first` that holds the batch slot on item 0 until `release` is set."""

    def first(items: list[int]) -> list[int]:
        if 0 in items:
            release.wait(10)
        return items

    return first


def test_concurrent_calls_share_batches_and_get_their_own_outputs():
    async def main() -> tuple[list[list[int]], list[list[int]]]:
        batcher, batches = _recording()
        calls = [[100 * c + i for i in range(1 + c % 3)] for c in range(12)]
        outputs = await asyncio.gather(*(batcher(call) for call in calls))
        batcher.shutdown()
        return calls, outputs, batches

    calls, outputs, batches = asyncio.run(main())
    for call, output in zip(calls, outputs, strict=True):
        assert output == [11 * item for item in call]
    assert sorted(i for batch in batches for i in batch) == sorted(i for c in calls for i in c)
    assert len(batches) < len(calls)  # some batch held several calls
    assert max(len(batch) for batch in batches) <= 8


def test_a_call_larger_than_the_room_left_is_split_and_joined_back():
    async def main():
        batcher, batches = _recording(max_batch_size=3)
        outputs = await asyncio.gather(batcher([1, 2]), batcher([3, 4, 5, 6, 7]))
        batcher.shutdown()
        return outputs, batches

    outputs, batches = asyncio.run(main())
    assert outputs == [[11, 22], [33, 44, 55, 66, 77]]
    assert all(len(batch) <= 3 for batch in batches)
    assert len(batches) >= 3


def test_then_overlaps_the_next_batchs_first():
    """While batch 1's `then` is blocked, batch 2's `first` still runs."""
    second_first_ran = threading.Event()

    def first(items: list[int]) -> list[int]:
        if 2 in items:
            second_first_ran.set()
        return items

    def then(items: list[int], middle: list[int]) -> list[int]:
        if 1 in items:
            assert second_first_ran.wait(10), "batch 2 waited for batch 1's `then`"
        return middle

    async def main():
        batcher = Batcher(first, then, max_batch_size=1, max_latency_ms=10_000)
        outputs = await asyncio.gather(batcher([1]), batcher([2]))
        batcher.shutdown()
        return outputs

    assert asyncio.run(main()) == [[1], [2]]


def test_an_error_reaches_every_caller_of_its_batch_and_the_next_batch_runs():
    release = threading.Event()
    hold = _holding(release)  # item 0 holds the slot while the next two calls queue up together

    def first(items: list[int]) -> list[int]:
        if -1 in items:
            raise ValueError("bad item")
        return hold(items)

    async def main():
        batcher = Batcher(first, lambda items, middle: middle, 8, 10_000)
        holder = asyncio.ensure_future(batcher([0]))
        await asyncio.sleep(0.05)
        pair = [asyncio.ensure_future(batcher([-1])), asyncio.ensure_future(batcher([7]))]
        await asyncio.sleep(0.05)
        release.set()
        results = await asyncio.gather(holder, *pair, return_exceptions=True)
        after = await batcher([5])
        batcher.shutdown()
        return results, after

    (held, bad, neighbour), after = asyncio.run(main())
    assert held == [0]
    for result in (bad, neighbour):  # the same batch: both get the error
        assert isinstance(result, ValueError) and "bad item" in str(result)
    assert after == [5]


def test_an_error_in_then_reaches_the_caller():
    def then(items: list[int], middle: list[int]) -> list[int]:
        raise RuntimeError("density failed")

    async def main():
        batcher = Batcher(lambda items: items, then, 8, 10_000)
        results = await asyncio.gather(batcher([1]), return_exceptions=True)
        batcher.shutdown()
        return results

    [result] = asyncio.run(main())
    assert isinstance(result, RuntimeError) and "density failed" in str(result)


def test_a_cancelled_call_stays_cancelled_and_the_others_are_answered():
    release = threading.Event()
    first = _holding(release)

    async def main():
        batcher = Batcher(first, lambda items, middle: middle, 8, 10_000)
        holder = asyncio.ensure_future(batcher([0]))
        await asyncio.sleep(0.05)
        doomed, kept = asyncio.ensure_future(batcher([1])), asyncio.ensure_future(batcher([2]))
        await asyncio.sleep(0.05)
        doomed.cancel()
        release.set()
        results = await asyncio.gather(holder, doomed, kept, return_exceptions=True)
        batcher.shutdown()
        return results

    held, doomed, kept = asyncio.run(main())
    assert held == [0] and kept == [2]
    assert isinstance(doomed, asyncio.CancelledError)  # not Overloaded: no 503 for a 504


def test_after_shutdown_every_call_is_shed_at_once():
    async def main():
        batcher, _ = _recording()
        assert await batcher([1]) == [11]
        batcher.shutdown()
        return await asyncio.wait_for(batcher([2]), timeout=5)

    with pytest.raises(Overloaded):
        asyncio.run(main())


def test_past_the_latency_budget_a_call_is_shed_with_overloaded():
    """One slow batch holds the slot; calls queued behind it past the budget are shed."""
    release = threading.Event()
    first = _holding(release)

    async def main():
        batcher = Batcher(first, lambda items, middle: middle, 1, max_latency_ms=50)
        slow = asyncio.ensure_future(batcher([0]))
        await asyncio.sleep(0.05)
        queued = [asyncio.ensure_future(batcher([i])) for i in range(1, 6)]
        await asyncio.sleep(0.5)
        release.set()
        results = await asyncio.gather(slow, *queued, return_exceptions=True)
        batcher.shutdown()
        return results

    results = asyncio.run(main())
    assert results[0] == [0]
    shed = [r for r in results[1:] if isinstance(r, Overloaded)]
    assert shed, results
    for index, result in enumerate(results[1:], start=1):
        assert isinstance(result, Overloaded) or result == [index]
