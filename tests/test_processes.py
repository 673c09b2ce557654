"""Leaving a multi-process launch frees its process group: no gloo worker thread outlives it into the
interpreter's exit, where it could abort the process (SIGABRT) after all the work was done."""

from __future__ import annotations

import pytest
from conftest import run_two_processes

pytestmark = pytest.mark.slow  # starts processes or builds a wheel: `-m "not slow"` skips it

# Run by each process: join, import a model stack (which brings torch._dynamo), do a collective, leave, and
# write the names of the threads still running to its own file (the processes' stdout lines can interleave).
JOIN_AND_LEAVE = '''
import os, sys
import torch.distributed as dist
from dglm.processes import join_process_group, leave_process_group

join_process_group()
import transformers.modeling_utils  # what loading any model does
parts = [None, None] if dist.get_rank() == 0 else None
dist.gather_object([dist.get_rank()], parts, dst=0)
leave_process_group()
threads = sorted(open(f"/proc/self/task/{t}/comm").read().strip() for t in os.listdir("/proc/self/task"))
open(os.path.join(sys.argv[1], "threads-rank" + os.environ["RANK"]), "w").write(" ".join(threads))
'''


def test_leaving_joins_the_groups_worker_threads(tmp_path):
    script = tmp_path / "join_and_leave.py"
    script.write_text(JOIN_AND_LEAVE)
    run_two_processes(str(script), str(tmp_path), timeout=300)
    for rank in (0, 1):
        threads = (tmp_path / f"threads-rank{rank}").read_text()
        assert "python" in threads and "gloo" not in threads, threads
