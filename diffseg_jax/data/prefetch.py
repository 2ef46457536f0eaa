"""Prefetching: the next batches are prepared and put on the devices while the step runs."""

import queue
import threading
from typing import Callable, Iterator

_END = object()


class Prefetcher:
  """Iterates over ``put(batch)`` for each batch of ``batches``, ``size`` batches ahead.

  A background thread reads and preprocesses the host batches and transfers them with ``put``
  (e.g. :func:`diffseg_jax.train.sharding.put_batch`) while the caller's step runs; the order
  is that of ``batches``. An error in the thread is raised by the ``next`` that would have
  returned the batch. ``size=0`` does it all in the caller's thread. Call :meth:`close` (or use
  ``with``) when done.
  """

  def __init__(self, batches: Iterator, put: Callable, size: int):
    self._batches, self._put = batches, put
    self._queue = queue.Queue(maxsize=max(size, 1))
    self._stop = threading.Event()
    self._thread = None
    if size:
      self._thread = threading.Thread(target=self._fill, daemon=True, name="prefetch")
      self._thread.start()

  def _offer(self, item) -> bool:
    """Queues ``item`` unless closed meanwhile; returns whether it was queued."""
    while not self._stop.is_set():
      try:
        self._queue.put(item, timeout=0.1)
        return True
      except queue.Full:
        continue
    return False

  def _fill(self) -> None:
    try:
      for batch in self._batches:
        if not self._offer((self._put(batch), None)):
          return
      self._offer((_END, None))
    except Exception as e:  # pylint: disable=broad-except  (re-raised in the caller's thread)
      self._offer((None, e))

  def __iter__(self) -> "Prefetcher":
    return self

  def __next__(self):
    if self._thread is None:
      return self._put(next(self._batches))
    item, error = self._queue.get()
    if error is not None:
      self._queue.put((None, error))  # every later call fails alike
      raise error
    if item is _END:
      self._queue.put((_END, None))
      raise StopIteration
    return item

  def close(self) -> None:
    """Stops the thread (it finishes the batch it is preparing) and waits for it."""
    self._stop.set()
    if self._thread is not None:
      self._thread.join()

  def __enter__(self) -> "Prefetcher":
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()
