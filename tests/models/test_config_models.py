"""The ``models`` section of config.yaml: defaults, and plain reasons for wrong values."""

from __future__ import annotations

import pytest

from dicomnode.config import ConfigError, load_config, parse_config
from dicomnode.models.runtime import NnUNetRuntime


def test_bundled_defaults() -> None:
    models = load_config().models
    assert (models.device, models.keep_warm, models.threads, models.mirror) == ("auto", 4, 0, "")
    assert models.pipeline_models == {}
    runtime = NnUNetRuntime.from_config(models, "cpu")
    assert (runtime.device_spec, runtime.max_models) == ("cpu", 4)


@pytest.mark.parametrize(("models", "key", "reason"), [
    ({"device": "gpu"}, "models.device", "must be 'auto', 'cpu' or 'cuda:N'"),
    ({"keep_warm": 0}, "models.keep_warm", "must be at least 1"),
    ({"threads": -1}, "models.threads", "must be 0"),
    ({"mirror": "ftp://x"}, "models.mirror", "http:// or https://"),
    ({"download_timeout": 0}, "models.download_timeout", "greater than 0"),
    ({"pipeline_models": {"vertebral-bodies-ct": "vertebral-bodies-ct-xl"}},
     "models.pipeline_models", "not a known model"),
    ({"pipeline_models": {"vertebral-bodies-ct": "totalspineseg"}},
     "models.pipeline_models", "belongs to pipeline totalspineseg"),
    ({"weights": "x"}, "models.weights", "unknown key"),
    ({"totalspineseg": {"step2_only": True}}, "models.totalspineseg.step2_only", "unknown key"),
    ({"totalspineseg": {"step1_only": "maybe"}}, "models.totalspineseg.step1_only", "bool"),
])
def test_wrong_values_are_explained(models: dict[str, object], key: str, reason: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({"models": models})
    (problem,) = caught.value.problems
    assert problem.key == key and reason in problem.reason


def test_ensemble_selected_per_pipeline() -> None:
    config = parse_config({"models": {"pipeline_models": {
        "vertebral-bodies-ct": "vertebral-bodies-ct-l"}}})
    assert config.models.pipeline_models["vertebral-bodies-ct"] == "vertebral-bodies-ct-l"


def test_pipeline_options_reach_the_pipeline(tmp_path) -> None:
    """``models.totalspineseg.step1_only`` configures the pipeline the node and ``process``
    create (no weights needed to construct it)."""
    from dicomnode.models.pipelines import create_pipeline

    runtime = NnUNetRuntime("cpu")
    default = parse_config({"models": {"path": str(tmp_path)}}).models
    assert create_pipeline("totalspineseg", default, runtime).step1_only is False
    step1 = parse_config({"models": {"path": str(tmp_path),
                                     "totalspineseg": {"step1_only": True}}}).models
    assert create_pipeline("totalspineseg", step1, runtime).step1_only is True
    assert step1.pipeline_options("vertebral-bodies-ct") == {}
    create_pipeline("vertebral-bodies-ct", step1, runtime)  # takes no options
