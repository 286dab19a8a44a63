import pytest

from dreamer.loggers import NullLogger, WandbLogger, make_logger


def test_offline_wandb_writes_its_run_under_the_run_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    logger = make_logger("wandb", tmp_path, {"seed": 0}, "dreamer-test", "offline", 30)
    assert isinstance(logger, WandbLogger)
    logger.log({"return": 1.0, "unmeasured": None}, step=1)
    logger.finish()
    assert list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))


def test_a_wandb_that_cannot_start_falls_back_to_metrics_json_only(tmp_path):
    with pytest.warns(UserWarning, match="wandb could not start"):
        logger = make_logger("wandb", tmp_path, {}, "dreamer-test", "no-such-mode", 5)
    assert isinstance(logger, NullLogger)


def test_unknown_logger_kind_is_named(tmp_path):
    with pytest.raises(ValueError, match="logger.kind must be 'wandb' or 'none', got 'tensorboard'"):
        make_logger("tensorboard", tmp_path, {}, "p", "offline", 5)
