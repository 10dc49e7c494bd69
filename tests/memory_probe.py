"""`fpgen ARGS` that also records its own memory to $FPGEN_MEMORY_LOG, one JSON object per line:
``{"section_rss_kb": N}`` as each section is done (after glibc's malloc_trim, so freed heap pages the
allocator keeps for reuse do not count), and ``{"peak_kb": N}`` at exit.

Read from /proc/self/status inside the process, because the parent's view is skewed both ways:
wait4's ru_maxrss includes the parent's resident size (exec records the old address space's peak,
that of the forked test runner), and VmRSS sampled from outside when a progress line appears lands
at a random point of the next section's work.
"""

import atexit
import ctypes
import json
import os
import re
import sys
from pathlib import Path

from fpgen import events
from fpgen.cli import main

log = open(os.environ["FPGEN_MEMORY_LOG"], "w")
libc = ctypes.CDLL("libc.so.6")


def status_kb(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1))


def record(**values: int) -> None:
    log.write(json.dumps(values) + "\n")
    log.flush()


section_done = events.SectionDone.__init__


def recording_section_done(self, *args, **kwargs):
    section_done(self, *args, **kwargs)
    libc.malloc_trim(0)  # free heap pages go back to the system: what is left is what the process holds
    record(section_rss_kb=status_kb("VmRSS"))


events.SectionDone.__init__ = recording_section_done
atexit.register(lambda: record(peak_kb=status_kb("VmHWM")))
sys.argv = ["fpgen", *sys.argv[1:]]
main()
