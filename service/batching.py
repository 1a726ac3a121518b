"""Adaptive batching inside the service process, with BentoML's own dispatcher.

BentoML batches a `batchable` API, and such an API takes exactly one argument:
a request here also carries options (samples, seed, alpha) and images of any
size. So the service hands its jobs to the dispatcher BentoML builds for every
batchable API (`CorkDispatcher`, BentoML 1.4): the same CORK algorithm, the
same latency budget and largest batch, and no second process, HTTP hop or
serialization between the request and the model.

A call hands over a list of items (a request's images); the dispatcher merges
the lists of concurrent calls into batches of at most `max_batch_size` items,
splitting a list across two batches where it must, and gives each call its
own items' outputs back in order. A call it cannot run within the latency
budget is shed: it raises `Overloaded` (the service answers 503).

A batch runs in two steps, each in a worker thread. `first` holds the
dispatcher's one batch slot (the service: preprocessing and the sampling
call, the costly part); `then` runs after the slot is freed (the service:
the OOD scores), so it overlaps the next batch's `first` instead of
delaying it. A cancelled call (a timeout, a client gone) stays cancelled;
after `shutdown` every call is shed at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Generic, NoReturn, TypeVar

import anyio
from bentoml._internal.marshal.dispatcher import CorkDispatcher

In = TypeVar("In")
Mid = TypeVar("Mid")
Out = TypeVar("Out")

Handle = tuple["asyncio.Future[list]", int]  # an item's batch outputs to come, its place there


class Overloaded(RuntimeError):
    """The batch could not take this call within the latency budget."""


def _shed() -> NoReturn:
    raise Overloaded("not batched within the latency budget")


def _retrieve(future: asyncio.Future) -> None:
    """Mark a finished batch step's error as seen (each caller still gets it)."""
    if not future.cancelled():
        future.exception()


class Batcher(Generic[In, Mid, Out]):
    """`await batcher(items)` -> their outputs: `then(batch, first(batch))`, batched.

    `first` and `then` are blocking (Keras); each gets one batch of items,
    the calls' lists joined in arrival order, and `then` returns one output
    per item, in order. `on_batch(calls, items)`, if given, sees every batch's size.
    """

    def __init__(
        self,
        first: Callable[[list[In]], Mid],
        then: Callable[[list[In], Mid], list[Out]],
        max_batch_size: int,
        max_latency_ms: int,
        on_batch: Callable[[int, int], None] | None = None,
    ) -> None:
        self._first, self._then, self._on_batch = first, then, on_batch
        self._dispatcher: CorkDispatcher[list[In], list[Handle]] = CorkDispatcher(
            max_latency_in_ms=max_latency_ms,
            max_batch_size=max_batch_size,
            fallback=_shed,
            get_batch_size=len,
        )
        self._call = self._dispatcher(self._run)
        self._closed = False

    async def _run(self, calls: Sequence[list[In]]) -> list[list[Handle]]:
        """One batch: `first` in the slot; `then` scheduled to run after it is freed.

        Each call gets one handle per item (a list, so the dispatcher can join
        the two halves of a call it split across batches).
        """
        items = [item for call in calls for item in call]
        if self._on_batch is not None:
            self._on_batch(len(calls), len(items))
        middle = await anyio.to_thread.run_sync(self._first, items)
        rest = asyncio.ensure_future(anyio.to_thread.run_sync(self._then, items, middle))
        rest.add_done_callback(_retrieve)  # its callers may all be gone: no unread error
        handles, start = [], 0
        for call in calls:
            handles.append([(rest, start + i) for i in range(len(call))])
            start += len(call)
        return handles

    async def __call__(self, items: list[In]) -> list[Out]:
        """The items' outputs once their batches have run; raises `Overloaded` if shed."""
        if self._closed:
            _shed()
        try:
            handles = await self._call(items)
        except Overloaded:
            task = asyncio.current_task()
            if task is not None and getattr(task, "cancelling", lambda: 0)():
                raise asyncio.CancelledError from None  # cancelled, not shed: 504, not 503
            raise
        for future in dict.fromkeys(future for future, _ in handles):  # one or two batches
            await asyncio.shield(future)  # shared: a caller's cancel must not cancel it
        return [future.result()[index] for future, index in handles]

    def shutdown(self) -> None:
        """Stop dispatching; calls still waiting and every later call are shed (`Overloaded`)."""
        self._closed = True
        self._dispatcher.shutdown()
