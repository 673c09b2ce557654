"""Leaving a multi-process launch frees its process group: no gloo worker thread outlives it into the
interpreter's exit, where it could abort the process (SIGABRT) after all the work was done."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

# Run by each process: join, import a model stack (which brings torch._dynamo), do a collective, leave, and
# print the names of the threads still running.
JOIN_AND_LEAVE = '''
import os
import torch.distributed as dist
from dglm.processes import join_process_group, leave_process_group

join_process_group()
import transformers.modeling_utils  # what loading any model does
parts = [None, None] if dist.get_rank() == 0 else None
dist.gather_object([dist.get_rank()], parts, dst=0)
leave_process_group()
print("threads:", sorted(open(f"/proc/self/task/{t}/comm").read().strip() for t in os.listdir("/proc/self/task")))
'''


def test_leaving_joins_the_groups_worker_threads(tmp_path):
    script = tmp_path / "join_and_leave.py"
    script.write_text(JOIN_AND_LEAVE)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                           str(port), str(script)], capture_output=True, text=True, timeout=300, check=False,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    reports = [line for line in done.stdout.splitlines() if line.startswith("threads:")]
    assert len(reports) == 2, done.stdout
    for report in reports:
        assert "gloo" not in report, report
