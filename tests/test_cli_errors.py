"""A mistake in what a user gives the command line is one line naming where it is (the config
file and line, or the option), what is wrong and the closest valid name; exit code 2, no
traceback. Most tests run `vssl.cli.main` in this process (parsing fails before any training);
one runs ``python -m vssl`` as a user does."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from cli_helpers import tiny_config

from vssl.cli import main
from vssl.cli_help import HelpFormatter
from vssl.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def config(tiny_synthetic: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A valid tiny run config in ``tmp_path`` (also the working folder)."""
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(tiny_config(tiny_synthetic, tmp_path / "cache")))
    return path


def add_line(path: Path, after: str, line: str) -> int:
    """Inserts ``line`` into ``path`` after its first line equal to ``after``; returns the
    inserted line's 1-based number."""
    lines = path.read_text().splitlines()
    n = lines.index(after) + 1
    lines.insert(n, line)
    path.write_text("\n".join(lines) + "\n")
    return n + 1


def error_line(capsys: pytest.CaptureFixture, argv: list[str]) -> str:
    """Runs ``main(argv)``, checks exit code 2 and one error line without a traceback."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "Union subtypes" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("vssl ")]
    assert len(lines) == 1, err
    return lines[0]


def line_of(path: Path, text: str) -> int:
    return next(n for n, line in enumerate(path.read_text().splitlines(), 1) if text in line)


def test_yaml_key_typo_names_the_file_line_key_and_close_match(config, capsys):
    n = add_line(config, "    backbone: tiny3d", "    warmup_epoch: 1")
    assert error_line(capsys, ["fit", "--config", str(config)]) == (
        f"vssl fit: error: {config}, line {n}: model.init_args.warmup_epoch: not an option of "
        "vssl.tasks.Supervised; did you mean 'warmup_epochs'?"
    )


def test_yaml_trainer_and_data_key_typos(config, capsys):
    text = config.read_text()
    n = add_line(config, "trainer:", "  max_epoch: 1")
    assert error_line(capsys, ["fit", "--config", str(config)]) == (
        f"vssl fit: error: {config}, line {n}: trainer.max_epoch: no such option; "
        "did you mean 'max_epochs'?"
    )
    config.write_text(text.replace("    batch_size: 3", "    batchsize: 3"))
    n = line_of(config, "batchsize:")
    assert error_line(capsys, ["validate", "--config", str(config)]) == (
        f"vssl validate: error: {config}, line {n}: data.init_args.batchsize: not an option of "
        "vssl.data.VideoDataModule; did you mean 'batch_size'?"
    )


def test_an_abbreviated_option_is_refused_with_the_full_name(config, capsys):
    # argparse would take --trainer.max_epoch as a prefix of --trainer.max_epochs.
    assert error_line(capsys, ["fit", "--config", str(config), "--trainer.max_epoch", "1"]) == (
        "vssl fit: error: --trainer.max_epoch: no such option; did you mean --trainer.max_epochs?"
    )
    assert not (config.parent / "runs").exists()


def test_command_line_typos_name_the_option(config, capsys):
    assert error_line(capsys, ["fit", "-c", str(config), "--model.init_args.warmup_epoch=1"]) == (
        "vssl fit: error: --model.init_args.warmup_epoch: not an option of "
        "vssl.tasks.Supervised; did you mean 'warmup_epochs'?"
    )
    assert error_line(capsys, ["test", "-c", str(config), "--checkpoint.monitr", "x"]) == (
        "vssl test: error: --checkpoint.monitr: no such option; did you mean --checkpoint.monitor?"
    )


def test_wrong_value_type_and_class_path(config, capsys):
    assert error_line(capsys, ["fit", "-c", str(config), "--trainer.max_epochs", "abc"]) == (
        "vssl fit: error: --trainer.max_epochs: expected int or null, got 'abc'"
    )
    config.write_text(config.read_text().replace("vssl.tasks.Supervised", "vssl.tasks.Supervized"))
    n = line_of(config, "vssl.tasks.Supervized")
    assert error_line(capsys, ["fit", "--config", str(config)]) == (
        f"vssl fit: error: {config}, line {n}: model.class_path: 'vssl.tasks.Supervized' not "
        "found; did you mean 'vssl.tasks.Supervised'?"
    )


def test_missing_config_and_invalid_yaml(config, capsys):
    missing = config.parent / "missing.yaml"
    line = error_line(capsys, ["fit", "--config", str(missing)])
    assert line.startswith("vssl fit: error: --config: ") and str(missing) in line
    config.write_text("trainer: [\n  max_epochs: 1\n")
    line = error_line(capsys, ["fit", "--config", str(config)])
    assert line.startswith(f"vssl fit: error: {config}: not valid YAML: ")
    assert f"in {config}, line 3" in line


def test_constructor_errors_are_one_line(config, capsys):
    line = error_line(capsys, ["fit", "-c", str(config), "--model.init_args.backbone", "r3d_81"])
    assert line.startswith(
        "vssl fit: error: vssl.tasks.Supervised: unknown backbone 'r3d_81'. "
        "Did you mean 'r3d_18'? Available: "
    )
    line = error_line(
        capsys, ["fit", "-c", str(config), "--model.init_args.backbone_kwargs", '{"widht": 4}']
    )
    assert "backbone 'tiny3d': got an unexpected keyword argument 'widht'" in line
    assert error_line(
        capsys, ["fit", "-c", str(config), "--model.init_args.optimizer", "lbfgs"]
    ) == (
        "vssl fit: error: vssl.tasks.Supervised: optimizer must be one of "
        "['adam', 'adamw', 'sgd'], got 'lbfgs'"
    )


@pytest.mark.parametrize("layout", ["folder", "ucf101"])
def test_missing_dataset_root(config, capsys, layout):
    argv = ["fit", "-c", str(config), "--data.init_args.root", "nowhere"]
    argv += ["--data.init_args.layout", layout, "--trainer.logger", "false"]
    assert error_line(capsys, argv) == (
        f"vssl fit: error: nowhere: the dataset root folder does not exist (layout '{layout}')"
    )


def test_debug_shows_the_error_itself(config):
    with pytest.raises(UserError, match="did you mean --trainer.max_epochs"):
        main(["fit", "--config", str(config), "--trainer.max_epoch", "1", "--debug"])


def test_plain_subcommands(tiny_synthetic, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    missing = tmp_path / "missing.ckpt"
    for command in ("probe", "retrieve", "finetune"):
        assert error_line(capsys, [command, "--ckpt", str(missing), "--data.root", "x"]) == (
            f"vssl {command}: error: {missing}: checkpoint not found"
        )
    line = error_line(capsys, ["probe", "--backbone", "r3d_81", "--data.root", str(tiny_synthetic)])
    assert line.startswith("vssl probe: error: unknown backbone 'r3d_81'. Did you mean 'r3d_18'?")
    not_ckpt = tmp_path / "notes.txt"
    not_ckpt.write_text("not a checkpoint")
    assert error_line(capsys, ["retrieve", "--ckpt", str(not_ckpt), "--data.root", "x"]) == (
        f"vssl retrieve: error: {not_ckpt}: not a PyTorch weight file (not a torch.save archive or pickle)"
    )
    argv = ["finetune", "--backbone", "tiny3d", "--data.root", "nowhere", "--epochs", "1"]
    assert error_line(capsys, argv) == (
        "vssl finetune: error: nowhere: the dataset root folder does not exist (layout 'folder')"
    )
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        main(["probe", "--ckpt", str(missing), "--data.root", "x", "--debug"])


def test_evaluation_options_and_data_blocks_are_checked(tmp_path, capsys):
    # The evaluations parse their data block as fit does: the same one-line messages, naming
    # the config file and line or the option.
    bad = tmp_path / "data.yaml"
    bad.write_text("data:\n  init_args:\n    roots: x\n")
    assert error_line(capsys, ["probe", "--backbone", "tiny3d", "--config", str(bad)]) == (
        f"vssl probe: error: {bad}, line 3: data.init_args.roots: not an option of "
        "vssl.data.VideoDataModule; did you mean 'root'?"
    )
    assert error_line(capsys, ["retrieve", "--backbone", "tiny3d", "--data.roo", "x"]) == (
        "vssl retrieve: error: --data.roo: not an option of vssl.data.VideoDataModule; "
        "did you mean 'root'?"
    )
    assert error_line(capsys, ["finetune", "--backbone", "tiny3d"]) == (
        "vssl finetune: error: no dataset: give --config configs/data/NAME.yaml (or a fit "
        "config) or --data.root DIR"
    )
    assert error_line(capsys, ["probe", "--data.root", "x"]) == (
        "vssl probe: error: give one of --ckpt CKPT (a checkpoint) or --backbone NAME (random init)"
    )
    argv = ["probe", "--backbone", "tiny3d", "--data.root", "x", "--corruption", "gauss"]
    assert error_line(capsys, argv) == (
        "vssl probe: error: --corruption: unknown corruption 'gauss'; did you mean 'gaussian'? "
        "one of gaussian, impulse, shot, speckle"
    )
    assert error_line(capsys, [*argv[:5], "--stride", "x"]) == (
        "vssl probe: error: --stride: expected int or null, got 'x'"
    )


def test_from_a_shell_a_wrong_backbone_is_one_line(config):
    # As README's user runs it: no traceback, no jsonargparse explanation, exit code 2.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "tests"), env.get("PYTHONPATH", "")])
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "vssl",
            "fit",
            "--config",
            str(config),
            "--model.init_args.backbone",
            "r3d_81",
        ],
        cwd=config.parent,
        env=env,
        text=True,
        capture_output=True,
        timeout=300,
    )
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr and "Union subtypes" not in out.stderr
    assert [line for line in out.stderr.splitlines() if "r3d_81" in line] == [
        line for line in out.stderr.splitlines() if line.startswith("vssl fit: error: ")
    ]
    assert "Did you mean 'r3d_18'?" in out.stderr


def option_entries(help_text: str) -> list[list[str]]:
    """The ``options:`` section of an argparse help page, one list of lines per option."""
    entries: list[list[str]] = []
    for line in help_text.split("options:", 1)[1].splitlines():
        if line.startswith("  -"):
            entries.append([line.strip()])
        elif line.startswith("    ") and entries:
            entries[-1].append(line.strip())
    return entries


@pytest.mark.parametrize("command", ["probe", "retrieve", "finetune", "export"])
def test_help_pages_show_defaults_and_every_option_has_help(command):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "100"}
    out = subprocess.run(
        [sys.executable, "-m", "vssl", command, "--help"],
        env=env,
        text=True,
        capture_output=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    entries = option_entries(out.stdout)
    assert len(entries) >= 4
    for entry in entries:
        # the option's signature, then its help: after two spaces or on the next lines
        assert len(entry) > 1 or "  " in entry[0], f"{command}: no help for {entry[0]!r}"
    text = " ".join(" ".join(entry) for entry in entries)
    if command == "export":
        assert "replace existing output files" in text
    else:
        assert "videos per" in text and "(default: 0)" in text  # --seed's default
        assert "(default: None)" not in text and "(default: False)" not in text


def test_help_formatter_leaves_out_empty_defaults():
    parser = argparse.ArgumentParser(formatter_class=HelpFormatter)
    parser.add_argument("--n", type=int, default=3, help="a count")
    parser.add_argument("--flag", action="store_true", help="a switch")
    parser.add_argument("--path", default=None, help="a file")
    parser.add_argument("--need", required=True, default="x", help="needed")
    text = " ".join(parser.format_help().split())
    assert "a count (default: 3)" in text
    assert "a switch --path" in text and "a file --need" in text and text.endswith("needed")
