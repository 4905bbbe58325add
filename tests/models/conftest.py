"""Session fixtures: random-weight model folders (built once) and a config pointing at a tmp
store."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.models.modelfolders import build_model_folder


@pytest.fixture(scope="session")
def model_folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """ResEnc M (fold_all), ResEnc L (5 folds) and a model saved by a trainer nnunetv2 lacks."""
    import torch

    torch.set_num_threads(1)  # 2 shared cores: do not oversubscribe
    results = tmp_path_factory.mktemp("nnUNet_results")
    return {
        "m": build_model_folder(results, "nnUNetResEncUNetMPlans", ["all"], seed=0),
        "l": build_model_folder(results, "nnUNetResEncUNetLPlans", [0, 1, 2, 3, 4], seed=10),
        "daext": build_model_folder(results, "nnUNetPlans", [0], trainer="nnUNetTrainerDAExtGPU",
                                    seed=20),
    }


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    """A config.yaml whose weights directory is empty and whose device is the CPU."""
    path = tmp_path / "config.yaml"
    path.write_text(f"models:\n  path: {tmp_path / 'models'}\n  device: cpu\n  threads: 1\n")
    return path
