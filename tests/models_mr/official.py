"""Run the official packages end to end, as their users do, for side-by-side comparisons.

Two harness changes, neither touching what is computed:

* TotalSpineSeg's ``inference()`` calls ``auglab.add_trainer("nnUNetTrainerDAExt")``, which copies
  AugLab's trainer module **into the installed nnunetv2 package**. That module does not even import
  with the installed kornia (``ImportError: cannot import name 'Tensor' from 'kornia.core'``), and
  once copied it would break nnU-Net's trainer lookup for every other test sharing this virtual
  environment. The runner replaces ``add_trainer`` with a no-op and points nnU-Net's own
  ``nnUNet_extTrainer`` search path at a one-line module defining ``nnUNetTrainerDAExtGPU`` as a
  plain ``nnUNetTrainer`` subclass. For inference a trainer class only contributes
  ``build_network_architecture``, which AugLab's trainer inherits unchanged; its mirroring axes
  are unused because TotalSpineSeg disables test-time augmentation.
* The official command runs in a child process (a fresh interpreter, as the CLI would), in the
  tests with one worker and one torch thread so that it does not oversubscribe the CPU.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

STUB_TRAINER = textwrap.dedent('''\
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


    class nnUNetTrainerDAExtGPU(nnUNetTrainer):
        """Stand-in for AugLab's trainer: same network (inherited build_network_architecture)."""
''')

_TSS_SCRIPT = textwrap.dedent('''\
    import sys
    from pathlib import Path

    import torch
    import totalspineseg.inference as official

    official.add_trainer = lambda *args, **kwargs: None  # see tests/models_mr/official.py
    source, output, data, step1, threads, workers = sys.argv[1:7]
    torch.set_num_threads(int(threads))  # the CLI sets cpu_count() on the CPU
    official.inference(input_path=Path(source), output_path=Path(output), data_path=Path(data),
                       default_release="r20251124", device=torch.device("cpu"),
                       step1_only=step1 == "1", max_workers=int(workers),
                       max_workers_nnunet=int(workers), quiet=True,
                       keep_only=["step1_raw", "step1_output", "step2_raw", "step2_output"])
''')


def stub_trainer_dir(where: Path) -> Path:
    """A folder holding the stand-in trainer module, for ``nnUNet_extTrainer``."""
    folder = where / "ext_trainers"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "nnUNetTrainerDAExtGPU_stub.py").write_text(STUB_TRAINER)
    return folder


def totalspineseg_command(source: Path, output: Path, data_dir: Path, *, step1_only: bool = False,
                          threads: int = 1, workers: int = 1) -> tuple[list[str], dict[str, str]]:
    """Argv and environment of ``totalspineseg SOURCE OUTPUT --data-dir DATA_DIR [--step1]``.

    ``threads``: torch CPU threads, ``workers``: its process pools (tests use 1 and 1; the official
    CLI defaults to ``os.cpu_count()`` for both on a CPU-only machine with ≥ 8 GiB per core).
    """
    env = {**os.environ,
           "nnUNet_extTrainer": str(stub_trainer_dir(output.parent / f".{output.name}"))}
    argv = [sys.executable, "-c", _TSS_SCRIPT, str(source), str(output), str(data_dir),
            "1" if step1_only else "0", str(threads), str(workers)]
    return argv, env


def run_totalspineseg(source: Path, output: Path, data_dir: Path, *, step1_only: bool = False,
                      timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run the official command (see :func:`totalspineseg_command`) and wait for it."""
    argv, env = totalspineseg_command(source, output, data_dir, step1_only=step1_only)
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout,
                          check=False)
