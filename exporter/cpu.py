"""One lock for the CPU-bound parts of polling (parsing pages, rendering fragments).

Under CPython's GIL these parts cannot run in parallel anyway; letting only one thread at a
time compete for the GIL with them keeps the number of threads a scrape must win the GIL
from small, so scrapes during a poll stay close to idle ones.
"""

import threading

CPU_LOCK = threading.Lock()
