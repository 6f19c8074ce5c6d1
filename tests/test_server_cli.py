"""Configuration from flags and GRADSERVE_* variables, and the ``gradserve health`` command."""
from __future__ import annotations

import pytest

from gradserve.server import cli, config
from gradserve.server.app import running

from serverkit import parse


def test_flags_beat_environment_which_beats_defaults() -> None:
    cfg = parse(["--workers", "3", "--max-graph-nodes", "7"], {"GRADSERVE_WORKERS": "5", "GRADSERVE_MAX_TENSOR_RANK": "4"})
    assert (cfg.workers, cfg.limits.max_graph_nodes, cfg.limits.max_tensor_rank) == (3, 7, 4)
    assert cfg.limits.max_message_bytes > 256 * 2**20  # room for a 256 MB tensor plus the message around it
    assert parse([], {}).limits == config.Limits()
    assert parse([], {"GRADSERVE_LOCAL_MAX_ELEMENTS": "0"}).local_max_elements == 0


@pytest.mark.parametrize("argv,environ", [(["--workers", "0"], {}), ([], {"GRADSERVE_PORT": "eighty"}),
                                          (["--max-queue-depth", "-1"], {}), (["--local-max-elements", "-1"], {}),
                                          ([], {"GRADSERVE_MAX_CONNECTION_AGE_SECONDS": "-2"})])
def test_bad_settings_exit_with_a_message(argv: list[str], environ: dict[str, str]) -> None:
    with pytest.raises(SystemExit) as info:
        parse(argv, environ)
    assert "gradserve:" in str(info.value)


def test_health_command_reports_serving_and_unreachable(capsys: pytest.CaptureFixture[str]) -> None:
    with running(config.ServerConfig(host="127.0.0.1", port=0, workers=1)) as server:
        assert cli.main(["health", "--target", f"127.0.0.1:{server.port}"]) == 0
    assert "SERVING" in capsys.readouterr().out
    assert cli.main(["health", "--target", f"127.0.0.1:{server.port}", "--timeout", "0.5"]) == 1
