"""`routeworker fit`: thresholds fitted on labelled examples with the real model, written back."""

from __future__ import annotations

from pathlib import Path

import pytest

from worker.cli.main import main
from worker.config import load_settings
from worker.embedding.model import ModelSpec
from worker.replication.routefile import load_route_file

pytestmark = pytest.mark.integration

ROUTES = Path(__file__).resolve().parents[2] / "examples" / "routes.yaml"
EXAMPLES = """text,label
where's my package,order_status
I'd like to cancel what I just ordered,cancel_order
the box came crushed and the mug is broken,damaged_item
money was taken twice from my card,double_charge
can't get into my account,account_locked
what's the weather tomorrow,oos
tell me a joke,
how do I return these shoes,return_item
"""


def test_fit_prints_a_table_and_writes_thresholds(
    model_spec: ModelSpec, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    examples = tmp_path / "examples.csv"
    examples.write_text(EXAMPLES)
    out, settings_out = tmp_path / "fitted.yaml", tmp_path / "routing.toml"
    argv = ["fit", "--routes", str(ROUTES), "--examples", str(examples), "--write", str(out)]
    assert main([*argv, "--settings-out", str(settings_out)]) == 0
    printed = capsys.readouterr().out
    assert "fitted thresholds" in printed
    assert "no-match recall" in printed
    flat = " ".join(printed.replace("│", " ").split())  # table cells wrap in a narrow console
    assert "head also trained on 6 of them" in flat  # the in-scope examples teach the shipped head
    fitted = load_route_file(out)
    original = load_route_file(ROUTES)
    assert [r.name for r in fitted] == [r.name for r in original]
    assert all(r.threshold is not None and -1.0 <= r.threshold <= 1.0 for r in fitted)
    assert [r.utterances for r in fitted] == [r.utterances for r in original]
    # the fitted routing settings load as a settings file, as `routeworker run` would read them
    monkeypatch.setenv("ROUTEWORKER_CONFIG_FILE", str(settings_out))
    served = load_settings()
    assert -1.0 <= served.routing_default_threshold <= 1.0
    assert served.routing_head_weight is not None
    assert 0.0 <= served.routing_head_weight <= 1.0
    assert f"routing_margin {served.routing_margin:.4f}" in printed


def test_fit_without_examples_self_fits_and_prints_its_estimate(
    model_spec: ModelSpec, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert main(["fit", "--routes", str(ROUTES)]) == 0
    printed = capsys.readouterr().out
    for shown in ("self-fit", "head weight", "threshold", "fallback threshold", "cross-validated on",
                  "nearest utterance (baseline)", "in-scope refused"):  # fmt: skip
        assert shown in printed
    assert main(["fit", "--routes", str(ROUTES), "--write", str(tmp_path / "out.yaml")]) == 2
    assert "--write needs --examples" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("csv_text", "message"),
    [("words,label\nhi,order_status\n", "text,label"), ("text,label\nhi,no_such_route\n", "no_such_route")],
)
def test_fit_rejects_bad_examples(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], csv_text: str, message: str
) -> None:
    examples = tmp_path / "bad.csv"
    examples.write_text(csv_text)
    assert main(["fit", "--routes", str(ROUTES), "--examples", str(examples)]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("share", ["1.5", "-0.1", "many"])
def test_fit_refuses_a_no_match_share_that_is_not_one(share: str, tmp_path: Path) -> None:
    examples = tmp_path / "examples.csv"
    examples.write_text(EXAMPLES)
    argv = ["fit", "--routes", str(ROUTES), "--examples", str(examples), "--no-match-share", share]
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
