"""The CLI's read-only commands: catalog tables, plan, errors without tracebacks."""

from __future__ import annotations

import io
import subprocess
import sys

from cvat_argo.cli import build_parser, main


def test_models_table_lists_every_model_and_the_stand_in(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in ("ssd-mobilenet-v2-coco", "frcnn-res50-coco", "frcnn-res101-coco", "frcnn-nas-coco",
                 "maskrcnn-res50-coco"):
        assert name in out
    assert "frcnn-inception-resnet-v2-coco: ResNet-152 + FPN stands in for InceptionResNetV2" in out


def test_models_json_is_the_model_spec(capsys):
    assert main(["models", "--json", "frcnn-nas-coco"]) == 0
    out = capsys.readouterr().out
    assert '"min_gpus": 2' in out and '"type": "nasfpn"' in out


def test_models_with_a_user_catalog(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("models:\n  - {name: mine, extends: frcnn-res50-coco, description: ours}\n")
    assert main(["models", "--catalog", str(path)]) == 0
    assert "mine" in capsys.readouterr().out


def test_machines_table(capsys):
    assert main(["machines"]) == 0
    out = capsys.readouterr().out
    assert "gpu-8" in out and "nvidia.com/gpu.count=4" in out


def test_plan_shows_stages_commands_and_parameters(capsys):
    assert main(["plan", "--task-id", "42", "--machine", "gpu-2", "--args", "epochs=10,batch_size=8"]) == 0
    out = capsys.readouterr().out
    assert "arguments: epochs=10,batch_size=8,num_clones=2" in out
    assert "train  (after: create-dataset, pull-base-model;" in out
    assert "python -m cvat_argo.steps.annotate --model {input:exported}" in out
    assert "cvat-task-id = '42'" in out


def test_user_errors_exit_2_with_one_line(tmp_path, capsys):
    assert main(["plan", "--task-id", "1", "--args", "epoch=3"]) == 2
    assert capsys.readouterr().err == (
        "error: unknown argument 'epoch' (did you mean 'epochs'?); known: batch_size, epochs, "
        "initial_learning_rate, input_size, num_clones\n")
    assert main(["models", "--catalog", str(tmp_path / "none.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_module_entry_point_runs():
    result = subprocess.run([sys.executable, "-m", "cvat_argo", "--version"], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == "cvat-argo 0.1.0"


def test_model_and_machine_names_are_never_folded_in_a_narrow_terminal(monkeypatch):
    """People copy the names from this table: at 100 columns ``ssd-mobil/enet-v2-c/oco`` was folded."""
    from rich.console import Console

    import cvat_argo.cli as cli

    for command, names in (("models", ("ssd-mobilenet-v2-coco", "frcnn-inception-resnet-v2-coco")),
                           ("machines", ("gpu-1", "cpu"))):
        console = Console(width=100, record=True, file=io.StringIO())
        monkeypatch.setattr(cli, "_console", lambda stream=None, console=console: console)
        assert main([command]) == 0
        text = console.export_text()
        for name in names:
            assert name in text, (command, name)


def test_every_command_describes_itself_and_run_shows_only_its_own_flags(capsys):
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices  # argparse keeps them here
    for name, command in commands.items():
        assert command.description and command.description.endswith("."), name
    run_help = commands["run"].format_help()
    assert "--store" in run_help
    for argo_only in ("--output-prefix", "--no-tensorboard", "--label"):
        assert argo_only not in run_help and argo_only in commands["submit"].format_help()
    assert "-n NAMESPACE, --namespace NAMESPACE" in commands["submit"].format_help()


def test_a_missing_args_file_is_one_line(tmp_path, capsys):
    assert main(["plan", "--task-id", "1", "--args-file", str(tmp_path / "none.yaml")]) == 2
    assert capsys.readouterr().err == f"error: --args-file {tmp_path / 'none.yaml'}: No such file or directory\n"
