"""Every settings dataclass checks its values once, where it is defined, and names the field it refuses."""

from __future__ import annotations

import dataclasses

import pytest

from proxyreward_pl import settings as s


@pytest.mark.parametrize("cls, kwargs, field", [
    (s.DataSettings, {"max_length": 0}, "max_length"),
    (s.DataSettings, {"max_length": 64, "max_prompt_length": 64}, "max_prompt_length"),
    (s.LoraSettings, {"r": 0}, "r"),
    (s.LoraSettings, {"target_modules": ()}, "target_modules"),
    (s.DPOSettings, {"loss_type": "kto"}, "loss_type"),
    (s.DPOSettings, {"label_smoothing": 0.5}, "label_smoothing"),
    (s.DPOSettings, {"beta": 0}, "beta"),
    (s.OptimSettings, {"lr": 0}, "lr"),
    (s.OptimSettings, {"warmup_ratio": 1.0}, "warmup_ratio"),
    (s.TrainerSettings, {"devices": 0}, "devices"),
    (s.TrainerSettings, {"max_steps": 0}, "max_steps"),
    (s.TrainerSettings, {"loggers": ("csv", "neptune")}, "loggers"),
    (s.EngineSettings, {"max_concurrency": 0}, "max_concurrency"),
    (s.EngineSettings, {"gpu_memory_utilization": 1.5}, "gpu_memory_utilization"),
    (s.EngineSettings, {"base_url": ["http://a/v1", "b:8000/v1"]}, "base_url"),
    (s.EngineSettings, {"base_url": []}, "base_url"),
    (s.EngineSettings, {"max_requests_per_minute": 0}, "max_requests_per_minute"),
    (s.EngineSettings, {"max_tokens_per_minute": 0}, "max_tokens_per_minute"),
    (s.EngineSettings, {"adapter_path_on_server": "/data/lake/adapters"}, "adapter_path_on_server"),
    (s.EngineSettings, {"adapter_path_on_server": "=/mnt/adapters"}, "adapter_path_on_server"),
    (s.JudgeSettings, {"parse_retries": -1}, "parse_retries"),
    (s.JudgeSettings, {"timeout": 0}, "timeout"),
    (s.RolloutSettings, {"k": 0}, "k"),
    (s.RolloutSettings, {"top_p": 0}, "top_p"),
    (s.RolloutSettings, {"served_adapter_prefix": " "}, "served_adapter_prefix"),
    (s.SelectSettings, {"top_fraction": 0}, "top_fraction"),
    (s.SelectSettings, {"max_length_ratio": 0.5}, "max_length_ratio"),
    (s.EvalSettings, {"samples": 0}, "samples"),
    (s.TinySettings, {"hidden_size": 100, "num_heads": 3}, "num_heads"),
    (s.GenerationSettings, {"false_share_bounds": (0.5, 0.2)}, "false_share_bounds"),
])
def test_bad_values_are_refused_naming_the_field(cls, kwargs, field):
    with pytest.raises(s.SettingsError) as err:
        cls(**kwargs)
    assert err.value.field == field and str(err.value).startswith(f"{field}: ")


def test_defaults_are_valid_and_replace_checks_again():
    for cls in (s.DataSettings, s.LoraSettings, s.DPOSettings, s.OptimSettings, s.ModelSettings, s.TrainerSettings,
                s.EngineSettings, s.JudgeSettings, s.RolloutSettings, s.SelectSettings, s.EvalSettings,
                s.TinySettings, s.GenerationSettings, s.TrainingSettings, s.LoopSettings):
        cls()
    with pytest.raises(s.SettingsError, match="top_fraction"):
        dataclasses.replace(s.SelectSettings(), top_fraction=2.0)


def test_several_servers_are_a_hashable_list():
    one = s.EngineSettings(engine="openai", base_url="http://a/v1")
    several = s.EngineSettings(engine="openai", base_url=["http://a/v1", "http://b/v1"])
    assert one.urls == ("http://a/v1",) and several.urls == ("http://a/v1", "http://b/v1")
    assert hash(several) and s.EngineSettings().urls == ()
