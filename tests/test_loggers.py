import json

import pytest

from dreamer.loggers import HISTORY, HistoryLogger, WandbLogger, make_logger


def test_offline_wandb_writes_its_run_under_the_run_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    logger = make_logger("wandb", tmp_path, {"seed": 0}, "dreamer-test", "offline", 30)
    assert [type(inner) for inner in logger.loggers] == [HistoryLogger, WandbLogger]
    logger.log({"return": 1.0, "unmeasured": None}, step=1)
    logger.finish()
    assert list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))


def test_a_wandb_that_cannot_start_falls_back_to_the_history_file(tmp_path):
    with pytest.warns(UserWarning, match="wandb could not start"):
        logger = make_logger("wandb", tmp_path, {}, "dreamer-test", "no-such-mode", 5)
    assert [type(inner) for inner in logger.loggers] == [HistoryLogger]


def test_every_row_reaches_the_history_file_as_it_is_logged(tmp_path):
    logger = make_logger("none", tmp_path, {}, None, None, None)
    logger.log({"dream/return": 1.5, "loss": float("nan")}, step=10)
    rows = [json.loads(line) for line in (tmp_path / HISTORY).read_text().splitlines()]  # before finish()
    assert rows == [{"step": 10, "dream/return": 1.5, "loss": None}]
    logger.log({"dream/return": 2.0}, step=20)
    logger.finish()
    assert [json.loads(line)["step"] for line in (tmp_path / HISTORY).read_text().splitlines()] == [10, 20]


def test_unknown_logger_kind_is_named(tmp_path):
    with pytest.raises(ValueError, match="logger.kind must be 'wandb' or 'none', got 'tensorboard'"):
        make_logger("tensorboard", tmp_path, {}, "p", "offline", 5)
