"""`fpgen ARGS` that, right after it reports a line starting with $FPGEN_WAIT_AFTER, waits there for a signal.

A test reads that line from stderr and only then sends SIGINT or SIGTERM, so the signal lands at a known
point of the work however busy the machine is (a signal sent after a sleep, or after a line the work has
already left behind, may find the work done). Batch workers run this file too (multiprocessing's spawn
imports the main script in each), so every worker waits at that line as well.
"""

import os
import sys
import time

from fpgen.cli import main, report

WAIT_AFTER = os.environ["FPGEN_WAIT_AFTER"]
report_line = report.Reporter.info


def report_then_wait(self, message: str) -> None:
    report_line(self, message)
    if message.startswith(WAIT_AFTER):
        while True:  # until a signal's handler raises (SIGINT, or SIGTERM, which fpgen turns into KeyboardInterrupt);
            time.sleep(1)  # in slices, not signal.pause(): a signal landing just before pause() would leave it waiting for another


report.Reporter.info = report_then_wait

if __name__ == "__main__":
    sys.argv = ["fpgen", *sys.argv[1:]]
    main()
