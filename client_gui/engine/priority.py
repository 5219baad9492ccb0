"""CPU priority of a backup's pipeline threads: the file readers and sealers yield to the walker.

The walker is a backup's critical path: it lists folders, reads the small files and builds the
trees, all holding the GIL, while the readers and sealers do work that releases it (reading,
chunking, hashing, compressing, encrypting) and can be done whenever a core is free. At equal
priority the kernel gave those four threads four fifths of two cores, and the walk ended last.
Initial backup of the benchmark's home tree, 6 interleaved A/B pairs: 4.66 -> 4.44 s median
(slowest run 5.16 -> 4.49 s), the same CPU time; nice 19 measured the same as 10.

Linux only: there a thread's nice value is its own. Elsewhere (where PRIO_PROCESS with a thread
ID would name a process) nothing is changed.
"""

import logging
import os
import sys
import threading

logger = logging.getLogger(__name__)

PIPELINE_NICE = 10  # steps nicer than the process (its main thread)


def lower_this_thread(by: int = PIPELINE_NICE) -> None:
    """Make the calling thread `by` steps nicer than the process's main thread (at most 19).

    Relative to the main thread, not to the calling thread: a thread starts with the nice value
    of the thread that started it, and one pool's threads may be started by another's. A thread
    already that nice or nicer is left alone. Never fails.
    """
    if sys.platform != "linux":
        return
    tid = threading.get_native_id()
    try:
        target = min(19, os.getpriority(os.PRIO_PROCESS, os.getpid()) + by)
        if os.getpriority(os.PRIO_PROCESS, tid) < target:
            os.setpriority(os.PRIO_PROCESS, tid, target)
    except OSError as exc:  # a sandbox refusing it: the backup only runs a little slower
        logger.debug("thread priority left as it is: %s", exc)
