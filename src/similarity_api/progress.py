"""Progress on a terminal for long steps that cannot report their own: a line that counts seconds.

Polars' streaming collect, ARPACK and Annoy's tree build run for tens of seconds at a million
customers without a callback. ``ticking`` shows the step's name and the time spent in it,
refreshed by a thread of its own (those libraries release the GIL), and leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

from tqdm import tqdm

#: Seconds between refreshes of the line.
REFRESH = 0.5


@contextlib.contextmanager
def ticking(description: str, enabled: bool) -> Iterator[None]:
    """Show ``description: <elapsed>`` while the block runs, when ``enabled``."""
    if not enabled:
        yield
        return
    done = threading.Event()
    with tqdm(desc=description, bar_format="{desc}: {elapsed}", leave=False) as bar:

        def tick() -> None:
            while not done.wait(REFRESH):
                bar.refresh()

        ticker = threading.Thread(target=tick, name="progress", daemon=True)
        ticker.start()
        try:
            yield
        finally:
            done.set()
            ticker.join()
